"""Request builders for SageMaker Feature Store: one feature group per feature view and version.

A feature view (``features.<view>`` in the use-case YAML) becomes the feature group
``<usecase>-<view>-v<version>`` (:func:`mlblueprints.features.core.feature_group_name`):

* the record identifier is the entity key when there is one, else the synthetic string
  feature ``record_id`` (the keys joined with ``#``, :func:`core.record_id`), stored beside
  the key columns themselves;
* the event time is the String feature ``event_time``, ISO-8601 UTC as Feature Store accepts
  it: ``yyyy-MM-ddTHH:mm:ssZ``, or ``yyyy-MM-ddTHH:mm:ss.SSSZ`` when the time has a fraction
  of a second (Feature Store keeps milliseconds; finer digits are cut);
* column types map to Feature Store's three: int, bigint and boolean (0/1) to ``Integral``,
  double and float to ``Fractional``, string, date and timestamp to ``String``;
* the online store (``stores: [online]``) has the view's ``ttl`` and the use case's KMS key;
  the offline store (``stores: [offline]``) is an Iceberg table under
  ``aws.feature_store.offline_s3_uri`` (default ``s3://<bucket>/<prefix>/feature-store``),
  encrypted with the same key and registered in the use case's Glue database as
  ``fv_<view>_v<version>``, the name of the local target's offline table.

Pure functions: no boto3, no I/O. Names and limits follow botocore's service models of
``sagemaker`` (CreateFeatureGroup) and ``sagemaker-featurestore-runtime`` (PutRecord,
BatchGetRecord); botocore checks lengths and types but not patterns, so the patterns are
checked here, with errors that name the view and the column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from mlblueprints import runtime
from mlblueprints.config import UseCase
from mlblueprints.features import core
from mlblueprints.features.core import FeatureViewError, ViewColumns

EVENT_TIME = "event_time"
OFFLINE_STORE = "OfflineStore"
ONLINE_STORE = "OnlineStore"
# BatchGetRecord: at most 100 identifiers per call (BatchGetRecordIdentifiers / RecordIdentifiers)
BATCH_GET_MAX_IDENTIFIERS = 100
DESCRIPTION_MAX = 128  # CreateFeatureGroup Description
TAGS_MAX = 50
TAG_VALUE_MAX = 256
# FeatureName: 1-64 characters, [a-zA-Z0-9]([-_]*[a-zA-Z0-9]){0,63}
FEATURE_NAME_RE = re.compile(r"^[a-zA-Z0-9]([-_]*[a-zA-Z0-9]){0,63}$")
TAG_RE = re.compile(r"^[\w .:/=+\-@]*$")
# columns Feature Store adds to every offline row; a feature cannot have these names
RESERVED_FEATURE_NAMES = ("api_invocation_time", "write_time", "is_deleted")

FEATURE_TYPE = {
    "int": "Integral",
    "bigint": "Integral",
    "boolean": "Integral",
    "double": "Fractional",
    "float": "Fractional",
    "string": "String",
    "date": "String",
    "timestamp": "String",
}
# TtlDuration units, largest first, in seconds
TTL_UNITS = (("Weeks", 604800), ("Days", 86400), ("Hours", 3600), ("Minutes", 60), ("Seconds", 1))


# ---------------------------------------------------------------- names and values


def record_identifier_name(uc: UseCase, view: str) -> str:
    """The record identifier feature: the entity key, or ``record_id`` for a composite key."""
    entity = uc.features[view].entity
    return entity[0] if len(entity) == 1 else core.RECORD_ID


def record_identifier(uc: UseCase, view: str, key: Any) -> str:
    """The record identifier value of an entity key: a scalar for one key column, a tuple
    (in the order of ``entity``) for a composite key."""
    n = len(uc.features[view].entity)
    if n == 1:
        if isinstance(key, (tuple, list)):
            if len(key) != 1:
                raise ValueError(f"features.{view} has one entity key, got {key!r}")
            key = key[0]
        return _scalar_text(key)
    if not isinstance(key, (tuple, list)) or len(key) != n:
        raise ValueError(f"features.{view} has {n} entity keys {uc.features[view].entity}, got {key!r}")
    return core.record_id(_scalar_text(k) for k in key)


def _scalar_text(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


def feature_names(cols: ViewColumns) -> list[str]:
    """Every feature of the group, in definition order: [record_id], keys, event_time, features."""
    names = [*cols.entity_names, EVENT_TIME, *cols.feature_names]
    return ([core.RECORD_ID] if len(cols.entity) > 1 else []) + names


def feature_types(cols: ViewColumns) -> dict[str, str]:
    """Column type of every feature of the group (``record_id`` is a string)."""
    out = {core.RECORD_ID: "string"} if len(cols.entity) > 1 else {}
    return {**out, **dict(cols.entity), EVENT_TIME: "timestamp", **dict(cols.features)}


def iso_utc(ts: datetime, fraction: str = "auto") -> str:
    """A timestamp as ISO-8601 UTC: ``2024-03-01T12:00:00Z``, ``2024-03-01T12:00:00.250Z``.

    Naive timestamps are UTC (Gold's TIMESTAMP columns are). ``fraction="ms"`` keeps
    milliseconds only (what Feature Store accepts as an event time); ``"auto"`` keeps
    microseconds when the value has them (other timestamp features, stored as text).
    """
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    base = ts.strftime("%Y-%m-%dT%H:%M:%S")
    us = ts.microsecond
    if fraction == "ms":
        us -= us % 1000
    if not us:
        return base + "Z"
    if us % 1000 == 0:
        return f"{base}.{us // 1000:03d}Z"
    return f"{base}.{us:06d}Z"


def parse_iso_utc(text: str) -> datetime:
    """Inverse of :func:`iso_utc`: a naive UTC datetime."""
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo else ts


def value_as_string(value: Any, type_: str, *, event_time: bool = False) -> str | None:
    """A column value as Feature Store's ``ValueAsString``; ``None`` (omit the feature) for null.

    Booleans are 0/1 (Integral), dates ``YYYY-MM-DD``, timestamps ISO-8601 UTC. A NaN or
    infinite double has no Feature Store representation and is stored as null.
    """
    if value is None:
        return None
    if type_ == "boolean":
        return "1" if bool(value) else "0"
    if type_ in ("int", "bigint"):
        return str(int(value))
    if type_ in ("double", "float"):
        f = float(value)
        return repr(f) if math.isfinite(f) else None
    if type_ == "timestamp":
        if isinstance(value, str):
            value = parse_iso_utc(value)
        return iso_utc(value, "ms" if event_time else "auto")
    if type_ == "date":
        return (value.date() if isinstance(value, datetime) else value).isoformat()
    return str(value)


def value_from_string(text: str | None, type_: str) -> Any:
    """Inverse of :func:`value_as_string`: the Python value of a column type."""
    if text is None:
        return None
    if type_ == "boolean":
        return text not in ("0", "false", "False")
    if type_ in ("int", "bigint"):
        return int(text)
    if type_ in ("double", "float"):
        return float(text)
    if type_ == "timestamp":
        return parse_iso_utc(text)
    if type_ == "date":
        return date.fromisoformat(text)
    return text


def ttl_duration(seconds: int) -> dict[str, Any]:
    """``TtlDuration`` of a number of seconds, in the largest unit that divides it exactly."""
    for unit, size in TTL_UNITS:
        if seconds % size == 0:
            return {"Unit": unit, "Value": seconds // size}
    raise ValueError(f"not a positive whole number of seconds: {seconds!r}")


def offline_s3_uri(uc: UseCase) -> str:
    aws = uc.aws_settings
    return aws.feature_store.offline_s3_uri or aws.s3_uri("feature-store")


def _check_names(uc: UseCase, view: str, cols: ViewColumns) -> None:
    for name in feature_names(cols):
        if not FEATURE_NAME_RE.match(name):
            raise FeatureViewError(
                uc,
                view,
                name,
                "not a valid Feature Store feature name (letters, digits, - and _, at most 64, "
                "starting and ending with a letter or digit)",
            )
        if name in RESERVED_FEATURE_NAMES:
            raise FeatureViewError(uc, view, name, "Feature Store reserves this name for its offline store columns")
    if len(cols.entity) > 1 and core.RECORD_ID in [*cols.entity_names, *cols.feature_names]:
        raise FeatureViewError(
            uc, view, core.RECORD_ID, "is the record identifier Feature Store needs for a composite key; rename it"
        )
    if EVENT_TIME in cols.entity_names:
        raise FeatureViewError(uc, view, EVENT_TIME, "an entity key cannot be named like the event-time feature")


def _tag_value(v: object) -> str:
    text = "".join(ch if TAG_RE.match(ch) else "_" for ch in str(v))
    return text[:TAG_VALUE_MAX]


# ---------------------------------------------------------------- CreateFeatureGroup


def feature_definitions(uc: UseCase, view: str, cols: ViewColumns) -> list[dict[str, str]]:
    types = feature_types(cols)
    return [{"FeatureName": n, "FeatureType": FEATURE_TYPE[types[n]]} for n in feature_names(cols)]


def create_feature_group_request(uc: UseCase, view: str, cols: ViewColumns) -> dict[str, Any]:
    """CreateFeatureGroup parameters of a view (only the stores its ``stores`` list)."""
    aws = uc.aws_settings
    v = uc.features[view]
    _check_names(uc, view, cols)
    description = v.description or f"{uc.name} feature view {view} v{v.version}"
    request: dict[str, Any] = {
        "FeatureGroupName": core.feature_group_name(uc, view),
        "RecordIdentifierFeatureName": record_identifier_name(uc, view),
        "EventTimeFeatureName": EVENT_TIME,
        "FeatureDefinitions": feature_definitions(uc, view, cols),
        "Description": description[:DESCRIPTION_MAX],
        "Tags": [
            {"Key": k, "Value": _tag_value(val)}
            for k, val in (
                ("managed-by", "mlblueprints"),
                ("mlblueprints:usecase", uc.name),
                ("mlblueprints:view", view),
                ("mlblueprints:view-version", v.version),
                ("mlblueprints:source", v.source),
                ("mlblueprints:config-hash", uc.config_hash()),
                ("mlblueprints:git-commit", runtime.git_commit()),
            )
        ][:TAGS_MAX],
    }
    if "online" in v.stores:
        request["OnlineStoreConfig"] = {
            "EnableOnlineStore": True,
            "SecurityConfig": {"KmsKeyId": aws.kms_key_arn},
            "TtlDuration": ttl_duration(v.ttl_seconds),
        }
    if "offline" in v.stores:
        request["OfflineStoreConfig"] = {
            "S3StorageConfig": {"S3Uri": offline_s3_uri(uc), "KmsKeyId": aws.kms_key_arn},
            "DataCatalogConfig": {
                "Catalog": "AwsDataCatalog",
                "Database": aws.glue_database,
                "TableName": core.offline_table(uc, view),
            },
            "TableFormat": "Iceberg",
        }
        request["RoleArn"] = aws.feature_store.role_arn or aws.iam_role_arn
    return request


# ---------------------------------------------------------------- PutRecord, BatchGetRecord


def put_record_request(
    uc: UseCase, view: str, cols: ViewColumns, row: Mapping[str, Any], target_stores: list[str]
) -> dict[str, Any]:
    """PutRecord parameters of one batch row (entity keys, ``event_time``, features).

    Null features are left out (Feature Store has no null value); the entity keys and the
    event time must be set (the batch never holds a row without them).
    """
    for s in target_stores:
        if s not in (OFFLINE_STORE, ONLINE_STORE):
            raise ValueError(f"unknown target store {s!r}")
    types = feature_types(cols)
    record: list[dict[str, str]] = []
    if len(cols.entity) > 1:
        keys = [row[k] for k in cols.entity_names]
        if any(k is None for k in keys):
            raise ValueError(f"features.{view}: a row without its entity key cannot be stored: {keys}")
        record.append({"FeatureName": core.RECORD_ID, "ValueAsString": record_identifier(uc, view, tuple(keys))})
    for name in [*cols.entity_names, EVENT_TIME, *cols.feature_names]:
        text = value_as_string(row.get(name), types[name], event_time=name == EVENT_TIME)
        if text is None:
            if name in cols.entity_names or name == EVENT_TIME:
                raise ValueError(f"features.{view}: {name} is null in a row to store")
            continue
        record.append({"FeatureName": name, "ValueAsString": text})
    return {
        "FeatureGroupName": core.feature_group_name(uc, view),
        "Record": record,
        "TargetStores": list(target_stores),
    }


def record_id_of(request: Mapping[str, Any]) -> str:
    """The record identifier of a request from :func:`put_record_request` (its first feature)."""
    record = request.get("Record") or [{}]
    return str(record[0].get("ValueAsString", "?"))


def batch_get_record_requests(
    uc: UseCase, view: str, keys: Iterable[Any], feature_names: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """BatchGetRecord parameters for entity keys, 100 record identifiers per call (the API
    limit); duplicate keys are asked once. ``feature_names`` None asks for every feature."""
    name = core.feature_group_name(uc, view)
    ids = list(dict.fromkeys(record_identifier(uc, view, k) for k in keys))
    names = list(feature_names) if feature_names is not None else None
    out = []
    for i in range(0, len(ids), BATCH_GET_MAX_IDENTIFIERS):
        ident: dict[str, Any] = {
            "FeatureGroupName": name,
            "RecordIdentifiersValueAsString": ids[i : i + BATCH_GET_MAX_IDENTIFIERS],
        }
        if names:
            ident["FeatureNames"] = names
        out.append({"Identifiers": [ident]})
    return out
