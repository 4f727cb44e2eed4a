"""The training pattern: training set -> train (Spot-safe) -> evaluate -> register.

Scheduled on the Assets of the training set's feature views (all of them updated) or on the use
case's drift-alert Asset (emitted by monitoring)::

    training_set -> train -> evaluate -> register -> publish (emits the challenger Asset) -> report

* ``training_set`` builds the point-in-time training set (an Iceberg snapshot locally, a
  content-addressed Parquet object on aws; on aws its inputs are UNLOADed by Athena);
* ``train`` runs the script-mode training entry point: locally as a subprocess with the SageMaker
  contract mapped to directories, checkpoints kept across tries so a retry resumes (the
  ``interrupt`` Param simulates a Spot interruption of the first try); on aws a SageMaker
  training job with managed Spot (``service``), started by the Amazon provider's operator;
* ``evaluate`` scores candidate and reference (champion, else the newest registered version) on
  the time-based holdout and applies the gate;
* ``register`` logs the MLflow run and registers the candidate (alias ``challenger``) only when
  the gate passed (and, on aws, a SageMaker model package version);
* ``publish`` emits the ``<usecase>.model.challenger`` Asset (explainability and promotion are
  scheduled on it), and is skipped when nothing was registered.
"""

from __future__ import annotations

from mlblueprints.config import UseCase
from mlblueprints.core.naming import drift_alert_asset, feature_view_asset, registered_model_asset
from mlblueprints.core.service import ATHENA, SAGEMAKER_TRAINING
from mlblueprints.patterns import ParamSpec, PatternSpec, Schedule, Step, base_tags, report_step

STEPS = "mlblueprints.training.steps"
RESULTS = "mlblueprints.core.results"


def declare(uc: UseCase) -> PatternSpec | None:
    if uc.training is None:
        return None
    t = uc.training
    views = [feature_view_asset(uc, v) for v in uc.training_sets[t.training_set].features]
    drift = drift_alert_asset(uc)
    challenger = registered_model_asset(uc)
    steps = (
        Step(
            "training_set",
            f"{STEPS}:training_set",
            capability="features",
            service=ATHENA,
            result=f"{RESULTS}:TrainingSetResult",
        ),
        Step(
            "train",
            f"{STEPS}:train",
            inputs={"tset": "training_set"},
            capability="trainer",
            service=SAGEMAKER_TRAINING,
            result=f"{RESULTS}:TrainResult",
        ),
        Step("evaluate", f"{STEPS}:evaluate", inputs={"trained": "train"}, result=f"{RESULTS}:EvaluateResult"),
        Step(
            "register",
            f"{STEPS}:register",
            inputs={"tset": "training_set", "trained": "train", "ev": "evaluate"},
            result=f"{RESULTS}:RegisterResult",
        ),
        # a separate step, so that a run whose candidate was not registered emits no event
        Step(
            "publish",
            f"{STEPS}:publish",
            inputs={"registered": "register"},
            emits=(challenger.name,),
            result=f"{RESULTS}:PublishResult",
        ),
        report_step(STEPS, ("publish",)),
    )
    params = (
        ParamSpec(
            "interrupt",
            {"signal": None, "after_rounds": 5},
            "object",
            "Simulate a Spot interruption of the first training try (local target): signal SIGTERM (the "
            "two-minute notice: checkpoint, exit) or SIGKILL (no notice), after_rounds boosting rounds (or "
            "after_seconds). The retry resumes from the checkpoint.",
        ),
        ParamSpec("promote", t.promote, "boolean", "Make a registered candidate the champion right away."),
    )
    return PatternSpec(
        pattern="training",
        usecase=uc.name,
        description=f"{uc.name}: point-in-time training set -> Spot-safe training -> gate -> MLflow ({uc.target})",
        doc=__doc__ or "",
        schedule=Schedule(assets=("any", ("all", *(v.name for v in views)), drift.name)),
        steps=steps,
        params=params,
        assets=(*views, drift, challenger),
        start_date=uc.start_date,
        tags=base_tags("training", uc),
    )
