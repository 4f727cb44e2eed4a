"""Typed step results: what each step hands to the next, on every target.

A step's result is a JSON object (an Airflow XCom, a state machine's S3 document), read by the
steps after it, by the run report and by the DAGs an Asset triggers. Each is declared here as a
``TypedDict``, and a pattern step names its type (``Step(result=...)``); both orchestrators check
the value a step returns against it before handing it on (:func:`check`), so a backend that
forgets or renames a key fails at the step that produced it, naming the step and the key, on
the local and the aws target alike - not three steps later with a ``KeyError``.

Keys every backend returns are required; keys only one target knows (an Iceberg snapshot id
locally, the Athena statements on aws) are ``NotRequired``. Values a target cannot know (rows an
Athena ``MERGE`` wrote) are ``None`` there. Extra keys are allowed: a result may say more than its
type promises, never less.
"""

from __future__ import annotations

from functools import cache
from typing import (
    Any,
    NotRequired,  # pydantic validates typing_extensions TypedDicts on 3.11
)

from typing_extensions import TypedDict

from mlblueprints.errors import PermanentError


class StepResultError(PermanentError, TypeError):
    """A step returned a value that is not its declared result type (a bug: the same inputs give
    the same value, so no retry)."""


class Skipped(TypedDict):
    """A step with nothing to do this run (a data set not selected, compaction turned off)."""

    skipped: bool


class ReportResult(TypedDict):
    report: str  # where the run report was written


# ---------------------------------------------------------------- lakehouse


class TablesResult(TypedDict):
    created: list[str]
    database: NotRequired[str]
    tables: NotRequired[int]
    note: NotRequired[str]


class IngestResult(TypedDict):
    dataset: str
    landing_dates: list[str]
    files: list[dict[str, Any]]  # one outcome per landed file
    file_status: dict[str, int]  # status -> files
    rows_landed: int | None  # None on aws (Athena's INSERT does not say)
    rejected_files: list[dict[str, Any]]
    warnings: list[str]
    bronze_snapshot_id: NotRequired[int | None]
    statements: NotRequired[list[str]]


class SilverResult(TypedDict):
    dataset: str
    landing_dates: list[str]
    rows_landed: int | None
    valid: int | None
    quarantined: int | None
    quarantine_reasons: dict[str, int]
    duplicates: int | None
    rows_into_silver: int | None
    touched_event_dates: list[str]
    superseded_landing_dates: list[str]
    silver_snapshot_id: NotRequired[int | None]
    partitions: NotRequired[dict[str, list[str]]]  # table -> partition values written (aws)


class GoldResult(TypedDict):
    table: str
    recomputed: list[str] | None  # [first, last] event date, None when nothing was recomputed
    rows_written: int | None
    gold_snapshot_id: NotRequired[int | None]
    partitions: NotRequired[dict[str, list[str]]]


class GateResult(TypedDict):
    """``quality.gx.GateReport.as_dict()``."""

    suite: str
    table: str
    layer: str
    rows: int
    success: bool
    evaluated: int
    failed_critical: list[dict[str, Any]]
    failed_warning: list[dict[str, Any]]
    verdict: str


class ReconcileResult(TypedDict):
    ok: bool
    problems: list[str]
    datasets: dict[str, list[dict[str, Any]]]
    rejected_files: list[str]


class CompactResult(TypedDict):
    tables: dict[str, Any]


# ---------------------------------------------------------------- features


class FeaturePlan(TypedDict):
    range: list[str]  # [first, last] event date
    views: list[str]
    source: str  # where the range came from (Param, Asset events, Gold snapshot)


class MaterializeResult(TypedDict):
    view: str
    range: list[str]
    rows_in: int
    offline_rows: int
    online_entities: int
    skipped_null_key: int
    skipped_null_event_time: int
    collapsed_duplicates: int
    offline_snapshot_id: NotRequired[int | str | None]


class SkippedView(TypedDict):
    view: str
    skipped: bool


# ---------------------------------------------------------------- training


class TrainingSetResult(TypedDict):
    training_set: str
    table: str
    rows: int
    snapshot_id: int | str  # an Iceberg snapshot id locally, the object's digest on aws
    source_snapshots: dict[str, Any]  # the label and feature tables read, and their snapshots
    feature_views: dict[str, int]  # view -> version


class TrainResult(TypedDict):
    job_name: str
    try_number: int
    model_dir: str
    meta: dict[str, Any]
    metrics: dict[str, Any]
    seconds: float
    data: dict[str, Any]  # the time-based split: train and holdout


class EvaluateResult(TypedDict):
    task: str
    candidate: dict[str, Any]  # the task's metrics (training.evaluate)
    candidate_details: dict[str, Any]
    champion: dict[str, Any] | None  # the reference model's metrics on the same holdout
    champion_version: int | None
    reference: dict[str, Any] | None
    decision: dict[str, Any]  # GateDecision.as_dict(): passed, against, rows, reasons
    holdout: dict[str, Any] | None
    evaluation_dir: str


class RegisterResult(TypedDict):
    verdict: str  # "registered" or "not promoted"
    mlflow_run_id: str
    model_name: str
    version: int | None
    aliases: list[str]
    lineage: dict[str, Any]
    model_package: NotRequired[dict[str, Any]]


class PublishResult(TypedDict):
    model: str
    version: int
    run_id: str


# ---------------------------------------------------------------- explainability


class ExplainTargetResult(TypedDict):
    model_name: str
    version: int
    chosen_by: str  # "the version Param", "the challenger event" or "the challenger alias"
    mlflow_run_id: str  # the run that made the version (its artifacts hold the holdout)
    threshold: float  # the version's operating threshold: predicted labels for post-training bias
    trained_by: str | None  # the Airflow run that trained it (lineage)


class ExplainResult(TypedDict):
    analysis: str  # analysis.json (Clarify's layout) on this worker
    artifact_uri: str  # where it was logged: artifacts explainability/ of the version's run
    metrics: list[dict[str, Any]]  # every bias metric computed (explain.core.metric_values)
    top_features: list[str]  # by mean |SHAP|, most important first
    shap_note: str | None  # why there are no SHAP values, when there are none
    holdout_rows: int
    explained_rows: int  # records whose per-record attributions are in explanations_shap/out.csv


class FairnessResult(TypedDict):
    version: int
    passed: bool  # every gated bias metric of every facet within its bounds
    reasons: list[str]  # one line per broken bound
    checked: list[dict[str, Any]]  # per gated metric and facet: value, bounds, passed
    decision_text: str
    tag: str | None  # the value of the version's fairness_failed tag (None: no tag)


# ---------------------------------------------------------------- scoring


class ScoringPlan(TypedDict):
    range: list[str]  # the event dates [lo, hi]
    range_source: str  # the Param, the triggering Asset events or the run's data interval
    model: dict[str, Any]  # scoring.core.model_from_registry (on aws with its model package)
    rows: dict[str, Any]  # UseCase.scoring_rows()
    snapshots: dict[str, Any]  # table -> snapshot read (Iceberg id locally, Glue metadata location on aws)
    rows_in: int
    skipped_null_key: int
    output_table: str
    target: str
    seconds: float
    key_types: NotRequired[list[list[str]]]  # aws: (key, type) for parsing the job's output
    source_queries: NotRequired[dict[str, str]]  # aws: table -> the UNLOAD that read it
    input_s3_uri: NotRequired[str]  # aws: the transform job's input prefix


class ScoringScored(TypedDict):
    batch_id: str | None  # the staged write (local) or the transform job (aws); None: nothing scored
    rows: NotRequired[int]
    staged: NotRequired[str]  # local: the directory of the staged Parquet files
    batches: NotRequired[int]
    files: NotRequired[int]
    histogram: NotRequired[dict[str, Any]]
    seconds: NotRequired[float]
    predict_seconds: NotRequired[float]
    rows_per_second: NotRequired[float | None]
    flavor: NotRequired[str]
    flagged: NotRequired[int]
    decisions: NotRequired[dict[str, int]]
    job_name: NotRequired[str | None]  # aws
    how: NotRequired[str]  # aws: created or adopted
    model_name: NotRequired[str | None]
    output_s3_uri: NotRequired[str]
    transform_seconds: NotRequired[float | None]


class ScoringGate(TypedDict):
    success: bool
    verdict: str
    rows: int
    evaluated: int
    summary: str
    suite: NotRequired[str]
    table: NotRequired[str]
    layer: NotRequired[str]
    failed_critical: NotRequired[list[dict[str, Any]]]
    failed_warning: NotRequired[list[dict[str, Any]]]
    histogram: NotRequired[dict[str, Any]]  # aws: the figures of the job's output
    flagged: NotRequired[int]
    decisions: NotRequired[dict[str, int]]


class ScoringCommit(TypedDict):
    table: str
    range: list[str]
    rows: int
    snapshot_id: int | str | None  # an Iceberg snapshot id locally, the Glue metadata location on aws
    model: str
    version: int
    files: NotRequired[int | None]  # local
    snapshots_expired: NotRequired[int]
    orphan_files_removed: NotRequired[int]
    lineage: NotRequired[str]  # aws: the lineage record on S3


# ---------------------------------------------------------------- monitoring


class MonitoringPlan(TypedDict):
    window: list[str]  # [first, last] event date (YYYY-MM-DD)
    window_source: str
    model: dict[str, Any]  # as scoring resolves it (scoring.core.model_from_registry)


class MonitoringMeasure(TypedDict):
    window: list[str]
    model_name: str
    model_version: int
    rows: int
    reference: dict[str, Any]  # source, rows, key (of the stored sketch)
    metrics: list[dict[str, Any]]  # the monitoring table's rows of the window (monitoring.core)
    signals: dict[str, bool]  # dataset_drift, prediction_drift, data_quality, model_quality
    drifted_columns: list[str]
    drifted_share: float
    quality_breaches: list[str]
    model_quality: dict[str, Any]
    problems: list[str]  # columns that could not be tested, and why
    report: dict[str, Any] | None  # Evidently's HTML report and JSON snapshot (None: empty window)


class MonitoringDecision(TypedDict):
    window_start: str
    window_end: str
    rows: int
    decided: bool
    fired: bool
    signals: list[str]
    drifted_columns: list[str]
    streak: int
    reason: str
    rerun_of: str | None
    model_version: int
    written: dict[str, Any]
    published: dict[str, Any]


class MonitoringAlert(TypedDict):
    reason: str
    window: list[str]
    signals: list[str]
    drifted_columns: list[str]
    model_version: int
    run_id: str


# ---------------------------------------------------------------- promotion


class PromotionTarget(TypedDict):
    model_name: str
    version: int  # the challenger
    chosen_by: str  # "the version Param", "the triggering event" or "the challenger alias"
    champion_version: int | None  # None: no champion yet (the first version)
    git_commit: str | None  # the version's lineage
    committed_at: str | None  # when that commit was made (ISO 8601), for the lead time
    refused: str | None  # why it is not deployed (fairness gate, rolled back before, champion already)


class PromotionDeploy(TypedDict):
    deployment_id: int  # the row of the deployment history
    url: str  # the endpoint
    first: bool  # no champion before: promoted at once, no canary
    started_at: str


class PromotionBake(TypedDict):
    bakes: list[dict[str, Any]]  # per canary share: traffic sent, requests answered per variant, verdicts
    passed: bool
    tripped: list[str]  # the guardrails that failed at the last share, one line each


class PromotionDecision(TypedDict):
    outcome: str  # promoted | rolled_back
    reason: str
    version: int
    champion: int  # the champion after the decision
    generation: int  # the endpoint state serving it


# a step that may skip
IngestStep = IngestResult | Skipped
SilverStep = SilverResult | Skipped
GateStep = GateResult | Skipped
CompactStep = CompactResult | Skipped
MaterializeStep = MaterializeResult | SkippedView


# ---------------------------------------------------------------- checking


@cache
def _adapter(ref: str) -> Any:
    from pydantic import TypeAdapter

    from mlblueprints.core.service import resolve

    return TypeAdapter(resolve(ref))


def check(step_id: str, ref: str | None, value: Any) -> Any:
    """``value`` when it is a ``ref`` (``"module:Type"``; None: not declared), else
    :class:`StepResultError` naming the step and every key that is missing or of the wrong type."""
    if ref is None:
        return value
    from pydantic import ValidationError

    try:
        _adapter(ref).validate_python(value, strict=False)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<result>'}: {e['msg']}" for e in exc.errors()[:10]
        )
        raise StepResultError(
            f"step {step_id} returned a result that is not a {ref.rpartition(':')[2]}: {problems}"
        ) from None
    return value
