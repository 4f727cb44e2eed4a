"""The steps of the explainability pattern (declared in ``mlblueprints.patterns.explainability``).

``target`` (which version) -> ``analyse`` (SHAP and bias metrics on the version's holdout, logged
as artifacts of the version's run) -> ``gate`` (the fairness gate over the logged
``analysis.json``; marks the version in the registry) -> ``report``. The same code on both targets:
the registry backend brings the model and the holdout to the worker.
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


def _workdir(ctx: StepContext, version: int) -> Path:
    return runtime.path("explain", ctx.uc.name, safe(ctx.run.run_id), f"v{version}")


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


def analyse(ctx: StepContext, target: dict[str, Any]) -> dict[str, Any]:
    """TreeSHAP attributions of a sample of the version's holdout and Clarify's bias metrics
    (pre-training on the holdout's labels, post-training on the version's predicted labels at its
    operating threshold), written as a Clarify job's output and logged with the version."""
    import numpy as np
    import pandas as pd

    from mlblueprints.explain import core, html

    uc = ctx.uc
    t, e = _sections(ctx)
    registry = ctx.backend("registry")
    version = int(target["version"])
    work = _workdir(ctx, version)
    try:
        holdout_file = registry.fetch_artifact(version, HOLDOUT_ARTIFACT, work / "input")
    except LookupError as exc:
        raise PermanentError(
            f"{exc}: the version was registered before runs kept their holdout; retrain to explain it"
        ) from exc
    holdout = pd.read_parquet(holdout_file)
    feats = uc.model_features()
    label = uc.training_sets[t.training_set].labels.label
    missing = [c for c in [*feats, label] if c not in holdout.columns]
    if missing:
        raise PermanentError(f"{uc.model_name} version {version}: its holdout has no column(s) {missing}")
    model = registry.load_version(version, t.task, feats)
    x = holdout[feats].to_numpy(dtype=np.float64)
    predicted = (model.scores(x) >= float(target["threshold"])).astype(np.int64)

    facets = [core.Facet(f.name, tuple(f.value_or_threshold)) for f in e.facets]
    bias = (
        core.bias_report(
            holdout,
            facets,
            label,
            e.label_value,
            predicted,
            pre_training=e.pre_training_metrics,
            post_training=e.post_training_metrics,
        )
        if facets
        else {}
    )
    attributions, shap_note, explained = None, None, None
    if model.flavor == "xgboost":
        rng = np.random.default_rng(t.seed)
        rows = np.sort(rng.choice(len(x), size=min(e.sample_size, len(x)), replace=False))
        explained = x[rows]
        attributions = core.tree_shap(model.raw, explained, feats)
    else:
        shap_note = f"no SHAP values: exact TreeSHAP needs an XGBoost booster, the model is a {model.flavor} model"
        log.warning(shap_note)
    doc = core.analysis(
        bias,
        attributions,
        model_name=target["model_name"],
        model_version=version,
        run_id=ctx.run.run_id,
        git_commit=ctx.run.git_commit,
        config_hash=ctx.run.config_hash,
        holdout_rows=len(holdout),
        predicted_label_threshold=float(target["threshold"]),
    )
    path = core.write_analysis(doc, work / ARTIFACT_DIR, attributions)
    html.write_report(doc, e.thresholds(), work / ARTIFACT_DIR, attributions, explained)
    uri = registry.log_artifacts(version, work / ARTIFACT_DIR, ARTIFACT_DIR)
    log.info("analysis of %s version %s: %s", target["model_name"], version, uri)
    top: list[str] = []
    if attributions is not None:
        g = attributions.global_importance()["label0"]
        top = sorted(g, key=lambda f: -g[f])[:10]
    return {
        "analysis": str(path),
        "artifact_uri": uri,
        "metrics": core.metric_values(doc),
        "top_features": top,
        "shap_note": shap_note,
        "holdout_rows": len(holdout),
        "explained_rows": 0 if attributions is None else len(attributions.values),
    }


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
