"""Benchmark of explainability and bias: the explain step's exact TreeSHAP against the Kernel SHAP a
SageMaker Clarify processing job runs, per record and in agreement, and Clarify's bias metrics at
two table sizes.

Usage::

    .venv/bin/python bench/explainability.py [--explain-rows 100000] [--kernel-rows 1000]
                                             [--margin-rows 200] [--baseline 20] [--num-samples 2072]
                                             [--bias-rows 100000,1000000] [--rounds 300] [--repeat 3]
                                             [--json PATH] [--txt PATH] [--workdir DIR] [--keep] [--quick]

Set-up (one subprocess, not timed): the fraud model of bench/scoring.py (``bench/fraudmodel.py``:
the shipped fraud use case's 12 features and hyperparameters, ``--rounds`` rounds, trained on
200,000 synthetic rows); ``--explain-rows`` new rows of the same generator to explain, and a
random sample of ``--kernel-rows`` of them; a baseline of ``--baseline`` rows drawn at random from
the training rows; for each of ``--bias-rows``, a table of that many new rows with the features,
the label, the facet ``age_band`` (drawn with a mild dependence on the label, so the metrics are
not all zero) and the model's predicted label at its operating threshold (the top 3 % of training
scores), written as Parquet.

Measured, each in a fresh subprocess (``bench/harness.py``: peak RSS from ``wait4``, the
interpreter, its imports and the data included; times exclude imports and loading):

* ``treeshap``: ``mlblueprints.explain.core.tree_shap`` (XGBoost's ``pred_contribs``) over all
  ``--explain-rows`` rows: the explain step's method. Median of ``--repeat`` runs.
* ``kernel``: ``shap.KernelExplainer`` on the ``--kernel-rows`` sample, configured as Clarify's
  SHAP config describes a job (``baseline``, ``num_samples``, ``use_logit``): the model's output is
  its probability, as the XGBoost serving container returns it; ``use_logit`` true is shap's logit
  link, so the attributions are in log-odds like the explain step's; each record's value is the
  kernel-weighted linear regression over ``num_samples`` coalitions, a coalition's value being the
  model averaged over the baseline rows with the coalition's features taken from the record. No L1
  feature selection (``l1_reg=False``; shap 0.51's own default keeps only 10 features, and
  Clarify's config has no such option). One run: 1,000 records are themselves 1,000 timings.
* ``kernel_margin``: the same on the first ``--margin-rows`` of the sample, but on the model's
  margin (log-odds) with the identity link: what converges to the interventional Shapley values.
* ``interventional``: ``shap.TreeExplainer(feature_perturbation="interventional")`` with the same
  baseline, on the sample: the exact value the margin Kernel SHAP estimates.
* ``bias``: ``mlblueprints.explain.core.bias_report`` with the use case's facets and metrics (7
  pre-training, 10 post-training, computed by smclarify) on each ``--bias-rows`` table, read before
  the clock. Median of ``--repeat`` runs.

Agreement, on the sample: per record, the Pearson correlation of the two attribution vectors
(over the 12 features), whether the top feature (largest |SHAP|) is the same and whether the set of
the top 3 is; and the mean absolute difference relative to the reference's mean |SHAP|.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
sys.path.insert(0, str(PROJECT / "include"))

import fraudmodel  # noqa: E402
from harness import StepRunner, finish, log, machine_facts, mb, recorded, run_child_step  # noqa: E402

USECASE = PROJECT / "dags/usecases/fraud_detection.yaml"
SEED = 20261202
AGE_BANDS = ("18-29", "30-44", "45-59", "60+")
AGE_P = {0: (0.25, 0.30, 0.25, 0.20), 1: (0.22, 0.27, 0.23, 0.28)}  # by label: 60+ a little likelier in fraud


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--explain-rows", type=int, default=100_000, help="rows explained by TreeSHAP")
    ap.add_argument("--kernel-rows", type=int, default=1_000, help="of them, the sample explained by Kernel SHAP")
    ap.add_argument("--margin-rows", type=int, default=200, help="of the sample, those explained on the margin too")
    ap.add_argument("--baseline", type=int, default=20, help="rows of Kernel SHAP's baseline (Clarify's baseline)")
    ap.add_argument("--num-samples", type=int, default=2072, help="coalitions per record (Clarify's num_samples)")
    ap.add_argument("--bias-rows", default="100000,1000000", help="comma-separated table sizes for the bias metrics")
    ap.add_argument("--rounds", type=int, default=300, help="boosting rounds of the model (the use case's: 300)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of TreeSHAP and of each bias size (medians)")
    ap.add_argument(
        "--quick", action="store_true", help="a smoke run: 2k / 30 / 15 rows, 50 rounds on 20k, bias at 20k"
    )
    ap.add_argument("--json", help="also write the results as JSON to this path")
    ap.add_argument("--txt", help="also write the printed report to this path")
    ap.add_argument("--workdir", help="where to put data and steps (default: a new temp dir, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args(argv)
    if args.quick:
        args.explain_rows, args.kernel_rows, args.margin_rows = 2_000, 30, 15
        args.rounds, args.repeat, args.bias_rows, args.train_rows = 50, 1, "20000", 20_000
    else:
        args.train_rows = fraudmodel.TRAIN_ROWS
    args.bias_list = [int(s) for s in args.bias_rows.split(",") if s.strip()]
    if not 1 <= args.margin_rows <= args.kernel_rows <= args.explain_rows:
        ap.error("need 1 <= --margin-rows <= --kernel-rows <= --explain-rows")
    if args.baseline < 1 or args.num_samples < 2 or args.repeat < 1 or not args.bias_list:
        ap.error("--baseline, --repeat and --bias-rows must be positive, --num-samples at least 2")
    return args


# ====================================================================== child side


def _usecase() -> Any:
    from mlblueprints.config import load_usecase

    return load_usecase(USECASE)


def _label_name(uc: Any) -> str:
    return uc.training_sets[uc.training.training_set].labels.label


def _booster(work: Path) -> Any:
    import xgboost as xgb

    b = xgb.Booster(model_file=str(work / "model.ubj"))
    b.set_param({"nthread": os.cpu_count() or 1})
    return b


def _step_prepare(p: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    work = Path(p["work"])
    uc = _usecase()
    feats = uc.model_features()
    types = fraudmodel.feature_types(feats)
    rng = np.random.default_rng(SEED)
    trained = fraudmodel.train(uc, rng, int(p["rounds"]), rows=int(p["train_rows"]))
    booster, threshold = trained["booster"], trained["threshold"]
    booster.save_model(str(work / "model.ubj"))
    cols = fraudmodel.columns(rng, int(p["explain_rows"]), types)
    x = np.column_stack([cols[f] for f in feats])
    np.save(work / "explain.npy", x)
    sample = np.sort(rng.choice(len(x), int(p["kernel_rows"]), replace=False))
    np.save(work / "sample.npy", sample)
    baseline = trained["x"][rng.choice(len(trained["x"]), int(p["baseline"]), replace=False)].astype(np.float64)
    np.save(work / "baseline.npy", baseline)
    label = _label_name(uc)
    tables = {}
    for n in p["bias_rows"]:
        cols = fraudmodel.columns(rng, n, types)
        y = fraudmodel.label(rng, cols)
        df = pd.DataFrame(cols)
        df[label] = y.astype(np.int64)
        band = np.empty(n, dtype=object)
        for v, probs in AGE_P.items():
            rows = y == v
            band[rows] = rng.choice(AGE_BANDS, int(rows.sum()), p=probs)
        df["age_band"] = band
        df["predicted"] = (booster.inplace_predict(df[feats].to_numpy(np.float32)) >= threshold).astype(np.int64)
        path = work / f"bias-{n}.parquet"
        df.to_parquet(path, index=False)
        tables[str(n)] = {"path": str(path), "positives": int(y.sum()), "flagged": int(df["predicted"].sum())}
    return {
        "features": feats,
        "rounds": int(p["rounds"]),
        "train_rows": int(p["train_rows"]),
        "train_seconds": round(trained["train_seconds"], 1),
        "threshold": threshold,
        "baseline_margin_mean": float(np.mean(booster.inplace_predict(baseline, predict_type="margin"))),
        "tables": tables,
    }


def _step_treeshap(p: dict[str, Any]) -> Any:
    import numpy as np

    from mlblueprints.explain import core

    work = Path(p["work"])
    feats = json.loads((work / "features.json").read_text())
    booster = _booster(work)
    x = np.load(work / "explain.npy")
    sample = np.load(work / "sample.npy")
    out = Path(p["out"])

    def step() -> dict[str, Any]:
        a = core.tree_shap(booster, x, feats)
        np.save(out, np.column_stack([a.values[sample], a.base[sample]]))
        margin = booster.inplace_predict(x[:1000], predict_type="margin")
        return {
            "rows": len(x),
            "additivity_max_error": float(np.max(np.abs(a.values[:1000].sum(axis=1) + a.base[:1000] - margin))),
            "base_value": float(a.base[0]),
        }

    return step


def _step_kernel(p: dict[str, Any]) -> Any:
    import numpy as np
    import shap

    work = Path(p["work"])
    booster = _booster(work)
    x = np.load(work / "explain.npy")[np.load(work / "sample.npy")][: int(p["rows"])]
    baseline = np.load(work / "baseline.npy")
    margin = p["link"] == "identity"
    out = Path(p["out"])
    evaluated = [0]

    def model(rows: Any) -> Any:  # the endpoint: probabilities (Clarify) or the margin
        evaluated[0] += len(rows)
        return booster.inplace_predict(rows, predict_type="margin" if margin else "value")

    def step() -> dict[str, Any]:
        explainer = shap.KernelExplainer(model, baseline, link=p["link"])
        values = explainer.shap_values(x, nsamples=int(p["num_samples"]), l1_reg=False, silent=True)
        values = np.asarray(values).reshape(len(x), -1)
        base = float(np.asarray(explainer.expected_value).reshape(-1)[0])
        np.save(out, np.column_stack([values, np.full(len(x), base)]))
        fx = booster.inplace_predict(x, predict_type="margin")
        return {
            "rows": len(x),
            "link": p["link"],
            "num_samples": int(p["num_samples"]),
            "baseline_rows": len(baseline),
            "model_rows_evaluated": evaluated[0],
            "expected_value": base,
            "additivity_max_error": float(np.max(np.abs(values.sum(axis=1) + base - fx))),
        }

    return step


def _step_interventional(p: dict[str, Any]) -> Any:
    import numpy as np
    import shap

    work = Path(p["work"])
    booster = _booster(work)
    x = np.load(work / "explain.npy")[np.load(work / "sample.npy")]
    baseline = np.load(work / "baseline.npy")
    out = Path(p["out"])

    def step() -> dict[str, Any]:
        explainer = shap.TreeExplainer(
            booster, data=baseline, feature_perturbation="interventional", model_output="raw"
        )
        values = np.asarray(explainer.shap_values(x, check_additivity=False))
        base = float(np.asarray(explainer.expected_value).reshape(-1)[0])
        np.save(out, np.column_stack([values, np.full(len(x), base)]))
        fx = booster.inplace_predict(x, predict_type="margin")
        return {
            "rows": len(x),
            "expected_value": base,
            "additivity_max_error": float(np.max(np.abs(values.sum(axis=1) + base - fx))),
        }

    return step


def _step_bias(p: dict[str, Any]) -> Any:
    import pandas as pd

    from mlblueprints.explain import core

    uc = _usecase()
    e = uc.explainability
    df = pd.read_parquet(p["path"])
    predicted = df.pop("predicted").to_numpy()
    facets = [core.Facet(f.name, tuple(f.value_or_threshold)) for f in e.facets]

    def step() -> dict[str, Any]:
        bias = core.bias_report(
            df,
            facets,
            _label_name(uc),
            e.label_value,
            predicted,
            pre_training=e.pre_training_metrics,
            post_training=e.post_training_metrics,
        )
        values = core.metric_values(core.analysis(bias, None))
        return {
            "rows": len(df),
            "columns": len(df.columns),
            "metrics": len(values),
            "failed": [v["name"] for v in values if v["value"] is None],
            "values": {f"{v['stage']}:{v['name']}": v["value"] for v in values},
        }

    return step


STEPS = {
    "treeshap": _step_treeshap,
    "kernel": _step_kernel,
    "interventional": _step_interventional,
    "bias": _step_bias,
}


def child_main(name: str, params_path: str, result_path: str) -> None:
    params = json.loads(Path(params_path).read_text())
    t = time.perf_counter()
    import numpy  # noqa: F401  (imports are paid before the clock of the step starts)
    import pandas  # noqa: F401
    import xgboost  # noqa: F401

    if name in ("kernel", "interventional"):
        import shap  # noqa: F401
    if name == "bias":
        import smclarify.bias.report  # noqa: F401
    if name == "prepare":
        run_child_step(name, result_path, lambda: _step_prepare(params), time.perf_counter() - t)
        return
    step = STEPS[name](params)  # loads before the clock; inside the process's peak RSS
    run_child_step(name, result_path, step, time.perf_counter() - t)


# ====================================================================== parent side


def agreement(a: Any, ref: Any) -> dict[str, Any]:
    """How far attributions ``a`` (records x features) agree with ``ref`` on the same records."""
    import numpy as np

    n = min(len(a), len(ref))
    a, ref = a[:n], ref[:n]
    ac, rc = a - a.mean(axis=1, keepdims=True), ref - ref.mean(axis=1, keepdims=True)
    den = np.sqrt((ac**2).sum(axis=1) * (rc**2).sum(axis=1))
    ok = den > 0
    r = (ac * rc).sum(axis=1)[ok] / den[ok]
    top = lambda v, k: np.argsort(-np.abs(v), axis=1)[:, :k]  # noqa: E731
    top3 = [set(u) == set(w) for u, w in zip(top(a, 3), top(ref, 3), strict=True)]
    ga, gr = np.abs(a).mean(axis=0), np.abs(ref).mean(axis=0)
    return {
        "records": n,
        "pearson_median": float(np.median(r)),
        "pearson_p5": float(np.quantile(r, 0.05)),
        "pearson_mean": float(np.mean(r)),
        "pearson_undefined": int((~ok).sum()),
        "top1_share": float(np.mean(top(a, 1)[:, 0] == top(ref, 1)[:, 0])),
        "top3_share": float(np.mean(top3)),
        "mad_relative": float(np.abs(a - ref).mean() / np.abs(ref).mean()),
        "global_top3_same": set(np.argsort(-ga)[:3]) == set(np.argsort(-gr)[:3]),
        "global_max_relative_diff": float(np.max(np.abs(ga - gr)) / gr.max()),
    }


PAIRS = (
    ("treeshap", "kernel", "TreeSHAP (pred_contribs) vs Kernel SHAP as Clarify (probability, logit link)"),
    ("interventional", "kernel", "interventional TreeSHAP (same baseline) vs Kernel SHAP as Clarify"),
    ("treeshap", "interventional", "TreeSHAP (pred_contribs, path-dependent) vs interventional TreeSHAP"),
    ("interventional", "kernel_margin", "interventional TreeSHAP vs Kernel SHAP on the margin (identity link)"),
)


def summarize(results: dict[str, Any], work: Path) -> dict[str, Any]:
    import numpy as np

    runs = results["runs"]
    arrays = {k: np.load(work / f"{k}.npy") for k in ("treeshap", "kernel", "kernel_margin", "interventional")}
    tree_s = statistics.median(x["seconds"] for x in runs["treeshap"])
    k = runs["kernel"]
    s: dict[str, Any] = {
        "treeshap_seconds": tree_s,
        "treeshap_runs": [x["seconds"] for x in runs["treeshap"]],
        "treeshap_rows": runs["treeshap"][0]["out"]["rows"],
        "treeshap_ms_per_record": 1000 * tree_s / runs["treeshap"][0]["out"]["rows"],
        "treeshap_peak_rss_kb": max(x["peak_rss_kb"] for x in runs["treeshap"]),
        "kernel_seconds": k["seconds"],
        "kernel_rows": k["out"]["rows"],
        "kernel_ms_per_record": 1000 * k["seconds"] / k["out"]["rows"],
        "kernel_peak_rss_kb": k["peak_rss_kb"],
        "kernel_model_rows_per_record": k["out"]["model_rows_evaluated"] / k["out"]["rows"],
        "kernel_margin_ms_per_record": 1000 * runs["kernel_margin"]["seconds"] / runs["kernel_margin"]["out"]["rows"],
        "interventional_ms_per_record": 1000
        * runs["interventional"]["seconds"]
        / runs["interventional"]["out"]["rows"],
        "base_values": {
            "treeshap": runs["treeshap"][0]["out"]["base_value"],
            "kernel": k["out"]["expected_value"],
            "kernel_margin": runs["kernel_margin"]["out"]["expected_value"],
            "interventional": runs["interventional"]["out"]["expected_value"],
        },
        "additivity_max_error": {
            "treeshap": runs["treeshap"][0]["out"]["additivity_max_error"],
            **{n: runs[n]["out"]["additivity_max_error"] for n in ("kernel", "kernel_margin", "interventional")},
        },
    }
    s["speed_ratio"] = s["kernel_ms_per_record"] / s["treeshap_ms_per_record"]
    s["agreement"] = {
        f"{a} vs {b}": {"what": what, **agreement(arrays[a][:, :-1], arrays[b][:, :-1])} for a, b, what in PAIRS
    }
    s["bias"] = {}
    for n, rs in runs["bias"].items():
        s["bias"][n] = {
            "rows": int(n),
            "seconds": statistics.median(x["seconds"] for x in rs),
            "runs": [x["seconds"] for x in rs],
            "peak_rss_kb": max(x["peak_rss_kb"] for x in rs),
            "rss_after_load_kb": rs[0]["rss_after_imports_kb"],
            "metrics": rs[0]["out"]["metrics"],
            "failed": rs[0]["out"]["failed"],
            "values": rs[0]["out"]["values"],
        }
    return s


def report(results: dict[str, Any]) -> str:
    a, m, s, d = results["args"], results["machine"], results["summary"], results["data"]
    L: list[str] = []
    w = L.append
    load = lambda v: " / ".join(f"{x:.2f}" for x in v)  # noqa: E731
    w("=" * 110)
    w(f"Explainability benchmark (bench/explainability.py{' --quick' if a['quick'] else ''}), {results['started']}")
    w(
        f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['platform']}; python {m['python']}, xgboost "
        f"{m['xgboost']}, shap {m['shap']}, smclarify {m['smclarify']}, pandas {m['pandas']}; load average at start "
        f"{load(m['loadavg_start'])}, at end {load(results['loadavg_end'])} (shared machine)"
    )
    w(
        f"model: {len(d['features'])} features of the fraud use case, {d['rounds']} rounds, max_depth 6, trained on "
        f"{d['train_rows']:,} synthetic rows in {d['train_seconds']:.0f} s. Kernel SHAP: baseline {a['baseline']} "
        f"random training rows, num_samples {a['num_samples']}, no L1 selection."
    )
    w("Times exclude imports and loading; peak RSS is the step's whole process.")
    w("")
    w(f"{'attributions':<52} {'records':>8} {'seconds':>9} {'ms/record':>10} {'peak RSS':>9}")
    rows = [
        (f"TreeSHAP, pred_contribs (median of {a['repeat']})", s["treeshap_rows"], s["treeshap_seconds"]),
        ("Kernel SHAP as Clarify (probability, logit link)", s["kernel_rows"], s["kernel_seconds"]),
    ]
    rss = [s["treeshap_peak_rss_kb"], s["kernel_peak_rss_kb"]]
    for (what, n, sec), r in zip(rows, rss, strict=True):
        w(f"{what:<52} {n:>8,} {sec:>9.2f} {1000 * sec / n:>10.3f} {mb(r):>9}")
    w(f"{'Kernel SHAP on the margin (identity link)':<52} {'':>8} {'':>9} {s['kernel_margin_ms_per_record']:>10.3f}")
    w(f"{'interventional TreeSHAP, same baseline':<52} {'':>8} {'':>9} {s['interventional_ms_per_record']:>10.3f}")
    w("")
    w(
        f"per record, Kernel SHAP takes {s['speed_ratio']:,.0f}x TreeSHAP's time "
        f"({s['kernel_model_rows_per_record']:,.0f} model rows predicted per record)"
    )
    bv = s["base_values"]
    w(
        f"base values (log-odds): pred_contribs {bv['treeshap']:.4f} (the trees' cover-weighted mean), Kernel as "
        f"Clarify {bv['kernel']:.4f} (logit of the baseline's mean probability), Kernel on the margin "
        f"{bv['kernel_margin']:.4f}, interventional {bv['interventional']:.4f} (both: the baseline's mean margin)"
    )
    w("largest |base + sum(SHAP) - margin|: " + ", ".join(f"{k} {v:.1e}" for k, v in s["additivity_max_error"].items()))
    w("")
    w(
        f"{'agreement on the sample (a vs reference b)':<72} {'n':>5} {'r med':>6} {'r p5':>6} {'top-1':>6} "
        f"{'top-3':>6} {'MAD/mean|b|':>11}"
    )
    for g in s["agreement"].values():
        w(
            f"{g['what']:<72} {g['records']:>5} {g['pearson_median']:>6.3f} {g['pearson_p5']:>6.3f} "
            f"{g['top1_share']:>6.1%} {g['top3_share']:>6.1%} {g['mad_relative']:>11.1%}"
        )
    w("r: per-record Pearson correlation of the 12 attributions; top-1 / top-3: records whose largest |SHAP|")
    w("feature / set of three largest are the same; MAD/mean|b|: mean |a - b| over mean |b|.")
    w("")
    w(
        f"{'bias metrics (bias_report)':<28} {'rows':>10} {'metrics':>8} {'seconds':>9} {'peak RSS':>9} {'after load':>11}"
    )
    for b in s["bias"].values():
        w(
            f"{'7 pre + 10 post, 1 facet':<28} {b['rows']:>10,} {b['metrics']:>8} {b['seconds']:>9.2f} "
            f"{mb(b['peak_rss_kb']):>9} {mb(b['rss_after_load_kb']):>11}"
        )
        if b["failed"]:
            w(f"  failed to compute: {', '.join(b['failed'])}")
    big = max(s["bias"].values(), key=lambda b: b["rows"])
    w(
        f"values at {big['rows']:,} rows: "
        + ", ".join(f"{k.split(':')[1]} {v:.3f}" for k, v in big["values"].items() if v is not None)
    )
    return "\n".join(L)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mlb-bench-explain-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: v for k, v in vars(args).items() if k != "bias_list"},
        "machine": machine_facts("xgboost", "shap", "smclarify", "numpy", "pandas"),
        "runs": {},
    }
    log(f"work dir {work}")
    r = StepRunner(SCRIPT, work, {}, work / "home")
    base = {"work": str(work)}
    with recorded(results, work, args):
        log(f"set-up: a {args.rounds}-round model, {args.explain_rows:,} rows to explain, bias tables {args.bias_list}")
        prep = r.step(
            "prepare",
            {
                **base,
                "rounds": args.rounds,
                "train_rows": args.train_rows,
                "explain_rows": args.explain_rows,
                "kernel_rows": args.kernel_rows,
                "baseline": args.baseline,
                "bias_rows": args.bias_list,
            },
        )
        results["data"] = {**prep["out"], "seconds": prep["seconds"]}
        (work / "features.json").write_text(json.dumps(prep["out"]["features"]))
        runs = results["runs"]
        runs["treeshap"] = []
        for i in range(args.repeat):
            runs["treeshap"].append(r.step("treeshap", {**base, "out": str(work / "treeshap.npy")}))
            log(f"TreeSHAP run {i + 1}: {runs['treeshap'][-1]['seconds']:.2f} s for {args.explain_rows:,} rows")
        for name, link, n in (("kernel", "logit", args.kernel_rows), ("kernel_margin", "identity", args.margin_rows)):
            log(f"Kernel SHAP ({link} link) on {n:,} records")
            kp = {**base, "link": link, "rows": n, "num_samples": args.num_samples, "out": str(work / f"{name}.npy")}
            runs[name] = r.step("kernel", kp)
            log(f"  {runs[name]['seconds']:.1f} s ({mb(runs[name]['peak_rss_kb'])})")
        runs["interventional"] = r.step("interventional", {**base, "out": str(work / "interventional.npy")})
        log(f"interventional TreeSHAP: {runs['interventional']['seconds']:.1f} s")
        runs["bias"] = {}
        for n in args.bias_list:
            path = prep["out"]["tables"][str(n)]["path"]
            runs["bias"][str(n)] = []
            for i in range(args.repeat):
                res = r.step("bias", {**base, "path": path})
                runs["bias"][str(n)].append(res)
                log(f"bias metrics, {n:,} rows, run {i + 1}: {res['seconds']:.2f} s ({mb(res['peak_rss_kb'])})")
        results["summary"] = summarize(results, work)
    return finish(report(results), results, args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_step":
        child_main(*sys.argv[2:5])
    else:
        sys.exit(main(sys.argv[1:]))
