"""DAG factory of the lakehouse pattern: landing -> Bronze -> Silver -> Gold, gated.

``build_lakehouse_dag(usecase)`` returns the DAG ``<usecase>__lakehouse``. The topology is the
same for both targets; only what a task calls differs (``mlblueprints.lakehouse.local`` or
``mlblueprints.lakehouse.aws``). Heavy libraries are imported inside the tasks, never here.

Per data set::

    ingest__<ds> -> gate_bronze__<ds> -> silver__<ds> -> gate_silver__<ds>
                                                      \\-> reconcile
    gate_silver of its inputs -> gold__<table> -> gate_gold__<table>
    everything -> compact -> report

A gate task emits the Asset of the table it checked, only when the gate passes, so later
patterns can be scheduled on Gold; a Gold Asset event carries ``{"range": [lo, hi]}``, the event
dates that were recomputed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, Param, TriggerRule, get_current_context, task
from airflow.timetables.interval import CronDataIntervalTimetable

from mlblueprints.config import UseCase
from mlblueprints.lakehouse import naming

log = logging.getLogger(__name__)

TAGS = ("mlblueprints", "lakehouse")


def _asset(uc: UseCase, table: str) -> Asset:
    return Asset(
        name=naming.asset_name(uc, table),
        uri=naming.asset_uri(uc, table),
        group="lakehouse",
        extra={"usecase": uc.name, "table": table, "target": uc.target},
    )


def lakehouse_assets(uc: UseCase) -> dict[str, Asset]:
    """The Assets this DAG emits, by table name (Bronze and Silver per data set, and Gold)."""
    out = {}
    for ds in uc.datasets:
        for kind in (naming.BRONZE, naming.SILVER):
            t = naming.table_name(ds, kind)
            out[t] = _asset(uc, t)
    for g in uc.gold:
        out[g] = _asset(uc, g)
    return out


def _timetable(uc: UseCase) -> CronDataIntervalTimetable | None:
    if uc.schedule is None:
        return None
    return CronDataIntervalTimetable(uc.schedule, timezone="UTC")


def _run_info(uc: UseCase) -> Any:
    from mlblueprints.lineage import RunInfo

    ctx = get_current_context()
    ti = ctx["ti"]
    return RunInfo.for_usecase(
        uc, run_id=ctx["run_id"], dag_id=ti.dag_id, task_id=ti.task_id, try_number=int(ti.try_number or 1)
    )


def _dates(uc: UseCase) -> list[Any]:
    """Landing dates of this run: the ``landing_dates`` Param, else the data interval's days."""
    from datetime import date

    ctx = get_current_context()
    override = ctx["params"].get("landing_dates") or []
    if isinstance(override, str):
        override = [s for s in override.replace(",", " ").split() if s]
    if override:
        return sorted({date.fromisoformat(s) for s in override})
    start = ctx.get("data_interval_start") or ctx["logical_date"]
    end = ctx.get("data_interval_end")
    return naming.landing_dates(start, end)


def _selected(ds: str) -> bool:
    chosen = get_current_context()["params"].get("datasets") or []
    return not chosen or ds in chosen


def _engine(uc: UseCase) -> Any:
    if uc.target == "aws":
        from mlblueprints.airflow.aws_engine import AwsLakehouse

        return AwsLakehouse(uc)
    from mlblueprints.lakehouse import local

    return local


def build_lakehouse_dag(uc: UseCase) -> DAG:
    """Build ``<usecase>__lakehouse`` for one use case."""
    assets = lakehouse_assets(uc)
    start = datetime.combine(uc.start_date, datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(uc.end_date, datetime.min.time(), tzinfo=UTC) if uc.end_date else None
    params = {
        "landing_dates": Param(
            [],
            type="array",
            items={"type": "string", "format": "date"},
            description="Landing dates to process (YYYY-MM-DD). Empty: the days of the data interval.",
        ),
        "datasets": Param(
            [],
            type="array",
            items={"type": "string", "enum": sorted(uc.datasets)},
            description="Data sets to process. Empty: all.",
        ),
        "compact": Param(True, type="boolean", description="Run compaction of small files after the gates."),
        "fail_on_gate_warning": Param(
            False, type="boolean", description="Treat a failed warning-level expectation as an error."
        ),
    }
    dag = DAG(
        dag_id=f"{uc.name}__lakehouse",
        description=f"{uc.name}: landing -> Bronze -> Silver -> Gold with Great Expectations gates ({uc.target})",
        schedule=_timetable(uc),
        start_date=start,
        end_date=end,
        catchup=uc.catchup,
        max_active_runs=1,
        tags=sorted({*TAGS, uc.name, uc.target, *uc.tags}),
        params=params,
        default_args={
            "owner": uc.owner,
            "retries": uc.retries,
            "retry_delay": timedelta(seconds=uc.retry_delay_seconds),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(minutes=30),
        },
        doc_md=__doc__,
    )
    with dag:
        ingest_tasks, silver_tasks, silver_gates, gold_gates = {}, {}, {}, {}
        for ds in uc.datasets:
            i, gb, s, gs = _dataset_tasks(uc, ds, assets)
            i >> gb >> s >> gs
            ingest_tasks[ds], silver_tasks[ds], silver_gates[ds] = i, s, gs
        for g, spec in uc.gold.items():
            gd, gg = _gold_tasks(uc, g, assets, {ds: silver_tasks[ds] for ds in spec.inputs})
            for ds in spec.inputs:
                silver_gates[ds] >> gd
            gold_gates[g] = gg

        @task(task_id="reconcile")
        def reconcile(silvers: list[dict[str, Any]], ingests: list[dict[str, Any]]) -> dict[str, Any]:
            from airflow.sdk.exceptions import AirflowFailException

            out = _engine(uc).reconcile(uc, [s for s in silvers if not s.get("skipped")], ingests)
            for ds, rows in out["datasets"].items():
                for r in rows:
                    log.info("%s %s", ds, r)
            for msg in out.get("rejected_files", []):
                log.error("%s", msg)
            if not out["ok"]:
                # the same tables give the same counts: retrying cannot help
                raise AirflowFailException("reconciliation failed: " + "; ".join(out["problems"]))
            return out

        rec = reconcile(list(silver_tasks.values()), list(ingest_tasks.values()))

        @task(task_id="compact")
        def compact() -> dict[str, Any]:
            if not get_current_context()["params"].get("compact", True):
                return {"skipped": True}
            return _engine(uc).compact(uc, _run_info(uc))

        comp = compact()
        for t in [rec, *silver_gates.values(), *gold_gates.values()]:
            t >> comp

        @task(task_id="report", trigger_rule=TriggerRule.ALL_DONE, retries=0)
        def report() -> dict[str, Any]:
            from mlblueprints.lakehouse.report import write_run_report

            ctx = get_current_context()
            ti = ctx["ti"]
            results = {t: ti.xcom_pull(task_ids=t) for t in dag.task_ids if t != "report"}
            path, text, missing = write_run_report(uc, ctx["run_id"], [d.isoformat() for d in _dates(uc)], results)
            log.info("\n%s", text)
            if missing:
                raise RuntimeError(f"run incomplete: task(s) {missing} did not succeed; report: {path}")
            return {"report": str(path)}

        comp >> report()
    return dag


def _dataset_tasks(uc: UseCase, dataset: str, assets: dict[str, Asset]) -> tuple[Any, Any, Any, Any]:
    """ingest -> gate_bronze -> silver -> gate_silver for one data set."""

    @task(task_id=f"ingest__{dataset}")
    def ingest() -> dict[str, Any]:
        if not _selected(dataset):
            return {"dataset": dataset, "skipped": True, "files": [], "rejected_files": []}
        out = _engine(uc).ingest_bronze(uc, dataset, _dates(uc), _run_info(uc))
        log.info("%s: files %s, rows landed %s", dataset, out["file_status"], out["rows_landed"])
        for w in out["warnings"]:
            log.warning("%s: %s", dataset, w)
        for f in out["rejected_files"]:
            log.error("%s: file %s rejected: %s", dataset, f["source_file"], f["reason"])
        return out

    @task(task_id=f"gate_bronze__{dataset}", outlets=[assets[naming.table_name(dataset, naming.BRONZE)]])
    def gate_bronze() -> dict[str, Any]:
        if not _selected(dataset):
            return {"skipped": True}
        return _gate(uc, dataset, "bronze", {"landing_dates": [d.isoformat() for d in _dates(uc)]})

    @task(task_id=f"silver__{dataset}")
    def silver() -> dict[str, Any]:
        if not _selected(dataset):
            return {"dataset": dataset, "skipped": True, "landing_dates": [], "touched_event_dates": []}
        out = _engine(uc).build_silver(uc, dataset, _dates(uc), _run_info(uc))
        log.info(
            "%s: landed %s -> silver %s, quarantined %s %s, duplicates %s",
            dataset,
            out["rows_landed"],
            out["rows_into_silver"],
            out["quarantined"],
            out["quarantine_reasons"],
            out["duplicates"],
        )
        return out

    @task(task_id=f"gate_silver__{dataset}", outlets=[assets[naming.table_name(dataset, naming.SILVER)]])
    def gate_silver(summary: dict[str, Any]) -> dict[str, Any]:
        if summary.get("skipped"):
            return {"skipped": True}
        return _gate(uc, dataset, "silver", {"event_dates": summary["touched_event_dates"]})

    i, gb, s = ingest(), gate_bronze(), silver()
    return i, gb, s, gate_silver(s)


def _gold_tasks(uc: UseCase, table: str, assets: dict[str, Asset], inputs: dict[str, Any]) -> tuple[Any, Any]:
    """gold -> gate_gold for one Gold table; ``inputs`` are the Silver tasks it reads."""

    @task(task_id=f"gold__{table}")
    def gold(silver_summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
        touched = {k: v.get("touched_event_dates", []) for k, v in silver_summaries.items()}
        out = _engine(uc).build_gold(uc, table, touched, _run_info(uc))
        log.info("%s: recomputed %s, %s rows", table, out["recomputed"], out["rows_written"])
        return out

    @task(task_id=f"gate_gold__{table}", outlets=[assets[table]])
    def gate_gold(summary: dict[str, Any]) -> dict[str, Any]:
        if not summary.get("recomputed"):
            return {"skipped": True}
        out = _gate(uc, table, "gold", {"range": summary["recomputed"]})
        # what changed, for the DAGs scheduled on this Asset (features materialize this range)
        get_current_context()["outlet_events"][assets[table]].extra = {
            "range": summary["recomputed"],
            "snapshot_id": summary.get("gold_snapshot_id"),
        }
        return out

    gd = gold(inputs)
    return gd, gate_gold(gd)


def _gate(uc: UseCase, table: str, layer: str, scope: dict[str, Any]) -> dict[str, Any]:
    """Run one gate; a failed error-level expectation fails the task without retries (the same
    data fails the same way) and so stops everything downstream."""
    from airflow.sdk.exceptions import AirflowFailException

    ctx = get_current_context()
    report = _engine(uc).gate(uc, table, layer, scope, _run_info(uc))
    log.info("%s", report.summary())
    if not report.success:
        raise AirflowFailException("quality gate failed\n" + report.summary())
    if report.failed_warning and ctx["params"].get("fail_on_gate_warning"):
        raise AirflowFailException(
            "warning-level expectations failed and fail_on_gate_warning is set\n" + report.summary()
        )
    return report.as_dict()
