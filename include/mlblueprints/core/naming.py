"""Names every pattern shares: safe file/run names and the Airflow Assets of each pattern.

An Asset is declared once here (its name, URI, group and extras); the pattern declarations name
the Assets they consume and emit, and the Airflow builder (or the Step Functions renderer) turns
the names into its own objects. Pure and light: DAG files import this at parse time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlblueprints.config import UseCase


def safe(text: str, keep: str = "-_.") -> str:
    """``text`` with every character but letters, digits and ``keep`` replaced by ``_`` (file
    names and S3 keys made from run ids such as ``manual__2024-03-01T00:00:00+00:00``)."""
    return "".join(ch if ch.isalnum() or ch in keep else "_" for ch in text)


@dataclass(frozen=True)
class AssetSpec:
    """An Airflow Asset (or, on Step Functions, an EventBridge event) a pattern emits.

    ``watch``: a message queue whose messages are events of the Asset too (Airflow renders it as
    an AssetWatcher), e.g. ``{"kind": "sqs", "name": ..., "queue_url": ..., "region": ...,
    "aws_conn_id": ..., "poll_seconds": ...}``; None for an Asset only the patterns update."""

    name: str
    uri: str
    group: str
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    watch: dict[str, Any] | None = field(default=None, hash=False, compare=False)


def table_asset(uc: UseCase, table: str) -> AssetSpec:
    """The Asset of a lakehouse table (Bronze, Silver or Gold), emitted when its gate passes."""
    return AssetSpec(
        name=f"{uc.name}.{table}",
        uri=uc.warehouse_uri(table),
        group="lakehouse",
        extra={"usecase": uc.name, "table": table, "target": uc.target},
    )


def feature_view_asset(uc: UseCase, view: str) -> AssetSpec:
    """The Asset a feature view emits after each materialization (training is scheduled on it)."""
    from mlblueprints.features.core import asset_uri

    v = uc.features[view]
    return AssetSpec(
        name=f"{uc.name}.features.{view}",
        uri=asset_uri(uc, view),
        group="features",
        extra={"usecase": uc.name, "view": view, "version": v.version},
    )


def drift_alert_asset(uc: UseCase) -> AssetSpec:
    """The Asset a drift alert emits (monitoring pattern); training is scheduled on it too. Where
    alerts also arrive from outside Airflow (:func:`mlblueprints.backends.drift_alert_watch`: the
    aws target's queue), the Asset watches that queue."""
    from mlblueprints.backends import drift_alert_watch

    return AssetSpec(
        name=f"{uc.name}.drift_alert",
        uri=f"file://mlblueprints/{uc.name}/monitoring/drift_alert",
        group="monitoring",
        extra={"usecase": uc.name},
        watch=drift_alert_watch(uc),
    )


def registered_model_asset(uc: UseCase) -> AssetSpec:
    """The Asset the training pattern emits when it registers a challenger (explainability and
    promotion are scheduled on it)."""
    return AssetSpec(
        name=f"{uc.name}.model.challenger",
        uri=f"file://mlblueprints/{uc.name}/models/{uc.model_name}/challenger",
        group="models",
        extra={"usecase": uc.name, "model": uc.model_name},
    )


def explained_model_asset(uc: UseCase) -> AssetSpec:
    """The Asset the explainability pattern emits when its fairness gate has judged a version
    (``extra``: the version and whether it passed); promotion is scheduled on it when the use
    case has an explainability section, so no challenger is deployed before it was judged."""
    return AssetSpec(
        name=f"{uc.name}.model.explained",
        uri=f"file://mlblueprints/{uc.name}/models/{uc.model_name}/explained",
        group="models",
        extra={"usecase": uc.name, "model": uc.model_name},
    )


def predictions_asset(uc: UseCase) -> AssetSpec:
    """The Asset the scoring pattern emits when an interval's predictions are committed (its
    event carries the range, the predictions snapshot id and the model version)."""
    table = uc.scoring.output_table if uc.scoring else "predictions"
    return AssetSpec(
        name=f"{uc.name}.predictions",
        uri=uc.warehouse_uri(table),
        group="scoring",
        extra={"usecase": uc.name, "table": table, "model": uc.model_name},
    )
