"""The promotion pattern: a registered challenger on the endpoint as a canary beside the champion,
judged by guardrails on live or replayed traffic, then promoted or rolled back on its own.

Scheduled on the ``<usecase>.model.explained`` Asset the explainability pattern's fairness gate
emits (on ``<usecase>.model.challenger``, the training pattern's registration, for a use case
without explainability), and run on demand for any version (the ``version`` Param)::

    target -> deploy -> bake -> decide -> report

* ``target`` picks the challenger and checks it may be deployed (registered, through the
  fairness gate, never rolled back, not the champion already): when not, nothing is deployed and
  the report says why;
* ``deploy`` starts the endpoint when it is not running and records the deployment; the first
  version of a use case (no champion) becomes the champion here, with no canary;
* ``bake`` serves the challenger at each share of ``promotion.canary`` (one canary weight, or
  linear steps), sends traffic (the newest scored rows replayed at a bounded rate, plus any real
  request), and judges ``promotion.guardrails`` on each share's captured requests; on aws
  (``service``) SageMaker's blue/green update, run by the orchestrator while the endpoint sends the
  traffic;
* ``decide`` promotes (registry alias ``champion`` moved, the old one kept as ``previous``, the
  endpoint serving the new champion alone) or rolls back (the champion alone again, the version
  tagged ``mlb.rejected``), and closes the deployment in the history DORA metrics are read from.
"""

from __future__ import annotations

from mlblueprints.config import UseCase
from mlblueprints.core.naming import explained_model_asset, registered_model_asset
from mlblueprints.core.service import SAGEMAKER_ENDPOINT
from mlblueprints.patterns import ParamSpec, PatternSpec, Schedule, Step, base_tags, report_step

STEPS = "mlblueprints.serving.steps"
RESULTS = "mlblueprints.core.results"


def declare(uc: UseCase) -> PatternSpec | None:
    if uc.promotion is None or uc.training is None:
        return None
    trigger = explained_model_asset(uc) if uc.explainability is not None else registered_model_asset(uc)
    steps = (
        Step("target", f"{STEPS}:target", result=f"{RESULTS}:PromotionTarget"),
        Step("deploy", f"{STEPS}:deploy", inputs={"target": "target"}, result=f"{RESULTS}:PromotionDeploy"),
        Step(
            "bake",
            f"{STEPS}:bake",
            inputs={"target": "target", "deployed": "deploy"},
            capability="endpoint",
            service=SAGEMAKER_ENDPOINT,
            result=f"{RESULTS}:PromotionBake",
        ),
        Step(
            "decide",
            f"{STEPS}:decide",
            inputs={"target": "target", "deployed": "deploy", "baked": "bake"},
            result=f"{RESULTS}:PromotionDecision",
        ),
        report_step(STEPS, ("decide",)),
    )
    params = (
        ParamSpec(
            "version",
            0,
            "integer",
            f"The version of {uc.model_name} to deploy as a canary; 0: the one the triggering event names "
            "(a run started by hand: the version behind the challenger alias).",
        ),
    )
    return PatternSpec(
        pattern="promotion",
        usecase=uc.name,
        description=f"{uc.name}: canary of a registered {uc.model_name} challenger on the endpoint -> guardrails "
        f"-> promote or roll back ({uc.target})",
        doc=__doc__ or "",
        schedule=Schedule(assets=trigger.name),
        steps=steps,
        params=params,
        assets=(trigger,),
        start_date=uc.start_date,
        tags=base_tags("promotion", uc),
    )
