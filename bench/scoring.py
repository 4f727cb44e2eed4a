"""Benchmark of batch scoring: the scoring step against the floor of XGBoost's in-place predict,
its peak memory at two interval sizes, and the Batch Transform cost that throughput implies.

Usage::

    .venv/bin/python bench/scoring.py [--rows 10000000] [--days 10] [--rounds 300] [--json PATH]
                                      [--txt PATH] [--workdir DIR] [--keep] [--quick]

Set-up (one subprocess): a Gold table ``transaction_features`` (Iceberg, partitioned by event
date) of ``--rows`` rows over ``--days`` event dates, each row with a key, an event time and the
fraud model's features (``training.features`` of dags/usecases/fraud_detection.yaml: counts as
bigint, amounts and seconds as double, the hour as int, about 1 % nulls); an XGBoost model with
the use case's hyperparameters and ``--rounds`` rounds, trained on 200,000 rows of the same
generator, registered in the runtime's MLflow registry (the lineage the scoring step checks) and
made champion. The use case scores the rows' own columns (``scoring.rows.features: []``): the
point-in-time join of the shipped use case is the training-set builder's, measured by
bench/features.py.

Measured, each in a fresh subprocess (``bench/harness.py``: peak RSS from ``wait4``):

* ``score``: ``mlblueprints.scoring.local.score`` for one event date (``rows / days`` rows) and
  for every date (``--rows``): DuckDB reads the pinned Gold snapshot in record batches of
  ``scoring.batch_size``, each batch is predicted with ``inplace_predict`` and written as staged
  Parquet. ``local.plan`` runs first in the same process (outside the step's clock, inside its
  peak RSS); nothing is committed. Throughput = rows / the step's seconds.
* ``floor``: the same rows, read by the same SQL into one float32 numpy array before the clock
  starts, then one ``inplace_predict`` over the whole array with the same booster and threads.
  Throughput = rows / the predict's seconds. Both means of the scores must agree (the same rows
  were predicted).

The cost estimate multiplies the measured scoring-step throughput per vCPU by the configured
instance's vCPUs and its price per hour from ``scoring.sagemaker.prices`` (plus the minutes a
job spends starting), :func:`mlblueprints.scoring.core.transform_cost_estimate`. It is an
estimate: the container's CSV parsing and HTTP round trips are not in the figure measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
sys.path.insert(0, str(PROJECT / "include"))

import fraudmodel  # noqa: E402
from harness import (  # noqa: E402
    StepRunner,
    duckdb_settings,
    finish,
    log,
    machine_facts,
    mb,
    recorded,
    run_child_step,
)

GOLD = "transaction_features"
START = date(2024, 3, 1)
FLOOR_SHARE = 0.70  # the goal: the step at >= 70 % of the floor's throughput
RSS_GOAL_KB = 1.5 * 1024 * 1024
HEADLINE_USD = 28.0  # the batch-inference pattern's headline for 10M records


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows of the Gold table (the large interval)")
    ap.add_argument("--days", type=int, default=10, help="event dates they span (the small interval is one)")
    ap.add_argument("--rounds", type=int, default=300, help="boosting rounds of the model (the use case's: 300)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 200k rows over 2 days, 50 rounds")
    ap.add_argument("--json", help="also write the results as JSON to this path")
    ap.add_argument("--txt", help="also write the printed report to this path")
    ap.add_argument("--workdir", help="where to put data and steps (default: a new temp dir, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.days, args.rounds = 200_000, 2, 50
    if args.days < 1 or args.rows < args.days:
        ap.error("--rows must be at least --days, and --days at least 1")
    return args


# ====================================================================== child side


def _usecase(work: Path) -> Any:
    from mlblueprints.config import load_usecase

    return load_usecase(work / "usecases" / "fraud_detection.yaml")


def write_usecase(work: Path) -> Path:
    """The shipped fraud use case, scoring the Gold rows' own columns."""
    import yaml

    data = yaml.safe_load((PROJECT / "dags/usecases/fraud_detection.yaml").read_text())
    sql_dir = PROJECT / "dags/usecases/sql/fraud_detection"
    for g in data["gold"].values():
        if isinstance(g.get("sql"), str) and not Path(g["sql"]).is_absolute():
            g["sql"] = str(sql_dir / Path(g["sql"]).name)
    from mlblueprints.config import parse_usecase

    features = parse_usecase(data).model_features()
    data["scoring"]["rows"] = {"features": [], "columns": features}
    data["scoring"]["schedule"] = "gold"  # no feature view to wait for
    path = work / "usecases" / "fraud_detection.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _step_prepare(home: Path, p: dict[str, Any]) -> dict[str, Any]:
    """The Gold table, the model, its registration (see the module docstring)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlblueprints.lakehouse import iceberg, naming

    work = Path(p["work"])
    write_usecase(work)
    uc = _usecase(work)
    feats = uc.model_features()
    types = fraudmodel.feature_types(feats)
    arrow = {"bigint": pa.int64(), "int": pa.int32(), "double": pa.float64()}
    schema = pa.schema(
        [("transaction_id", pa.string()), ("event_time", pa.timestamp("us")), ("event_date", pa.date32())]
        + [(f, arrow[t]) for f, t in types.items()]
    )
    table = iceberg.ensure_table(iceberg.catalog(), naming.identifier(uc, GOLD), schema, "event_date", {})
    location = iceberg.new_write_dir(table)
    rng = np.random.default_rng(11)
    rows, days = int(p["rows"]), int(p["days"])
    per_day = [rows // days + (1 if i < rows % days else 0) for i in range(days)]
    chunk = 500_000
    for i, n_day in enumerate(per_day):
        d = START + timedelta(days=i)
        path = location / f"event_date={d.isoformat()}" / "part-0.parquet"
        path.parent.mkdir(parents=True)
        with pq.ParquetWriter(path, schema, compression="zstd") as w:
            for a in range(0, n_day, chunk):
                n = min(chunk, n_day - a)
                cols = fraudmodel.columns(rng, n, types)
                seconds = np.sort(rng.integers(0, 86_400_000_000, n))
                batch: dict[str, Any] = {
                    "transaction_id": pa.array([f"t{i:03d}-{a + j:09d}" for j in range(n)], pa.string()),
                    "event_time": pa.array(
                        np.datetime64(d.isoformat(), "us") + seconds.astype("timedelta64[us]"), pa.timestamp("us")
                    ),
                    "event_date": pa.array(np.full(n, np.datetime64(d.isoformat(), "D")), pa.date32()),
                }
                for f, t in types.items():
                    v = cols[f]
                    mask = np.isnan(v)
                    batch[f] = pa.array(np.where(mask, 0, v).astype(arrow[t].to_pandas_dtype()), arrow[t], mask=mask)
                w.write_table(pa.table(batch, schema=schema))
    committed = iceberg.commit_files(table, location, replace=None, snapshot_properties={"mlb.bench": "gold"})

    # the model: the use case's hyperparameters, trained on rows of the same generator
    trained = fraudmodel.train(uc, rng, int(p["rounds"]))
    train_seconds, threshold = trained["train_seconds"], trained["threshold"]
    out = {"version": fraudmodel.register(uc, trained, int(p["rounds"]), work / "evaluation", champion=True)}
    return {
        "rows": rows,
        "days": days,
        "per_day": per_day,
        "features": types,
        "gold_files": committed["files_written"],
        "gold_bytes": committed["bytes_written"],
        "model_version": out["version"],
        "rounds": int(p["rounds"]),
        "train_seconds": round(train_seconds, 1),
        "threshold": threshold,
    }


def _planned(work: Path, lo: str, hi: str, run_id: str) -> tuple[Any, dict[str, Any], Any]:
    from mlblueprints.backends import backend_for
    from mlblueprints.lineage import RunInfo
    from mlblueprints.scoring import core, local

    uc = _usecase(work)
    model = core.model_from_registry(uc, backend_for(uc, "registry").lineage(alias="champion"), "champion")
    run = RunInfo.for_usecase(uc, run_id=run_id)
    return uc, local.plan(uc, date.fromisoformat(lo), date.fromisoformat(hi), model, run), run


def _step_score(home: Path, p: dict[str, Any]) -> Any:
    from mlblueprints.scoring import local

    uc, planned, run = _planned(Path(p["work"]), p["lo"], p["hi"], p["run_id"])

    def step() -> dict[str, Any]:
        out = local.score(uc, planned, run)
        return {"planned_rows": planned["rows_in"], "plan_seconds": planned["seconds"], **out}

    return step


def _step_floor(home: Path, p: dict[str, Any]) -> Any:
    import numpy as np

    from mlblueprints.core.duck import connect
    from mlblueprints.scoring import local

    uc, planned, _ = _planned(Path(p["work"]), p["lo"], p["hi"], "floor")
    m = planned["model"]
    booster = local.load_model(uc, m).raw
    booster.set_param({"nthread": max(1, os.cpu_count() or 1)})
    con = connect()
    sql = local.scoring_sql(uc, con, planned)
    feats = [f'"{f}"' for f in m["features"]]
    arrays = con.sql(f"SELECT {', '.join(feats)} FROM ({sql}) AS s").fetchnumpy()
    con.close()
    x = np.empty((len(arrays[m["features"][0]]), len(feats)), dtype=np.float32)
    for j, f in enumerate(m["features"]):
        col = arrays.pop(f)
        x[:, j] = col.filled(np.nan) if np.ma.isMaskedArray(col) else col
    del arrays

    def step() -> dict[str, Any]:
        t = time.perf_counter()
        scores = booster.inplace_predict(x)
        seconds = time.perf_counter() - t
        return {
            "rows": int(len(x)),
            "predict_seconds": round(seconds, 3),
            "mean": float(np.mean(scores, dtype=np.float64)),
            "array_bytes": int(x.nbytes),
        }

    return step


STEPS = {"prepare": _step_prepare, "score": _step_score, "floor": _step_floor}


def child_main(name: str, params_path: str, result_path: str) -> None:
    params = json.loads(Path(params_path).read_text())
    home = Path(os.environ["MLB_HOME"])
    t = time.perf_counter()
    import duckdb  # noqa: F401  (imports are paid before the clock of the step starts)
    import pyiceberg.table  # noqa: F401
    import xgboost  # noqa: F401

    from mlblueprints.scoring import local  # noqa: F401

    if name == "prepare":
        run_child_step(name, result_path, lambda: _step_prepare(home, params), time.perf_counter() - t)
        return
    step = STEPS[name](home, params)  # plan / load before the clock; inside the process's peak RSS
    run_child_step(name, result_path, step, time.perf_counter() - t)


# ====================================================================== parent side


def summarize(results: dict[str, Any], uc: Any) -> dict[str, Any]:
    from mlblueprints.scoring.core import transform_cost_estimate

    s: dict[str, Any] = {"sizes": {}}
    for size, r in results["runs"].items():
        sc, fl = r["score"], r["floor"]
        step_rps = sc["out"]["rows"] / sc["seconds"]
        floor_rps = fl["out"]["rows"] / fl["out"]["predict_seconds"]
        mean_score = sc["out"]["histogram"]["mean"]
        s["sizes"][size] = {
            "rows": sc["out"]["rows"],
            "step_seconds": sc["seconds"],
            "step_rows_per_second": round(step_rps),
            "step_predict_seconds": sc["out"]["predict_seconds"],
            "floor_seconds": fl["out"]["predict_seconds"],
            "floor_rows_per_second": round(floor_rps),
            "ratio": round(step_rps / floor_rps, 4),
            "goal_met": step_rps / floor_rps >= FLOOR_SHARE,
            "score_peak_rss_kb": sc["peak_rss_kb"],
            "floor_peak_rss_kb": fl["peak_rss_kb"],
            "rss_goal_met": sc["peak_rss_kb"] < RSS_GOAL_KB,
            "same_rows": fl["out"]["rows"] == sc["out"]["rows"] and abs(fl["out"]["mean"] - mean_score) < 1e-6,
            "batches": sc["out"]["batches"],
            "files": sc["out"]["files"],
        }
    big = s["sizes"]["large"]
    sm = uc.scoring.sagemaker
    price = sm.prices.get(sm.instance_type)
    threads = os.cpu_count() or 1
    per_vcpu = big["step_rows_per_second"] / threads
    s["cost"] = {
        "instance_type": sm.instance_type,
        "instance_count": sm.instance_count,
        "threads_measured": threads,
        "rows_per_second_per_vcpu": round(per_vcpu),
    }
    if price is None:
        s["cost"]["missing"] = f"no price for {sm.instance_type} in scoring.sagemaker.prices"
    else:
        s["cost"].update(
            usd_per_hour=price.usd_per_hour,
            vcpus=price.vcpus,
            **transform_cost_estimate(10_000_000, per_vcpu, price.usd_per_hour, price.vcpus, sm.instance_count),
        )
    return s


def report(results: dict[str, Any]) -> str:
    a, m, s, d = results["args"], results["machine"], results["summary"], results["data"]
    L: list[str] = []
    w = L.append
    w("=" * 110)
    w(f"Batch scoring benchmark (bench/scoring.py{' --quick' if a['quick'] else ''}), {results['started']}")
    w(
        f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['platform']}; python {m['python']}, xgboost "
        f"{m['xgboost']}, duckdb {m['duckdb']}, pyarrow {m['pyarrow']}; load average at start "
        f"{' / '.join(f'{x:.2f}' for x in m['loadavg_start'])}, at end "
        f"{' / '.join(f'{x:.2f}' for x in results['loadavg_end'])} (shared machine)"
    )
    w(
        f"data: Gold {d['rows']:,} rows over {d['days']} event dates x {len(d['features'])} features of the fraud "
        f"model ({d['gold_files']} Parquet files, {d['gold_bytes'] / 1e6:.0f} MB); model: {d['rounds']} rounds, "
        f"max_depth 6 (trained in {d['train_seconds']:.0f} s); batch_size {results['batch_size']:,}, DuckDB "
        f"{results['duckdb']['threads']} threads, scoring.memory_mb {results['memory_mb']}"
    )
    w("")
    w(
        f"{'interval':<10} {'rows':>12} {'step s':>8} {'step rows/s':>12} {'floor s':>8} {'floor rows/s':>13} "
        f"{'step/floor':>10} {'peak RSS step':>14} {'peak RSS floor':>15}"
    )
    for size, label in (("small", "1 day"), ("large", f"{d['days']} days")):
        r = s["sizes"].get(size)
        if r is None:
            continue
        w(
            f"{label:<10} {r['rows']:>12,} {r['step_seconds']:>8.1f} {r['step_rows_per_second']:>12,} "
            f"{r['floor_seconds']:>8.1f} {r['floor_rows_per_second']:>13,} {r['ratio']:>9.1%} "
            f"{mb(r['score_peak_rss_kb']):>14} {mb(r['floor_peak_rss_kb']):>15}"
        )
    w("")
    w("Goals")
    for r in s["sizes"].values():
        w(
            f"  {r['rows']:,} rows: step at {r['ratio']:.1%} of the floor (goal >= {FLOOR_SHARE:.0%}): "
            f"{'met' if r['goal_met'] else 'NOT met'}; peak RSS {mb(r['score_peak_rss_kb'])} (goal < 1,536 MB): "
            f"{'met' if r['rss_goal_met'] else 'NOT met'}; predict inside the step {r['step_predict_seconds']:.1f} s of "
            f"{r['step_seconds']:.1f} s; same rows and scores as the floor: {'yes' if r['same_rows'] else 'NO'}"
        )
    c = s["cost"]
    w("")
    if "missing" in c:
        w(f"Cost estimate: {c['missing']}")
    else:
        w(
            f"Cost estimate (an estimate, not a measurement): 10,000,000 rows on {c['instance_count']} x "
            f"{c['instance_type']} ({c['vcpus']} vCPUs, ${c['usd_per_hour']}/h from scoring.sagemaker.prices) at the "
            f"step's {c['rows_per_second_per_vcpu']:,} rows/s per vCPU measured here ({c['threads_measured']} threads): "
            f"{c['compute_seconds']:.0f} s of compute + {c['startup_minutes']:g} min start-up = "
            f"{c['billed_instance_hours']:.3f} instance-hours = ${c['usd']:.2f} (the pattern's headline: "
            f"${HEADLINE_USD:.0f}); the container's CSV parsing and HTTP round trips are not in this figure"
        )
    return "\n".join(L)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mlb-bench-scoring-")).resolve()
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {"MLB_GIT_COMMIT": os.environ.get("MLB_GIT_COMMIT", "bench")}
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": vars(args),
        "machine": machine_facts("xgboost", "duckdb", "pyarrow", "pyiceberg"),
        "duckdb": duckdb_settings(),
        "runs": {},
    }
    log(f"work dir {work}")
    r = StepRunner(SCRIPT, work, env, home)
    with recorded(results, work, args):
        log(f"set-up: Gold {args.rows:,} rows over {args.days} days, a {args.rounds}-round model")
        prep = r.step("prepare", {"work": str(work), "rows": args.rows, "days": args.days, "rounds": args.rounds})
        results["data"] = {**prep["out"], "seconds": prep["seconds"]}
        uc = _usecase(work)
        results["batch_size"], results["memory_mb"] = uc.scoring.batch_size, uc.scoring.memory_mb
        last = (START + timedelta(days=args.days - 1)).isoformat()
        for size, hi in (("small", START.isoformat()), ("large", last)):
            one = {}
            for kind in ("floor", "score"):
                log(f"{kind}: {START.isoformat()}..{hi}")
                res = r.step(kind, {"work": str(work), "lo": START.isoformat(), "hi": hi, "run_id": f"bench-{size}"})
                one[kind] = res
                rows = res["out"]["rows"]
                secs = res["out"]["predict_seconds"] if kind == "floor" else res["seconds"]
                log(f"  {rows:,} rows in {secs:.1f} s, peak RSS {mb(res['peak_rss_kb'])}")
            results["runs"][size] = one
        results["summary"] = summarize(results, uc)
    return finish(report(results), results, args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_step":
        child_main(*sys.argv[2:5])
    else:
        sys.exit(main(sys.argv[1:]))
