"""The steps of the lakehouse pattern (declared in ``mlblueprints.patterns.lakehouse``).

Each is ``step(ctx, ...) -> result`` over the use case's lakehouse backend; on aws the backend's
Athena statements run between the call and its continuation (``ctx.then``).
"""

from __future__ import annotations

import logging
from datetime import date, timedelta
from typing import Any

from mlblueprints.core import reporting
from mlblueprints.core.context import StepContext, date_list
from mlblueprints.core.naming import table_asset
from mlblueprints.errors import PermanentError
from mlblueprints.lakehouse import naming

log = logging.getLogger(__name__)

CAPABILITY = "lakehouse"


class ReconciliationFailed(PermanentError):
    """Rows landed != Silver + quarantined + duplicates: the same tables give the same counts."""


def landing_dates(ctx: StepContext) -> list[date]:
    """Landing dates of this run: the ``landing_dates`` Param, else the data interval's days."""
    chosen = date_list(ctx.params.get("landing_dates"))
    if chosen:
        return chosen
    if ctx.interval_start is None:
        raise PermanentError("no landing dates: set the landing_dates Param (YYYY-MM-DD) or run on a schedule")
    return naming.landing_dates(ctx.interval_start, ctx.interval_end)


def _selected(ctx: StepContext, dataset: str) -> bool:
    chosen = ctx.params.get("datasets") or []
    return not chosen or dataset in chosen


def tables(ctx: StepContext) -> dict[str, Any]:
    """Create the tables the run writes, once, before any step writes (on aws: the Glue database
    and tables; locally a table is created by its first write)."""
    return ctx.backend(CAPABILITY).ensure_tables(ctx.run)


def ingest(ctx: StepContext, dataset: str) -> Any:
    if not _selected(ctx, dataset):
        return {"dataset": dataset, "skipped": True, "files": [], "rejected_files": []}
    out = ctx.backend(CAPABILITY).ingest_bronze(dataset, landing_dates(ctx), ctx.run)
    return ctx.then(out, _ingested)


def _ingested(ctx: StepContext, out: dict[str, Any]) -> dict[str, Any]:
    ds = out["dataset"]
    log.info("%s: files %s, rows landed %s", ds, out["file_status"], out["rows_landed"])
    for w in out["warnings"]:
        log.warning("%s: %s", ds, w)
    for f in out["rejected_files"]:
        log.error("%s: file %s rejected: %s", ds, f["source_file"], f["reason"])
    return out


def silver(ctx: StepContext, dataset: str) -> Any:
    if not _selected(ctx, dataset):
        return {"dataset": dataset, "skipped": True, "landing_dates": [], "touched_event_dates": []}
    out = ctx.backend(CAPABILITY).build_silver(dataset, landing_dates(ctx), ctx.run)
    return ctx.then(out, _silvered)


def _silvered(ctx: StepContext, out: dict[str, Any]) -> dict[str, Any]:
    log.info(
        "%s: landed %s -> silver %s, quarantined %s %s, duplicates %s",
        out["dataset"],
        out["rows_landed"],
        out["rows_into_silver"],
        out["quarantined"],
        out["quarantine_reasons"],
        out["duplicates"],
    )
    return out


def gold(ctx: StepContext, table: str, silvers: dict[str, dict[str, Any]]) -> Any:
    touched = {s["dataset"]: s.get("touched_event_dates", []) for s in silvers.values()}
    out = ctx.backend(CAPABILITY).build_gold(table, touched, ctx.run)
    return ctx.then(out, _golded)


def _golded(ctx: StepContext, out: dict[str, Any]) -> dict[str, Any]:
    log.info("%s: recomputed %s, %s rows", out["table"], out["recomputed"], out["rows_written"])
    return out


# ---------------------------------------------------------------- gates


def gate_bronze(ctx: StepContext, dataset: str) -> Any:
    if not _selected(ctx, dataset):
        return {"skipped": True}
    scope = {"landing_dates": [d.isoformat() for d in landing_dates(ctx)]}
    return _gate(ctx, dataset, "bronze", scope, naming.table_name(dataset, naming.BRONZE))


def gate_silver(ctx: StepContext, dataset: str, summary: dict[str, Any]) -> Any:
    if summary.get("skipped"):
        return {"skipped": True}
    scope = {"event_dates": summary["touched_event_dates"]}
    return _gate(ctx, dataset, "silver", scope, naming.table_name(dataset, naming.SILVER))


def gate_gold(ctx: StepContext, table: str, summary: dict[str, Any]) -> Any:
    if not summary.get("recomputed"):
        return {"skipped": True}
    # what changed, for the DAGs scheduled on this Asset (features materialize this range)
    extra = {"range": summary["recomputed"], "snapshot_id": summary.get("gold_snapshot_id")}
    return _gate(ctx, table, "gold", {"range": summary["recomputed"]}, table, extra)


def _gate(
    ctx: StepContext, table: str, layer: str, scope: dict[str, Any], asset_table: str, extra: dict | None = None
) -> Any:
    report = ctx.backend(CAPABILITY).gate(table, layer, scope, ctx.run)
    return ctx.then(report, _gated, asset=table_asset(ctx.uc, asset_table).name, extra=extra)


def _gated(ctx: StepContext, report: Any, asset: str, extra: dict[str, Any] | None) -> dict[str, Any]:
    """A failed error-level expectation fails the step without retries (the same data fails the
    same way) and so stops everything downstream; the Asset is emitted only when it passes."""
    from mlblueprints.quality.gx import GateFailed

    log.info("%s", report.summary())
    if not report.success:
        raise GateFailed("quality gate failed\n" + report.summary())
    if report.failed_warning and ctx.params.get("fail_on_gate_warning"):
        raise GateFailed("warning-level expectations failed and fail_on_gate_warning is set\n" + report.summary())
    if extra is not None:
        ctx.emit(asset, extra)
    return report.as_dict()


# ---------------------------------------------------------------- reconciliation, compaction, report


def reconcile(ctx: StepContext, silvers: dict[str, dict[str, Any]], ingests: dict[str, dict[str, Any]]) -> Any:
    out = ctx.backend(CAPABILITY).reconcile(
        [s for s in silvers.values() if not s.get("skipped")], list(ingests.values())
    )
    return ctx.then(out, _reconciled)


def _reconciled(ctx: StepContext, out: dict[str, Any]) -> dict[str, Any]:
    for ds, rows in out["datasets"].items():
        for r in rows:
            log.info("%s %s", ds, r)
    for msg in out.get("rejected_files", []):
        log.error("%s", msg)
    if not out["ok"]:
        raise ReconciliationFailed("reconciliation failed: " + "; ".join(out["problems"]))
    return out


def compact(
    ctx: StepContext,
    ingests: dict[str, dict[str, Any]] | None = None,
    silvers: dict[str, dict[str, Any]] | None = None,
    golds: dict[str, dict[str, Any]] | None = None,
) -> Any:
    if not ctx.params.get("compact", True):
        return {"skipped": True}
    touched = touched_partitions(ctx, ingests or {}, silvers or {}, golds or {})
    return ctx.backend(CAPABILITY).compact(ctx.run, touched)


def touched_partitions(
    ctx: StepContext,
    ingests: dict[str, dict[str, Any]],
    silvers: dict[str, dict[str, Any]],
    golds: dict[str, dict[str, Any]],
) -> dict[str, list[str]]:
    """Table -> the partition values (ISO dates) this run wrote, from the steps' results: what
    compaction rewrites (a backend that reports ``partitions`` says it exactly)."""
    out: dict[str, set[str]] = {}
    for ing in ingests.values():
        if ing and not ing.get("skipped"):
            out.setdefault(naming.table_name(ing["dataset"], naming.BRONZE), set()).update(ing.get("landing_dates", []))
    for sil in silvers.values():
        if not sil or sil.get("skipped"):
            continue
        ds = sil["dataset"]
        parts = sil.get("partitions") or {
            naming.table_name(ds, naming.QUARANTINE): sil.get("landing_dates", []),
            naming.table_name(ds, naming.SILVER): sil.get("touched_event_dates", []),
            naming.table_name(ds, naming.DUPLICATES): sil.get("touched_event_dates", []),
        }
        for table, dates in parts.items():
            out.setdefault(table, set()).update(dates)
    for g in golds.values():
        if not g or not g.get("recomputed"):
            continue
        if g.get("partitions"):
            for table, dates in g["partitions"].items():
                out.setdefault(table, set()).update(dates)
        else:
            lo, hi = (date.fromisoformat(d) for d in g["recomputed"])
            out.setdefault(g["table"], set()).update(
                (lo + timedelta(days=i)).isoformat() for i in range((hi - lo).days + 1)
            )
    return {t: sorted(d) for t, d in out.items()}


def report(ctx: StepContext, results: dict[str, Any]) -> dict[str, Any]:
    """The run report (runs even when a step failed); fails when a step produced no result."""
    from mlblueprints.lakehouse.report import render

    try:
        dates = [d.isoformat() for d in landing_dates(ctx)]
    except PermanentError:
        dates = []
    where = ctx.backend(CAPABILITY).where()
    text = reporting.with_failures(render(ctx.uc, ctx.run.run_id, dates, results, where), ctx.failures)
    path, missing = reporting.write_run_report(
        ctx.uc.name, "lakehouse", ctx.run.run_id, text, results, landing_dates=dates
    )
    log.info("\n%s", text)
    if missing:
        raise RuntimeError(f"run incomplete: step(s) {missing} did not succeed; report: {path}")
    return {"report": str(path)}
