"""The scoring pattern: the registered model predicts every new interval of rows.

Scheduled on the feature views' Assets (all of them updated: the features of the interval are
complete), on the rows' Gold Asset, or on a cron timetable (``scoring.schedule``)::

    plan -> score -> gate -> commit (emits <usecase>.predictions) -> report

* ``plan`` decides the event dates (the ``event_dates`` Param; else the ranges the triggering
  Asset events carry; else the data interval of a cron run), resolves the model (the version
  behind ``scoring.model.alias``, a pinned version, or the ``version`` Param), checks that the rows
  give every feature the model was trained on with the type it was trained on, and pins the
  snapshots the run reads; on aws its inputs are UNLOADed by Athena (``service``);
* ``score`` streams the rows in record batches through the model and stages the predictions
  (Parquet files no reader sees yet); on aws a SageMaker Batch Transform job (``service``);
* ``gate`` validates the staged predictions with Great Expectations (the use case's suite, plus
  one prediction per input row, unique keys, scores present and, for a classifier, in [0, 1]);
* ``commit`` replaces the interval in the predictions table in one commit (Iceberg locally; an
  Athena MERGE by key on aws) and emits the ``<usecase>.predictions`` Asset with the range, the
  snapshot and the model version.
"""

from __future__ import annotations

from mlblueprints.config import UseCase
from mlblueprints.core.naming import AssetSpec, feature_view_asset, predictions_asset, table_asset
from mlblueprints.core.service import ATHENA, SAGEMAKER_TRANSFORM
from mlblueprints.patterns import ParamSpec, PatternSpec, Schedule, Step, base_tags, report_step

STEPS = "mlblueprints.scoring.steps"
RESULTS = "mlblueprints.core.results"


def _schedule(uc: UseCase) -> tuple[Schedule, list[AssetSpec]]:
    when = uc.scoring_schedule
    rows = uc.scoring_rows()
    if when == "features":
        views = [feature_view_asset(uc, v) for v in rows["views"]]
        names = [a.name for a in views]
        return Schedule(assets=names[0] if len(names) == 1 else ("all", *names)), views
    if when == "gold":
        gold = table_asset(uc, rows["source"])
        return Schedule(assets=gold.name), [gold]
    return Schedule(cron=when), []


def declare(uc: UseCase) -> PatternSpec | None:
    if uc.scoring is None or uc.training is None:
        return None
    schedule, consumed = _schedule(uc)
    predictions = predictions_asset(uc)
    steps = (
        Step("plan", f"{STEPS}:plan", capability="scorer", service=ATHENA, result=f"{RESULTS}:ScoringPlan"),
        Step(
            "score",
            f"{STEPS}:score",
            inputs={"planned": "plan"},
            capability="scorer",
            service=SAGEMAKER_TRANSFORM,
            result=f"{RESULTS}:ScoringScored",
        ),
        Step("gate", f"{STEPS}:gate", inputs={"planned": "plan", "scored": "score"}, result=f"{RESULTS}:ScoringGate"),
        Step(
            "commit",
            f"{STEPS}:commit",
            inputs={"planned": "plan", "scored": "score", "gated": "gate"},
            emits=(predictions.name,),
            capability="scorer",
            service=ATHENA,
            result=f"{RESULTS}:ScoringCommit",
        ),
        report_step(STEPS, ("commit",)),
    )
    params = (
        ParamSpec(
            "event_dates",
            [],
            "array",
            "Event dates to score (their min..max range). Empty: what the triggering Asset events say "
            "changed, or the data interval of a scheduled run.",
            {"type": "string", "format": "date"},
        ),
        ParamSpec(
            "version",
            0,
            "integer",
            "A registered model version to score with instead of the configured one (0: scoring.model).",
        ),
    )
    return PatternSpec(
        pattern="scoring",
        usecase=uc.name,
        description=f"{uc.name}: batch scoring with {uc.model_name} -> {uc.scoring.output_table} ({uc.target})",
        doc=__doc__ or "",
        schedule=schedule,
        steps=steps,
        params=params,
        assets=(*consumed, predictions),
        start_date=uc.start_date,
        tags=base_tags("scoring", uc),
    )
