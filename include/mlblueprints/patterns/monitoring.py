"""The monitoring pattern: each scored interval against the scoring version's reference, and the
alert policy that closes the loop to retraining.

Scheduled on the ``<usecase>.predictions`` Asset the scoring pattern emits (and run on demand for
any window: the ``event_dates`` and ``version`` Params)::

    plan -> measure -> decide -> alert (emits <usecase>.drift_alert) -> report

* ``plan`` picks the window (the Param, else the range the predictions events carry) and the
  version that scored it;
* ``measure`` reads the version's reference sketch from its run's artifacts (computed once per
  version from its training set at the snapshot its lineage records, then kept), rebuilds the
  window's rows from the snapshots its scoring run pinned (on aws: the window's predictions
  UNLOADed by Athena, joined with the transform input their scoring run recorded), and tests
  every monitored column with
  the test Evidently would choose (``monitoring.stats``); data quality per column; the version's
  ROC-AUC and PR-AUC on rows whose labels have landed since; Evidently's HTML report and JSON
  snapshot of a sample;
* ``decide`` applies ``monitoring.alert`` (signals, consecutive windows, cooldown, minimum rows)
  over the decisions before this window, and records the window's metric rows and decision
  (Iceberg tables; on aws written by Athena statements, and the metrics also go to CloudWatch);
* ``alert`` emits ``<usecase>.drift_alert`` with the reason, the window and the drifted columns
  when the decision fired (skipped otherwise): the training pattern is scheduled on it.
"""

from __future__ import annotations

from mlblueprints.config import UseCase
from mlblueprints.core.naming import drift_alert_asset, predictions_asset
from mlblueprints.core.service import ATHENA
from mlblueprints.patterns import ParamSpec, PatternSpec, Schedule, Step, base_tags, report_step

STEPS = "mlblueprints.monitoring.steps"
RESULTS = "mlblueprints.core.results"


def declare(uc: UseCase) -> PatternSpec | None:
    if uc.monitoring is None or uc.scoring is None or uc.training is None:
        return None
    predictions = predictions_asset(uc)
    drift = drift_alert_asset(uc)
    steps = (
        Step("plan", f"{STEPS}:plan", result=f"{RESULTS}:MonitoringPlan"),
        Step(
            "measure",
            f"{STEPS}:measure",
            inputs={"planned": "plan"},
            capability="monitor",
            service=ATHENA,
            result=f"{RESULTS}:MonitoringMeasure",
        ),
        Step(
            "decide",
            f"{STEPS}:decide",
            inputs={"measured": "measure"},
            capability="monitor",
            service=ATHENA,
            result=f"{RESULTS}:MonitoringDecision",
        ),
        Step(
            "alert",
            f"{STEPS}:alert",
            inputs={"decided": "decide"},
            emits=(drift.name,),
            result=f"{RESULTS}:MonitoringAlert",
        ),
        report_step(STEPS, ("alert",)),
    )
    params = (
        ParamSpec(
            "event_dates",
            [],
            "array",
            "Event dates of the window to monitor (their min..max range). Empty: the range of the triggering "
            "predictions events.",
            {"type": "string", "format": "date"},
        ),
        ParamSpec(
            "version",
            0,
            "integer",
            "The registered version whose predictions to monitor (0: the one the predictions events name, else "
            "scoring.model).",
        ),
    )
    return PatternSpec(
        pattern="monitoring",
        usecase=uc.name,
        description=f"{uc.name}: drift of each scored interval of {uc.model_name} -> alert policy -> retraining "
        f"({uc.target})",
        doc=__doc__ or "",
        schedule=Schedule(assets=predictions.name),
        steps=steps,
        params=params,
        assets=(predictions, drift),
        start_date=uc.start_date,
        tags=base_tags("monitoring", uc),
    )
