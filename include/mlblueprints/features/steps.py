"""The steps of the feature pattern (declared in ``mlblueprints.patterns.features``)."""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from mlblueprints.core import reporting
from mlblueprints.core.context import StepContext, date_list
from mlblueprints.core.naming import feature_view_asset
from mlblueprints.errors import PermanentError
from mlblueprints.features import core

log = logging.getLogger(__name__)


def plan(ctx: StepContext) -> dict[str, Any]:
    """The event dates to materialize: the ``event_dates`` Param; else the ranges the triggering
    Gold Asset events carry (merged); else what the current Gold snapshot recomputed, where the
    lakehouse backend can tell."""
    uc = ctx.uc
    chosen = date_list(ctx.params.get("event_dates"))
    if chosen:
        rng, source = core.date_range(chosen), "param event_dates"
    else:
        rng, source = core.range_from_asset_extras(ctx.triggering_extras()), "triggering Gold Asset events"
        if rng is None:
            golds = sorted({v.source for v in uc.features.values()})
            rng, source = ctx.backend("lakehouse").latest_gold_range(golds), "the current Gold snapshot"
    if rng is None:
        raise PermanentError(
            "no event dates to materialize: set the event_dates Param (YYYY-MM-DD), or let the Gold Asset trigger the run"
        )
    views = ctx.params.get("views") or sorted(uc.features)
    log.info("materializing %s for event dates %s..%s (from %s)", views, rng[0], rng[1], source)
    return {"range": [rng[0].isoformat(), rng[1].isoformat()], "views": views, "source": source}


def materialize(ctx: StepContext, view: str, planned: dict[str, Any]) -> Any:
    """Both stores of one view from one batch of its Gold table; emits the view's Asset."""
    if view not in planned["views"]:
        return {"view": view, "skipped": True}
    lo, hi = (date.fromisoformat(x) for x in planned["range"])
    out = ctx.backend("features", view=view).materialize(view, lo, hi, ctx.run)
    return ctx.then(out, _materialized)


def _materialized(ctx: StepContext, out: dict[str, Any]) -> dict[str, Any]:
    view = out["view"]
    log.info(
        "%s %s..%s: %s rows in, %s offline rows, %s entities written online (this batch), skipped %s null key / %s null time, "
        "%s same-instant duplicates collapsed",
        view,
        *out["range"],
        out["rows_in"],
        out["offline_rows"],
        out["online_entities"],
        out["skipped_null_key"],
        out["skipped_null_event_time"],
        out["collapsed_duplicates"],
    )
    extra = {
        "range": out["range"],
        "version": ctx.uc.features[view].version,
        "offline_snapshot_id": out.get("offline_snapshot_id"),
    }
    ctx.emit(feature_view_asset(ctx.uc, view).name, extra)
    return out


def report(ctx: StepContext, results: dict[str, Any]) -> dict[str, Any]:
    from mlblueprints.features.report import render

    uc = ctx.uc
    described, errors = {}, {}
    for view in uc.features:
        backend = ctx.backend("features", view=view)
        described[view] = backend.describe(view)
        if results.get(f"materialize__{view}") is None:  # say why a view failed when it is its definition
            why = backend.check_view(view)
            if why:
                errors[view] = why
    text = reporting.with_failures(render(uc, ctx.run.run_id, results, described, errors), ctx.failures)
    path, missing = reporting.write_run_report(uc.name, "features", ctx.run.run_id, text, results)
    log.info("\n%s", text)
    if missing:
        raise RuntimeError(f"run incomplete: step(s) {missing} did not succeed; report: {path}")
    return {"report": str(path)}
