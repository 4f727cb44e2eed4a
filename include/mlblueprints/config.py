"""Use-case configuration: pydantic models of one YAML file in ``dags/usecases/``.

A use case names its data sets (landing location, format, typed schema, primary key, event
time, partitioning), the quality suites per layer, the Gold tables, the target (``local`` or
``aws``) and, for ``aws``, the account resources. Loading is strict: an unknown key, a wrong
type or an inconsistent reference is an error, reported as one line naming the file, the field
path and the reason (:class:`UseCaseError`).

This module imports only pydantic and PyYAML, so DAG files can load configurations at parse
time without pulling in the heavy data libraries.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
import string
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# names that become tables, folders, DAG and task ids and columns: short enough for every file system,
# Airflow id and service they end up in (a file name is at most 255 bytes with its suffixes)
MAX_NAME = 200
IDENT = rf"^[a-z][a-z0-9_]{{0,{MAX_NAME - 1}}}$"
# a quality suite: <folder>/<name> under expectations/, never outside it
SUITE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}){0,3}$")
_TYPE_RE = re.compile(
    r"^(string|boolean|int|bigint|double|date|timestamp|decimal\((?P<p>\d{1,2}),\s*(?P<s>\d{1,2})\))$"
)
LAYERS = ("bronze", "silver", "gold")


class UseCaseError(ValueError):
    """A use-case YAML that cannot be loaded. ``str(err)`` is one readable line."""

    def __init__(self, path: Path | str, field: str, reason: str):
        self.path = str(path)
        self.field = field
        self.reason = reason
        super().__init__(f"{self.path}: {field}: {reason}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_name(v: str, what: str = "name") -> str:
    """A table-like name: lower-case letters, digits and '_', starting with a letter, at most
    :data:`MAX_NAME` characters (it becomes a table, a folder and part of DAG and task ids)."""
    if not isinstance(v, str) or not re.match(r"^[a-z][a-z0-9_]*$", v):
        raise ValueError(f"{what} {v!r} must be lower-case letters, digits and '_', starting with a letter")
    if len(v) > MAX_NAME:
        raise ValueError(f"{what} is {len(v)} characters long; at most {MAX_NAME} are allowed")
    return v


def check_suite_name(v: str | None) -> str | None:
    """A quality suite name: a path under expectations/ without '..', e.g. ``fraud/transactions.silver``."""
    if v is None or v == "":
        return v
    if not SUITE_RE.match(v) or any(part in (".", "..") or part.startswith("..") for part in v.split("/")):
        raise ValueError(
            f"suite name {v!r} must be <folder>/<name> made of letters, digits, '_', '-' and '.', "
            "inside expectations/ (no '..', no leading '/')"
        )
    return v


class Column(_Strict):
    """One column of a landed data set, as it must look once typed in Silver."""

    name: str
    type: str
    required: bool = False
    min: float | None = None
    max: float | None = None
    allowed: list[str] | None = None
    format: str | None = None
    description: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "column name")

    @field_validator("type")
    @classmethod
    def _known_type(cls, v: str) -> str:
        v = v.strip().lower()
        m = _TYPE_RE.match(v)
        if not m:
            raise ValueError(
                f"unknown type {v!r}; use one of string, boolean, int, bigint, double, date, timestamp, decimal(p,s)"
            )
        if m.group("p") is not None and int(m.group("s")) > int(m.group("p")):
            raise ValueError(f"decimal scale is larger than its precision in {v!r}")
        return v.replace(" ", "")

    @model_validator(mode="after")
    def _rules_fit_type(self) -> Column:
        numeric = self.type in ("int", "bigint", "double") or self.type.startswith("decimal")
        if (self.min is not None or self.max is not None) and not numeric:
            raise ValueError(f"min/max apply to numeric columns, not to type {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        if self.allowed is not None and self.type != "string":
            raise ValueError("allowed values apply to string columns only")
        if self.format is not None and self.type not in ("date", "timestamp"):
            raise ValueError("format applies to date and timestamp columns only")
        return self

    @property
    def is_numeric(self) -> bool:
        return self.type in ("int", "bigint", "double") or self.type.startswith("decimal")


# one ASCII character that cannot be confused with a quote, a line end or part of a value
CSV_DELIMITERS = "\t" + "".join(c for c in string.punctuation if c != '"')


class Landing(_Strict):
    """Where raw files land: ``<path>/<YYYY-MM-DD>/<file>`` (the directory is the landing date)."""

    path: str
    formats: list[Literal["csv", "jsonl"]] = ["csv", "jsonl"]
    csv_delimiter: str = ","

    @field_validator("csv_delimiter")
    @classmethod
    def _delimiter(cls, v: str) -> str:
        if len(v) != 1 or v not in CSV_DELIMITERS:
            raise ValueError(
                f"{v!r} cannot be a CSV delimiter; use one ASCII punctuation character other than '\"' "
                "(e.g. ',', ';', '|') or a tab ('\\t')"
            )
        return v


class EventTimeWindow(_Strict):
    """Which event times are plausible for a record landed on day D: not before ``earliest``,
    and before the end of D plus ``max_days_after_landing`` days. Others are quarantined
    (``implausible_event_time``): a clock in the wrong year must not move the feature store's
    clock or the recomputed Gold range."""

    earliest: date = date(1970, 1, 2)
    max_days_after_landing: Annotated[int, Field(ge=0, le=3650)] = 1


class Dataset(_Strict):
    landing: Landing
    schema_: Annotated[list[Column], Field(alias="schema", min_length=1)]
    primary_key: Annotated[list[str], Field(min_length=1)]
    event_time: str
    # event_date: one partition per event day (facts); none: unpartitioned (small reference data)
    partition_by: Literal["event_date", "none"] = "event_date"
    quality: dict[Literal["bronze", "silver"], str] = {}
    event_time_window: EventTimeWindow = EventTimeWindow()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("quality")
    @classmethod
    def _suites(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v.values():
            check_suite_name(name)
        return v

    @property
    def columns(self) -> list[Column]:
        return list(self.schema_)

    @property
    def partition_column(self) -> str | None:
        return "event_date" if self.partition_by == "event_date" else None

    def column(self, name: str) -> Column:
        for c in self.schema_:
            if c.name == name:
                return c
        raise KeyError(name)

    @model_validator(mode="after")
    def _references(self) -> Dataset:
        names = [c.name for c in self.schema_]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"schema lists column(s) twice: {', '.join(dupes)}")
        for k in self.primary_key:
            if k not in names:
                raise ValueError(f"primary_key column {k!r} is not in the schema")
        if self.event_time not in names:
            raise ValueError(f"event_time column {self.event_time!r} is not in the schema")
        if self.column(self.event_time).type != "timestamp":
            raise ValueError(f"event_time column {self.event_time!r} must have type timestamp")
        reserved = [n for n in names if n.startswith("_") or n == "event_date"]
        if reserved:
            raise ValueError(f"column names starting with '_' and 'event_date' are reserved: {reserved}")
        return self


class GoldTable(_Strict):
    """A feature-ready table computed by one SQL file over Silver tables."""

    sql: str
    inputs: Annotated[list[str], Field(min_length=1)]
    primary_key: Annotated[list[str], Field(min_length=1)]
    event_time: str
    lookback_days: Annotated[int, Field(ge=0, le=3660)] = 30
    quality: str | None = None
    description: str | None = None

    @field_validator("quality")
    @classmethod
    def _suite(cls, v: str | None) -> str | None:
        return check_suite_name(v)


_DURATION_RE = re.compile(r"^(?P<n>\d+)\s*(?P<u>s|m|h|d)$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# feature column types both stores can hold exactly (Gold column types as Iceberg reports them)
FEATURE_TYPES = ("int", "bigint", "double", "float", "string", "boolean", "date", "timestamp")


def duration_seconds(text: str) -> int:
    """``"90s"``, ``"15m"``, ``"24h"``, ``"7d"`` -> seconds."""
    m = _DURATION_RE.match(str(text).strip().lower())
    if not m or int(m.group("n")) <= 0:
        raise ValueError(f"{text!r} is not a duration; write a positive number with a unit s, m, h or d (e.g. 7d)")
    return int(m.group("n")) * _DURATION_UNITS[m.group("u")]


class FeatureView(_Strict):
    """Features of one entity, read from a Gold table and served from two stores.

    Every Gold row becomes one timestamped row of the offline store (history); the online store
    keeps the newest row per entity, valid for ``ttl`` after its event time.
    """

    source: str  # a Gold table of this use case
    entity: Annotated[list[str], Field(min_length=1)]
    event_time: str | None = None  # default: the Gold table's event_time
    features: Annotated[list[str], Field(min_length=1)]
    ttl: str = "7d"
    # which stores hold the view; the use case's target (or ``target`` here) decides which kind
    stores: Annotated[list[Literal["offline", "online"]], Field(min_length=1)] = ["offline", "online"]
    target: Literal["local", "aws"] | None = None
    # bump when the feature list or a feature's meaning changes: a new version is a new table
    version: Annotated[int, Field(ge=1, le=9999)] = 1
    description: str | None = None

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, v: str) -> str:
        duration_seconds(v)
        return v.strip().lower()

    @property
    def ttl_seconds(self) -> int:
        return duration_seconds(self.ttl)

    @model_validator(mode="after")
    def _columns(self) -> FeatureView:
        cols = [*self.entity, *self.features]
        dupes = sorted({c for c in cols if cols.count(c) > 1})
        if dupes:
            raise ValueError(f"column(s) listed twice across entity and features: {', '.join(dupes)}")
        for c in cols:
            check_name(c, "column name")
        reserved = [c for c in cols if c in ("event_time", "event_date", "record_id") or c.startswith("_")]
        if reserved:
            raise ValueError(
                f"column names 'event_time', 'event_date', 'record_id' and '_...' are reserved: {reserved}"
            )
        if len(set(self.stores)) != len(self.stores):
            raise ValueError("stores lists a store twice")
        return self


class TrainingLabels(_Strict):
    """Label events: rows of a Gold table, each with the entity keys, an event time and a label."""

    source: str  # a Gold table
    label: str
    event_time: str | None = None  # default: the Gold table's event_time
    columns: list[str] = []  # carried through unchanged (ids, for joining predictions back)


class TrainingSet(_Strict):
    """A point-in-time correct training set: label events joined to feature views as of their time."""

    labels: TrainingLabels
    features: Annotated[list[str], Field(min_length=1)]  # feature view names
    description: str | None = None


METRICS = ("roc_auc", "pr_auc", "precision", "recall", "calibration_error")
# calibration error is better when lower; every other metric when higher
LOWER_IS_BETTER = ("calibration_error",)


class ThresholdRule(_Strict):
    """How the operating threshold is chosen on the holdout: the lowest score threshold whose
    false-positive rate is at most ``max_fpr`` (or whose precision is at least ``min_precision``)."""

    max_fpr: Annotated[float | None, Field(gt=0, lt=1)] = 0.01
    min_precision: Annotated[float | None, Field(gt=0, le=1)] = None

    @model_validator(mode="after")
    def _one_rule(self) -> ThresholdRule:
        if (self.max_fpr is None) == (self.min_precision is None):
            raise ValueError("set exactly one of max_fpr and min_precision")
        return self


class Gate(_Strict):
    """When a candidate is registered: it beats the champion (or, for the first model, the
    baseline) on ``primary_metric`` by ``min_improvement``, and no other metric regresses by more
    than its tolerance (absolute)."""

    primary_metric: Literal["roc_auc", "pr_auc", "precision", "recall"] = "pr_auc"
    min_improvement: Annotated[float, Field(ge=0)] = 0.0
    tolerances: dict[Literal["roc_auc", "pr_auc", "precision", "recall", "calibration_error"], float] = {
        "roc_auc": 0.01,
        "recall": 0.05,
        "calibration_error": 0.02,
    }
    baseline: dict[Literal["roc_auc", "pr_auc", "precision", "recall", "calibration_error"], float] = {
        "pr_auc": 0.05,
        "roc_auc": 0.6,
    }


class SpotOptions(_Strict):
    enabled: bool = True
    max_runtime_seconds: Annotated[int, Field(ge=60, le=28 * 86400)] = 3600
    max_wait_seconds: Annotated[int, Field(ge=60, le=28 * 86400)] = 7200

    @model_validator(mode="after")
    def _wait(self) -> SpotOptions:
        if self.enabled and self.max_wait_seconds < self.max_runtime_seconds:
            raise ValueError("max_wait_seconds must be at least max_runtime_seconds with managed Spot")
        return self


class SageMakerTraining(_Strict):
    """The SageMaker side of training on the aws target."""

    instance_type: str = "ml.m5.xlarge"
    instance_count: Annotated[int, Field(ge=1, le=100)] = 1
    volume_size_gb: Annotated[int, Field(ge=1, le=16384)] = 30
    framework_version: str = "1.7-1"  # the SageMaker XGBoost framework container
    image_uri: str | None = None  # default: the framework image of the region
    spot: SpotOptions = SpotOptions()
    network_isolation: bool = True
    subnets: list[str] = []
    security_group_ids: list[str] = []
    mlflow_tracking_server_arn: Annotated[
        str | None, Field(pattern=r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:mlflow-tracking-server/.+$")
    ] = None
    model_package_group: str | None = None  # default: the use case name
    approval_status: Literal["PendingManualApproval", "Approved"] = "PendingManualApproval"

    @model_validator(mode="after")
    def _vpc(self) -> SageMakerTraining:
        if bool(self.subnets) != bool(self.security_group_ids):
            raise ValueError("a VPC needs both subnets and security_group_ids")
        return self


class Training(_Strict):
    """Training, evaluation and registration of the use case's model."""

    training_set: str
    algorithm: Literal["xgboost"] = "xgboost"
    # model inputs: default every feature of the training set's views
    features: list[str] | None = None
    extra_features: list[str] = []  # numeric columns carried by the training set (labels.columns)
    hyperparameters: dict[str, float | int | str | bool] = {}
    num_boost_round: Annotated[int, Field(ge=1, le=100_000)] = 300
    seed: int = 42
    checkpoint_interval_seconds: Annotated[float, Field(ge=0)] = 300
    holdout_days: Annotated[int, Field(ge=1, le=365)] = 2  # the last days of label events
    threshold: ThresholdRule = ThresholdRule()
    gate: Gate = Gate()
    model_name: str | None = None  # registered model name; default <usecase>_model
    promote: bool = False  # champion directly (use cases with no endpoint to canary on)
    sagemaker: SageMakerTraining = SageMakerTraining()

    @field_validator("hyperparameters")
    @classmethod
    def _reserved(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(set(v) & {"seed", "num_boost_round", "objective", "eval_metric"})
        if bad:
            raise ValueError(f"set {bad} through their own fields (seed, num_boost_round), not hyperparameters")
        return v


class Compaction(_Strict):
    min_files: Annotated[int, Field(ge=2)] = 4
    small_file_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5


class LakehouseOptions(_Strict):
    target_file_size_mb: Annotated[int, Field(ge=1, le=4096)] = 128
    compaction: Compaction = Compaction()
    on_rejected_file: Literal["fail", "warn"] = "fail"
    gate_result_format: Literal["BOOLEAN_ONLY", "BASIC", "SUMMARY"] = "SUMMARY"
    # snapshots older than this are expired by the compaction task (how far time travel reaches)
    snapshot_retention_days: Annotated[int, Field(ge=1, le=3650)] = 7


class FeatureStoreOptions(_Strict):
    """SageMaker Feature Store settings of the aws target (defaults derive from the aws section)."""

    offline_s3_uri: str | None = None  # default: s3://<bucket>/<prefix>/feature-store
    role_arn: Annotated[str | None, Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")] = None
    put_record_workers: Annotated[int, Field(ge=1, le=64)] = 8
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 8  # per record, on throttling / 5xx
    wait_seconds: Annotated[int, Field(ge=0, le=3600)] = 600  # for a new feature group to be Created

    @field_validator("offline_s3_uri")
    @classmethod
    def _s3(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("s3://"):
            raise ValueError("must be an s3:// URI")
        return v


class AwsTarget(_Strict):
    region: Annotated[str, Field(pattern=r"^[a-z]{2}(-gov)?-[a-z]+-\d$")]
    account_id: Annotated[str, Field(pattern=r"^\d{12}$")]
    bucket: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
    prefix: str = ""
    glue_database: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,255}$")]
    athena_workgroup: str = "primary"
    athena_output: str | None = None
    kms_key_arn: Annotated[str, Field(pattern=r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)/.+$")]
    feature_store: FeatureStoreOptions = FeatureStoreOptions()
    iam_role_arn: Annotated[str, Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")]
    aws_conn_id: str | None = "aws_default"

    @field_validator("prefix")
    @classmethod
    def _strip_prefix(cls, v: str) -> str:
        return v.strip("/")

    @field_validator("athena_output")
    @classmethod
    def _s3_uri(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("s3://"):
            raise ValueError("must be an s3:// URI")
        return v

    def s3_uri(self, *parts: str) -> str:
        key = "/".join(p.strip("/") for p in (self.prefix, *parts) if p and p.strip("/"))
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"

    @property
    def results_uri(self) -> str:
        return self.athena_output or self.s3_uri("athena-results") + "/"


class UseCase(_Strict):
    name: str
    description: str = ""
    owner: str = "ml-platform"
    target: Literal["local", "aws"] = "local"
    schedule: str | None = "@daily"
    start_date: date
    end_date: date | None = None
    catchup: bool = False
    retries: Annotated[int, Field(ge=2, le=10)] = 2
    retry_delay_seconds: Annotated[int, Field(ge=0)] = 60
    tags: list[str] = []
    datasets: Annotated[dict[str, Dataset], Field(min_length=1)]
    gold: dict[str, GoldTable] = {}
    features: dict[str, FeatureView] = {}
    training_sets: dict[str, TrainingSet] = {}
    training: Training | None = None
    lakehouse: LakehouseOptions = LakehouseOptions()
    aws: AwsTarget | None = None

    # Where the YAML was read from; set by the loader, not by the file.
    source_path: str | None = Field(default=None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "use case name")

    @field_validator("datasets", "gold", "features", "training_sets")
    @classmethod
    def _table_names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for k in v:
            check_name(k, "table name")
        return v

    @model_validator(mode="after")
    def _cross_references(self) -> UseCase:
        if self.target == "aws" and self.aws is None:
            raise ValueError("target is aws but the aws section is missing")
        if self.end_date is not None and self.end_date < self.start_date:
            raise ValueError("end_date is before start_date")
        clash = set(self.datasets) & set(self.gold)
        if clash:
            raise ValueError(f"gold table names clash with data set names: {sorted(clash)}")
        for gname, g in self.gold.items():
            for inp in g.inputs:
                if inp not in self.datasets:
                    raise ValueError(f"gold.{gname}.inputs names unknown data set {inp!r}")
        for vname, v in self.features.items():
            if v.source not in self.gold:
                raise ValueError(f"features.{vname}.source names unknown Gold table {v.source!r}")
            if (v.target or self.target) == "aws" and self.aws is None:
                raise ValueError(f"features.{vname} is held on aws but the aws section is missing")
        for tname, t in self.training_sets.items():
            if t.labels.source not in self.gold:
                raise ValueError(f"training_sets.{tname}.labels.source names unknown Gold table {t.labels.source!r}")
            seen: dict[str, str] = {}
            for vname in t.features:
                if vname not in self.features:
                    raise ValueError(f"training_sets.{tname}.features names unknown feature view {vname!r}")
                if "offline" not in self.features[vname].stores:
                    raise ValueError(f"training_sets.{tname}: feature view {vname!r} has no offline store")
                for f in self.features[vname].features:
                    if f in seen:
                        raise ValueError(f"training_sets.{tname}: feature {f!r} is in both {seen[f]!r} and {vname!r}")
                    seen[f] = vname
            clash = sorted(set(seen) & {t.labels.label, *t.labels.columns})
            if clash:
                raise ValueError(f"training_sets.{tname}: label/columns clash with feature names {clash}")
        if self.training is not None:
            t = self.training
            if t.training_set not in self.training_sets:
                raise ValueError(f"training.training_set names unknown training set {t.training_set!r}")
            ts = self.training_sets[t.training_set]
            available = [f for v in ts.features for f in self.features[v].features]
            for f in t.features or []:
                if f not in available:
                    raise ValueError(f"training.features: {f!r} is not a feature of training set {t.training_set!r}")
            for f in t.extra_features:
                if f not in ts.labels.columns:
                    raise ValueError(
                        f"training.extra_features: {f!r} is not in training_sets.{t.training_set}.labels.columns"
                    )
        return self

    @property
    def model_name(self) -> str:
        return (self.training.model_name if self.training else None) or f"{self.name}_model"

    def model_features(self) -> list[str]:
        """The model's input columns, in order."""
        assert self.training is not None
        t = self.training
        ts = self.training_sets[t.training_set]
        base = t.features or [f for v in ts.features for f in self.features[v].features]
        return [*base, *t.extra_features]

    def view_target(self, view: str) -> str:
        """Where a feature view's stores live: its own ``target``, else the use case's."""
        return self.features[view].target or self.target

    @property
    def base_dir(self) -> Path:
        """Directory of the YAML file; relative paths in it are resolved from here."""
        return Path(self.source_path).parent if self.source_path else Path.cwd()

    def gold_sql_path(self, table: str) -> Path:
        p = Path(self.gold[table].sql)
        return p if p.is_absolute() else self.base_dir / p

    def suite_name(self, table: str, layer: str) -> str | None:
        """The quality suite for a table and layer: explicit in the YAML, else the convention
        ``<usecase>/<table>.<layer>``; ``None`` only for an explicit empty string."""
        if table in self.datasets:
            explicit = self.datasets[table].quality.get(layer)  # type: ignore[call-overload]
        else:
            explicit = self.gold[table].quality
        if explicit == "":
            return None
        return explicit or f"{self.name}/{table}.{layer}"

    def config_hash(self) -> str:
        """A stable hash of the effective configuration (lineage: which config made this)."""
        payload = self.model_dump(mode="json", by_alias=True, exclude={"source_path"})
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def parse_usecase(data: Any, path: Path | str = "<memory>") -> UseCase:
    """Validate a parsed YAML document; raise :class:`UseCaseError` with the first problem."""
    if not isinstance(data, dict):
        raise UseCaseError(path, "<root>", f"expected a mapping, got {type(data).__name__}")
    try:
        uc = UseCase.model_validate({**data, "source_path": str(path)})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if p not in ("function-after", "function-before"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        more = len(exc.errors()) - 1
        if more:
            msg += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise UseCaseError(path, _field_path(loc), msg) from None
    stem = Path(path).stem
    if str(path) != "<memory>" and uc.name != stem:
        raise UseCaseError(path, "name", f"must equal the file name {stem!r} (got {uc.name!r})")
    return uc


# a use-case file is a page of configuration: anything larger is not one
MAX_YAML_BYTES = 1 << 20
_NOT_UTF8_HINTS = (
    (codecs.BOM_UTF16_LE, "UTF-16 text (byte-order mark FF FE)"),
    (codecs.BOM_UTF16_BE, "UTF-16 text (byte-order mark FE FF)"),
    (b"\x1f\x8b", "gzip-compressed data"),
)


def _read_yaml(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UseCaseError(path, "<file>", f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_YAML_BYTES:
        raise UseCaseError(path, "<file>", f"{len(raw):,} bytes; a use-case file is at most {MAX_YAML_BYTES:,}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        hint = next((what for magic, what in _NOT_UTF8_HINTS if raw.startswith(magic)), None)
        line = raw[: exc.start].count(b"\n") + 1
        what = hint or f"invalid byte 0x{raw[exc.start]:02x} at line {line}"
        raise UseCaseError(path, "<file>", f"not UTF-8 text ({what}); save the file as UTF-8") from None
    if "\x00" in text:
        raise UseCaseError(path, "<file>", "contains NUL bytes (binary, or UTF-16 text without a byte-order mark)")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<file>"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UseCaseError(path, where, f"invalid YAML: {problem}") from None
    except RecursionError:
        raise UseCaseError(path, "<file>", "invalid YAML: nested too deeply") from None


def load_usecase(path: Path | str) -> UseCase:
    """Load and check one use-case YAML. Every failure, whatever raised it, is a
    :class:`UseCaseError`: one line naming the file, the field and the reason."""
    path = Path(path)
    try:
        data = _read_yaml(path)
        uc = parse_usecase(data, path)
        for table in uc.gold:
            if not uc.gold_sql_path(table).is_file():
                raise UseCaseError(path, f"gold.{table}.sql", f"file not found: {uc.gold[table].sql}")
        return uc
    except UseCaseError:
        raise
    except RecursionError:
        raise UseCaseError(path, "<file>", "nested too deeply to be a use case") from None
    except Exception as exc:  # noqa: BLE001 - any failure of one file is that file's one line
        first = (str(exc).splitlines() or [""])[0][:300]
        raise UseCaseError(path, "<file>", f"cannot be loaded: {type(exc).__name__}: {first}") from None


def load_usecases(directory: Path | str) -> tuple[list[UseCase], list[UseCaseError]]:
    """Load every ``*.yaml`` in a directory. A bad file is returned as an error; the others load."""
    ok: list[UseCase] = []
    errors: list[UseCaseError] = []
    for p in sorted(Path(directory).glob("*.yaml")):
        try:
            ok.append(load_usecase(p))
        except UseCaseError as exc:
            errors.append(exc)
    return ok, errors
