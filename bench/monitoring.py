"""Benchmark of drift monitoring: the per-version reference sketch and the per-window tests of
``mlblueprints.monitoring.stats`` against Evidently 0.7's default data-drift report on the same
data, with the verdicts compared column by column, and the effect of sampling the window.

Usage::

    .venv/bin/python bench/monitoring.py [--sizes 1Mx1Mx30,10Mx10Mx30,1Mx1Mx300] [--repeat 3]
                                         [--evidently-max-cells 60000000] [--evidently-timeout 1800]
                                         [--json PATH] [--txt PATH] [--workdir DIR] [--keep] [--quick]

A size is ``CURRENTxREFERENCExCOLUMNS`` (``k``/``M`` suffixes). For each size, set-up (one
subprocess, not timed): a reference and a current window written as Parquet, generated in chunks
of 1M rows from a fixed seed. Columns repeat a pattern of 30 that looks like transaction features:
log-normal amounts, Poisson counts (a few distinct values, and many), exponential seconds, the hour
(0-23), low-cardinality codes (0-3), categorical strings (4, 12 and 60 values). Numerical columns
have 1 % nulls, amounts a few infinities (0.01 %), categorical columns 1 % nulls. In the window,
one column in three is drifted, by amounts from barely to clearly past the default thresholds, and
the categorical ones gain an unseen value.

Measured, each in a fresh subprocess (``bench/harness.py``: peak RSS from ``wait4``, the
interpreter and its imports included):

* ``sketch`` (once per model version): every reference column read from Parquet and summarised
  (``stats.sketch``); the sketches written as JSON.
* ``test`` (every window): the sketches loaded, then each column of the window read from Parquet
  (one column at a time; categorical columns dictionary-encoded) and tested
  (``stats.test_column``). Both the time with the reads and the tests alone are reported.
* ``evidently``: the reference and the window read into pandas DataFrames (before the clock), then
  ``Report([DataDriftPreset()], include_tests=True).run(current, reference)`` with a
  ``DataDefinition`` naming the numerical and categorical columns; each column's method, score and
  verdict (its ValueDrift test's status) taken from ``snapshot.dict()``. Skipped for sizes of more
  than ``--evidently-max-cells`` (current + reference rows x columns), stopped after
  ``--evidently-timeout`` seconds; the table says so.
* ``sampling`` (at the first size with a window of at least 1M rows, or the largest): from the
  window, 20 random samples (without replacement) of 10k, 50k and 200k rows of a column with no
  drift and of the drifted Wasserstein column whose full-window statistic is nearest the
  threshold, each tested against the reference's sketch (Wasserstein, 0.1): the statistic's
  spread and the share of samples flagged, against the full window's statistic.

``ours`` = sketch once + test per window; the goal is the per-window test under 30 s and 2 GB for
1M x 1M x 30 columns. ``--repeat`` runs sketch and test that many times (medians reported);
Evidently runs once per size.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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

from harness import BenchError, StepRunner, finish, log, machine_facts, mb, recorded, run_child_step  # noqa: E402

GOAL_SECONDS = 30.0
GOAL_RSS_KB = 2 * 1024 * 1024
CHUNK = 1_000_000
SAMPLE_SIZES = (10_000, 50_000, 200_000)
SAMPLES = 20
SEED = 20261201


def parse_size(text: str) -> tuple[int, int, int]:
    def num(s: str) -> int:
        s = s.strip().lower()
        mult = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
        return int(float(s[:-1] if s[-1:] in "km" else s) * mult)

    parts = text.lower().split("x")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: a size is CURRENTxREFERENCExCOLUMNS, e.g. 1Mx1Mx30")
    return num(parts[0]), num(parts[1]), num(parts[2])


def label(size: tuple[int, int, int]) -> str:
    def short(n: int) -> str:
        if n >= 1_000_000 and n % 1_000_000 == 0:
            return f"{n // 1_000_000}M"
        if n >= 1_000 and n % 1_000 == 0:
            return f"{n // 1_000}k"
        return str(n)

    return f"{short(size[0])} x {short(size[1])} x {size[2]}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sizes",
        default="1Mx1Mx30,10Mx10Mx30,1Mx1Mx300",
        help="comma-separated CURRENTxREFERENCExCOLUMNS (default: 1Mx1Mx30,10Mx10Mx30,1Mx1Mx300)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs of sketch and test per size (medians reported)")
    ap.add_argument(
        "--evidently-max-cells",
        type=int,
        default=60_000_000,
        help="skip Evidently where (current + reference rows) x columns exceeds this",
    )
    ap.add_argument("--evidently-timeout", type=float, default=1800.0, help="stop an Evidently run after this")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 50k x 50k x 30, one repeat, small samples")
    ap.add_argument("--json", help="also write the results as JSON to this path")
    ap.add_argument("--txt", help="also write the printed report to this path")
    ap.add_argument("--workdir", help="where to put data and steps (default: a new temp dir, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.repeat = "50kx50kx30", 1
    args.size_list = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    if any(min(s) < 1 for s in args.size_list) or args.repeat < 1:
        ap.error("sizes and --repeat must be positive")
    return args


# ====================================================================== the data


def column_specs(n_columns: int) -> list[dict[str, Any]]:
    """The columns: a pattern of 30 repeated (parameters varied per repeat), one in three drifted."""
    base = [
        ("amount", "lognormal", {"mu": 3.5, "sigma": 1.0}),
        ("count_1h", "poisson", {"lam": 3.0}),
        ("count_24h", "poisson", {"lam": 20.0}),
        ("seconds_since", "exponential", {"scale": 40_000.0}),
        ("hour", "hour", {}),
        ("code", "code", {"k": 4}),
        ("channel", "category", {"k": 4}),
        ("merchant_group", "category", {"k": 12}),
        ("country", "category", {"k": 60}),
        ("amount_avg", "lognormal", {"mu": 4.0, "sigma": 0.6}),
    ]
    # drift per position within the pattern of 30: None, or a magnitude (see _draw)
    drifts = [None, 0.3, None, None, 0.07, None, 0.2, None, None, 0.15, None, None, 0.5, None, None]
    specs = []
    for i in range(n_columns):
        name, dist, params = base[i % len(base)]
        rep = i // len(base)
        p = dict(params)
        if dist == "lognormal":
            p["mu"] += 0.1 * rep
        elif dist == "poisson":
            p["lam"] *= 1 + 0.05 * rep
        specs.append(
            {
                "name": f"{name}_{rep}",
                "dist": dist,
                "kind": "categorical" if dist == "category" else "numerical",
                "params": p,
                "drift": drifts[i % len(drifts)],
            }
        )
    return specs


def _draw(rng: Any, spec: dict[str, Any], n: int, drifted: bool) -> Any:
    """One chunk of a column as an Arrow array (nulls as Arrow nulls)."""
    import numpy as np
    import pyarrow as pa

    p, d, dist = spec["params"], (spec["drift"] or 0.0) if drifted else 0.0, spec["dist"]
    if dist == "lognormal":
        v = rng.lognormal(p["mu"] + d, p["sigma"], n)
        v[rng.random(n) < 0.0001] = np.inf
    elif dist == "poisson":
        v = rng.poisson(p["lam"] * (1 + d), n).astype("float64")
    elif dist == "exponential":
        v = rng.exponential(p["scale"] * (1 + d), n)
    elif dist == "hour":
        v = np.floor((rng.normal(13 + 10 * d, 5, n)) % 24)
    elif dist == "code":
        v = rng.choice(4, n, p=_shares(4, d)).astype("float64")
    else:
        k = p["k"]
        names = [f"{spec['name'].rsplit('_', 1)[0]}_{j:02d}" for j in range(k)] + ["unseen"]
        shares = np.append(_shares(k, d), 0.01 if drifted and d else 0.0)
        idx = rng.choice(k + 1, n, p=shares / shares.sum())
        nulls = rng.random(n) < 0.01
        return pa.compute.take(pa.array(names), pa.array(np.where(nulls, None, idx), pa.int64()))
    mask = rng.random(n) < 0.01
    if dist in ("poisson", "hour", "code"):
        return pa.array(np.where(mask, 0, v).astype("int64"), pa.int64(), mask=mask)
    return pa.array(v, pa.float64(), mask=mask)


def _shares(k: int, drift: float) -> Any:
    """Zipf-like shares of k values; drift moves weight from the first value to the last ones."""
    import numpy as np

    s = 1.0 / np.arange(1, k + 1)
    s = s / s.sum()
    if drift:
        moved = s[0] * min(drift, 0.9)
        s[0] -= moved
        s[-(k // 2 or 1) :] += moved / (k // 2 or 1)
    return s / s.sum()


def _write(path: Path, specs: list[dict[str, Any]], rows: int, seed: int, drifted: bool) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    kinds = {"categorical": pa.string()}
    schema = pa.schema(
        [
            (
                s["name"],
                kinds.get(s["kind"], pa.int64() if s["dist"] in ("poisson", "hour", "code") else pa.float64()),
            )
            for s in specs
        ]
    )
    with pq.ParquetWriter(path, schema, compression="zstd") as w:
        for a in range(0, rows, CHUNK):
            n = min(CHUNK, rows - a)
            w.write_table(pa.table([_draw(rng, s, n, drifted) for s in specs], schema=schema), row_group_size=CHUNK)
    return path.stat().st_size


# ====================================================================== child side


def _step_prepare(p: dict[str, Any]) -> dict[str, Any]:
    d = Path(p["dir"])
    d.mkdir(parents=True, exist_ok=True)
    specs = column_specs(p["columns"])
    ref_bytes = _write(d / "reference.parquet", specs, p["reference"], SEED, drifted=False)
    cur_bytes = _write(d / "current.parquet", specs, p["current"], SEED + 1, drifted=True)
    (d / "columns.json").write_text(json.dumps(specs))
    return {"reference_bytes": ref_bytes, "current_bytes": cur_bytes}


def _read_column(path: Path, spec: dict[str, Any]) -> Any:
    """One column as a pandas Series (categorical: dictionary-encoded, read as pandas Categorical)."""
    import pyarrow.parquet as pq

    cat = spec["kind"] == "categorical"
    table = pq.read_table(path, columns=[spec["name"]], read_dictionary=[spec["name"]] if cat else None)
    return table.column(0).to_pandas()


def _step_sketch(p: dict[str, Any]) -> Any:
    from mlblueprints.monitoring import stats

    d = Path(p["dir"])
    specs = json.loads((d / "columns.json").read_text())

    def step() -> dict[str, Any]:
        read = sketch = 0.0
        out = {}
        for s in specs:
            t = time.perf_counter()
            col = _read_column(d / "reference.parquet", s)
            t1 = time.perf_counter()
            out[s["name"]] = stats.sketch(s["name"], col, s["kind"]).as_dict()
            t2 = time.perf_counter()
            read, sketch = read + t1 - t, sketch + t2 - t1
            del col
        text = json.dumps(out)
        (d / "sketches.json").write_text(text)
        return {"read_seconds": round(read, 3), "sketch_seconds": round(sketch, 3), "json_bytes": len(text)}

    return step


def _step_test(p: dict[str, Any]) -> Any:
    from mlblueprints.monitoring import stats

    d = Path(p["dir"])
    specs = json.loads((d / "columns.json").read_text())
    sketches = {k: stats.ColumnSketch.from_dict(v) for k, v in json.loads((d / "sketches.json").read_text()).items()}

    def step() -> dict[str, Any]:
        read = test = 0.0
        cols = {}
        for s in specs:
            t = time.perf_counter()
            col = _read_column(d / "current.parquet", s)
            t1 = time.perf_counter()
            r = stats.test_column(sketches[s["name"]], col)
            t2 = time.perf_counter()
            read, test = read + t1 - t, test + t2 - t1
            cols[s["name"]] = {"method": r.method, "statistic": r.statistic, "threshold": r.threshold}
            cols[s["name"]]["drifted"] = r.drifted
            del col
        return {"read_seconds": round(read, 3), "test_seconds": round(test, 3), "columns": cols}

    return step


def evidently_columns(snapshot: Any) -> dict[str, dict[str, Any]]:
    """Each column's method (registry name), score, threshold and verdict from a data-drift
    report's ``snapshot.dict()``; the verdict is the status of the column's ValueDrift test."""
    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests

    names = {t.display_name: name for name, by_type in _registered_stat_tests.items() for t in by_type.values()}
    d = snapshot.dict()
    status = {t["metric_config"]["metric_id"]: t["status"] for t in d.get("tests", []) if t.get("id") == "drift"}
    out = {}
    for m in d["metrics"]:
        cfg = m["config"]
        if not cfg["type"].endswith(":ValueDrift"):
            continue
        method = names.get(cfg["method"], cfg["method"])
        out[cfg["column"]] = {
            "method": method,
            "statistic": float(m["value"]),
            "threshold": float(cfg["threshold"]),
            "drifted": status[m["id"]] == "FAIL",
        }
    return out


def _step_evidently(p: dict[str, Any]) -> Any:
    import pyarrow.parquet as pq
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    d = Path(p["dir"])
    specs = json.loads((d / "columns.json").read_text())
    ref = pq.read_table(d / "reference.parquet").to_pandas()
    cur = pq.read_table(d / "current.parquet").to_pandas()
    definition = DataDefinition(
        numerical_columns=[s["name"] for s in specs if s["kind"] == "numerical"],
        categorical_columns=[s["name"] for s in specs if s["kind"] == "categorical"],
    )

    def step() -> dict[str, Any]:
        t = time.perf_counter()
        snapshot = Report([DataDriftPreset()], include_tests=True).run(
            Dataset.from_pandas(cur, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition),
        )
        seconds = time.perf_counter() - t
        return {"report_seconds": round(seconds, 3), "columns": evidently_columns(snapshot)}

    return step


def _step_sampling(p: dict[str, Any]) -> Any:
    import numpy as np

    from mlblueprints.monitoring import stats

    d = Path(p["dir"])
    specs = {s["name"]: s for s in json.loads((d / "columns.json").read_text())}
    sketches = json.loads((d / "sketches.json").read_text())

    def step() -> dict[str, Any]:
        rng = np.random.default_rng(SEED + 2)
        out = {}
        for name in p["columns"]:
            ref = stats.ColumnSketch.from_dict(sketches[name])
            col = _read_column(d / "current.parquet", specs[name]).to_numpy()
            full = stats.test_column(ref, col, method="wasserstein")
            rows: dict[str, Any] = {}
            for n in p["sizes"]:
                if n >= len(col):
                    continue
                vals = [
                    stats.test_column(ref, col[rng.choice(len(col), n, replace=False)], method="wasserstein").statistic
                    for _ in range(SAMPLES)
                ]
                q = np.quantile(vals, [0.0, 0.05, 0.5, 0.95, 1.0])
                rows[str(n)] = {
                    "min": q[0],
                    "p5": q[1],
                    "median": q[2],
                    "p95": q[3],
                    "max": q[4],
                    "std": float(np.std(vals)),
                    "flagged": int(sum(v >= full.threshold for v in vals)),
                }
            out[name] = {"full": full.statistic, "threshold": full.threshold, "rows": len(col), "samples": rows}
        return out

    return step


STEPS = {"sketch": _step_sketch, "test": _step_test, "evidently": _step_evidently, "sampling": _step_sampling}


def child_main(name: str, params_path: str, result_path: str) -> None:
    params = json.loads(Path(params_path).read_text())
    t = time.perf_counter()
    import numpy  # noqa: F401  (imports are paid before the clock of the step starts)
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import scipy.spatial  # noqa: F401

    if name == "prepare":
        run_child_step(name, result_path, lambda: _step_prepare(params), time.perf_counter() - t)
        return
    step = STEPS[name](params)  # loads before the clock; inside the process's peak RSS
    run_child_step(name, result_path, step, time.perf_counter() - t)


# ====================================================================== parent side


def run_with_timeout(r: StepRunner, name: str, params: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    """``r.step`` with a time limit: None (the child killed) when it runs longer than ``timeout``."""
    proc, rp, lp, started = r.spawn(name, params)
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return r.finish(name, proc, rp, lp, started, status, ru)
        if time.perf_counter() - started > timeout:
            os.kill(proc.pid, signal.SIGKILL)
            os.wait4(proc.pid, 0)
            return None
        time.sleep(0.5)


def sampling_columns(specs: list[dict[str, Any]], tested: dict[str, Any]) -> list[str]:
    """A log-normal column with no drift, and the drifted Wasserstein column whose full-window
    statistic is nearest the threshold (from the first test run)."""
    still = next(s["name"] for s in specs if s["dist"] == "lognormal" and not s["drift"])
    drifted = [s["name"] for s in specs if s["drift"] and tested[s["name"]]["method"] == "wasserstein"]
    near = min(drifted, key=lambda c: abs(tested[c]["statistic"] - tested[c]["threshold"]), default=None)
    return [still] + ([near] if near else [])


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Verdict and method disagreements, and the largest statistic difference per method."""
    verdicts, methods, diff = [], [], {}
    for col, o in ours.items():
        e = theirs[col]
        if o["method"] != e["method"]:
            methods.append(col)
        if o["drifted"] != e["drifted"]:
            verdicts.append(col)
        key = o["method"]
        diff[key] = max(diff.get(key, 0.0), abs(o["statistic"] - e["statistic"]))
    return {"verdict_disagreements": verdicts, "method_disagreements": methods, "max_abs_diff": diff}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    for key, r in results["runs"].items():
        sk = [x["seconds"] for x in r["sketch"]]
        te = [x["seconds"] for x in r["test"]]
        te_only = [x["out"]["test_seconds"] for x in r["test"]]
        one: dict[str, Any] = {
            "label": r["label"],
            "sketch_seconds": statistics.median(sk),
            "sketch_runs": sk,
            "sketch_peak_rss_kb": max(x["peak_rss_kb"] for x in r["sketch"]),
            "sketch_json_bytes": r["sketch"][0]["out"]["json_bytes"],
            "test_seconds": statistics.median(te),
            "test_runs": te,
            "test_only_seconds": statistics.median(te_only),
            "test_peak_rss_kb": max(x["peak_rss_kb"] for x in r["test"]),
            "test_rss_after_imports_kb": r["test"][0]["rss_after_imports_kb"],
            "drifted_columns": sum(c["drifted"] for c in r["test"][0]["out"]["columns"].values()),
            "columns": len(r["test"][0]["out"]["columns"]),
            "methods": sorted({c["method"] for c in r["test"][0]["out"]["columns"].values()}),
        }
        if r.get("goal"):
            one["goal_met"] = one["test_seconds"] < GOAL_SECONDS and one["test_peak_rss_kb"] < GOAL_RSS_KB
        ev = r.get("evidently")
        if isinstance(ev, dict):
            one["evidently_seconds"] = ev["out"]["report_seconds"]
            one["evidently_peak_rss_kb"] = ev["peak_rss_kb"]
            one["evidently_rss_after_load_kb"] = ev["rss_after_imports_kb"]
            one.update(compare(r["test"][0]["out"]["columns"], ev["out"]["columns"]))
        else:
            one["evidently_skipped"] = ev
        s[key] = one
    return s


def report(results: dict[str, Any]) -> str:
    a, m, s = results["args"], results["machine"], results["summary"]
    L: list[str] = []
    w = L.append
    w("=" * 110)
    w(f"Drift monitoring benchmark (bench/monitoring.py{' --quick' if a['quick'] else ''}), {results['started']}")
    w(
        f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['platform']}; python {m['python']}, evidently "
        f"{m['evidently']}, numpy {m['numpy']}, pandas {m['pandas']}, pyarrow {m['pyarrow']}; load average at start "
        f"{' / '.join(f'{x:.2f}' for x in m['loadavg_start'])}, at end "
        f"{' / '.join(f'{x:.2f}' for x in results['loadavg_end'])} (shared machine)"
    )
    w(
        f"ours: median of {a['repeat']} run(s) each; Evidently: one run. Times exclude imports; peak RSS is the "
        "step's whole process (interpreter, imports and data included)."
    )
    w("")
    w(
        f"{'size (cur x ref x cols)':<24} {'sketch s':>9} {'sketch RSS':>11} {'test s':>7} {'(tests)':>8} "
        f"{'test RSS':>9} {'Evidently s':>12} {'Evid. RSS':>10} {'speed-up':>9} {'drifted':>8} {'disagree':>9}"
    )
    for r in s.values():
        if "evidently_seconds" in r:
            ev_s, ev_m = f"{r['evidently_seconds']:.1f}", mb(r["evidently_peak_rss_kb"])
            speed = f"{r['evidently_seconds'] / r['test_seconds']:.1f}x"
            dis = f"{len(r['verdict_disagreements'])}/{r['columns']}"
        else:
            ev_s, ev_m, speed, dis = "skipped", "-", "-", "-"
        w(
            f"{r['label']:<24} {r['sketch_seconds']:>9.1f} {mb(r['sketch_peak_rss_kb']):>11} "
            f"{r['test_seconds']:>7.1f} {r['test_only_seconds']:>8.1f} {mb(r['test_peak_rss_kb']):>9} {ev_s:>12} "
            f"{ev_m:>10} {speed:>9} {r['drifted_columns']:>4}/{r['columns']:<3} {dis:>9}"
        )
    w("")
    w("test s: the per-window step (each column read from Parquet and tested); (tests): the tests alone.")
    w("speed-up: Evidently's report time / ours per window. disagree: columns whose verdict differs from Evidently's.")
    for r in s.values():
        if "evidently_skipped" in r:
            w(f"  {r['label']}: Evidently {r['evidently_skipped']}")
        if "max_abs_diff" in r:
            diffs = ", ".join(f"{k} {v:.2e}" for k, v in sorted(r["max_abs_diff"].items()))
            w(
                f"  {r['label']}: largest |ours - Evidently| statistic per method: {diffs}; methods that differ: "
                f"{len(r['method_disagreements'])}; verdicts that differ: {r['verdict_disagreements'] or 'none'}"
            )
    w("")
    w("Goal (per window, 1M x 1M x 30: under 30 s and 2 GB peak)")
    for r in s.values():
        if "goal_met" in r:
            w(
                f"  {r['label']}: {r['test_seconds']:.1f} s, {mb(r['test_peak_rss_kb'])}: "
                f"{'met' if r['goal_met'] else 'NOT met'}"
            )
    sam = results.get("sampling")
    if sam:
        w("")
        w(
            f"Sampling the window ({sam['label']}): the Wasserstein statistic (normed) of {SAMPLES} random samples "
            "per size against the reference's sketch, threshold 0.1"
        )
        w(
            f"{'column':<18} {'full window':>11} {'sample':>8} {'min':>7} {'p5':>7} {'median':>7} {'p95':>7} {'max':>7} {'flagged':>8}"
        )
        for col, c in sam["out"].items():
            for n, q in c["samples"].items():
                w(
                    f"{col:<18} {c['full']:>11.4f} {int(n):>8,} {q['min']:>7.4f} {q['p5']:>7.4f} {q['median']:>7.4f} "
                    f"{q['p95']:>7.4f} {q['max']:>7.4f} {q['flagged']:>4}/{SAMPLES:<3}"
                )
    return "\n".join(L)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mlb-bench-monitoring-")).resolve()
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: v for k, v in vars(args).items() if k != "size_list"},
        "machine": machine_facts("evidently", "numpy", "pandas", "pyarrow", "scipy"),
        "runs": {},
    }
    log(f"work dir {work}")
    r = StepRunner(SCRIPT, work, {}, home)
    sampling_at = next((s for s in args.size_list if s[0] >= 1_000_000), max(args.size_list))
    with recorded(results, work, args):
        for size in args.size_list:
            cur, ref, ncol = size
            key, name = "x".join(map(str, size)), label(size)
            d = work / "data" / key
            log(f"{name}: set-up")
            prep = r.step("prepare", {"dir": str(d), "current": cur, "reference": ref, "columns": ncol})
            run: dict[str, Any] = {"label": name, "prepare": prep, "sketch": [], "test": []}
            run["goal"] = size == (1_000_000, 1_000_000, 30)
            for i in range(args.repeat):
                run["sketch"].append(r.step("sketch", {"dir": str(d)}))
                run["test"].append(r.step("test", {"dir": str(d)}))
                log(
                    f"  run {i + 1}: sketch {run['sketch'][-1]['seconds']:.1f} s "
                    f"({mb(run['sketch'][-1]['peak_rss_kb'])}), test {run['test'][-1]['seconds']:.1f} s "
                    f"({mb(run['test'][-1]['peak_rss_kb'])})"
                )
            cells = (cur + ref) * ncol
            if cells > args.evidently_max_cells:
                run["evidently"] = f"skipped: {cells:,} cells over --evidently-max-cells {args.evidently_max_cells:,}"
            else:
                log(f"  Evidently (limit {args.evidently_timeout:.0f} s)")
                try:
                    ev = run_with_timeout(r, "evidently", {"dir": str(d)}, args.evidently_timeout)
                except BenchError as e:
                    ev = None
                    run["evidently_error"] = str(e)[-2000:]
                run["evidently"] = ev or (
                    f"stopped after {args.evidently_timeout:.0f} s (--evidently-timeout)"
                    if "evidently_error" not in run
                    else "failed (see evidently_error in the JSON)"
                )
                if ev:
                    log(f"  Evidently {ev['out']['report_seconds']:.1f} s ({mb(ev['peak_rss_kb'])})")
            if size == sampling_at and "sampling" not in results:
                pick = sampling_columns(column_specs(ncol), run["test"][0]["out"]["columns"])
                log(f"  sampling: {', '.join(pick)}")
                sizes = [n for n in SAMPLE_SIZES if n < cur] or [cur // 10]
                res = r.step("sampling", {"dir": str(d), "columns": pick, "sizes": sizes})
                results["sampling"] = {"label": name, **res}
            results["runs"][key] = run
            if not args.keep and not args.workdir:
                import shutil

                shutil.rmtree(d, ignore_errors=True)
        results["summary"] = summarize(results)
    return finish(report(results), results, args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_step":
        child_main(*sys.argv[2:5])
    else:
        sys.exit(main(sys.argv[1:]))
