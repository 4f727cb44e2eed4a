"""The steps of the monitoring pattern (declared in ``mlblueprints.patterns.monitoring``).

``plan`` (which window, which version) -> ``measure`` (the window against the version's reference:
drift, data quality, delayed-label model quality; Evidently's report) -> ``decide`` (the alert
policy over the history; the window's rows and decision recorded) -> ``alert`` (emits
``<usecase>.drift_alert`` when the decision fired; skipped otherwise) -> ``report``.
"""

from __future__ import annotations

import json
import logging
from datetime import date
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.core import reporting
from mlblueprints.core.context import StepContext, date_list
from mlblueprints.core.naming import drift_alert_asset, predictions_asset, safe
from mlblueprints.errors import PermanentError, StepSkipped
from mlblueprints.monitoring import core, policy

log = logging.getLogger(__name__)

ARTIFACT_DIR = "monitoring"  # the reference sketch of a version, among its run's artifacts


def _monitoring(ctx: StepContext) -> Any:
    m = ctx.uc.monitoring
    if m is None or ctx.uc.scoring is None or ctx.uc.training is None:
        raise PermanentError(f"{ctx.uc.name}: the use case has no monitoring (or scoring, or training) section")
    return m


def plan(ctx: StepContext) -> dict[str, Any]:
    """The window (the ``event_dates`` Param, else the range of the triggering predictions events)
    and the version that scored it (the ``version`` Param, else the events', else the one behind
    ``scoring.model``)."""
    from mlblueprints.scoring import core as scoring_core
    from mlblueprints.scoring.steps import resolve_model

    uc = ctx.uc
    _monitoring(ctx)
    chosen = date_list(ctx.params.get("event_dates"))
    events = [e for e in ctx.triggering.get(predictions_asset(uc).name, []) if e]
    if chosen:
        lo, hi, source = chosen[0], chosen[-1], "the event_dates Param"
    elif events:
        lo = min(date.fromisoformat(str(e["range"][0])) for e in events)
        hi = max(date.fromisoformat(str(e["range"][1])) for e in events)
        source = "the predictions event" + ("s" if len(events) > 1 else "")
    else:
        raise PermanentError(
            f"{uc.name}: monitoring: no window: set the event_dates Param (YYYY-MM-DD), or let the predictions "
            "Asset trigger the run"
        )
    version = int(ctx.params.get("version") or 0) or max((int(e["version"]) for e in events), default=0)
    if version:
        registered = ctx.backend("registry").lineage(version=version)
        model = scoring_core.model_from_registry(uc, registered, None)
    else:
        model = resolve_model(ctx)
    log.info("monitoring %s..%s (from %s), scored by %s", lo, hi, source, model["label"])
    return {"window": [lo.isoformat(), hi.isoformat()], "window_source": source, "model": model}


def _workdir(ctx: StepContext) -> Path:
    return runtime.path("monitoring-work", ctx.uc.name, safe(ctx.run.run_id))


def _reference(ctx: StepContext, model: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The version's reference sketch and report sample: from its run's artifacts when computed
    before (for this reference definition and these columns), else computed once and logged."""
    import pandas as pd

    uc, m = ctx.uc, _monitoring(ctx)
    registry = ctx.backend("registry")
    version = int(model["version"])
    key = core.reference_key(uc, version)
    where = f"{ARTIFACT_DIR}/{key}"
    work = _workdir(ctx) / "reference"
    try:
        sk = registry.fetch_artifact(version, f"{where}/reference.json", work)
        sample = registry.fetch_artifact(version, f"{where}/reference_sample.parquet", work)
        log.info("reference of version %s: %s (computed before)", version, where)
        return json.loads(Path(sk).read_text()), pd.read_parquet(sample)
    except LookupError:
        pass
    frame, what = ctx.backend("monitor").reference(model)
    doc = core.reference_sketch(uc, frame, version, what)
    out = work / "new"
    out.mkdir(parents=True, exist_ok=True)
    (out / "reference.json").write_text(json.dumps(doc, default=str))
    cols = core.columns(uc)
    sample = frame[cols].sample(n=min(m.report_rows, len(frame)), random_state=m.seed).reset_index(drop=True)
    sample.to_parquet(out / "reference_sample.parquet", index=False)
    registry.log_artifacts(version, out, where)
    log.info("reference of version %s computed from %s (%s rows) and logged as %s", version, what, len(frame), where)
    return doc, sample


def measure(ctx: StepContext, planned: dict[str, Any]) -> Any:
    """Every metric of the window against the version's reference, and Evidently's report (on
    aws the window's rows are UNLOADed by Athena first: a service call)."""
    _monitoring(ctx)
    lo, hi = (date.fromisoformat(x) for x in planned["window"])
    out = ctx.backend("monitor").window(lo, hi, planned["model"])
    return ctx.then(out, _measured, planned=planned)


def _measured(ctx: StepContext, window: Any, planned: dict[str, Any]) -> dict[str, Any]:
    uc = ctx.uc
    model = planned["model"]
    current, labels, label = window
    reference, ref_sample = _reference(ctx, model)
    registered = dict(
        (ctx.backend("registry").lineage(version=int(model["version"]))["lineage"] or {}).get("metrics") or {}
    )
    got = core.evaluate(uc, reference, current, labels=labels, registered_metrics=registered, label_column=label)
    for p in got["problems"]:
        log.warning("%s", p)
    report = None
    if len(current):
        report = _evidently_report(ctx, ref_sample, current, planned["window"])
    fired = [k for k, v in got["signals"].items() if v]
    log.info(
        "%s rows in %s..%s; drifted: %s; signals true: %s",
        len(current),
        *planned["window"],
        got["drifted_columns"] or "none",
        fired or "none",
    )
    return {
        "window": planned["window"],
        "model_name": model["name"],
        "model_version": int(model["version"]),
        "rows": got["current_rows"],
        "reference": {"source": reference["source"], "rows": reference["rows"], "key": reference["key"]},
        "metrics": got["rows"],
        "signals": got["signals"],
        "drifted_columns": got["drifted_columns"],
        "drifted_share": got["drifted_share"],
        "quality_breaches": got["quality_breaches"],
        "model_quality": got["model_quality"],
        "problems": got["problems"],
        "report": report,
    }


def _evidently_report(ctx: StepContext, ref_sample: Any, current: Any, window: list[str]) -> dict[str, Any]:
    """Evidently's data-drift and data-summary report of a sample of the window against the
    reference's sample, as HTML and as its JSON snapshot (the verdicts of record are the full
    window's, in the monitoring table)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset, DataSummaryPreset

    uc, m = ctx.uc, _monitoring(ctx)
    cols = [c for c in core.columns(uc) if c in current.columns]
    cur = current[cols]
    if len(cur) > m.report_rows:
        cur = cur.sample(n=m.report_rows, random_state=m.seed)
    cat = [c for c in cols if c in m.categorical]
    definition = DataDefinition(numerical_columns=[c for c in cols if c not in cat], categorical_columns=cat)
    per_method = {c: t.method for c, t in m.per_column.items() if t.method and c in cols}
    per_threshold = {c: t.threshold for c, t in m.per_column.items() if t.threshold is not None and c in cols}
    report = Report(
        [
            DataDriftPreset(
                columns=cols,
                drift_share=m.drift_share,
                method=m.method,
                threshold=m.threshold,
                per_column_method=per_method or None,
                per_column_threshold=per_threshold or None,
            ),
            DataSummaryPreset(columns=cols),
        ]
    )
    snapshot = report.run(
        current_data=Dataset.from_pandas(cur.reset_index(drop=True), data_definition=definition),
        reference_data=Dataset.from_pandas(ref_sample[cols].reset_index(drop=True), data_definition=definition),
    )
    out = ctx.backend("monitor").report_dir(*window)
    html, snap = out / "report.html", out / "snapshot.json"
    snapshot.save_html(str(html))
    snapshot.save_json(str(snap))
    return {"html": str(html), "snapshot": str(snap), "rows": {"current": len(cur), "reference": len(ref_sample)}}


def decide(ctx: StepContext, measured: dict[str, Any]) -> Any:
    """The alert policy over the window's signals and the decisions before it; the window's metric
    rows and its decision recorded (a rerun replaces the rows and keeps the first decision; on aws
    by Athena statements: a service call), then published."""
    uc, m = ctx.uc, _monitoring(ctx)
    assert uc.training is not None
    monitor = ctx.backend("monitor")
    lo, hi = measured["window"]
    d = policy.decide(
        {
            "window_start": lo,
            "window_end": hi,
            "rows": measured["rows"],
            "signals": measured["signals"],
            "drifted_columns": measured["drifted_columns"],
        },
        monitor.history(),
        signals=m.signals(uc.training.task),
        consecutive=m.alert.consecutive,
        cooldown_days=m.alert.cooldown_days,
        min_rows=m.alert.min_rows,
    ).as_dict()
    ident_ = {
        "usecase": uc.name,
        "model_name": measured["model_name"],
        "model_version": measured["model_version"],
        "window_start": lo,
        "window_end": hi,
    }
    written = monitor.write(ident_, measured["metrics"], d, ctx.run)
    return ctx.then(written, _decided, ident_=ident_, metrics=measured["metrics"], decision=d)


def _decided(
    ctx: StepContext, written: dict[str, Any], ident_: dict[str, Any], metrics: list[dict[str, Any]], decision: dict
) -> dict[str, Any]:
    """After the window's rows and decision are recorded: the metrics published (aws: CloudWatch)."""
    published = ctx.backend("monitor").publish(ident_, metrics, decision)
    log.info("decision for %s..%s: %s", ident_["window_start"], ident_["window_end"], decision["reason"])
    return {**decision, "model_version": ident_["model_version"], "written": written, "published": published}


def alert(ctx: StepContext, decided: dict[str, Any]) -> dict[str, Any]:
    """Emit the drift alert (the training pattern is scheduled on it) when the decision fired."""
    if not decided["fired"] or decided.get("rerun_of"):
        raise StepSkipped(f"no alert: {decided['reason']}")
    extra = {
        "reason": decided["reason"],
        "window": [decided["window_start"], decided["window_end"]],
        "signals": decided["signals"],
        "drifted_columns": decided["drifted_columns"],
        "model_version": decided["model_version"],
        "run_id": ctx.run.run_id,
    }
    ctx.emit(drift_alert_asset(ctx.uc).name, extra)
    log.info("drift alert: %s", decided["reason"])
    return extra


def report(ctx: StepContext, results: dict[str, Any]) -> dict[str, Any]:
    from mlblueprints.monitoring.report import render

    decided = results.get("decide")
    if decided and results.get("alert") is None and (not decided["fired"] or decided.get("rerun_of")):
        results = {**results, "alert": {"skipped": "no alert"}}
    where = ctx.backend("monitor").where()
    return reporting.finish_run(ctx, "monitoring", render(ctx.uc, ctx.run.run_id, results, where), results)
