"""Benchmark of resumable training: an uninterrupted run vs one interrupted at 50 % and resumed.

Usage::

    .venv/bin/python bench/training.py [--rows 500000] [--features 20] [--rounds 1000] [--interval 10]
                                       [--repeats 3] [--json PATH] [--txt PATH] [--quick]

A synthetic binary-classification data set (``--rows`` x ``--features``, float32 with 1 % nulls,
a non-linear target with about 20 % positives) is written once as 8 Parquet files. Every run is
``mlblueprints.training.local.run_training_job``: ``train.py`` in a fresh subprocess under the
SageMaker script-mode contract, with the fraud use case's hyperparameters (max_depth 6, eta 0.1,
subsample 0.8, colsample_bytree 0.8, min_child_weight 1, nthread 2, seed 42). Per repetition,
interleaved so that machine load hits every kind alike:

* ``uninterrupted, interval I``: checkpoints every I seconds (``--interval``, default 10);
* ``uninterrupted, interval 300``: the shipped default (no checkpoint falls inside a run this
  short, so this is also the run without checkpoints);
* ``SIGKILL at 50 %``: interval I, killed (SIGKILL) once the script reports round N/2, then rerun
  with the same checkpoint directory; the cost is the wall time of both processes;
* ``SIGTERM at 50 %``: the same with SIGTERM (the Spot notice: the script checkpoints at once
  and exits 143).

Wall times are the runner's (process start to exit: interpreter, imports, data load, training,
outputs). CPU seconds are the child processes' user + system time (``RUSAGE_CHILDREN``), less
sensitive than wall time to the load of a shared machine. Checkpoint overhead is the script's own
measure: seconds spent writing checkpoints (model serialization, fsync, rename, pruning) over the
boosting loop's seconds (``training_metrics.json``). Every final model must be byte-identical.

Results print as fixed-width tables on stdout (progress goes to stderr); ``--json`` and ``--txt``
write them to files too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "include"))

from harness import log, machine_facts  # noqa: E402
from mlblueprints.training.local import TrainingInterrupted, run_training_job  # noqa: E402

LONG_INTERVAL = 300.0
KINDS = ("uninterrupted", "uninterrupted_long", "sigkill", "sigterm")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1000, help="num_boost_round (default 1000)")
    ap.add_argument("--interval", type=float, default=10.0, help="checkpoint interval I in seconds (default 10)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 20k rows, 60 rounds, interval 0.5 s, 1 repeat")
    ap.add_argument("--json", help="also write the results as JSON to this path")
    ap.add_argument("--txt", help="also write the printed report to this path")
    ap.add_argument("--workdir", help="where to put data and jobs (default: a new temp dir, removed at the end)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.rounds, args.interval, args.repeats = 20_000, 60, 0.5, 1
    return args


def write_data(directory: Path, rows: int, n_features: int, seed: int = 42) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, n_features)).astype(np.float32)
    z = (
        x[:, 0]
        + 0.8 * x[:, 1] * x[:, 2]
        + np.sin(2 * x[:, 3])
        - 0.6 * np.abs(x[:, 4])
        + 0.3 * x[:, 5:10].sum(axis=1)
        + rng.normal(size=rows)
    )
    y = (z > np.quantile(z, 0.8)).astype(np.int8)
    x[rng.random(size=x.shape) < 0.01] = np.nan
    names = [f"f{j:03d}" for j in range(n_features)]
    cols: dict[str, Any] = {"record_id": np.arange(rows)}
    cols.update({n: pa.array(x[:, j], mask=np.isnan(x[:, j])) for j, n in enumerate(names)})
    cols["label"] = y
    table = pa.table(cols)
    directory.mkdir(parents=True, exist_ok=True)
    perm = rng.permutation(rows)
    for k in range(8):
        pq.write_table(table.take(pa.array(perm[k::8])), directory / f"part-{k}.parquet")
    return {
        "rows": rows,
        "features": names,
        "positives": int(y.sum()),
        "files": 8,
        "bytes": sum(f.stat().st_size for f in directory.iterdir()),
    }


def hyperparameters(features: list[str], rounds: int, interval: float) -> dict[str, Any]:
    return {
        "features": features,
        "label": "label",
        "num_boost_round": rounds,
        "seed": 42,
        "max_depth": 6,
        "eta": 0.1,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "min_child_weight": 1,
        "nthread": 2,
        "checkpoint_interval_seconds": interval,
    }


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _proc(result: dict[str, Any], cpu: float, load: tuple[float, ...]) -> dict[str, Any]:
    m = result.get("metrics") or {}
    return {
        "exit_code": result["exit_code"],
        "wall_seconds": result["seconds"],
        "cpu_seconds": round(cpu, 2),
        "last_round": result.get("last_round"),
        "loadavg_1m_start": load[0],
        **{
            k: m.get(k)
            for k in (
                "load_seconds",
                "resume_seconds",
                "training_seconds",
                "first_round_seconds",
                "rounds_trained_in_this_process",
                "resumed_from_round",
                "checkpoint_count",
                "checkpoint_seconds",
                "checkpoint_share",
                "train_logloss",
            )
        },
    }


def run_one(kind: str, work: Path, data: Path, hps: dict[str, Any], rounds: int) -> dict[str, Any]:
    """One scenario in fresh directories: the processes it took, their totals, the model's sha256."""
    job = work / "jobs" / f"{kind}-{time.monotonic_ns()}"
    procs: list[dict[str, Any]] = []
    interrupt = None
    if kind in ("sigkill", "sigterm"):
        interrupt = {"signal": kind.upper(), "after_rounds": rounds // 2}
    load, cpu0 = os.getloadavg(), _children_cpu()
    try:
        result = run_training_job(job, data, hps, interrupt=interrupt, timeout=3600)
        if interrupt:
            raise RuntimeError(f"{kind}: the run finished before the signal")
    except TrainingInterrupted as exc:
        procs.append(_proc(exc.result, _children_cpu() - cpu0, load))
        load, cpu0 = os.getloadavg(), _children_cpu()
        result = run_training_job(job, data, hps, timeout=3600)
    procs.append(_proc(result, _children_cpu() - cpu0, load))
    model = (Path(result["model_dir"]) / "xgboost-model").read_bytes()
    out = {
        "kind": kind,
        "processes": procs,
        "wall_seconds": round(sum(p["wall_seconds"] for p in procs), 3),
        "cpu_seconds": round(sum(p["cpu_seconds"] for p in procs), 2),
        "training_seconds": round(sum(p["training_seconds"] or 0 for p in procs), 3),
        "checkpoint_seconds": round(sum(p["checkpoint_seconds"] or 0 for p in procs), 4),
        "checkpoint_count": sum(p["checkpoint_count"] or 0 for p in procs),
        "model_sha256": hashlib.sha256(model).hexdigest(),
        "model_bytes": len(model),
        "train_logloss": procs[-1]["train_logloss"],
    }
    if len(procs) == 2:
        first, second = procs
        out["stopped_after_round"] = first["last_round"]
        out["resumed_from_round"] = second["resumed_from_round"]
        out["rounds_redone"] = (first["last_round"] or 0) - (second["resumed_from_round"] or 0)
    shutil.rmtree(job, ignore_errors=True)
    return out


def med(values: list[float]) -> float:
    return statistics.median(values)


def summarize(results: dict[str, Any], interval: float) -> dict[str, Any]:
    runs = results["runs"]
    by = {k: [r for r in runs if r["kind"] == k] for k in KINDS}
    base = med([r["wall_seconds"] for r in by["uninterrupted"]])
    base_cpu = med([r["cpu_seconds"] for r in by["uninterrupted"]])
    s: dict[str, Any] = {"baseline_wall_seconds": base, "baseline_cpu_seconds": base_cpu, "kinds": {}}
    for kind in KINDS:
        rs = by[kind]
        if not rs:
            continue
        wall, cpu = med([r["wall_seconds"] for r in rs]), med([r["cpu_seconds"] for r in rs])
        shares = [r["checkpoint_seconds"] / r["training_seconds"] for r in rs if r["training_seconds"]]
        per_write = [r["checkpoint_seconds"] / r["checkpoint_count"] for r in rs if r["checkpoint_count"]]
        s["kinds"][kind] = {
            "runs": len(rs),
            "wall_seconds": [r["wall_seconds"] for r in rs],
            "wall_median": wall,
            "cpu_median": cpu,
            "vs_baseline": round(wall / base, 4),
            "extra_seconds": round(wall - base, 2),
            "cpu_vs_baseline": round(cpu / base_cpu, 4),
            "checkpoint_share_median": med(shares) if shares else 0.0,
            "checkpoints_median": med([r["checkpoint_count"] for r in rs]),
            "seconds_per_checkpoint_median": med(per_write) if per_write else None,
            "rounds_redone": [r.get("rounds_redone") for r in rs],
        }
    for kind in ("sigkill", "sigterm"):
        parts = []
        for r in by[kind]:
            first, second = r["processes"]
            per_round = second["training_seconds"] / max(1, second["rounds_trained_in_this_process"] or 1)
            startup = second["wall_seconds"] - second["training_seconds"]
            first_round = (second["first_round_seconds"] or 0.0) - per_round
            redone = max(0, r.get("rounds_redone") or 0) * per_round
            parts.append(
                {
                    "startup_seconds": startup,
                    "first_round_extra_seconds": first_round,
                    "redone_seconds": redone,
                    "modelled_extra_seconds": startup + first_round + redone,
                    "seconds_per_round": per_round,
                }
            )
        if parts:
            s["kinds"][kind]["extra_parts"] = parts
            s["kinds"][kind]["extra_parts_median"] = {k: med([p[k] for p in parts]) for k in parts[0]}
    limit = base * 1.10 + interval
    s["resume_limit_seconds"] = round(limit, 2)
    for kind in ("sigkill", "sigterm"):
        if kind in s["kinds"]:
            s["kinds"][kind]["target_met"] = s["kinds"][kind]["wall_median"] <= limit
    writes = [r["checkpoint_seconds"] / r["checkpoint_count"] for r in by["uninterrupted"] if r["checkpoint_count"]]
    train = med([r["training_seconds"] for r in by["uninterrupted"]])
    per_write = med(writes) if writes else None
    s["overhead"] = {
        "interval": {
            "interval_seconds": interval,
            "measured_share": s["kinds"]["uninterrupted"]["checkpoint_share_median"],
            "target_met": s["kinds"]["uninterrupted"]["checkpoint_share_median"] < 0.05,
        },
        "long": {
            "interval_seconds": LONG_INTERVAL,
            "measured_share": s["kinds"].get("uninterrupted_long", {}).get("checkpoint_share_median", 0.0),
            # a run of T seconds writes floor(T / 300) checkpoints; per 300 s of training, one write
            "projected_share": round(per_write / LONG_INTERVAL, 6) if per_write else None,
            "target_met": (per_write or 0) / LONG_INTERVAL < 0.05,
        },
        "seconds_per_write_median": per_write,
        "training_seconds_median": train,
    }
    shas = {r["model_sha256"] for r in runs}
    s["models_identical"] = len(shas) == 1
    return s


def report(results: dict[str, Any]) -> str:
    a, m, s, d = results["args"], results["machine"], results["summary"], results["data"]
    interval = a["interval"]
    L: list[str] = []
    w = L.append
    w("=" * 110)
    w(f"Resumable training benchmark (bench/training.py{' --quick' if a['quick'] else ''}), {results['started']}")
    w(
        f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['platform']}; python {m['python']}, xgboost "
        f"{m['xgboost']}, numpy {m['numpy']}, pyarrow {m['pyarrow']}; load average at start "
        f"{' / '.join(f'{x:.2f}' for x in m['loadavg_start'])}, at end "
        f"{' / '.join(f'{x:.2f}' for x in results['loadavg_end'])} (shared machine)"
    )
    w(
        f"data: {d['rows']:,} rows x {len(d['features'])} features (float32, 1 % nulls), {d['positives']:,} positives, "
        f"{d['files']} Parquet files, {d['bytes'] / 1e6:.1f} MB"
    )
    hp = results["hyperparameters"]
    w(
        "hyperparameters: "
        + ", ".join(f"{k}={v}" for k, v in hp.items() if k not in ("features", "checkpoint_interval_seconds"))
    )
    w(
        f"checkpoint interval I = {interval:g} s; interrupted runs get the signal when the script reports round "
        f"{a['rounds'] // 2}/{a['rounds']}; {a['repeats']} repetition(s), medians"
    )
    w("")
    w(
        f"{'scenario':<34} {'wall (each run)':<26} {'median':>8} {'vs base':>8} {'CPU s':>7} "
        f"{'ckpts':>6} {'ckpt share':>10} {'rounds redone':>14}"
    )
    labels = {
        "uninterrupted": f"uninterrupted, interval {interval:g} s",
        "uninterrupted_long": f"uninterrupted, interval {LONG_INTERVAL:g} s",
        "sigkill": "SIGKILL at 50 %, resumed",
        "sigterm": "SIGTERM at 50 %, resumed",
    }
    for kind in KINDS:
        k = s["kinds"].get(kind)
        if not k:
            continue
        each = ", ".join(f"{x:.1f}" for x in k["wall_seconds"])
        redone = ", ".join(str(x) for x in k["rounds_redone"]) if kind in ("sigkill", "sigterm") else "-"
        w(
            f"{labels[kind]:<34} {each:<26} {k['wall_median']:>7.1f}s {k['vs_baseline']:>7.3f}x "
            f"{k['cpu_median']:>7.1f} {k['checkpoints_median']:>6g} {100 * k['checkpoint_share_median']:>9.2f}% "
            f"{redone:>14}"
        )
    w("")
    w("Where a resumed run's extra time goes (second process, medians): start-up = its wall time outside the")
    w("boosting loop (interpreter, imports, Parquet load, canonical sort, checkpoint lookup, outputs); first round =")
    w("its first round minus an average one (the loaded trees are predicted over the data once); redone = rounds")
    w("trained again since the last checkpoint x seconds per round. Modelled extra = their sum, free of load drift.")
    w(
        f"{'scenario':<34} {'start-up':>9} {'first round':>12} {'redone':>9} {'modelled extra':>15} {'measured extra':>15}"
    )
    for kind in ("sigkill", "sigterm"):
        k = s["kinds"].get(kind)
        if not k or "extra_parts_median" not in k:
            continue
        e = k["extra_parts_median"]
        w(
            f"{labels[kind]:<34} {e['startup_seconds']:>8.1f}s {e['first_round_extra_seconds']:>11.2f}s "
            f"{e['redone_seconds']:>8.1f}s {e['modelled_extra_seconds']:>14.1f}s {k['extra_seconds']:>+14.1f}s"
        )
    w("")
    w("Targets")
    lim = s["resume_limit_seconds"]
    for kind in ("sigkill", "sigterm"):
        k = s["kinds"].get(kind)
        if k:
            w(
                f"  {labels[kind]}: {k['wall_median']:.1f} s total for both processes vs limit {lim:.1f} s "
                f"(uninterrupted {s['baseline_wall_seconds']:.1f} s x 1.10 + I): "
                f"{'met' if k['target_met'] else 'NOT met'} ({k['extra_seconds']:+.1f} s, CPU x{k['cpu_vs_baseline']:.3f}); "
                f"modelled: {s['baseline_wall_seconds'] + k['extra_parts_median']['modelled_extra_seconds']:.1f} s, "
                f"{'met' if s['baseline_wall_seconds'] + k['extra_parts_median']['modelled_extra_seconds'] <= lim else 'NOT met'}"
            )
    o = s["overhead"]
    pw = o["seconds_per_write_median"]
    w(
        f"  checkpoint writes at I = {interval:g} s: {100 * o['interval']['measured_share']:.2f} % of training time "
        f"(target < 5 %): {'met' if o['interval']['target_met'] else 'NOT met'}; "
        f"{pw * 1000 if pw else float('nan'):.0f} ms per write (model at the end {results['runs'][0]['model_bytes'] / 1e6:.1f} MB)"
    )
    w(
        f"  checkpoint writes at {LONG_INTERVAL:g} s: measured {100 * o['long']['measured_share']:.2f} % (no write "
        f"falls inside a {o['training_seconds_median']:.0f} s run); projected one write per {LONG_INTERVAL:g} s = "
        f"{100 * (o['long']['projected_share'] or 0):.3f} % (target < 5 %): {'met' if o['long']['target_met'] else 'NOT met'}"
    )
    w(f"  every final model byte-identical ({len(results['runs'])} runs): {'yes' if s['models_identical'] else 'NO'}")
    return "\n".join(L)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mlb-bench-training-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": vars(args),
        "machine": machine_facts("xgboost", "numpy", "pyarrow"),
        "runs": [],
    }
    t = time.perf_counter()
    try:
        log(f"work dir {work}; writing {args.rows:,} x {args.features} rows")
        data = work / "data"
        results["data"] = write_data(data, args.rows, args.features)
        hps = hyperparameters(results["data"]["features"], args.rounds, args.interval)
        results["hyperparameters"] = {k: v for k, v in hps.items() if k != "features"}
        plan = {
            "uninterrupted": hps,
            "uninterrupted_long": {**hps, "checkpoint_interval_seconds": LONG_INTERVAL},
            "sigkill": hps,
            "sigterm": hps,
        }
        for rep in range(args.repeats):
            for kind in KINDS:
                log(f"repetition {rep + 1}/{args.repeats}: {kind}")
                r = run_one(kind, work, data, plan[kind], args.rounds)
                log(
                    f"  {r['wall_seconds']:.1f} s wall, {r['cpu_seconds']:.1f} s CPU, {r['checkpoint_count']} checkpoints "
                    f"({r['checkpoint_seconds']:.2f} s), redone {r.get('rounds_redone', '-')}, "
                    f"load {os.getloadavg()[0]:.2f}"
                )
                results["runs"].append(r)
        results["summary"] = summarize(results, args.interval)
    finally:
        results["loadavg_end"] = os.getloadavg()
        results["elapsed_seconds"] = round(time.perf_counter() - t, 1)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    text = report(results)
    print(text)
    print(f"total benchmark time {results['elapsed_seconds']:.0f} s")
    if args.txt:
        Path(args.txt).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
