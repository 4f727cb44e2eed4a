"""The explainer on the local target: TreeSHAP and ``smclarify``'s bias metrics in the worker.

:meth:`LocalExplainer.analyse` loads the version and its holdout from the registry, computes
exact TreeSHAP attributions of a sample and Clarify's pre-training (the holdout's labels) and
post-training (the version's predicted labels at its operating threshold) bias metrics, writes
them as a Clarify job writes them (``analysis.json``, ``explanations_shap/out.csv``) with the
report, and logs them with the version (:func:`mlblueprints.explain.steps.log_analysis`, which
the aws explainer uses for a Clarify job's output).
"""

from __future__ import annotations

import logging
from typing import Any

from mlblueprints.backends import backend_for
from mlblueprints.config import UseCase
from mlblueprints.explain import steps
from mlblueprints.lineage import RunInfo

log = logging.getLogger(__name__)


class LocalExplainer:
    """The explainer capability in the worker (``mlblueprints.backends.Explainer``)."""

    def __init__(self, uc: UseCase):
        if uc.training is None or uc.explainability is None:
            raise ValueError(f"{uc.name}: the explainer needs the training and explainability sections")
        self.uc = uc

    def analyse(self, target: dict[str, Any], run: RunInfo) -> dict[str, Any]:
        import numpy as np

        from mlblueprints.explain import core

        uc = self.uc
        t, e = uc.training, uc.explainability
        assert t is not None and e is not None
        registry = backend_for(uc, "registry")
        version = int(target["version"])
        work = steps.workdir(uc, run.run_id, version)
        holdout = steps.holdout(uc, registry, version, work)
        feats = uc.model_features()
        label = uc.training_sets[t.training_set].labels.label
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
            run_id=run.run_id,
            git_commit=run.git_commit,
            config_hash=run.config_hash,
            holdout_rows=len(holdout),
            predicted_label_threshold=float(target["threshold"]),
        )
        out_dir = work / steps.ARTIFACT_DIR
        core.write_analysis(doc, out_dir, attributions)
        return steps.log_analysis(
            uc,
            registry,
            target,
            out_dir,
            attributions=attributions,
            explained=explained,
            shap_note=shap_note,
            holdout_rows=len(holdout),
        )
