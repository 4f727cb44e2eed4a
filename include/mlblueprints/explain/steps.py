"""The steps of the explainability pattern (declared in ``mlblueprints.patterns.explainability``).

``target`` (which version) -> ``analyse`` (SHAP and bias metrics on the version's holdout, logged
as artifacts of the version's run: the explainer backend computes them in the worker on the local
target, a SageMaker Clarify job computes them on aws) -> ``gate`` (the fairness gate over the
logged ``analysis.json``; marks the version in the registry) -> ``report``. The gate and the
report are the same code on both targets.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.core import reporting
from mlblueprints.core.context import StepContext
from mlblueprints.core.naming import explained_model_asset, registered_model_asset, safe
from mlblueprints.errors import PermanentError

log = logging.getLogger(__name__)

HOLDOUT_ARTIFACT = "evaluation/holdout.parquet"  # logged with the run by the training pattern
ARTIFACT_DIR = "explainability"  # where the analysis goes among the version's run's artifacts


def _sections(ctx: StepContext) -> tuple[Any, Any]:
    t, e = ctx.uc.training, ctx.uc.explainability
    if t is None or e is None:
        raise PermanentError(f"{ctx.uc.name}: the use case has no training or no explainability section")
    return t, e


def target(ctx: StepContext) -> dict[str, Any]:
    """The version to explain: the ``version`` Param, else the one the triggering challenger event
    names, else the version behind the ``challenger`` alias."""
    uc = ctx.uc
    registry = ctx.backend("registry")
    version, chosen_by = int(ctx.params.get("version") or 0), "the version Param"
    if version < 0:
        raise PermanentError(f"version Param: {version} is not a version number (give 1 or more, or 0)")
    if not version:
        events = ctx.triggering.get(registered_model_asset(uc).name) or []
        named = [int(e["version"]) for e in events if e and e.get("version") is not None]
        version, chosen_by = (max(named), "the challenger event") if named else (0, "")
    if not version:
        mv = registry.model_version(registry.CHALLENGER)
        if mv is None:
            raise PermanentError(
                f"{uc.model_name}: no version to explain: set the version Param, or register a challenger first"
            )
        version, chosen_by = int(mv["version"]), "the challenger alias"
    try:
        info = registry.lineage(version=version)
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own exception types
        raise PermanentError(f"{uc.model_name} version {version}: not in the registry ({exc})") from exc
    lin = info["lineage"]
    task = lin.get("task", "binary")
    if task != "binary":
        raise PermanentError(f"{uc.model_name} version {version} is a {task} model: bias metrics need a binary one")
    threshold = (lin.get("metrics") or {}).get("threshold")
    if threshold is None:
        raise PermanentError(f"{uc.model_name} version {version}: its lineage records no operating threshold")
    out = {
        "model_name": info["model_name"],
        "version": version,
        "chosen_by": chosen_by,
        "mlflow_run_id": info["mlflow_run_id"],
        "threshold": float(threshold),
        "trained_by": lin.get("run_id"),
    }
    log.info("explaining %s version %s (%s)", out["model_name"], version, chosen_by)
    return out


def workdir(uc: Any, run_id: str, version: int) -> Path:
    return runtime.path("explain", uc.name, safe(run_id), f"v{version}")


def _workdir(ctx: StepContext, version: int) -> Path:
    return workdir(ctx.uc, ctx.run.run_id, version)


def holdout(uc: Any, registry: Any, version: int, work: Path) -> Any:
    """The holdout the version was judged on (an artifact of its run), with the model's features,
    the label and every facet."""
    import pandas as pd

    t = uc.training
    try:
        holdout_file = registry.fetch_artifact(version, HOLDOUT_ARTIFACT, work / "input")
    except LookupError as exc:
        raise PermanentError(
            f"{exc}: the version was registered before runs kept their holdout; retrain to explain it"
        ) from exc
    frame = pd.read_parquet(holdout_file)
    label = uc.training_sets[t.training_set].labels.label
    missing = [c for c in [*uc.model_features(), label] if c not in frame.columns]
    if missing:
        raise PermanentError(f"{uc.model_name} version {version}: its holdout has no column(s) {missing}")
    return frame


def log_analysis(
    uc: Any,
    registry: Any,
    target: dict[str, Any],
    out_dir: Path,
    *,
    attributions: Any = None,
    explained: Any = None,
    shap_note: str | None = None,
    holdout_rows: int,
) -> dict[str, Any]:
    """The report of the ``analysis.json`` in ``out_dir`` (ours or a Clarify job's, read by the
    same reader), everything in ``out_dir`` logged as artifacts ``explainability/`` of the
    version's run, and the step's result."""
    from mlblueprints.explain import core, html

    _, e = uc.training, uc.explainability
    version = int(target["version"])
    path = out_dir / "analysis.json"
    doc = core.read_analysis(path)
    meta = {"model_name": target["model_name"], "model_version": version, **(doc.get("mlblueprints") or {})}
    html.write_report({**doc, "mlblueprints": meta}, e.thresholds(), out_dir, attributions, explained)
    uri = registry.log_artifacts(version, out_dir, ARTIFACT_DIR)
    log.info("analysis of %s version %s: %s", target["model_name"], version, uri)
    g = ((doc.get("explanations") or {}).get("kernel_shap") or {}).get("label0", {}).get("global_shap_values") or {}
    explained_rows = 0
    per_record = out_dir / "explanations_shap" / "out.csv"
    if per_record.exists():
        with per_record.open(encoding="utf-8") as f:
            explained_rows = max(0, sum(1 for line in f if line.strip()) - 1)
    return {
        "analysis": str(path),
        "artifact_uri": uri,
        "metrics": core.metric_values(doc),
        "top_features": sorted(g, key=lambda f: -g[f])[:10],
        "shap_note": shap_note,
        "holdout_rows": int(holdout_rows),
        "explained_rows": explained_rows,
    }


def analyse(ctx: StepContext, target: dict[str, Any]) -> dict[str, Any]:
    """TreeSHAP attributions and Clarify's bias metrics of the version on its holdout, logged with
    the version: computed in the worker (local), or by a SageMaker Clarify job (aws), whose
    result the orchestrator hands back to the explainer."""
    _sections(ctx)
    return ctx.backend("explainer").analyse(target, ctx.run)


def gate(ctx: StepContext, target: dict[str, Any]) -> dict[str, Any]:
    """The fairness gate over the ``analysis.json`` logged with the version (read back from the
    registry, as a Clarify job's would be): a broken bound tags the version, which promotion then
    refuses; a pass removes any earlier tag."""
    from mlblueprints.explain import core

    _, e = _sections(ctx)
    registry = ctx.backend("registry")
    version = int(target["version"])
    path = registry.fetch_artifact(version, f"{ARTIFACT_DIR}/analysis.json", _workdir(ctx, version) / "gate")
    decision = core.gate(core.read_analysis(path), e.thresholds())
    tag = registry.mark_fairness(version, [] if decision.passed else decision.reasons, ctx.run.run_id)
    log.info("%s version %s: %s", target["model_name"], version, decision.text())
    ctx.emit(
        explained_model_asset(ctx.uc).name,
        {"version": version, "passed": decision.passed, "reasons": decision.reasons, "run_id": ctx.run.run_id},
    )
    return {
        "version": version,
        "passed": decision.passed,
        "reasons": decision.reasons,
        "checked": decision.checked,
        "decision_text": decision.text(),
        "tag": tag,
    }


def report(ctx: StepContext, results: dict[str, Any]) -> dict[str, Any]:
    from mlblueprints.explain.report import render

    return reporting.finish_run(ctx, "explainability", render(ctx.uc, ctx.run.run_id, results), results)
