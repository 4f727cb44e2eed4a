"""The explainability pattern: SHAP attributions and bias metrics of a registered version, in
SageMaker Clarify's ``analysis.json`` layout, and the fairness gate that marks the version.

Scheduled on the ``<usecase>.model.challenger`` Asset the training pattern emits when it registers
a version, and run on demand for any version (the ``version`` Param)::

    target -> analyse -> gate -> report

* ``target`` picks the version (the Param, else the triggering event's, else the ``challenger``
  alias) and reads what the registry knows of it (its run, its operating threshold);
* ``analyse`` takes the holdout the version was judged on (an artifact of its run) from the
  registry. On the local target the worker loads the version, computes TreeSHAP attributions and
  Clarify's pre- and post-training bias metrics with ``smclarify`` and writes ``analysis.json``
  and ``explanations_shap/out.csv``; on aws a SageMaker Clarify processing job computes them
  (Kernel SHAP, the same bias metrics) with the same settings, the version served to it from its
  model package through a shadow endpoint, and the job's output is read back. Either way they
  are logged as artifacts ``explainability/`` of the version's run;
* ``gate`` reads that ``analysis.json`` back from the registry and applies
  ``explainability.gate``: a version with a metric outside its bounds gets the tag
  ``mlb.fairness_failed`` (which metric of which facet, its value, the bound), and promotion
  refuses it; a version that passes carries no such tag; either way it emits
  ``<usecase>.model.explained`` (the version, passed or not), which promotion is scheduled on;
* ``report`` writes the run report.

On aws ``analyse`` is a task group ``prepare -> sagemaker_processing -> finish``: the provider's
``SageMakerProcessingOperator`` runs the Clarify job (deferrable, named per try, stopped when the
task is killed); the request comes from :mod:`mlblueprints.aws.clarify`.
"""

from __future__ import annotations

from mlblueprints.config import UseCase
from mlblueprints.core.naming import explained_model_asset, registered_model_asset
from mlblueprints.core.service import SAGEMAKER_PROCESSING
from mlblueprints.patterns import ParamSpec, PatternSpec, Schedule, Step, base_tags, report_step

STEPS = "mlblueprints.explain.steps"
RESULTS = "mlblueprints.core.results"


def declare(uc: UseCase) -> PatternSpec | None:
    if uc.training is None or uc.explainability is None:
        return None
    challenger = registered_model_asset(uc)
    explained = explained_model_asset(uc)
    steps = (
        Step("target", f"{STEPS}:target", result=f"{RESULTS}:ExplainTargetResult"),
        Step(
            "analyse",
            f"{STEPS}:analyse",
            inputs={"target": "target"},
            capability="explainer",
            service=SAGEMAKER_PROCESSING,
            result=f"{RESULTS}:ExplainResult",
        ),
        Step(
            "gate",
            f"{STEPS}:gate",
            inputs={"target": "target"},
            after=("analyse",),
            emits=(explained.name,),
            result=f"{RESULTS}:FairnessResult",
        ),
        report_step(STEPS, ("gate",)),
    )
    params = (
        ParamSpec(
            "version",
            0,
            "integer",
            f"The version of {uc.model_name} to explain; 0: the one the triggering challenger event names "
            "(a run started by hand: the version behind the challenger alias).",
        ),
    )
    return PatternSpec(
        pattern="explainability",
        usecase=uc.name,
        description=f"{uc.name}: SHAP and Clarify bias metrics of a registered {uc.model_name} version -> "
        f"fairness gate ({uc.target})",
        doc=__doc__ or "",
        schedule=Schedule(assets=challenger.name),
        steps=steps,
        params=params,
        assets=(challenger, explained),
        start_date=uc.start_date,
        tags=base_tags("explainability", uc),
    )
