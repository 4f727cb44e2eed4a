"""The ``mlblueprints`` command line.

    mlblueprints generate fraud --rows 200000 --days 7          synthetic landing files
    mlblueprints lakehouse fraud_detection 2024-03-01 [...]     run the lakehouse DAG per day
    mlblueprints lakehouse fraud_detection --from D1 --to D2    backfill: one run per landing date
    mlblueprints features run fraud_detection [--from D --to D] run <usecase>__features (dag.test)
    mlblueprints features get fraud_detection card_activity card_000001 --as-of watermark
    mlblueprints features training-set fraud_detection fraud_training
    mlblueprints features show fraud_detection                  offline and online store sizes
    mlblueprints training run fraud_detection [--interrupt SIGTERM --after 5]   <usecase>__training
                                                                (interrupt after 5 boosting rounds)
    mlblueprints models lineage fraud_detection [--version N | --alias champion]
    mlblueprints models promote fraud_detection N               alias champion -> version N
    mlblueprints scoring run fraud_detection [--dates D ...] [--version N]   <usecase>__scoring
    mlblueprints predictions fraud_detection [--entity KEY]     newest predictions with their lineage
    mlblueprints serve fraud_detection [--background|--stop|--status]   the local inference endpoint
    mlblueprints promotion run fraud_detection [--version N]   <usecase>__promotion: canary, guardrails
    mlblueprints deployments fraud_detection                    deployment history and DORA metrics
    mlblueprints explain fraud_detection [--version N]          <usecase>__explainability: SHAP, bias, fairness gate
    mlblueprints explain record fraud_detection tx_000000000042 [--version N]   why that record got its score
    mlblueprints demo                                           all of it, on embedded defaults
    mlblueprints tables fraud_detection                         what the tables hold
    mlblueprints quarantine fraud_detection transactions        quarantined rows and reasons
    mlblueprints check-config [FILE ...]                        validate use-case YAMLs and their suites
    mlblueprints suites init fraud_detection [--force]          starter quality suites from the schema
    mlblueprints set-aside fraud_detection transactions/2024-03-01/part-001.csv   stop reading a rejected file
    eval "$(mlblueprints airflow-env)"                          use the airflow CLI/UI on the same DB
    mlblueprints up [--port 8080] / mlblueprints down           the Airflow UI on the runtime's DB, and stop it
    mlblueprints deploy mwaa-bundle [--out dist/mwaa]           the MWAA bundle (dags/, plugins.zip, requirements, startup)
    mlblueprints deploy mwaa --bucket B [--env NAME]            upload it; update the environment's object versions
    mlblueprints deploy astro [--out astro]                     assemble the Astro project (`astro dev start` there)
    mlblueprints statemachines render|deploy|run ...            Step Functions (docs/stepfunctions.md)
    mlblueprints infra render fraud_detection                   CloudFormation parameters (docs/deployment.md)

Everything is written under the runtime directory (``MLB_HOME``, default ``./.mlb``).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from mlblueprints import backends, runtime
from mlblueprints.errors import PermanentError

DEMO_USECASE = "fraud_detection"
DEMO_START = date(2024, 3, 1)
DEMO_INTERRUPT_ROUND = 100  # the demo's simulated Spot notice comes after this many boosting rounds
DEMO_SCORE_DAYS = 2  # the demo scores the last days it generated
DEMO_ROWS = 200_000
LOOP_DAYS = 7  # the loop demo: six calm days, then one whose amounts double
LOOP_ROWS_PER_DAY = 20_000
CLAIMS_USECASE = "claim_cost"  # the regression example (`mlblueprints demo --usecase claim_cost`)
CLAIMS_START = date(2024, 4, 1)


def _generate(args: argparse.Namespace) -> int:
    import dataclasses

    from mlblueprints.datagen import BiasConfig, DefectConfig, DriftConfig, generate_fraud

    out = Path(args.out) if args.out else runtime.home() / "landing"
    if args.kind == "claims":
        from mlblueprints.datagen.claims import generate_claims

        t = time.perf_counter()
        start = date.fromisoformat(args.start) if args.start else CLAIMS_START
        m = generate_claims(
            out, start=start, days=args.days, policies=args.policies, claims_per_day=args.claims_per_day, seed=args.seed
        )
        print(f"wrote {len(m.files)} files ({m.claims:,} claims of {m.policies:,} policies) under {out}")
        print(f"in {time.perf_counter() - t:.1f}s; manifest: {out / '_generator' / 'claims_manifest.json'}")
        return 0
    defects = DefectConfig.none() if args.clean else DefectConfig()
    known = [f.name for f in dataclasses.fields(DefectConfig)]
    for name in args.no_defect or []:
        if name not in known:
            print(f"unknown defect {name!r}; known: {', '.join(known)}", file=sys.stderr)
            return 2
        defects = dataclasses.replace(defects, **{name: 0})
    drift = DriftConfig(start=date.fromisoformat(args.drift_from)) if args.drift_from else None
    bias = None
    if args.bias:
        column, _, groups = args.bias.partition("=")
        try:
            bias = BiasConfig(column=column, groups=tuple(g for g in groups.split(",") if g), factor=args.bias_factor)
        except ValueError as e:
            print(f"--bias {args.bias}: {e}", file=sys.stderr)
            return 2
    t = time.perf_counter()
    manifest = generate_fraud(
        out,
        start=date.fromisoformat(args.start) if args.start else DEMO_START,
        days=args.days,
        rows=args.rows,
        seed=args.seed,
        defects=defects,
        drift=drift,
        bias=bias,
    )
    print(f"wrote {len(manifest.files)} files under {out} in {time.perf_counter() - t:.1f}s")
    print(f"manifest: {out / '_generator' / 'manifest.json'}")
    return 0


def _landing_dates(args: argparse.Namespace) -> list[date]:
    """The landing dates of a ``lakehouse`` command: the dates given, or every day of
    ``--from``..``--to`` (inclusive)."""
    if args.dates and (args.date_from or args.date_to):
        raise SystemExit("give landing dates or --from/--to, not both")
    if args.dates:
        return [date.fromisoformat(d) for d in args.dates]
    if not args.date_from:
        raise SystemExit("give one or more landing dates (YYYY-MM-DD), or --from D1 --to D2")
    lo = date.fromisoformat(args.date_from)
    hi = date.fromisoformat(args.date_to) if args.date_to else lo
    if hi < lo:
        raise SystemExit(f"--to {hi} is before --from {lo}")
    return [lo + timedelta(days=i) for i in range((hi - lo).days + 1)]


def _run_results(dr) -> dict:
    """The result of every step of a finished DAG run (None for a step that failed); a service
    step's result is its ``finish`` task's."""
    return {ti.task_id.removesuffix(".finish"): ti.xcom_pull(task_ids=ti.task_id) for ti in dr.get_task_instances()}


def _lakehouse_row(uc, landing: date, dr, seconds: float) -> dict:
    """One line of the backfill summary: what the run did, summed over data sets and Gold tables."""
    from mlblueprints.airflow import localrun

    res = _run_results(dr)

    def total(prefix: str, key: str) -> int | None:
        vals = [(res.get(f"{prefix}__{t}") or {}).get(key) for t in (uc.gold if prefix == "gold" else uc.datasets)]
        vals = [v for v in vals if isinstance(v, int)]
        return sum(vals) if vals else None

    ranges = [(res.get(f"gold__{g}") or {}).get("recomputed") for g in uc.gold]
    ranges = [r for r in ranges if r]
    return {
        "date": landing.isoformat(),
        "state": str(dr.state),
        "seconds": seconds,
        "landed": total("ingest", "rows_landed"),
        "silver": total("silver", "rows_into_silver"),
        "quarantined": total("silver", "quarantined"),
        "duplicates": total("silver", "duplicates"),
        "gold": total("gold", "rows_written"),
        "gold_range": f"{min(r[0] for r in ranges)}..{max(r[1] for r in ranges)}" if ranges else "-",
        "failed": localrun.failed_tasks(dr),
    }


def _n(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def _summary_table(rows: list[dict]) -> str:
    """The backfill summary: one line per landing date and a total."""
    head = (
        "landing date",
        "state",
        "seconds",
        "landed",
        "silver",
        "quarantined",
        "duplicates",
        "gold rows",
        "gold event dates",
        "failed tasks",
    )
    keys = ("landed", "silver", "quarantined", "duplicates", "gold")
    table = [head]
    for r in rows:
        table.append(
            (
                r["date"],
                r["state"],
                f"{r['seconds']:.0f}",
                *(_n(r[k]) for k in keys),
                r["gold_range"],
                ", ".join(r["failed"]) or "-",
            )
        )
    sums = {k: sum(r[k] for r in rows if r[k] is not None) for k in keys}
    ok = sum(r["state"] == "success" for r in rows)
    table.append(
        (
            "total",
            f"{ok}/{len(rows)} ok",
            f"{sum(r['seconds'] for r in rows):.0f}",
            *(_n(sums[k]) for k in keys),
            "",
            "",
        )
    )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    numeric = {2, 3, 4, 5, 6, 7}
    return "\n".join(
        "  ".join(v.rjust(w) if i in numeric else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))).rstrip()
        for row in table
    )


def _lakehouse(args: argparse.Namespace) -> int:
    from mlblueprints.airflow import localrun

    uc = _load(args.usecase)  # a broken YAML: its problems, once, before Airflow parses anything
    dates = _landing_dates(args)
    localrun.setup()
    try:
        dag = localrun.get_dag(f"{uc.name}__lakehouse")
    except KeyError as exc:
        print(exc.args[0] if exc.args else exc, file=sys.stderr)
        return 2
    rows = []
    for i, landing in enumerate(dates, 1):
        t = time.perf_counter()
        dr = localrun.run_dag(dag, landing)
        row = _lakehouse_row(uc, landing, dr, time.perf_counter() - t)
        rows.append(row)
        prefix = f"[{i}/{len(dates)}] " if len(dates) > 1 else ""
        print(
            f"{prefix}{dag.dag_id} landing date {landing}: {row['state']} in {row['seconds']:.0f}s, "
            f"{_n(row['landed'])} rows landed, {_n(row['silver'])} into Silver, {_n(row['quarantined'])} quarantined, "
            f"{_n(row['duplicates'])} duplicates" + (f" (failed: {', '.join(row['failed'])})" if row["failed"] else ""),
            flush=True,
        )
        if row["state"] != "success" and args.stop_on_failure:
            print(f"stopping: {landing} failed (--stop-on-failure); {len(dates) - i} landing date(s) not run")
            break
    runs = runtime.home() / "runs" / uc.name / "lakehouse"
    print()
    if len(dates) == 1 and (runs / "latest.txt").exists():
        print((runs / "latest.txt").read_text())
    else:
        print(_summary_table(rows))
        print(f"\nthe full report of each run: {runs}/<run id>.json (the last one: {runs / 'latest.txt'})")
    if uc.features and any(r["state"] == "success" for r in rows):
        from mlblueprints.features.pending import pending_range

        rng = pending_range(uc)
        if rng:
            print(
                f"feature views: Gold event dates {rng[0]}..{rng[1]} are not materialized yet; "
                f"run: mlblueprints features run {uc.name}"
            )
    return 0 if all(r["state"] == "success" for r in rows) and len(rows) == len(dates) else 1


def _load(usecase: str):
    from mlblueprints.config import load_usecase

    return load_usecase(runtime.usecases_dir() / f"{usecase}.yaml")


def _run_features(usecase: str, lo: date | None = None, hi: date | None = None, report: bool = False) -> int:
    """One run of ``<usecase>__features`` through dag.test for [lo, hi] (default: every event date
    Gold recomputed since the views last read it - after a backfill, all of it)."""
    from mlblueprints.airflow import localrun
    from mlblueprints.backends import backend_for
    from mlblueprints.features.pending import pending_range

    uc = _load(usecase)
    if lo is None or hi is None:
        if backend_for(uc, "lakehouse").latest_gold_range(sorted({v.source for v in uc.features.values()})) is None:
            print(f"{usecase}: no Gold table yet; run the lakehouse first", file=sys.stderr)
            return 1
        rng = pending_range(uc)
        if rng is None:
            print(
                f"  {usecase}: the feature views are up to date with Gold (nothing recomputed since they last "
                "read it); --from/--to materializes a range again",
                flush=True,
            )
            return 0
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
    latest = runtime.home() / "runs" / usecase / "features" / "latest.txt"
    if report and latest.exists():
        print()
        print(latest.read_text())
    return 0 if dr.state == "success" else 1


def _features(args: argparse.Namespace) -> int:
    import json

    if args.action == "run":
        from mlblueprints.airflow import localrun

        _load(args.usecase)  # a broken YAML: its problems, once, before Airflow parses anything
        localrun.setup()
        lo = date.fromisoformat(args.date_from) if args.date_from else None
        hi = date.fromisoformat(args.date_to) if args.date_to else lo
        return _run_features(args.usecase, lo, hi, report=True)
    uc = _load(args.usecase)
    if args.action == "get":
        from mlblueprints.backends import backend_for

        if args.view not in uc.features:
            print(f"{uc.name}: no feature view {args.view!r} (views: {', '.join(uc.features)})", file=sys.stderr)
            return 2
        nkeys = len(uc.features[args.view].entity)
        keys = [tuple(k.split(",")) if nkeys > 1 else k for k in args.keys]
        as_of = args.as_of if args.as_of in (None, "watermark") else _parse_time(args.as_of)
        try:
            rows = backend_for(uc, "features", view=args.view).get_online_features(args.view, keys, as_of=as_of)
        except LookupError as exc:
            print(exc, file=sys.stderr)
            return 1
        for k, r in zip(args.keys, rows):
            print(json.dumps({"key": k, "features": r}, default=str))
        return 0 if all(r is not None for r in rows) else 3
    if args.action == "training-set":
        from mlblueprints.features.local import build_training_set
        from mlblueprints.lineage import RunInfo

        out = build_training_set(  # the local store; a use case on aws builds its sets in the training DAG
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
    return _run_pattern(usecase, "training", conf)


def _run_pattern(usecase: str, pattern: str, conf: dict | None = None) -> int:
    """One run of ``<usecase>__<pattern>`` through dag.test, said in one line; 1 unless it succeeded."""
    from mlblueprints.airflow import localrun

    dag = localrun.get_dag(f"{usecase}__{pattern}")
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

    _load(args.usecase)  # a broken YAML: its problems, once, before Airflow parses anything
    localrun.setup()
    conf = {}
    if args.interrupt:
        # rounds by default: seconds would count data loading, which on a slow machine can take
        # longer than the whole budget, and the interruption would come before any checkpoint
        if args.after_seconds is not None:
            conf["interrupt"] = {"signal": args.interrupt, "after_seconds": args.after_seconds}
        else:
            conf["interrupt"] = {"signal": args.interrupt, "after_rounds": args.after}
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

    from mlblueprints.backends import backend_for

    uc = _load(args.usecase)
    registry = backend_for(uc, "registry")
    if args.action == "promote":
        from mlblueprints.registry.local import PromotionRefused

        try:
            registry.promote(args.version)
        except PromotionRefused as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"{uc.model_name} version {args.version} is now the champion")
        return 0
    try:
        out = registry.lineage(version=args.version, alias=None if args.version else args.alias)
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own exception types
        print(f"{uc.model_name}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=1, default=str))
    return 0


def _run_scoring(usecase: str, dates: list[date], version: int | None = None) -> int:
    """One run of ``<usecase>__scoring`` through dag.test for the event dates [min, max]."""
    from mlblueprints.airflow import localrun

    dag = localrun.get_dag(f"{usecase}__scoring")
    localrun.quiet_retry_waits()
    conf: dict = {"event_dates": [d.isoformat() for d in dates]}
    if version:
        conf["version"] = version
    t = time.perf_counter()
    dr = dag.test(run_conf=conf)
    bad = localrun.failed_tasks(dr)
    print(
        f"  {dag.dag_id} event dates {min(dates)}..{max(dates)}: {dr.state} in {time.perf_counter() - t:.0f}s"
        + (f" (failed: {', '.join(bad)})" if bad else ""),
        flush=True,
    )
    return 0 if dr.state == "success" else 1


def _scoring_dates(uc, given: list[str] | None) -> list[date]:
    """The dates given, else the event dates Gold last recomputed for the rows' table."""
    from mlblueprints.backends import backend_for

    if given:
        return sorted({date.fromisoformat(d) for d in given})
    rng = backend_for(uc, "lakehouse").latest_gold_range([uc.scoring_rows()["source"]])
    if rng is None:
        raise SystemExit(f"{uc.name}: give the event dates to score: --dates YYYY-MM-DD [...]")
    return [rng[0], rng[1]]


def _scoring(args: argparse.Namespace) -> int:
    from mlblueprints.airflow import localrun

    uc = _load(args.usecase)  # a broken YAML: its problems, once, before Airflow parses anything
    if uc.scoring is None:
        print(f"{uc.name}: the use case has no scoring section (see docs/scoring.md)", file=sys.stderr)
        return 2
    dates = _scoring_dates(uc, args.dates)
    localrun.setup()
    status = _run_scoring(args.usecase, dates, args.version)
    latest = runtime.home() / "runs" / args.usecase / "scoring" / "latest.txt"
    if latest.exists():
        print()
        print(latest.read_text())
    return status


def _explain(args: argparse.Namespace) -> int:
    """``explain <usecase>``: one run of ``<usecase>__explainability`` (dag.test) and its report;
    ``explain record <usecase> <key>``: why one holdout record got its score."""
    words = args.words
    if words[0] == "record":
        if len(words) != 3:
            print("usage: mlblueprints explain record <usecase> <key> [--version N]", file=sys.stderr)
            return 2
        return _explain_record(words[1], words[2], args.version)
    if len(words) != 1:
        print("usage: mlblueprints explain <usecase> [--version N]", file=sys.stderr)
        return 2
    from mlblueprints.airflow import localrun

    usecase = words[0]
    uc = _load(usecase)  # a broken YAML: its problems, once, before Airflow parses anything
    if uc.explainability is None:
        print(f"{uc.name}: the use case has no explainability section (see docs/explainability.md)", file=sys.stderr)
        return 2
    localrun.setup()
    dag = localrun.get_dag(f"{usecase}__explainability")
    localrun.quiet_retry_waits()
    t = time.perf_counter()
    dr = dag.test(run_conf={"version": args.version} if args.version else None)
    bad = localrun.failed_tasks(dr)
    print(
        f"  {dag.dag_id}: {dr.state} in {time.perf_counter() - t:.0f}s"
        + (f" (failed: {', '.join(bad)})" if bad else ""),
        flush=True,
    )
    latest = runtime.home() / "runs" / usecase / "explainability" / "latest.txt"
    if latest.exists():
        print()
        print(latest.read_text())
    return 0 if dr.state == "success" else 1


def _explain_record(usecase: str, key: str, version: int | None) -> int:
    import os
    import tempfile

    # MLflow draws a progress bar on stderr for every download: the answer is the lines below
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    from mlblueprints.backends import backend_for
    from mlblueprints.explain import record

    uc = _load(usecase)
    registry = backend_for(uc, "registry")
    with tempfile.TemporaryDirectory(dir=runtime.path("tmp")) as work:
        try:
            r = record.explain_record(uc, registry, key, Path(work), version)
        except PermanentError as exc:
            print(exc, file=sys.stderr)
            return 1
    print(record.render(r))
    return 0


def _monitoring(args: argparse.Namespace) -> int:
    """``monitoring run <usecase> --dates ...``: one run of ``<usecase>__monitoring`` (dag.test);
    ``monitoring show <usecase>``: the drift history per column and the last decision."""
    uc = _load(args.usecase)
    if uc.monitoring is None:
        print(f"{uc.name}: the use case has no monitoring section (see docs/monitoring.md)", file=sys.stderr)
        return 2
    if args.action == "run":
        dates = _scoring_dates(uc, args.dates)
        conf: dict[str, Any] = {"event_dates": [d.isoformat() for d in dates]}
        if args.version:
            conf["version"] = args.version
        return _run_and_report(args.usecase, "monitoring", conf)
    return _monitoring_show(uc, args.windows)


def _run_and_report(usecase: str, pattern: str, conf: dict[str, Any] | None) -> int:
    """One run of ``<usecase>__<pattern>`` through dag.test; its report printed; 1 if a task failed."""
    from mlblueprints.airflow import localrun

    localrun.setup()
    dag = localrun.get_dag(f"{usecase}__{pattern}")
    localrun.quiet_retry_waits()
    dr = dag.test(run_conf=conf)
    bad = localrun.failed_tasks(dr)
    latest = runtime.home() / "runs" / usecase / pattern / "latest.txt"
    if latest.exists():
        print(latest.read_text())
    if bad:
        print(f"{usecase}__{pattern}: failed task(s) {bad}", file=sys.stderr)
    return 1 if bad else 0


def _serve(args: argparse.Namespace) -> int:
    """``serve <usecase>``: the endpoint in the foreground until Ctrl-C; ``--background`` starts
    it detached (``--stop``, ``--status``)."""
    from mlblueprints.serving import server

    uc = _load(args.usecase)
    if uc.promotion is None:
        print(f"{uc.name}: the use case has no promotion section (docs/serving.md)", file=sys.stderr)
        return 2
    if backends.target_of(uc, "endpoint") == backends.AWS and not (args.stop or args.status):
        from mlblueprints.aws import serving as sv

        name = sv.endpoint_name(uc)
        print(
            f"{uc.name}: on the aws target the endpoint is SageMaker's {name} (promotion.sagemaker.endpoint_name), "
            f"created by the promotion pattern's first version; `serve` runs the local endpoint only. Call it with: "
            f"aws sagemaker-runtime invoke-endpoint --endpoint-name {name} --content-type text/csv --body <row> out.json",
            file=sys.stderr,
        )
        return 2
    if args.stop:
        print(f"{uc.name}: endpoint stopped" if server.stop(uc) else f"{uc.name}: no endpoint was running")
        return 0
    if args.status:
        info = server.status(uc)
        if info is None:
            print(f"{uc.name}: no endpoint is running (mlblueprints serve {uc.name} --background)")
            return 3
        print(
            f"{uc.name}: endpoint pid {info['pid']} at {info['url']} ({'healthy' if info['health'] else 'not healthy'})"
        )
        return 0 if info["health"] else 1
    base = server.url(uc, args.port)
    if args.background:
        try:
            info = server.start(uc, runtime.usecases_dir() / f"{args.usecase}.yaml", args.port)
        except server.EndpointError as exc:
            print(str(exc), file=sys.stderr)
            return 1
        print(f"{uc.name}: endpoint pid {info['pid']} at {info['url']} (log {info['log']})")
        print(f"  try: curl -s {info['url']}/  (what a request carries)")
        print(f"  stop: mlblueprints serve {uc.name} --stop")
        return 0
    print(f"{uc.name}: serving at {base} (POST /invocations, GET /ping, /metrics, /); Ctrl-C stops", flush=True)
    server.serve(uc, args.port)
    return 0


def _promotion(args: argparse.Namespace) -> int:
    """``promotion run <usecase>``: one run of ``<usecase>__promotion`` (dag.test) and its report."""
    uc = _load(args.usecase)
    if uc.promotion is None:
        print(f"{uc.name}: the use case has no promotion section (see docs/serving.md)", file=sys.stderr)
        return 2
    return _run_and_report(args.usecase, "promotion", {"version": args.version} if args.version else None)


def _deployments(args: argparse.Namespace) -> int:
    """``deployments <usecase>``: every deployment of the promotion pattern (version, commit,
    times, outcome, reason) and the DORA metrics computed from them."""
    from datetime import UTC, datetime

    from mlblueprints.backends import backend_for
    from mlblueprints.core.reporting import Table
    from mlblueprints.serving.dora import dora, duration

    uc = _load(args.usecase)
    rows = backend_for(uc, "endpoint").deployments().deployments()
    if not rows:
        print(f"{uc.name}: no deployments yet (the {uc.name}__promotion DAG records them)", file=sys.stderr)
        return 3
    t = Table(("#", "version", "replaces", "commit", "started", "took", "outcome", "reason"), right=(0, 1, 2, 5))
    for d in rows:
        took = None
        if d["finished_at"]:
            took = (datetime.fromisoformat(d["finished_at"]) - datetime.fromisoformat(d["started_at"])).total_seconds()
        t.add(
            d["id"],
            d["version"],
            "-" if d["previous_version"] is None else d["previous_version"],
            (d["git_commit"] or "-")[:12],
            d["started_at"][:19].replace("T", " "),
            duration(took),
            d["outcome"],
            (d["reason"] or "")[:90],
        )
    print(t.render())
    m = dora(rows, datetime.now(UTC), args.days)
    rate = m["change_failure_rate"]
    print(
        f"\nDORA metrics over the last {args.days} days ({m['deployments']} deployments):\n"
        f"  deployment frequency   {m['deployment_frequency_per_week']:.2f} per week "
        f"({m['deployment_frequency_per_day']:.2f} per day)\n"
        f"  lead time for changes  median {duration(m['lead_time_seconds_median'])}, slowest "
        f"{duration(m['lead_time_seconds_max'])} (commit -> production"
        + (f"; {m['lead_time_unknown']} without a known commit time" if m["lead_time_unknown"] else "")
        + ")\n"
        f"  change failure rate    {'-' if rate is None else f'{100 * rate:.0f} %'} (canaries rolled back)\n"
        f"  time to restore        median {duration(m['time_to_restore_seconds_median'])}, slowest "
        f"{duration(m['time_to_restore_seconds_max'])} (canary start -> rollback done)"
    )
    return 0


def _monitoring_show(uc: Any, windows: int) -> int:
    from mlblueprints.backends import backend_for
    from mlblueprints.core.reporting import Table

    monitor = backend_for(uc, "monitor")
    table = monitor.metrics(last=windows)
    history = monitor.history()
    if table.empty and not history:
        print(f"{uc.name}: no monitoring runs yet (mlblueprints monitoring run {uc.name} --dates ...)", file=sys.stderr)
        return 3
    drift = table[table["signal"].isin(["column_drift", "prediction_drift"])]
    ends = sorted({str(e)[:10] for e in drift["window_end"]})
    out = Table(("column", "test", *ends), right=tuple(range(2, 2 + len(ends))))
    for col in sorted(set(drift["column"]), key=lambda c: (c == "score", c)):
        rows = drift[drift["column"] == col]
        cells = []
        for e in ends:
            r = rows[rows["window_end"].astype(str).str[:10] == e]
            if r.empty or r.iloc[0]["statistic"] is None or r.iloc[0]["statistic"] != r.iloc[0]["statistic"]:
                cells.append("-")
            else:
                x = r.iloc[0]
                cells.append(f"{x['statistic']:.3f}{'*' if x['drifted'] else ''}")
        out.add(col, str(rows.iloc[0]["metric"]), *cells)
    print(f"{uc.name}: drift statistic per column and window end (* drifted at its threshold)")
    print(out.render())
    if history:
        last = history[-1]
        state = "ALERT" if last["fired"] else ("no alert" if last["decided"] else "not decided")
        print()
        print(
            f"last decision ({last['window_start']}..{last['window_end']}, {uc.model_name} v{last['model_version']}, "
            f"{last['rows']:,} rows): {state} - {last['reason']}"
        )
    for line in monitor.where():
        print(line)
    return 0


def _predictions(args: argparse.Namespace) -> int:
    import json

    from mlblueprints.backends import backend_for

    uc = _load(args.usecase)
    if uc.scoring is None:
        print(f"{uc.name}: the use case has no scoring section (see docs/scoring.md)", file=sys.stderr)
        return 2
    entity = args.entity.split(",") if args.entity else None
    rows = backend_for(uc, "scorer").predictions(entity, args.limit)
    if not rows:
        print(f"{uc.name}: no predictions" + (f" for {args.entity}" if entity else ""), file=sys.stderr)
        return 3
    for r in rows:
        snaps = r.get("input_snapshots")
        r["input_snapshots"] = json.loads(snaps) if isinstance(snaps, str) and snaps.startswith("{") else snaps
        print(json.dumps(r, default=str))
    return 0


def _parse_time(text: str):
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _demo(args: argparse.Namespace) -> int:
    if args.usecase == CLAIMS_USECASE:
        return _demo_claims(args)
    if args.loop:
        return _demo_loop(args)
    args.days = args.days or 7
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
        status = _run_training(DEMO_USECASE, {"interrupt": {"signal": "SIGTERM", "after_rounds": DEMO_INTERRUPT_ROUND}})
    if status == 0:
        last = DEMO_START + timedelta(days=args.days - 1)
        status = _demo_scoring(DEMO_USECASE, [last - timedelta(days=DEMO_SCORE_DAYS - 1), last])
    print()
    print("last lakehouse run:")
    print((home / "runs" / DEMO_USECASE / "lakehouse" / "latest.txt").read_text())
    print(_tables_text(DEMO_USECASE))
    print("last feature run:")
    print((home / "runs" / DEMO_USECASE / "features" / "latest.txt").read_text())
    for pattern in ("training", "scoring"):
        text = home / "runs" / DEMO_USECASE / pattern / "latest.txt"
        if text.exists():
            print(f"{pattern} run:")
            print(text.read_text())
    print(f"run reports (JSON): {home / 'runs' / DEMO_USECASE}")
    print(
        f"inspect: .venv/bin/mlblueprints tables {DEMO_USECASE}; "
        f".venv/bin/mlblueprints quarantine {DEMO_USECASE} transactions; "
        f".venv/bin/mlblueprints features show {DEMO_USECASE}; "
        f".venv/bin/mlblueprints models lineage {DEMO_USECASE}; "
        f".venv/bin/mlblueprints predictions {DEMO_USECASE} --limit 5"
    )
    return status


def _run_monitoring(usecase: str, dates: list[date]) -> tuple[int, dict[str, Any] | None]:
    """One run of ``<usecase>__monitoring`` through dag.test for the event dates [min, max]; its
    status and the decision."""
    from mlblueprints.airflow import localrun

    dag = localrun.get_dag(f"{usecase}__monitoring")
    localrun.quiet_retry_waits()
    t = time.perf_counter()
    dr = dag.test(run_conf={"event_dates": [d.isoformat() for d in dates]})
    bad = localrun.failed_tasks(dr)
    decided = next((ti.xcom_pull(task_ids="decide") for ti in dr.get_task_instances() if ti.task_id == "decide"), None)
    verdict = ""
    if decided:
        verdict = f": {'ALERT' if decided['fired'] else 'no alert'} - {decided['reason']}"
    print(
        f"  {dag.dag_id} event dates {min(dates)}..{max(dates)}: {dr.state} in {time.perf_counter() - t:.0f}s"
        + (f" (failed: {', '.join(bad)})" if bad else verdict),
        flush=True,
    )
    return (0 if dr.state == "success" else 1), decided


def _demo_loop(args: argparse.Namespace) -> int:
    """The drift loop on the fraud example: six calm days, a champion, then a day whose amounts
    double; monitoring raises the drift alert, and the training run it triggers on a scheduler is
    run here (dag.test has no scheduler) and its candidate goes through the gate."""
    from mlblueprints.airflow import localrun
    from mlblueprints.datagen import DriftConfig, generate_fraud

    days = args.days or LOOP_DAYS
    drift_day = DEMO_START + timedelta(days=days - 1)
    home = runtime.home()
    print(f"runtime directory: {home}  (MLB_HOME; delete it to start over)")
    print("setting up Airflow (SQLite metadata DB) ...", flush=True)
    localrun.setup()
    landing = home / "landing"
    if (landing / "_generator" / "manifest.json").exists():
        print(f"{home} has landing files already: the loop needs a runtime directory of its own", file=sys.stderr)
        return 2
    rows = args.rows if args.rows != DEMO_ROWS else LOOP_ROWS_PER_DAY * days
    m = generate_fraud(
        landing, start=DEMO_START, days=days, rows=rows, seed=42, drift=DriftConfig(start=drift_day, amount_scale=2.0)
    )
    print(
        f"generated {m.expected.distinct_valid_transactions:,} transactions over {days} days; from {drift_day} the "
        f"amounts double, more is spent online and abroad, and fraud doubles -> {landing}"
    )
    lake = localrun.get_dag(f"{DEMO_USECASE}__lakehouse")

    def land(day: date) -> int:
        t = time.perf_counter()
        dr = localrun.run_dag(lake, day)
        print(f"  {lake.dag_id} landing date {day}: {dr.state} in {time.perf_counter() - t:.0f}s", flush=True)
        return (0 if dr.state == "success" else 1) or _run_features(DEMO_USECASE)

    status = 0
    for i in range(days - 1):
        status = status or land(DEMO_START + timedelta(days=i))
    calm = drift_day - timedelta(days=1)
    if status == 0:
        print("training the champion on the calm days ...", flush=True)
        status = _run_training(DEMO_USECASE) or _demo_scoring(DEMO_USECASE, [calm])
    if status == 0:
        print(f"monitoring {calm} (calm) against the champion's training set ...", flush=True)
        status, _ = _run_monitoring(DEMO_USECASE, [calm])
    decided = None
    if status == 0:
        print(f"{drift_day} lands (drifted) ...", flush=True)
        status = land(drift_day) or _run_scoring(DEMO_USECASE, [drift_day])
    if status == 0:
        status, decided = _run_monitoring(DEMO_USECASE, [drift_day])
    if status == 0 and decided and decided["fired"]:
        print(
            f"the alert emitted {DEMO_USECASE}.drift_alert: on a scheduler it queues {DEMO_USECASE}__training (unpaused); "
            "dag.test has no scheduler, so the demo runs it ...",
            flush=True,
        )
        status = _run_training(DEMO_USECASE)
    shown = ["monitoring", "training"]
    if status == 0 and decided and decided["fired"]:
        status = _loop_promotion(DEMO_USECASE, shown)
    for pattern in shown:
        text = home / "runs" / DEMO_USECASE / pattern / "latest.txt"
        if text.exists():
            print(f"\nlast {pattern} run:")
            print(text.read_text())
    if status == 0:
        _monitoring_show(_load(DEMO_USECASE), 10)
    print(
        f"inspect: MLB_HOME={home} .venv/bin/mlblueprints monitoring show {DEMO_USECASE}; "
        f"MLB_HOME={home} .venv/bin/mlblueprints models lineage {DEMO_USECASE}; "
        f"MLB_HOME={home} .venv/bin/mlblueprints deployments {DEMO_USECASE}"
    )
    if status == 0 and not (decided and decided["fired"]):
        print("the drifted day raised no alert (see the monitoring run above)", file=sys.stderr)
        return 1
    return status


def _loop_promotion(usecase: str, shown: list[str]) -> int:
    """The end of the loop: a challenger the retraining registered goes through the fairness gate
    (explainability) and, when it passes, a canary on the endpoint (promotion); the endpoint the
    promotion started is stopped after it."""
    from mlblueprints.backends import backend_for
    from mlblueprints.serving import server

    uc = _load(usecase)
    registry = backend_for(uc, "registry")
    champion, challenger = registry.model_version("champion"), registry.model_version("challenger")
    if challenger is None or champion is None or challenger["version"] == champion["version"]:
        print("the retraining registered no new challenger: nothing to promote", flush=True)
        return 0
    v = int(challenger["version"])
    print(f"version {v} was registered: on a scheduler the challenger Asset runs {usecase}__explainability, ...")
    status = _run_pattern(usecase, "explainability", {"version": v})
    shown.append("explainability")
    if status == 0:
        print(f"... whose fairness gate's Asset runs {usecase}__promotion: a canary on the endpoint ...", flush=True)
        try:
            status = _run_pattern(usecase, "promotion", {"version": v})
        finally:
            server.stop(uc)
        shown.append("promotion")
    return status


def _demo_scoring(usecase: str, dates: list[date]) -> int:
    """Score ``dates`` with the champion. The demo does not run a canary for its first version, so
    a registered challenger becomes the champion first (``mlblueprints models promote``, said so)."""
    from mlblueprints.backends import backend_for

    registry = backend_for(_load(usecase), "registry")
    if registry.model_version("champion") is None:
        challenger = registry.model_version("challenger")
        if challenger is not None:
            registry.promote(challenger["version"])
            print(
                f"promoted version {challenger['version']} to champion (the promotion pattern's job; done directly "
                f"here, as mlblueprints models promote {usecase} {challenger['version']} does)",
                flush=True,
            )
    print(f"scoring event dates {dates[0]}..{dates[-1]} with the champion ...", flush=True)
    return _run_scoring(usecase, dates)


def _demo_claims(args: argparse.Namespace) -> int:
    """The regression example end to end: claims landed over ``days``, one backfill of the
    lakehouse, one feature run over what it loaded, training (interrupted once, resumed)."""
    from mlblueprints.airflow import localrun
    from mlblueprints.datagen.claims import generate_claims

    days = args.days or 10
    home = runtime.home()
    print(f"runtime directory: {home}  (MLB_HOME; delete it to start over)")
    print("setting up Airflow (SQLite metadata DB) ...", flush=True)
    localrun.setup()
    landing = home / "landing"
    if not (landing / "_generator" / "claims_manifest.json").exists():
        m = generate_claims(landing, start=CLAIMS_START, days=days, seed=7)
        print(f"generated {m.claims:,} claims of {m.policies:,} policies over {days} days -> {landing}")
    else:
        print(f"reusing landing files in {landing}")
    t = time.perf_counter()
    dates = [CLAIMS_START + timedelta(days=i) for i in range(days)]
    status = _lakehouse(
        argparse.Namespace(
            usecase=CLAIMS_USECASE,
            dates=[d.isoformat() for d in dates],
            date_from=None,
            date_to=None,
            stop_on_failure=True,
        )
    )
    if status == 0:
        status = _run_features(CLAIMS_USECASE)
    if status == 0:
        print(
            "training (regression; the first try gets a simulated Spot interruption; the retry resumes) ...", flush=True
        )
        status = _run_training(CLAIMS_USECASE, {"interrupt": {"signal": "SIGTERM", "after_rounds": 50}})
    if status == 0:
        status = _demo_scoring(CLAIMS_USECASE, [dates[-DEMO_SCORE_DAYS], dates[-1]])
    print(f"claims demo in {time.perf_counter() - t:.0f}s")
    for pattern in ("features", "training", "scoring"):
        text = home / "runs" / CLAIMS_USECASE / pattern / "latest.txt"
        if text.exists():
            print(f"\nlast {pattern} run:")
            print(text.read_text())
    print(f"run reports (JSON): {home / 'runs' / CLAIMS_USECASE}")
    print(
        f"inspect: .venv/bin/mlblueprints tables {CLAIMS_USECASE}; "
        f".venv/bin/mlblueprints models lineage {CLAIMS_USECASE}; "
        f".venv/bin/mlblueprints predictions {CLAIMS_USECASE} --limit 5"
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
        errors: list[UseCaseError] = []
        ok = []
        for f in args.files:
            try:
                ok.append(load_usecase(f))
            except UseCaseError as exc:
                errors.append(exc)
    else:
        ok, errors = load_usecases(runtime.usecases_dir())
    lines = [line for e in errors for line in e.lines]
    for uc in ok:
        problems = _check_usecase(uc)
        lines += problems
        if not problems:
            print(f"{uc.source_path}: ok")
    for line in lines:
        print(line, file=sys.stderr)
    return 1 if lines else 0


def _check_usecase(uc) -> list[str]:
    """Checks that need more than the YAML: the Gold SQL (one SELECT over its inputs), the feature
    views against the Gold SQL's columns, and every quality suite (present, expectation types and
    arguments, columns)."""
    from mlblueprints.features.core import check_against_gold_sql
    from mlblueprints.lakehouse.sqlgen import gold_sql_problems
    from mlblueprints.quality.check import check_usecase_suites

    sql = gold_sql_problems(uc)
    return sql + ([] if sql else check_against_gold_sql(uc)) + check_usecase_suites(uc)


def _suites(args: argparse.Namespace) -> int:
    from mlblueprints.quality.check import check_usecase_suites
    from mlblueprints.quality.starter import write_starter_suites

    uc = _load(args.usecase)
    for path, status in write_starter_suites(uc, force=args.force):
        note = " (exists; --force overwrites it)" if status == "kept" else ""
        print(f"{status}: {path}{note}")
    problems = check_usecase_suites(uc)
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print(f"{uc.name}: every suite checks out; add what you know about your data, then run check-config")
    return 1 if problems else 0


def _deploy(args: argparse.Namespace) -> int:
    from mlblueprints.deploy import requirements as reqs
    from mlblueprints.deploy.mwaa import DeployError

    root = runtime.project_root()
    try:
        if args.action == "mwaa-bundle":
            from mlblueprints.deploy import mwaa

            out = mwaa.build(root, Path(args.out).resolve(), args.airflow)
            print(f"MWAA bundle for Airflow {args.airflow} (Python {reqs.PYTHON_TARGET}): {out}")
            for f in ("dags/", "plugins.zip", "requirements.txt", "startup.sh", "bundle.json"):
                print(f"  {out / f}")
        elif args.action == "mwaa":
            from mlblueprints.deploy import mwaa

            done = mwaa.deploy_with_boto3(
                Path(args.bundle).resolve(),
                args.bucket,
                environment=args.env,
                prefix=args.prefix,
                upgrade=args.upgrade,
                region=args.region,
            )
            print(f"uploaded {len(done.versions)} objects to s3://{args.bucket}/{args.prefix}")
            for key in mwaa.ARTIFACTS:
                k = f"{args.prefix.strip('/')}/{key}".lstrip("/")
                print(f"  {k} version {done.versions.get(k)}")
            if done.deleted:
                print(f"deleted {len(done.deleted)} dags/ objects the bundle no longer has")
            if done.update_request:
                print(f"UpdateEnvironment sent to {args.env}; MWAA applies it in 10-30 minutes")
        elif args.action == "astro":
            from mlblueprints.deploy import astro

            out = astro.assemble(root, Path(args.out).resolve(), args.airflow, args.runtime)
            print(f"Astro project (Astro Runtime {args.runtime}, Airflow {args.airflow}): {out}")
            print(f"  cd {out} && astro dev start")
    except DeployError as exc:
        print(f"mlblueprints deploy {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def _up(args: argparse.Namespace) -> int:
    from mlblueprints.deploy import local

    try:
        stack = local.up(port=args.port, host=args.host, timeout=args.timeout)
    except local.UpError as exc:
        print(f"mlblueprints up: {exc}", file=sys.stderr)
        return 1
    print(stack.describe())
    return 0


def _down(args: argparse.Namespace) -> int:
    from mlblueprints.deploy import local

    for line in local.down():
        print(line)
    return 0


def _deploy_parsers(sub: argparse._SubParsersAction) -> None:
    import os

    from mlblueprints.deploy.requirements import AIRFLOW_TARGET

    airflow = os.environ.get("AIRFLOW_TARGET") or AIRFLOW_TARGET
    up = sub.add_parser("up", help="start the Airflow UI, scheduler, DAG processor and triggerer on the runtime's DB")
    up.add_argument("--port", type=int, default=8080)
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    up.add_argument("--timeout", type=float, default=180, help="seconds to wait for the API server to be healthy")
    up.set_defaults(fn=_up)
    down = sub.add_parser("down", help="stop what `up` started")
    down.set_defaults(fn=_down)

    dp = sub.add_parser("deploy", help="MWAA bundle and upload, Astro project")
    ds = dp.add_subparsers(dest="action", required=True)
    b = ds.add_parser("mwaa-bundle", help="write the MWAA bundle")
    b.add_argument("--out", default="dist/mwaa")
    b.add_argument("--airflow", default=airflow, help=f"the environment's Airflow version (default {airflow})")
    b.set_defaults(fn=_deploy)
    m = ds.add_parser("mwaa", help="upload the bundle to the environment's bucket and update the environment")
    m.add_argument("--bucket", required=True, help="the environment's source bucket (versioning enabled)")
    m.add_argument("--env", help="the MWAA environment to update (omit to upload only)")
    m.add_argument("--prefix", default="", help="key prefix of dags/, plugins.zip, ... in the bucket")
    m.add_argument("--bundle", default="dist/mwaa")
    m.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    m.add_argument("--upgrade", action="store_true", help="move the environment to the bundle's Airflow version")
    m.set_defaults(fn=_deploy)
    a = ds.add_parser("astro", help="assemble the Astro project in astro/")
    a.add_argument("--out", default="astro")
    a.add_argument("--airflow", default=airflow)
    a.add_argument("--runtime", default=os.environ.get("ASTRO_RUNTIME") or "3.3-2", help="Astro Runtime image tag")
    a.set_defaults(fn=_deploy)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="mlblueprints", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="write synthetic landing files")
    g.add_argument("kind", choices=["fraud", "claims"])
    g.add_argument("--out", help="landing root (default: <MLB_HOME>/landing)")
    g.add_argument("--start", help=f"first day (default {DEMO_START} for fraud, {CLAIMS_START} for claims)")
    g.add_argument("--days", type=int, default=7)
    g.add_argument("--rows", type=int, default=200_000, help="distinct valid transactions in total")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--clean", action="store_true", help="inject no defects")
    g.add_argument("--no-defect", action="append", metavar="NAME", help="switch one defect off (repeatable)")
    g.add_argument("--drift-from", metavar="DATE", help="shift distributions from this day on")
    g.add_argument(
        "--bias",
        metavar="COLUMN=GROUP[,GROUP]",
        help="fraud targets card holders of these groups (e.g. age_band=60+, region=southern_europe): "
        "the fairness gate's test",
    )
    g.add_argument("--bias-factor", type=float, default=6.0, help="how much likelier the group's cards are hit")
    g.add_argument("--policies", type=int, default=2000, help="claims: insured policies")
    g.add_argument("--claims-per-day", type=int, default=500, help="claims: mean claims filed per day")
    g.set_defaults(fn=_generate)

    lh = sub.add_parser("lakehouse", help="run <usecase>__lakehouse for landing dates (dag.test)")
    lh.add_argument("usecase")
    lh.add_argument("dates", nargs="*", metavar="YYYY-MM-DD", help="landing dates (or --from/--to)")
    lh.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD", help="backfill: first landing date")
    lh.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD", help="backfill: last landing date (inclusive)")
    lh.add_argument("--stop-on-failure", action="store_true", help="do not run the dates after a failed one")
    lh.set_defaults(fn=_lakehouse)

    f = sub.add_parser("features", help="feature views: run, online lookups, training sets, store sizes")
    fs = f.add_subparsers(dest="action", required=True)
    fr = fs.add_parser(
        "run", help="run <usecase>__features (default: every event date Gold recomputed since the views last read it)"
    )
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
    after = trr.add_mutually_exclusive_group()
    after.add_argument("--after", type=int, default=5, help="boosting rounds into training (with --interrupt)")
    after.add_argument("--after-seconds", type=float, help="seconds into training instead (loading data counts)")
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

    ex = sub.add_parser(
        "explain",
        help="run <usecase>__explainability (dag.test); 'explain record <usecase> <key>': one record's SHAP values",
        usage="mlblueprints explain <usecase> [--version N]\n       mlblueprints explain record <usecase> <key> "
        "[--version N]",
    )
    ex.add_argument("words", nargs="+", metavar="usecase | record usecase key")
    ex.add_argument(
        "--version", type=int, help="a registered version (default: the challenger; for a record, else the champion)"
    )
    ex.set_defaults(fn=_explain)

    sc = sub.add_parser("scoring", help="run <usecase>__scoring (dag.test)")
    scs = sc.add_subparsers(dest="action", required=True)
    scr = scs.add_parser(
        "run", help="score event dates with the champion (or a pinned version) into the predictions table"
    )
    scr.add_argument("usecase")
    scr.add_argument(
        "--dates",
        nargs="+",
        metavar="YYYY-MM-DD",
        help="event dates (their min..max; default: what Gold last recomputed)",
    )
    scr.add_argument("--version", type=int, help="a registered model version instead of scoring.model")
    scr.set_defaults(fn=_scoring)

    mo = sub.add_parser("monitoring", help="drift monitoring: run <usecase>__monitoring, show the history")
    mos = mo.add_subparsers(dest="action", required=True)
    mor = mos.add_parser("run", help="monitor scored event dates (dag.test)")
    mor.add_argument("usecase")
    mor.add_argument("--dates", nargs="+", metavar="YYYY-MM-DD", help="the window's event dates (min..max)")
    mor.add_argument("--version", type=int, help="the version whose predictions to monitor")
    mor.set_defaults(fn=_monitoring)
    mosh = mos.add_parser("show", help="the drift history per column and the last decision")
    mosh.add_argument("usecase")
    mosh.add_argument("--windows", type=int, default=10, help="the newest N windows (default 10)")
    mosh.set_defaults(fn=_monitoring)

    sv = sub.add_parser("serve", help="the local inference endpoint (FastAPI on uvicorn, loopback)")
    sv.add_argument("usecase")
    sv.add_argument("--port", type=int, default=None, help="default: promotion.endpoint.port")
    svm = sv.add_mutually_exclusive_group()
    svm.add_argument("--background", action="store_true", help="start it in the background and return")
    svm.add_argument("--stop", action="store_true", help="stop the background endpoint")
    svm.add_argument("--status", action="store_true", help="is it running, and what does it serve")
    sv.set_defaults(fn=_serve)

    po = sub.add_parser(
        "promotion", help="run <usecase>__promotion (dag.test): canary, guardrails, promote or roll back"
    )
    pos = po.add_subparsers(dest="action", required=True)
    por = pos.add_parser("run", help="one run of <usecase>__promotion")
    por.add_argument("usecase")
    por.add_argument("--version", type=int, help="the version to deploy (default: the challenger alias)")
    por.set_defaults(fn=_promotion)

    dpl = sub.add_parser("deployments", help="the endpoint's deployment history and the four DORA metrics")
    dpl.add_argument("usecase")
    dpl.add_argument("--days", type=int, default=30, help="the DORA metrics' window (default 30 days)")
    dpl.set_defaults(fn=_deployments)

    pr = sub.add_parser("predictions", help="the newest predictions with their lineage (JSON lines)")
    pr.add_argument("usecase")
    pr.add_argument("--entity", metavar="KEY", help="only this key's (a,b for composite keys)")
    pr.add_argument("--limit", type=int, default=20)
    pr.set_defaults(fn=_predictions)

    d = sub.add_parser(
        "demo",
        help="generate data, run the lakehouse and feature DAGs for each day, then train, then score the last days",
    )
    d.add_argument(
        "--usecase",
        choices=[DEMO_USECASE, CLAIMS_USECASE],
        default=DEMO_USECASE,
        help=f"{DEMO_USECASE} (binary, default) or {CLAIMS_USECASE} (a regression target)",
    )
    d.add_argument("--rows", type=int, default=DEMO_ROWS, help="fraud: distinct valid transactions")
    d.add_argument(
        "--loop",
        action="store_true",
        help="fraud: the drift loop - calm days, a champion, a drifted day, the alert, the retraining it triggers "
        "(needs a runtime directory of its own: make demo-loop)",
    )
    d.add_argument("--days", type=int, default=None, help="days of landing files (default 7 fraud, 10 claims)")
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

    c = sub.add_parser("check-config", help="validate use-case YAML files and their quality suites")
    c.add_argument("files", nargs="*")
    c.set_defaults(fn=_check_config)

    su = sub.add_parser("suites", help="quality suites")
    sus = su.add_subparsers(dest="action", required=True)
    si = sus.add_parser("init", help="write starter suites from the use case's schema (keeps existing files)")
    si.add_argument("usecase")
    si.add_argument("--force", action="store_true", help="overwrite existing suite files")
    si.set_defaults(fn=_suites)

    _deploy_parsers(sub)

    from mlblueprints.stepfunctions.cli import add_parsers as add_stepfunctions_parsers

    add_stepfunctions_parsers(sub)  # statemachines render|deploy|run, infra render

    args = p.parse_args(argv)
    from mlblueprints.airflow.localrun import RunConflict
    from mlblueprints.config import UseCaseError

    try:
        return args.fn(args)
    except UseCaseError as exc:  # a configuration problem: its lines, once, no traceback
        print(exc, file=sys.stderr)
        return 2
    except (PermanentError, RunConflict) as exc:  # a bad input or a busy DAG: its one line, no traceback
        print(f"mlblueprints {args.cmd}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
