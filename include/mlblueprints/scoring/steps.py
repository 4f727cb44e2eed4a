"""The steps of the scoring pattern (declared in ``mlblueprints.patterns.scoring``).

``plan`` (scorer) -> ``score`` (scorer) -> ``gate`` -> ``commit`` (scorer; emits the predictions
Asset) -> ``report``. Which model scores is decided here, the same way on both targets, from the
registry's record of the version (``mlblueprints.scoring.core.model_from_registry``).
"""

from __future__ import annotations

import logging
from typing import Any

from mlblueprints.core import reporting
from mlblueprints.core.context import StepContext, date_list
from mlblueprints.core.naming import predictions_asset
from mlblueprints.errors import PermanentError
from mlblueprints.scoring import core
from mlblueprints.scoring.core import ScoringError

log = logging.getLogger(__name__)


def _scoring(ctx: StepContext) -> Any:
    s = ctx.uc.scoring
    if s is None or ctx.uc.training is None:
        raise PermanentError(f"{ctx.uc.name}: the use case has no scoring (or training) section")
    return s


def resolve_model(ctx: StepContext) -> dict[str, Any]:
    """The registered version that scores: the ``version`` Param, else ``scoring.model.version``,
    else the one behind ``scoring.model.alias`` (default champion); checked against the use case."""
    uc, s = ctx.uc, _scoring(ctx)
    registry = ctx.backend("registry")
    pinned = int(ctx.params.get("version") or 0) or s.model.version
    alias = None if pinned else s.model.alias
    if not pinned:
        mv = registry.model_version(alias)
        if mv is None:
            raise ScoringError(uc, core.no_model_message(uc, alias))
        pinned = int(mv["version"])
    try:
        registered = registry.lineage(version=pinned)
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in str(exc).lower():
            raise ScoringError(uc, f"{uc.model_name} has no version {pinned}: pin a registered version") from None
        raise
    return core.model_from_registry(uc, registered, alias)


def plan(ctx: StepContext) -> Any:
    """The event dates, the model, and the inputs pinned (on aws: UNLOADed for the job)."""
    uc = ctx.uc
    _scoring(ctx)
    chosen = date_list(ctx.params.get("event_dates"))
    scheduled = uc.scoring_schedule not in ("features", "gold")
    got = core.interval(chosen, ctx.triggering_extras(), ctx.interval_start, ctx.interval_end, scheduled)
    if got is None:
        raise PermanentError(
            f"{uc.name}: scoring: no event dates to score: set the event_dates Param (YYYY-MM-DD), or let the "
            "feature views' (or the Gold table's) Asset trigger the run"
        )
    lo, hi, source = got
    model = resolve_model(ctx)
    log.info("scoring event dates %s..%s (from %s) with %s", lo, hi, source, model["label"])
    out = ctx.backend("scorer").plan(lo, hi, model, ctx.run)
    return ctx.then(out, _planned, source=source)


def _planned(ctx: StepContext, out: dict[str, Any], source: str) -> dict[str, Any]:
    out = {**out, "range_source": source}
    log.info(
        "%s rows to score in %s..%s (%s skipped: a key is null); inputs %s",
        out["rows_in"],
        *out["range"],
        out["skipped_null_key"],
        out["snapshots"],
    )
    return out


def score(ctx: StepContext, planned: dict[str, Any]) -> Any:
    """Predict every row of the plan; the predictions are staged, not visible yet."""
    out = ctx.backend("scorer").score(planned, ctx.run)
    return ctx.then(out, _scored)


def _scored(ctx: StepContext, out: dict[str, Any]) -> dict[str, Any]:
    if "rows" in out:  # local: counted while scoring
        log.info("%s predictions staged (%s)", out["rows"], out.get("staged"))
    else:  # aws: the job's output, counted by the gate
        log.info("transform job %s (%s) wrote %s", out.get("job_name"), out.get("how"), out.get("output_s3_uri"))
    return out


def gate(ctx: StepContext, planned: dict[str, Any], scored: dict[str, Any]) -> dict[str, Any]:
    """Great Expectations on the staged predictions; a failed critical expectation stops the run
    before anything is committed."""
    out = ctx.backend("scorer").gate(planned, scored, ctx.run)
    log.info("%s", out.get("summary"))
    return out


def commit(ctx: StepContext, planned: dict[str, Any], scored: dict[str, Any], gated: dict[str, Any]) -> Any:
    """Replace the interval's predictions in one commit; emit the predictions Asset."""
    out = ctx.backend("scorer").commit(planned, scored, gated, ctx.run)
    return ctx.then(out, _committed)


def _committed(ctx: StepContext, out: dict[str, Any]) -> dict[str, Any]:
    extra = {
        "range": out["range"],
        "snapshot_id": out["snapshot_id"],
        "table": out["table"],
        "model": out["model"],
        "version": out["version"],
        "rows": out["rows"],
        "run_id": ctx.run.run_id,
    }
    ctx.emit(predictions_asset(ctx.uc).name, extra)
    log.info(
        "committed %s predictions of %s..%s as snapshot %s of %s",
        out["rows"],
        *out["range"],
        out["snapshot_id"],
        out["table"],
    )
    return out


def report(ctx: StepContext, results: dict[str, Any]) -> dict[str, Any]:
    from mlblueprints.scoring.report import render

    where = ctx.backend("scorer").where()
    return reporting.finish_run(ctx, "scoring", render(ctx.uc, ctx.run.run_id, results, where), results)
