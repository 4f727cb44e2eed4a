"""The ``mlblueprints`` command line.

    mlblueprints generate fraud --rows 200000 --days 7          synthetic landing files
    mlblueprints lakehouse fraud_detection 2024-03-01 [...]     run the lakehouse DAG per day
    mlblueprints features run fraud_detection [--from D --to D] run <usecase>__features (dag.test)
    mlblueprints features get fraud_detection card_activity card_000001 --as-of watermark
    mlblueprints features training-set fraud_detection fraud_training
    mlblueprints features show fraud_detection                  offline and online store sizes
    mlblueprints training run fraud_detection [--interrupt SIGTERM --after 5]   <usecase>__training
    mlblueprints models lineage fraud_detection [--version N | --alias champion]
    mlblueprints models promote fraud_detection N               alias champion -> version N
    mlblueprints demo                                           all of it, on embedded defaults
    mlblueprints tables fraud_detection                         what the tables hold
    mlblueprints quarantine fraud_detection transactions        quarantined rows and reasons
    mlblueprints set-aside fraud_detection transactions/2024-03-01/part-001.csv   stop reading a rejected file
    mlblueprints check-config [FILE ...]                        validate use-case YAMLs
    eval "$(mlblueprints airflow-env)"                          use the airflow CLI/UI on the same DB

Everything is written under the runtime directory (``MLB_HOME``, default ``./.mlb``).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date, timedelta
from pathlib import Path

from mlblueprints import runtime

DEMO_USECASE = "fraud_detection"
DEMO_START = date(2024, 3, 1)


def _generate(args: argparse.Namespace) -> int:
    import dataclasses

    from mlblueprints.datagen import DefectConfig, DriftConfig, generate_fraud

    out = Path(args.out) if args.out else runtime.home() / "landing"
    defects = DefectConfig.none() if args.clean else DefectConfig()
    known = [f.name for f in dataclasses.fields(DefectConfig)]
    for name in args.no_defect or []:
        if name not in known:
            print(f"unknown defect {name!r}; known: {', '.join(known)}", file=sys.stderr)
            return 2
        defects = dataclasses.replace(defects, **{name: 0})
    drift = DriftConfig(start=date.fromisoformat(args.drift_from)) if args.drift_from else None
    t = time.perf_counter()
    manifest = generate_fraud(
        out,
        start=date.fromisoformat(args.start),
        days=args.days,
        rows=args.rows,
        seed=args.seed,
        defects=defects,
        drift=drift,
    )
    print(f"wrote {len(manifest.files)} files under {out} in {time.perf_counter() - t:.1f}s")
    print(f"manifest: {out / '_generator' / 'manifest.json'}")
    return 0


def _lakehouse(args: argparse.Namespace) -> int:
    from mlblueprints.airflow import localrun

    localrun.setup()
    dag = localrun.get_dag(f"{args.usecase}__lakehouse")
    status = 0
    for d in args.dates:
        landing = date.fromisoformat(d)
        t = time.perf_counter()
        dr = localrun.run_dag(dag, landing)
        bad = localrun.failed_tasks(dr)
        print(
            f"{dag.dag_id} landing date {landing}: {dr.state} in {time.perf_counter() - t:.0f}s"
            + (f" (failed: {', '.join(bad)})" if bad else "")
        )
        status = status or (0 if dr.state == "success" else 1)
    latest = runtime.home() / "runs" / args.usecase / "lakehouse" / "latest.txt"
    if latest.exists():
        print()
        print(latest.read_text())
    return status


def _load(usecase: str):
    from mlblueprints.config import load_usecase

    return load_usecase(runtime.usecases_dir() / f"{usecase}.yaml")


def _run_features(usecase: str, lo: date | None = None, hi: date | None = None, quiet: bool = False) -> int:
    """One run of ``<usecase>__features`` through dag.test for [lo, hi] (default: the range of the
    current Gold snapshot, i.e. what the last lakehouse run recomputed)."""
    from mlblueprints.airflow import localrun
    from mlblueprints.features.local import latest_gold_range

    uc = _load(usecase)
    if lo is None or hi is None:
        rng = latest_gold_range(uc, sorted({v.source for v in uc.features.values()}))
        if rng is None:
            print(f"{usecase}: no Gold table yet; run the lakehouse first", file=sys.stderr)
            return 1
        lo, hi = lo or rng[0], hi or rng[1]
    dag = localrun.get_dag(f"{usecase}__features")
    t = time.perf_counter()
    dr = dag.test(run_conf={"event_dates": [lo.isoformat(), hi.isoformat()]})
    bad = localrun.failed_tasks(dr)
    print(
        f"  {dag.dag_id} event dates {lo}..{hi}: {dr.state} in {time.perf_counter() - t:.0f}s"
        + (f" (failed: {', '.join(bad)})" if bad else ""),
        flush=True,
    )
    return 0 if dr.state == "success" else 1


def _features(args: argparse.Namespace) -> int:
    import json

    if args.action == "run":
        from mlblueprints.airflow import localrun

        localrun.setup()
        lo = date.fromisoformat(args.date_from) if args.date_from else None
        hi = date.fromisoformat(args.date_to) if args.date_to else lo
        status = _run_features(args.usecase, lo, hi)
        latest = runtime.home() / "runs" / args.usecase / "features" / "latest.txt"
        if latest.exists():
            print()
            print(latest.read_text())
        return status
    uc = _load(args.usecase)
    if args.action == "get":
        from mlblueprints.features.online import get_online_features

        if args.view not in uc.features:
            print(f"{uc.name}: no feature view {args.view!r} (views: {', '.join(uc.features)})", file=sys.stderr)
            return 2
        nkeys = len(uc.features[args.view].entity)
        keys = [tuple(k.split(",")) if nkeys > 1 else k for k in args.keys]
        as_of = args.as_of if args.as_of in (None, "watermark") else _parse_time(args.as_of)
        try:
            rows = get_online_features(uc, args.view, keys, as_of=as_of)
        except LookupError as exc:
            print(exc, file=sys.stderr)
            return 1
        for k, r in zip(args.keys, rows):
            print(json.dumps({"key": k, "features": r}, default=str))
        return 0 if all(r is not None for r in rows) else 3
    if args.action == "training-set":
        from mlblueprints.features.local import build_training_set
        from mlblueprints.lineage import RunInfo

        out = build_training_set(
            uc,
            args.name,
            RunInfo.for_usecase(uc, run_id=f"cli__{time.strftime('%Y%m%dT%H%M%S')}"),
            label_start=date.fromisoformat(args.start) if args.start else None,
            label_end=date.fromisoformat(args.end) if args.end else None,
        )
        print(json.dumps(out, indent=1, default=str))
        return 0
    from mlblueprints.features.inspect import features_text

    print(features_text(uc))
    return 0


def _run_training(usecase: str, conf: dict | None = None) -> int:
    from mlblueprints.airflow import localrun

    dag = localrun.get_dag(f"{usecase}__training")
    localrun.quiet_retry_waits()
    t = time.perf_counter()
    dr = dag.test(run_conf=conf or None)
    bad = localrun.failed_tasks(dr)
    print(
        f"  {dag.dag_id}: {dr.state} in {time.perf_counter() - t:.0f}s"
        + (f" (failed: {', '.join(bad)})" if bad else ""),
        flush=True,
    )
    return 0 if dr.state == "success" else 1


def _training(args: argparse.Namespace) -> int:
    from mlblueprints.airflow import localrun

    localrun.setup()
    conf = {}
    if args.interrupt:
        conf["interrupt"] = {"signal": args.interrupt, "after_seconds": args.after}
    if args.promote:
        conf["promote"] = True
    status = _run_training(args.usecase, conf)
    latest = runtime.home() / "runs" / args.usecase / "training" / "latest.txt"
    if latest.exists():
        print()
        print(latest.read_text())
    return status


def _models(args: argparse.Namespace) -> int:
    import json

    from mlblueprints.registry import local as registry

    uc = _load(args.usecase)
    if args.action == "promote":
        registry.promote(uc, args.version)
        print(f"{uc.model_name} version {args.version} is now the champion")
        return 0
    try:
        out = registry.lineage(uc, version=args.version, alias=None if args.version else args.alias)
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own exception types
        print(f"{uc.model_name}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=1, default=str))
    return 0


def _parse_time(text: str):
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _demo(args: argparse.Namespace) -> int:
    from mlblueprints.airflow import localrun
    from mlblueprints.datagen import generate_fraud

    home = runtime.home()
    print(f"runtime directory: {home}  (MLB_HOME; delete it to start over)")
    print("setting up Airflow (SQLite metadata DB) ...", flush=True)
    localrun.setup()
    landing = home / "landing"
    if not (landing / "_generator" / "manifest.json").exists():
        t = time.perf_counter()
        m = generate_fraud(landing, start=DEMO_START, days=args.days, rows=args.rows, seed=42)
        print(
            f"generated {m.expected.distinct_valid_transactions:,} transactions over {args.days} days "
            f"with injected defects in {time.perf_counter() - t:.1f}s -> {landing}"
        )
    else:
        print(f"reusing landing files in {landing}")
    dag = localrun.get_dag(f"{DEMO_USECASE}__lakehouse")
    status = 0
    total = time.perf_counter()
    for i in range(args.days):
        day = DEMO_START + timedelta(days=i)
        t = time.perf_counter()
        dr = localrun.run_dag(dag, day)
        bad = localrun.failed_tasks(dr)
        print(
            f"  {dag.dag_id} landing date {day}: {dr.state} in {time.perf_counter() - t:.0f}s"
            + (f" (failed: {', '.join(bad)})" if bad else ""),
            flush=True,
        )
        if dr.state != "success":
            status = 1
            continue
        # on a scheduler the Gold Asset event triggers <usecase>__features; dag.test has no
        # scheduler, so the demo runs it for the range the lakehouse run recomputed
        status = _run_features(DEMO_USECASE) or status
    print(f"{args.days} daily runs of the lakehouse and feature DAGs in {time.perf_counter() - total:.0f}s")
    if status == 0:
        # on a scheduler the feature Assets trigger <usecase>__training; the first try is
        # interrupted like a Spot reclaim (SIGTERM, two-minute notice) to show the resume
        print("training (the first try gets a simulated Spot interruption; the retry resumes) ...", flush=True)
        status = _run_training(DEMO_USECASE, {"interrupt": {"signal": "SIGTERM", "after_seconds": 4}})
    print()
    print("last lakehouse run:")
    print((home / "runs" / DEMO_USECASE / "lakehouse" / "latest.txt").read_text())
    print(_tables_text(DEMO_USECASE))
    print("last feature run:")
    print((home / "runs" / DEMO_USECASE / "features" / "latest.txt").read_text())
    training = home / "runs" / DEMO_USECASE / "training" / "latest.txt"
    if training.exists():
        print("training run:")
        print(training.read_text())
    print(f"run reports (JSON): {home / 'runs' / DEMO_USECASE}")
    print(
        f"inspect: .venv/bin/mlblueprints tables {DEMO_USECASE}; "
        f".venv/bin/mlblueprints quarantine {DEMO_USECASE} transactions; "
        f".venv/bin/mlblueprints features show {DEMO_USECASE}; "
        f".venv/bin/mlblueprints models lineage {DEMO_USECASE}"
    )
    return status


def _tables_text(usecase: str) -> str:
    from mlblueprints.config import load_usecase
    from mlblueprints.lakehouse import inspect

    uc = load_usecase(runtime.usecases_dir() / f"{usecase}.yaml")
    return inspect.tables_text(uc)


def _tables(args: argparse.Namespace) -> int:
    print(_tables_text(args.usecase))
    return 0


def _quarantine(args: argparse.Namespace) -> int:
    from mlblueprints.config import load_usecase
    from mlblueprints.lakehouse import inspect

    uc = load_usecase(runtime.usecases_dir() / f"{args.usecase}.yaml")
    print(inspect.quarantine_text(uc, args.dataset, limit=args.limit, reason=args.reason))
    return 0


def _set_aside(args: argparse.Namespace) -> int:
    """Rename a rejected landed file to _<name> (not read any more) and record it in the file
    manifest; its landing date's next run no longer fails on it."""
    from mlblueprints.lakehouse import local

    out = local.set_aside(_load(args.usecase), args.source_file, args.reason)
    print(f"{out['source_file']}: {out['reason']}")
    print(f"now rerun its landing date: mlblueprints lakehouse {args.usecase} {out['landing_date']}")
    return 0


def _airflow_env(args: argparse.Namespace) -> int:
    """Print shell exports that point the airflow CLI at the runtime's SQLite metadata DB."""
    import shlex

    for k, v in runtime.airflow_env().items():
        print(f"export {k}={shlex.quote(v)}")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    from mlblueprints.config import UseCaseError, load_usecase, load_usecases

    if args.files:
        errors = []
        ok = []
        for f in args.files:
            try:
                ok.append(load_usecase(f))
            except UseCaseError as exc:
                errors.append(exc)
    else:
        ok, errors = load_usecases(runtime.usecases_dir())
    for uc in ok:
        problems = _check_usecase(uc)
        errors += problems  # type: ignore[arg-type]
        if not problems:
            print(f"{uc.source_path}: ok")
    for e in errors:
        print(e, file=sys.stderr)
    return 1 if errors else 0


def _check_usecase(uc) -> list[str]:
    """Checks that need more than the YAML: the Gold SQL (one SELECT over its inputs), then
    feature views against the Gold SQL's columns."""
    from mlblueprints.features.core import check_against_gold_sql
    from mlblueprints.lakehouse.sqlgen import gold_sql_problems

    return gold_sql_problems(uc) or check_against_gold_sql(uc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="mlblueprints", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="write synthetic landing files")
    g.add_argument("kind", choices=["fraud"])
    g.add_argument("--out", help="landing root (default: <MLB_HOME>/landing)")
    g.add_argument("--start", default=DEMO_START.isoformat())
    g.add_argument("--days", type=int, default=7)
    g.add_argument("--rows", type=int, default=200_000, help="distinct valid transactions in total")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--clean", action="store_true", help="inject no defects")
    g.add_argument("--no-defect", action="append", metavar="NAME", help="switch one defect off (repeatable)")
    g.add_argument("--drift-from", metavar="DATE", help="shift distributions from this day on")
    g.set_defaults(fn=_generate)

    lh = sub.add_parser("lakehouse", help="run <usecase>__lakehouse for landing dates (dag.test)")
    lh.add_argument("usecase")
    lh.add_argument("dates", nargs="+", metavar="YYYY-MM-DD")
    lh.set_defaults(fn=_lakehouse)

    f = sub.add_parser("features", help="feature views: run, online lookups, training sets, store sizes")
    fs = f.add_subparsers(dest="action", required=True)
    fr = fs.add_parser("run", help="run <usecase>__features (default range: what the last Gold commit recomputed)")
    fr.add_argument("usecase")
    fr.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD")
    fr.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD")
    fr.set_defaults(fn=_features)
    fg = fs.add_parser("get", help="online feature values of entities (JSON lines; exit 3 if one is missing)")
    fg.add_argument("usecase")
    fg.add_argument("view")
    fg.add_argument("keys", nargs="+", metavar="KEY", help="entity key (a,b for composite keys)")
    fg.add_argument(
        "--as-of", help="ISO time the TTL is measured at (default now; 'watermark': newest event materialized)"
    )
    fg.set_defaults(fn=_features)
    ft = fs.add_parser("training-set", help="build a point-in-time training set (Iceberg table ts_<name>)")
    ft.add_argument("usecase")
    ft.add_argument("name")
    ft.add_argument("--start", metavar="YYYY-MM-DD", help="first label event date (inclusive)")
    ft.add_argument("--end", metavar="YYYY-MM-DD", help="label events before this date")
    ft.set_defaults(fn=_features)
    fsh = fs.add_parser("show", help="offline and online store sizes per view")
    fsh.add_argument("usecase")
    fsh.set_defaults(fn=_features)

    tr = sub.add_parser("training", help="run <usecase>__training (dag.test)")
    trs = tr.add_subparsers(dest="action", required=True)
    trr = trs.add_parser("run", help="train, evaluate, gate, register")
    trr.add_argument("usecase")
    trr.add_argument("--interrupt", choices=["SIGTERM", "SIGKILL"], help="simulate a Spot interruption of try 1")
    trr.add_argument("--after", type=float, default=5.0, help="seconds into training (with --interrupt)")
    trr.add_argument("--promote", action="store_true", help="make a registered candidate the champion")
    trr.set_defaults(fn=_training)

    m = sub.add_parser("models", help="registered models: lineage, promotion")
    ms = m.add_subparsers(dest="action", required=True)
    ml = ms.add_parser("lineage", help="a model version's full lineage (JSON)")
    ml.add_argument("usecase")
    ml.add_argument("--version", type=int)
    ml.add_argument("--alias", default="challenger", help="when no --version (default challenger)")
    ml.set_defaults(fn=_models)
    mp = ms.add_parser("promote", help="make a version the champion (use cases with no endpoint)")
    mp.add_argument("usecase")
    mp.add_argument("version", type=int)
    mp.set_defaults(fn=_models)

    d = sub.add_parser("demo", help="generate data, run the lakehouse and feature DAGs for each day, then training")
    d.add_argument("--rows", type=int, default=200_000)
    d.add_argument("--days", type=int, default=7)
    d.set_defaults(fn=_demo)

    t = sub.add_parser("tables", help="row counts, files and snapshots of a use case's tables")
    t.add_argument("usecase")
    t.set_defaults(fn=_tables)

    q = sub.add_parser("quarantine", help="quarantined rows of a data set")
    q.add_argument("usecase")
    q.add_argument("dataset")
    q.add_argument("--reason", help="only this reason code")
    q.add_argument("--limit", type=int, default=20)
    q.set_defaults(fn=_quarantine)

    sa = sub.add_parser(
        "set-aside",
        help="stop reading a rejected landed file: rename it to _<name> and record it (then rerun its date)",
    )
    sa.add_argument("usecase")
    sa.add_argument("source_file", metavar="FILE", help="as named in the run: <data set folder>/<YYYY-MM-DD>/<file>")
    sa.add_argument("--reason", help="why (recorded in the file manifest)")
    sa.set_defaults(fn=_set_aside)

    a = sub.add_parser("airflow-env", help="shell exports for the airflow CLI/UI on the runtime's DB")
    a.set_defaults(fn=_airflow_env)

    c = sub.add_parser("check-config", help="validate use-case YAML files")
    c.add_argument("files", nargs="*")
    c.set_defaults(fn=_check_config)

    args = p.parse_args(argv)
    from mlblueprints.airflow.localrun import RunConflict
    from mlblueprints.errors import PermanentError

    try:
        return args.fn(args)
    except (PermanentError, RunConflict) as exc:  # a bad input or a busy DAG: its one line, no traceback
        print(f"mlblueprints {args.cmd}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
