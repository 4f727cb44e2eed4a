"""One interface per capability, and the one place that picks local or aws.

Each capability has a ``typing.Protocol`` here and two implementations side by side with the
same method signatures: ``<capability>/local.py`` (embedded defaults: DuckDB, Iceberg in a
SQLite catalog, SQLite, local processes, MLflow on SQLite) and ``<capability>/aws.py`` (Athena,
Glue, S3, SageMaker). :func:`backend_for` chooses between them from the use case's target (a
feature view may name its own) - nowhere else in the project asks which target it is on.

An aws backend gets its clients from an injected :class:`~mlblueprints.aws.session.AwsRuntime`
(built from the Airflow connection in a task, from a boto3 session in a test). A method whose
heavy part is a managed-service job (Athena statements, a SageMaker training job) returns a
:class:`~mlblueprints.core.service.ServiceCall` on aws instead of its result; the orchestrator
runs the job and resumes the backend (:func:`delegates` says, at DAG-parse time, whether a
capability's backend does that).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol

from mlblueprints.config import UseCase
from mlblueprints.core.service import ServiceCall
from mlblueprints.lineage import RunInfo

LOCAL, AWS = "local", "aws"

# capability -> (local implementation, aws implementation), as "module:Class"
IMPLEMENTATIONS: dict[str, tuple[str, str]] = {
    "lakehouse": ("mlblueprints.lakehouse.local:LocalLakehouse", "mlblueprints.lakehouse.aws:AwsLakehouse"),
    "features": ("mlblueprints.features.local:LocalFeatureStore", "mlblueprints.features.aws:AwsFeatureStore"),
    "trainer": ("mlblueprints.training.local:LocalTrainer", "mlblueprints.training.aws:AwsTrainer"),
    "registry": ("mlblueprints.registry.local:MlflowRegistry", "mlblueprints.registry.aws:SageMakerRegistry"),
    "scorer": ("mlblueprints.scoring.local:LocalScorer", "mlblueprints.scoring.aws:AwsScorer"),
    "monitor": ("mlblueprints.monitoring.local:LocalMonitor", "mlblueprints.monitoring.aws:AwsMonitor"),
    "explainer": ("mlblueprints.explain.local:LocalExplainer", "mlblueprints.explain.aws:AwsExplainer"),
    "endpoint": ("mlblueprints.serving.local:LocalEndpoint", "mlblueprints.serving.aws:AwsEndpoint"),
}


class Lakehouse(Protocol):
    """landing -> Bronze -> Silver -> Gold, gates, reconciliation, compaction."""

    def ensure_tables(self, run: RunInfo) -> dict[str, Any]: ...
    def ingest_bronze(self, dataset: str, dates: list[date], run: RunInfo) -> dict[str, Any] | ServiceCall: ...
    def build_silver(self, dataset: str, dates: list[date], run: RunInfo) -> dict[str, Any] | ServiceCall: ...
    def build_gold(self, gold: str, touched: dict[str, list[str]], run: RunInfo) -> dict[str, Any] | ServiceCall: ...
    def reconcile(
        self, silvers: list[dict[str, Any]], ingests: list[dict[str, Any]]
    ) -> dict[str, Any] | ServiceCall: ...
    def compact(self, run: RunInfo, touched: dict[str, list[str]] | None = None) -> dict[str, Any] | ServiceCall: ...
    def gate(self, table: str, layer: str, scope: dict[str, Any], run: RunInfo) -> Any: ...
    def latest_gold_range(self, golds: Sequence[str]) -> tuple[date, date] | None: ...


class FeatureStore(Protocol):
    """Feature views materialized into an offline and an online store; point-in-time training sets."""

    def materialize(self, view: str, lo: date, hi: date, run: RunInfo) -> dict[str, Any] | ServiceCall: ...
    def check_view(self, view: str) -> str | None: ...
    def get_online_features(
        self, view: str, keys: Sequence[Any], as_of: datetime | None = None
    ) -> list[dict[str, Any] | None]: ...
    def build_training_set(self, name: str, run: RunInfo, job_dir: Path) -> dict[str, Any] | ServiceCall: ...
    def describe(self, view: str) -> dict[str, Any]: ...


class Trainer(Protocol):
    """A script-mode training job under the SageMaker contract, resumable after a Spot interruption."""

    def train(
        self, tset: dict[str, Any], job_dir: Path, run: RunInfo, interrupt: dict[str, Any] | None
    ) -> dict[str, Any] | ServiceCall: ...
    def ensure_local(self, trained: dict[str, Any]) -> None: ...


class Registry(Protocol):
    """MLflow tracking and model registry (and, on aws, SageMaker Model Registry packages)."""

    @property
    def tracking_uri(self) -> str: ...
    def model_version(self, alias: str) -> dict[str, Any] | None: ...
    def load_booster(self, alias: str) -> Any: ...
    def reference_model(self, exclude_run_id: str | None = None) -> Any: ...
    def load_reference(self, ref: Any, task: str, features: list[str]) -> Any: ...
    def version_task(self, version: int) -> str: ...
    def record(self, **kw: Any) -> dict[str, Any]: ...
    def register_package(
        self, ts: dict[str, Any], trained: dict[str, Any], ev: dict[str, Any], registered: dict[str, Any], run: RunInfo
    ) -> dict[str, Any] | None: ...
    def promote(self, version: int) -> None: ...
    def refusal(self, version: int) -> str | None: ...
    def reject(self, version: int, reason: str, run_id: str) -> None: ...
    def lineage(self, version: int | None = None, alias: str | None = None) -> dict[str, Any]: ...
    def load_version(self, version: int, task: str, features: list[str]) -> Any: ...
    def fetch_artifact(self, version: int, artifact: str, dst: Path) -> Path: ...
    def log_artifacts(self, version: int, local_dir: Path, artifact_path: str) -> str: ...
    def mark_fairness(self, version: int, reasons: list[str], run_id: str) -> str | None: ...


class Scorer(Protocol):
    """Batch scoring of an interval of rows with a registered model, into the predictions table."""

    def plan(self, lo: date, hi: date, model: dict[str, Any], run: RunInfo) -> dict[str, Any] | ServiceCall: ...
    def score(self, planned: dict[str, Any], run: RunInfo) -> dict[str, Any] | ServiceCall: ...
    def gate(self, planned: dict[str, Any], scored: dict[str, Any], run: RunInfo) -> dict[str, Any]: ...
    def commit(
        self, planned: dict[str, Any], scored: dict[str, Any], gated: dict[str, Any], run: RunInfo
    ) -> dict[str, Any] | ServiceCall: ...
    def predictions(self, entity: Sequence[str] | None = None, limit: int = 20) -> list[dict[str, Any]]: ...
    def where(self) -> list[str]: ...


class Monitor(Protocol):
    """Drift monitoring of scored windows: the rows of a window and of a version's reference, the
    history of decisions, and where the metrics go."""

    def reference(self, model: dict[str, Any]) -> tuple[Any, str]: ...
    def window(self, lo: date, hi: date, model: dict[str, Any]) -> tuple[Any, Any, str | None]: ...
    def history(self) -> list[dict[str, Any]]: ...
    def write(
        self, ident_: dict[str, Any], rows: list[dict[str, Any]], decision: dict[str, Any], run: RunInfo
    ) -> dict[str, Any]: ...
    def publish(
        self, ident_: dict[str, Any], rows: list[dict[str, Any]], decision: dict[str, Any]
    ) -> dict[str, Any]: ...
    def report_dir(self, lo: str, hi: str) -> Path: ...
    def metrics(self, last: int = 10) -> Any: ...
    def where(self) -> list[str]: ...


class Explainer(Protocol):
    """SHAP attributions and bias metrics of a registered version on its holdout, written in
    Clarify's ``analysis.json`` layout and logged with the version."""

    def analyse(self, target: dict[str, Any], run: RunInfo) -> dict[str, Any] | ServiceCall: ...


class Endpoint(Protocol):
    """The online endpoint the promotion pattern deploys to and bakes canaries on: the local
    endpoint moves variant weights itself; on aws the canary is SageMaker's blue/green update."""

    def ensure_running(self) -> dict[str, Any]: ...
    def serving(self) -> list[dict[str, Any]]: ...
    def deploy(self, variants: Sequence[dict[str, Any]], by: str) -> int: ...
    def canary(self, registry: Any, version: int, champion: int, run_id: str) -> list[dict[str, Any]]: ...
    def decided(self, version: int, promoted: bool, reason: str) -> None: ...
    def deployments(self) -> Any: ...
    def where(self) -> list[str]: ...


def target_of(uc: UseCase, capability: str, *, view: str | None = None) -> str:
    """Where ``capability`` runs for ``uc``: the use case's target, or a feature view's own."""
    if capability not in IMPLEMENTATIONS:
        raise KeyError(f"unknown capability {capability!r}; known: {', '.join(IMPLEMENTATIONS)}")
    if capability == "features" and view is not None:
        return uc.view_target(view)
    return uc.target


def delegates(uc: UseCase, capability: str, *, view: str | None = None) -> bool:
    """Whether the backend hands its service jobs to the orchestrator (so a DAG renders them as
    provider tasks of their own); decided without importing the backend."""
    return target_of(uc, capability, view=view) == AWS


def drift_alert_watch(uc: UseCase) -> dict[str, Any] | None:
    """The queue drift alerts of ``uc`` arrive on from outside Airflow (an
    :class:`~mlblueprints.core.naming.AssetSpec` ``watch``): on aws with a monitoring section,
    the SQS queue the CloudWatch alarms feed (:mod:`mlblueprints.monitoring.aws`); None
    elsewhere (on the local target an alert is the monitoring pattern's own Asset event)."""
    if uc.target != AWS or uc.monitoring is None:
        return None
    from mlblueprints.monitoring import aws

    return aws.watch(uc)


def backend_class(uc: UseCase, capability: str, *, view: str | None = None) -> type:
    local, aws = IMPLEMENTATIONS[capability]
    path = aws if target_of(uc, capability, view=view) == AWS else local
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def backend_for(uc: UseCase, capability: str, runtime: Any = None, *, view: str | None = None) -> Any:
    """The backend of ``capability`` for ``uc``. ``runtime`` (an AwsRuntime, or a zero-argument
    callable making one) is handed to aws backends only; local backends take no runtime."""
    cls = backend_class(uc, capability, view=view)
    if target_of(uc, capability, view=view) == AWS:
        rt = runtime() if isinstance(runtime, Callable) else runtime  # type: ignore[arg-type]
        if rt is None:
            from mlblueprints.aws.session import boto3_runtime

            rt = boto3_runtime(uc)
        return cls(uc, rt)
    return cls(uc)
