"""The fairness step of the training pattern (declared in ``mlblueprints.patterns.training``).

``evaluate -> fairness -> register``: the candidate's bias metrics and SHAP attributions on the
holdout, written as a Clarify job's ``analysis.json`` into the evaluation directory (which the
register step logs as MLflow artifacts of the run), and the fairness gate. The same code on both
targets, like evaluation: the trainer backend makes the model and the holdout local first.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mlblueprints.core.context import StepContext
from mlblueprints.errors import PermanentError

log = logging.getLogger(__name__)


def fairness(ctx: StepContext, trained: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any]:
    """Bias metrics (pre-training on the holdout's labels, post-training on the candidate's
    predicted labels at its operating threshold) and TreeSHAP attributions of a sample of the
    holdout; the gate of ``explainability.gate``."""
    import numpy as np

    from mlblueprints.explain import core
    from mlblueprints.training import dataset
    from mlblueprints.training.models import load_model

    uc, t, e = ctx.uc, ctx.uc.training, ctx.uc.explainability
    if t is None or e is None:
        raise PermanentError(f"{uc.name}: the use case has no training or no explainability section")
    ctx.backend("trainer").ensure_local(trained)
    holdout = dataset.read_holdout(Path(trained["job_dir"]))
    feats = uc.model_features()
    label = uc.training_sets[t.training_set].labels.label
    model = load_model(Path(trained["model_dir"]), t.format, t.task, feats)
    x = holdout[feats].to_numpy(dtype=np.float64)
    threshold = float(ev["candidate"]["threshold"])
    predicted = (model.scores(x) >= threshold).astype(np.int64)

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
    attributions, shap_note = None, None
    if model.flavor == "xgboost":
        rng = np.random.default_rng(t.seed)
        rows = np.sort(rng.choice(len(x), size=min(e.sample_size, len(x)), replace=False))
        attributions = core.tree_shap(model.raw, x[rows], feats)
    else:
        shap_note = f"no SHAP values: exact TreeSHAP needs an XGBoost booster, the model is a {model.flavor} model"
        log.warning(shap_note)
    doc = core.analysis(
        bias,
        attributions,
        training_job=trained["job_name"],
        run_id=ctx.run.run_id,
        git_commit=ctx.run.git_commit,
        config_hash=ctx.run.config_hash,
        holdout_rows=len(holdout),
        predicted_label_threshold=threshold,
    )
    out_dir = Path(ev["evaluation_dir"]) / "explainability"
    path = core.write_analysis(doc, out_dir, attributions)
    decision = core.gate(doc, e.thresholds())
    log.info("%s\nanalysis: %s", decision.text(), path)
    top = []
    if attributions is not None:
        g = attributions.global_importance()["label0"]
        top = sorted(g, key=lambda f: -g[f])[:10]
    return {
        "passed": decision.passed,
        "reasons": decision.reasons,
        "checked": decision.checked,
        "decision_text": decision.text(),
        "analysis": str(path),
        "metrics": core.metric_values(doc),
        "top_features": top,
        "shap_note": shap_note,
    }
