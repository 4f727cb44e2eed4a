"""Use-case configuration: pydantic models of one YAML file in ``dags/usecases/``.

A use case names its data sets (landing location, format, typed schema, primary key, event
time, partitioning), the quality suites per layer, the Gold tables, the target (``local`` or
``aws``) and, for ``aws``, the account resources. Loading is strict: an unknown key, a wrong
type or an inconsistent reference is an error. Every problem found is reported, one line each,
naming the file, the field path and the reason (:class:`UseCaseError`); an unknown key is named
with the closest known one, and a string field that YAML turned into a boolean (unquoted
``yes``/``no``/``on``/``off``) says so.

Problems are found in two passes: first the fields (types, ranges, unknown keys) of the whole
file, then, once every field is valid, the references between sections (keys and event times
in schemas, Gold inputs, feature views, training sets). Each pass lists all its problems.

This module imports only pydantic and PyYAML, so DAG files can load configurations at parse
time without pulling in the heavy data libraries.
"""

from __future__ import annotations

import codecs
import difflib
import hashlib
import json
import re
import string
import types
import typing
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

from mlblueprints.errors import PermanentError

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


class UseCaseError(PermanentError, ValueError):
    """A use-case YAML that cannot be loaded.

    ``problems`` lists every ``(field path, reason)`` found; ``lines`` renders them as
    ``<file>: <field path>: <reason>``, and ``str(err)`` is those lines (one line when there is
    one problem). ``field`` and ``reason`` are the first problem's.
    """

    def __init__(self, path: Path | str, field: str, reason: str, more: list[tuple[str, str]] | None = None):
        self.path = str(path)
        self.problems: list[tuple[str, str]] = [(field, reason), *(more or [])]
        self.field, self.reason = field, reason
        super().__init__("\n".join(self.lines))

    @property
    def lines(self) -> list[str]:
        return [f"{self.path}: {f}: {r}" for f, r in self.problems]

    @classmethod
    def of(cls, path: Path | str, problems: list[tuple[str, str]]) -> UseCaseError:
        return cls(path, *problems[0], more=problems[1:])


class _Problems(ValueError):
    """Raised by a validator with every problem it found, each with its field path relative to
    the object validated; :func:`parse_usecase` turns them into one line each."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(r for _, r in problems))


def _raise_problems(problems: list[tuple[str, str]]) -> None:
    if problems:
        raise _Problems(problems)


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
        problems = []
        if (self.min is not None or self.max is not None) and not numeric:
            problems.append(("", f"min/max apply to numeric columns, not to type {self.type}"))
        if self.min is not None and self.max is not None and self.min > self.max:
            problems.append(("", f"min ({self.min}) is larger than max ({self.max})"))
        if self.allowed is not None and self.type != "string":
            hint = (
                " (a boolean column accepts true/false, yes/no, y/n, t/f, 1/0 already)"
                if self.type == "boolean"
                else ""
            )
            problems.append(("allowed", f"allowed values apply to string columns only{hint}"))
        if self.format is not None and self.type not in ("date", "timestamp"):
            problems.append(("format", "format applies to date and timestamp columns only"))
        _raise_problems(problems)
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
        problems = []
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(("schema", f"schema lists column(s) twice: {', '.join(dupes)}"))
        for i, k in enumerate(self.primary_key):
            if k not in names:
                problems.append(
                    (f"primary_key[{i}]", f"primary_key column {k!r} is not in the schema{_did_you_mean(k, names)}")
                )
        if self.event_time not in names:
            problems.append(
                (
                    "event_time",
                    f"event_time column {self.event_time!r} is not in the schema{_did_you_mean(self.event_time, names)}",
                )
            )
        elif self.column(self.event_time).type != "timestamp":
            problems.append(
                (
                    "event_time",
                    f"event_time column {self.event_time!r} must have type timestamp, not {self.column(self.event_time).type}",
                )
            )
        reserved = [n for n in names if n.startswith("_") or n == "event_date"]
        if reserved:
            problems.append(("schema", f"column names starting with '_' and 'event_date' are reserved: {reserved}"))
        _raise_problems(problems)
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
        problems = []
        dupes = sorted({c for c in cols if cols.count(c) > 1})
        if dupes:
            problems.append(("", f"column(s) listed twice across entity and features: {', '.join(dupes)}"))
        for c in cols:
            try:
                check_name(c, "column name")
            except ValueError as exc:
                problems.append(("", str(exc)))
        reserved = [c for c in cols if c in ("event_time", "event_date", "record_id") or c.startswith("_")]
        if reserved:
            problems.append(
                ("", f"column names 'event_time', 'event_date', 'record_id' and '_...' are reserved: {reserved}")
            )
        if len(set(self.stores)) != len(self.stores):
            problems.append(("stores", "stores lists a store twice"))
        _raise_problems(problems)
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


TASKS = ("binary", "multiclass", "regression")
# the metrics evaluation reports for each task type; the gate may use any of them
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("roc_auc", "pr_auc", "precision", "recall", "calibration_error"),
    "multiclass": ("log_loss", "accuracy", "macro_f1", "weighted_f1"),
    "regression": ("rmse", "mae", "mape", "r2"),
}
METRICS = TASK_METRICS["binary"]
# every other metric is better when higher
LOWER_IS_BETTER = ("calibration_error", "log_loss", "rmse", "mae", "mape")
# metrics bounded to [0, 1] (a baseline outside is a typo)
UNIT_METRICS = ("roc_auc", "pr_auc", "precision", "recall", "calibration_error", "accuracy", "macro_f1", "weighted_f1")
DEFAULT_PRIMARY_METRIC = {"binary": "pr_auc", "multiclass": "macro_f1", "regression": "rmse"}
DEFAULT_TOLERANCES: dict[str, dict[str, float]] = {
    "binary": {"roc_auc": 0.01, "recall": 0.05, "calibration_error": 0.02},
    "multiclass": {"accuracy": 0.01, "log_loss": 0.05},
    "regression": {"r2": 0.01},  # scale-free; an RMSE/MAE tolerance is in the target's own unit
}
# metrics whose no-skill value the gate derives from the holdout (a model that ignores its inputs:
# random scores, the class priors, the mean or median target)
DERIVED_BASELINE_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("roc_auc", "pr_auc"),
    "multiclass": ("log_loss", "accuracy", "macro_f1", "weighted_f1"),
    "regression": ("rmse", "mae", "r2"),
}
# XGBoost objectives a regression target may use (training.objective)
REGRESSION_OBJECTIVES = (
    "reg:squarederror",
    "reg:absoluteerror",
    "reg:pseudohubererror",
    "reg:squaredlogerror",
    "reg:tweedie",
    "reg:gamma",
    "count:poisson",
)


class ThresholdRule(_Strict):
    """How the operating threshold of a binary model is chosen on the holdout: the lowest score
    threshold whose false-positive rate is at most ``max_fpr``, or whose precision is at least
    ``min_precision``. Exactly one of them; there is no default (the operating point is a
    business decision: see docs/own-data.md for choosing it)."""

    max_fpr: Annotated[float | None, Field(gt=0, lt=1)] = None
    min_precision: Annotated[float | None, Field(gt=0, le=1)] = None

    @model_validator(mode="after")
    def _one_rule(self) -> ThresholdRule:
        if self.max_fpr is None and self.min_precision is None:
            _raise_problems(
                [("", "set one of max_fpr (e.g. {max_fpr: 0.01}) or min_precision (e.g. {min_precision: 0.8})")]
            )
        if self.max_fpr is not None and self.min_precision is not None:
            _raise_problems([("", "set only one of max_fpr and min_precision")])
        return self

    def describe(self) -> str:
        return f"max_fpr {self.max_fpr:g}" if self.max_fpr is not None else f"min_precision {self.min_precision:g}"


class Gate(_Strict):
    """When a candidate is registered.

    Against a reference model (the champion, else the newest registered version): it beats the
    reference on ``primary_metric`` by ``min_improvement`` and no metric in ``tolerances``
    regresses by more than its tolerance (absolute). With no reference model, it beats the
    baseline on the primary metric by ``min_improvement``.

    ``baseline`` is a floor every registered model must reach, metric by metric (a ceiling for a
    metric that is better when lower). Where the gate can tell what a model without skill scores
    on the holdout (ROC-AUC 0.5 and PR-AUC = the positive rate for a binary label; the class priors
    for a multiclass one; the mean / median target for a regression), the baseline is never worse
    than that: configured worse, or not configured, the gate uses the no-skill value and says so.
    The primary metric, tolerances and baseline keys must be metrics of the task
    (``training.task``); unset, the primary metric and tolerances are the task's defaults.
    """

    primary_metric: str | None = None
    min_improvement: Annotated[float, Field(ge=0)] = 0.0
    tolerances: dict[str, Annotated[float, Field(ge=0)]] | None = None
    baseline: dict[str, float] = {}


# SageMaker Clarify's bias metrics (smclarify's names), by stage; see mlblueprints.explain.core
PRE_TRAINING_BIAS_METRICS = ("CI", "DPL", "KL", "JS", "LP", "TVD", "KS")
POST_TRAINING_BIAS_METRICS = ("DPPL", "DI", "DCA", "DCR", "RD", "DAR", "DRR", "AD", "SD", "TE")


class FacetSpec(_Strict):
    """A sensitive attribute: a column of the holdout (a model feature or one of the training
    set's ``labels.columns``) and the group it defines - a list of values (categorical), or one
    number (the rows above it), as in Clarify's ``facet`` config."""

    name: str
    value_or_threshold: Annotated[list[str | int | float], Field(min_length=1)]

    @model_validator(mode="after")
    def _one_threshold(self) -> FacetSpec:
        numbers = [v for v in self.value_or_threshold if isinstance(v, int | float) and not isinstance(v, bool)]
        if numbers and len(self.value_or_threshold) > 1:
            _raise_problems(
                [("value_or_threshold", "give one number (a threshold) or a list of values as strings, not both")]
            )
        return self


class MetricBounds(_Strict):
    """The range a gated bias metric must stay in (either bound may be left out)."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> MetricBounds:
        if self.min is None and self.max is None:
            _raise_problems([("", "set min, max or both")])
        if self.min is not None and self.max is not None and self.min > self.max:
            _raise_problems([("", f"min {self.min:g} is above max {self.max:g}")])
        return self


class ShapBaseline(_Strict):
    """The SHAP baseline of Kernel SHAP, as a Clarify job takes it (aws target): ``mean`` (one
    row, the mean of each feature over the explained dataset), ``kmeans`` (Clarify computes
    ``num_clusters`` k-means centroids of the dataset itself) or the rows given (model features,
    in model order). The local target's exact TreeSHAP needs no baseline."""

    baseline: Literal["mean", "kmeans"] | Annotated[list[list[float]], Field(min_length=1)] = "mean"
    num_clusters: Annotated[int, Field(ge=1, le=1000)] = 10  # with kmeans
    num_samples: Annotated[int | None, Field(ge=1, le=1_000_000)] = None  # Kernel SHAP's; None: Clarify's default
    seed: int = 0


class ClarifyJob(_Strict):
    """The SageMaker Clarify processing job of the aws target, and the shadow endpoint Clarify
    serves the version from (network isolation and VPC are training.sagemaker's)."""

    instance_type: Annotated[str, Field(pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")] = "ml.m5.xlarge"
    instance_count: Annotated[int, Field(ge=1, le=100)] = 1
    volume_size_gb: Annotated[int, Field(ge=1, le=16384)] = 30
    max_runtime_seconds: Annotated[int, Field(ge=60, le=777600)] = 86400  # MaxRuntimeInSeconds
    endpoint_instance_type: Annotated[str, Field(pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")] = "ml.m5.xlarge"
    endpoint_instance_count: Annotated[int, Field(ge=1, le=100)] = 1
    # the role of the job and the shadow model; none: the aws section's iam_role_arn
    role_arn: Annotated[str | None, Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")] = None
    version: str = "1.0"  # the Clarify image's version


class Explainability(_Strict):
    """SHAP attributions and bias metrics of each candidate on the holdout, and the fairness gate.

    Pre-training metrics are computed on the holdout's labels, post-training ones on the
    candidate's predicted labels at its operating threshold; ``gate`` bounds any of them, for
    every facet (e.g. ``DI: {min: 0.8, max: 1.25}``, the four-fifths rule)."""

    label_value: str | int = 1  # the positive (favourable-to-flag) label value
    sample_size: Annotated[int, Field(ge=1, le=1_000_000)] = 1000  # records whose attributions are kept
    facets: list[FacetSpec] = []
    pre_training_metrics: list[Literal[PRE_TRAINING_BIAS_METRICS]] = list(PRE_TRAINING_BIAS_METRICS)  # type: ignore[valid-type]
    post_training_metrics: list[Literal[POST_TRAINING_BIAS_METRICS]] = list(POST_TRAINING_BIAS_METRICS)  # type: ignore[valid-type]
    gate: dict[str, MetricBounds] = {}
    shap: ShapBaseline = ShapBaseline()
    sagemaker: ClarifyJob = ClarifyJob()

    @model_validator(mode="after")
    def _gated_are_computed(self) -> Explainability:
        computed = [*self.pre_training_metrics, *self.post_training_metrics]
        problems = [
            (f"gate.{name}", f"{name} is not computed: add it to pre_training_metrics or post_training_metrics")
            for name in self.gate
            if name not in computed
        ]
        if self.gate and not self.facets:
            problems.append(("gate", "bias metrics are gated but no facet is configured"))
        _raise_problems(problems)
        return self

    def thresholds(self) -> dict[str, tuple[float | None, float | None]]:
        return {k: (b.min, b.max) for k, b in self.gate.items()}


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
    # the framework container's version: default 1.7-1 for xgboost, 1.2-1 for sklearn
    framework_version: str | None = None
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


ModelFormat = Literal["xgboost", "sklearn", "mlflow"]


def _and(items: tuple[str, ...] | list[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class Training(_Strict):
    """Training, evaluation and registration of the use case's model."""

    training_set: str
    algorithm: Literal["xgboost"] = "xgboost"
    # what the label is: a binary 0/1 (or boolean) label, one of several classes, or a number
    task: Literal["binary", "multiclass", "regression"] = "binary"
    # multiclass: the label's values, in the order of the model's outputs (default: the allowed
    # values of the data set column the label comes from)
    classes: Annotated[list[str], Field(min_length=2)] | None = None
    objective: str | None = None  # regression: an XGBoost objective (default reg:squarederror)
    # a team's own script-mode training script (path relative to the use case YAML), instead of
    # the built-in XGBoost one; model_format says what it writes to SM_MODEL_DIR
    entry_point: str | None = None
    model_format: ModelFormat | None = None  # default: xgboost
    # the SageMaker framework image on aws: xgboost, sklearn, or an image URI
    framework: str = "xgboost"
    # model inputs: default every feature of the training set's views
    features: list[str] | None = None
    extra_features: list[str] = []  # numeric columns carried by the training set (labels.columns)
    hyperparameters: dict[str, float | int | str | bool] = {}
    num_boost_round: Annotated[int, Field(ge=1, le=100_000)] = 300
    seed: int = 42
    checkpoint_interval_seconds: Annotated[float, Field(ge=0)] = 300
    holdout_days: Annotated[int, Field(ge=1, le=365)] = 2  # the last days of label events
    threshold: ThresholdRule | None = None  # binary: required (the operating point is a decision)
    gate: Gate = Gate()
    model_name: str | None = None  # registered model name; default <usecase>_model
    promote: bool = False  # champion directly (use cases with no endpoint to canary on)
    sagemaker: SageMakerTraining = SageMakerTraining()

    @field_validator("hyperparameters")
    @classmethod
    def _reserved(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(set(v) & {"seed", "num_boost_round", "objective", "eval_metric", "num_class", "task"})
        if bad:
            raise ValueError(
                f"set {bad} through their own fields (seed, num_boost_round, task, objective, classes), "
                "not hyperparameters"
            )
        return v

    @field_validator("framework")
    @classmethod
    def _framework(cls, v: str) -> str:
        if v in ("xgboost", "sklearn") or re.match(r"^[\w.-]+(:\d+)?/[\w./-]+(:[\w.-]+|@sha256:[0-9a-f]{64})$", v):
            return v
        raise ValueError(f"{v!r}: use xgboost, sklearn or an image URI (<registry>/<repository>:<tag>)")

    @model_validator(mode="after")
    def _task(self) -> Training:
        task = self.task
        valid = TASK_METRICS[task]
        problems: list[tuple[str, str]] = []

        def metric(field: str, m: str) -> None:
            if m not in valid:
                problems.append((field, f"{m!r} is not a metric of a {task} task; use one of {', '.join(valid)}"))

        if self.gate.primary_metric is not None:
            metric("gate.primary_metric", self.gate.primary_metric)
        for k in self.gate.tolerances or {}:
            metric(f"gate.tolerances.{k}", k)
        for k, v in self.gate.baseline.items():
            metric(f"gate.baseline.{k}", k)
            if k in UNIT_METRICS and not 0 <= v <= 1:
                problems.append((f"gate.baseline.{k}", f"{v:g} is outside [0, 1]"))
        pm = self.primary_metric
        if pm in valid and pm not in DERIVED_BASELINE_METRICS[task] and pm not in self.gate.baseline:
            problems.append(
                (
                    "gate.baseline",
                    f"give a baseline value for the primary metric {pm} (e.g. baseline: {{{pm}: 0.5}}); "
                    f"only {_and(DERIVED_BASELINE_METRICS[task])} have a floor derived from the data",
                )
            )
        if task == "binary" and self.threshold is None:
            problems.append(
                (
                    "threshold",
                    "required: the operating point on the holdout, {max_fpr: F} (flag at most this share of the "
                    "negatives) or {min_precision: P} (at least this share of the flagged rows are positives)",
                )
            )
        if task != "binary" and self.threshold is not None:
            problems.append(("threshold", f"a {task} model has no score threshold; remove it"))
        if task != "multiclass" and self.classes is not None:
            problems.append(("classes", f"classes apply to multiclass tasks, not {task}"))
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            problems.append(("classes", "a class is listed twice"))
        if task == "regression":
            if self.objective is not None and self.objective not in REGRESSION_OBJECTIVES:
                problems.append(
                    (
                        "objective",
                        f"{self.objective!r} is not a regression objective; use one of {', '.join(REGRESSION_OBJECTIVES)}",
                    )
                )
        elif self.objective is not None:
            problems.append(("objective", f"the objective of a {task} task is fixed; set it for regression only"))
        if self.entry_point is None and self.model_format not in (None, "xgboost"):
            problems.append(
                ("model_format", "the built-in training script writes an xgboost model; set entry_point too")
            )
        _raise_problems(problems)
        return self

    @property
    def primary_metric(self) -> str:
        return self.gate.primary_metric or DEFAULT_PRIMARY_METRIC[self.task]

    @property
    def tolerances(self) -> dict[str, float]:
        return dict(self.gate.tolerances) if self.gate.tolerances is not None else dict(DEFAULT_TOLERANCES[self.task])

    @property
    def xgboost_objective(self) -> str:
        return {"binary": "binary:logistic", "multiclass": "multi:softprob"}.get(
            self.task, self.objective or "reg:squarederror"
        )

    @property
    def format(self) -> str:
        """What the training script writes: ``xgboost`` (a booster), ``sklearn`` or ``mlflow``."""
        return self.model_format or "xgboost"


class ScoringRows(_Strict):
    """The entity rows a scoring run predicts for: rows of a Gold table in the interval, each
    with its keys and event time, and the model's features - joined point-in-time from feature
    views as of the row's event time (with the builder training sets use), or read from the row
    itself (``features: []``). Every field defaults to the training set's definition
    (``training_set``, default ``training.training_set``), so the model sees its features the
    way it was trained on them."""

    training_set: str | None = None  # default: training.training_set
    source: str | None = None  # a Gold table; default: the training set's label source
    event_time: str | None = None  # default: the training set's label event time, else the Gold table's
    keys: list[str] | None = None  # what identifies a prediction; default: the Gold table's primary key
    columns: list[str] | None = None  # carried from the row (extra model features); default: the set's
    features: list[str] | None = None  # feature views joined point in time; [] = none; default: the set's


class ScoringModel(_Strict):
    """Which registered version scores: the one behind ``alias`` (default ``champion``), or a
    pinned ``version``."""

    alias: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,254}$")] = "champion"
    version: Annotated[int | None, Field(ge=1)] = None


# on-demand USD per hour of Batch Transform instances (us-east-1 list prices; set your own region's
# in scoring.sagemaker.prices): what the benchmark's cost estimate multiplies by
DEFAULT_TRANSFORM_PRICES: dict[str, dict[str, float]] = {
    "ml.m5.large": {"usd_per_hour": 0.115, "vcpus": 2},
    "ml.m5.xlarge": {"usd_per_hour": 0.23, "vcpus": 4},
    "ml.m5.2xlarge": {"usd_per_hour": 0.461, "vcpus": 8},
    "ml.m5.4xlarge": {"usd_per_hour": 0.922, "vcpus": 16},
    "ml.c5.xlarge": {"usd_per_hour": 0.204, "vcpus": 4},
    "ml.c5.2xlarge": {"usd_per_hour": 0.408, "vcpus": 8},
}


class InstancePrice(_Strict):
    usd_per_hour: Annotated[float, Field(gt=0)]
    vcpus: Annotated[int, Field(ge=1, le=1024)]


class SageMakerScoring(_Strict):
    """The Batch Transform job of the aws target."""

    instance_type: Annotated[str, Field(pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")] = "ml.m5.xlarge"
    instance_count: Annotated[int, Field(ge=1, le=100)] = 1
    max_payload_mb: Annotated[int, Field(ge=1, le=100)] = 6  # per request (MaxPayloadInMB)
    max_concurrent_transforms: Annotated[int, Field(ge=0, le=64)] = 0  # 0: SageMaker's choice
    invocation_timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = 600
    invocation_max_retries: Annotated[int, Field(ge=0, le=3)] = 3
    max_wait_seconds: Annotated[int, Field(ge=60, le=7 * 86400)] = 86400  # how long the task waits for the job
    network_isolation: bool = True
    subnets: list[str] = []
    security_group_ids: list[str] = []
    # the role the model and its transform jobs run with: reads the model archive and the run's
    # input, writes its output (infra/mlblueprints.yaml makes it); none: the aws section's iam_role_arn
    role_arn: Annotated[str | None, Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")] = None
    # score only model packages a person approved (ModelApprovalStatus Approved)
    require_approved: bool = True
    prices: dict[str, InstancePrice] = {k: InstancePrice(**v) for k, v in DEFAULT_TRANSFORM_PRICES.items()}  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _vpc(self) -> SageMakerScoring:
        if bool(self.subnets) != bool(self.security_group_ids):
            raise ValueError("a VPC needs both subnets and security_group_ids")
        return self


_CRON_RE = re.compile(r"^(@(hourly|daily|weekly|monthly|yearly)|(\S+\s+){4}\S+)$")


class Scoring(_Strict):
    """Batch scoring: the model (``model``) predicts every new interval of ``rows`` into the
    Iceberg table ``output_table``, one commit per interval."""

    rows: ScoringRows = ScoringRows()
    model: ScoringModel = ScoringModel()
    output_table: str = "predictions"
    threshold: Annotated[float | None, Field(gt=0, lt=1)] = None  # binary: default the registered one
    batch_size: Annotated[int, Field(ge=1000, le=10_000_000)] = 100_000  # rows per record batch
    memory_mb: Annotated[int, Field(ge=128, le=1_048_576)] = 1024  # DuckDB's memory limit in the step
    # when the DAG runs: "features" (all its views' Assets updated), "gold" (the rows' Gold Asset),
    # or a cron expression (each run scores its data interval)
    schedule: str | None = None
    quality: str | None = None  # the predictions' suite; default <usecase>/<output_table>.scoring
    sagemaker: SageMakerScoring = SageMakerScoring()

    @field_validator("output_table")
    @classmethod
    def _table(cls, v: str) -> str:
        return check_name(v, "output_table")

    @field_validator("quality")
    @classmethod
    def _suite(cls, v: str | None) -> str | None:
        return check_suite_name(v)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str | None) -> str | None:
        if v is None or v in ("features", "gold") or _CRON_RE.match(v.strip()):
            return v if v is None else v.strip()
        raise ValueError(f"{v!r}: use features, gold or a cron expression (e.g. '0 2 * * *' or @daily)")


DRIFT_METHODS = ("wasserstein", "jensenshannon", "psi")  # tests a use case may name (see monitoring/stats.py)
ALERT_SIGNALS = ("dataset_drift", "prediction_drift", "data_quality", "model_quality")


class ColumnTest(_Strict):
    """A column's drift test and threshold instead of Evidently's default choice."""

    method: Literal["wasserstein", "jensenshannon", "psi"] | None = None
    threshold: Annotated[float | None, Field(gt=0, le=10)] = None


class MonitoringReference(_Strict):
    """What a window is compared with: the monitored version's own training set at the snapshot
    its lineage records (``training_set``), or the scoring rows of fixed event dates (``window``),
    both scored by that version."""

    source: Literal["training_set", "window"] = "training_set"
    start: date | None = None
    end: date | None = None

    @model_validator(mode="after")
    def _window(self) -> MonitoringReference:
        if self.source == "window":
            if self.start is None or self.end is None:
                raise ValueError("a window reference needs start and end (event dates, YYYY-MM-DD)")
            if self.end < self.start:
                raise ValueError("end is before start")
        elif self.start is not None or self.end is not None:
            raise ValueError("start and end are for source: window")
        return self


class DataQualityChecks(_Strict):
    """Per column, in each window: the share of nulls, and of values the reference never had
    (numerical: outside its range; categorical: unseen values)."""

    max_null_share: Annotated[float, Field(ge=0, le=1)] = 0.1
    max_null_share_increase: Annotated[float, Field(ge=0, le=1)] = 0.05  # over the reference's
    max_out_of_range_share: Annotated[float, Field(ge=0, le=1)] = 0.05
    max_unseen_share: Annotated[float, Field(ge=0, le=1)] = 0.05


class ModelQualityChecks(_Strict):
    """Delayed labels: once the labels of scored rows have landed in the Gold table the training
    set takes them from, the monitored version's ROC-AUC and PR-AUC on them against the figures
    it was registered with (its holdout)."""

    enabled: bool = True
    max_roc_auc_drop: Annotated[float, Field(ge=0, le=1)] = 0.05
    max_pr_auc_drop: Annotated[float, Field(ge=0, le=1)] = 0.10
    min_labelled: Annotated[int, Field(ge=1)] = 500  # labelled rows (and at least 10 positives) to decide
    min_positives: Annotated[int, Field(ge=1)] = 10


class AlertPolicy(_Strict):
    """When drift retrains: which signals count, in how many consecutive windows, at most once per
    cooldown, and never on a window smaller than ``min_rows``."""

    signals: Annotated[
        list[Literal["dataset_drift", "prediction_drift", "data_quality", "model_quality"]], Field(min_length=1)
    ] = [
        "dataset_drift",
        "prediction_drift",
        "model_quality",
    ]
    consecutive: Annotated[int, Field(ge=1, le=100)] = 1
    cooldown_days: Annotated[int, Field(ge=0, le=365)] = 7
    min_rows: Annotated[int, Field(ge=1)] = 1000


class Monitoring(_Strict):
    """Drift monitoring of each scored interval (``<usecase>__monitoring``, scheduled on the
    predictions Asset): per-column drift of the model's features and its score against the
    reference, data quality, delayed-label model quality, and the alert policy that emits the
    ``<usecase>.drift_alert`` Asset (the training pattern is scheduled on it)."""

    reference: MonitoringReference = MonitoringReference()
    columns: list[str] | None = None  # default: the model's features
    categorical: list[str] = []  # columns compared as categories (default: as numbers)
    prediction_drift: bool = True  # the score is monitored too (column "score")
    method: Literal["wasserstein", "jensenshannon", "psi"] | None = None  # every column (default: Evidently's choice)
    threshold: Annotated[float | None, Field(gt=0, le=10)] = None  # every column (default: the method's)
    per_column: dict[str, ColumnTest] = {}
    drift_share: Annotated[float, Field(gt=0, le=1)] = 0.5  # dataset drift: this share of columns drifted
    data_quality: DataQualityChecks = DataQualityChecks()
    model_quality: ModelQualityChecks = ModelQualityChecks()
    alert: AlertPolicy = AlertPolicy()
    report_rows: Annotated[int, Field(ge=100, le=1_000_000)] = 20_000  # rows per side in Evidently's HTML report
    output_table: str = "monitoring"
    seed: int = 0  # of the report's sample

    def signals(self, task: str) -> list[str]:
        """The alert's signals for a model of ``task`` (model quality: binary models only)."""
        return [
            s for s in self.alert.signals if s != "model_quality" or (task == "binary" and self.model_quality.enabled)
        ]

    @field_validator("output_table")
    @classmethod
    def _table(cls, v: str) -> str:
        return check_name(v, "output_table")


class EndpointOptions(_Strict):
    """The local inference endpoint (``mlblueprints serve``, and the promotion pattern's canary):
    a FastAPI app on uvicorn, on loopback only."""

    host: Literal["127.0.0.1", "localhost", "::1"] = "127.0.0.1"  # loopback only: no auth in front of it
    port: Annotated[int, Field(ge=1024, le=65535)] = 8765
    # a request whose entity a view does not know (or knows only older than its ttl): rejected
    # with 404 (reject), or scored with the missing features as missing values (XGBoost's learned
    # default branch; missing)
    missing_features: Literal["reject", "missing"] = "reject"
    # the clock a feature's ttl is checked at: the wall clock (live traffic), or the newest event
    # time the view materialized (replayed or historical traffic, as in the demo)
    feature_clock: Literal["wall", "watermark"] = "wall"
    capture_sample: Annotated[float, Field(ge=0, le=1)] = 1.0  # share of requests kept in the capture table
    max_body_bytes: Annotated[int, Field(ge=256, le=6_291_456)] = 65_536  # SageMaker's own limit is 6 MB
    max_records: Annotated[int, Field(ge=1, le=10_000)] = 100  # records per request


class CanaryOptions(_Strict):
    """How traffic moves to the challenger: a canary share baked once (``weight``), or linear
    steps (``steps``, each baked, the last 1.0 implied: promotion)."""

    weight: Annotated[float, Field(gt=0, le=0.5)] = 0.1  # SageMaker's canary: at most half the capacity
    steps: list[Annotated[float, Field(gt=0, lt=1)]] = []  # linear shifting, e.g. [0.1, 0.5]
    bake_seconds: Annotated[float, Field(gt=0, le=3600)] = 60  # per step (SageMaker: 0-3600 s)

    @field_validator("steps")
    @classmethod
    def _increasing(cls, v: list[float]) -> list[float]:
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"steps must increase: {v}")
        return v

    def shares(self) -> list[float]:
        """The challenger's share in each bake."""
        return list(self.steps) if self.steps else [self.weight]


class TrafficOptions(_Strict):
    """The requests a bake is judged on: real requests the endpoint gets, plus (``replay``) the
    newest scored entities replayed at ``rate_per_second``, at most ``max_requests`` per bake."""

    replay: bool = True
    rate_per_second: Annotated[float, Field(gt=0, le=5000)] = 100
    max_requests: Annotated[int, Field(ge=1, le=10_000_000)] = 20_000  # per bake
    clients: Annotated[int, Field(ge=1, le=64)] = 4  # concurrent replay connections
    replay_days: Annotated[int, Field(ge=1, le=365)] = 2  # the newest event dates of the rows source


class ScoreShiftGuardrail(_Strict):
    """The challenger's scores against the champion's on the same traffic."""

    method: Literal["psi", "ks"] = "psi"
    threshold: Annotated[float, Field(gt=0, le=10)] = 0.2  # PSI 0.2: a significant shift; ks: the K-S statistic


class QualityGuardrail(_Strict):
    """Where the replayed rows' labels are known: the challenger's ROC-AUC against the champion's."""

    enabled: bool = True
    max_roc_auc_drop: Annotated[float, Field(ge=0, le=1)] = 0.05
    min_positives: Annotated[int, Field(ge=1)] = 20  # per variant; fewer: not judged (said so)


class Guardrails(_Strict):
    """What rolls a canary back, judged on the challenger's requests of each bake."""

    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.01  # 5xx answers
    max_p99_latency_ms: Annotated[float, Field(gt=0)] = 100  # the online pattern's target per request
    score_shift: ScoreShiftGuardrail | None = ScoreShiftGuardrail()
    quality: QualityGuardrail = QualityGuardrail()
    min_requests: Annotated[int, Field(ge=1)] = 200  # challenger requests per bake; fewer: rolled back


class SageMakerEndpoint(_Strict):
    """The SageMaker real-time endpoint of the aws target, updated by a blue/green deployment
    with SageMaker's deployment guardrails (docs/serving.md)."""

    # default: the use case name
    endpoint_name: Annotated[str | None, Field(pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")] = None
    # blue_green: the canary is SageMaker's blue/green update with deployment guardrails (rolled back
    # by CloudWatch alarms); variant_weights: champion and challenger as two production variants of
    # one config, the challenger's traffic share set by UpdateEndpointWeightsAndCapacities and judged
    # by the bake as on the local endpoint
    canary_mode: Literal["blue_green", "variant_weights"] = "blue_green"
    # every endpoint config uses it: a blue/green update keeps the variant name
    variant_name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")] = "AllTraffic"
    instance_type: Annotated[str, Field(pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")] = "ml.m5.large"
    # SageMaker shifts whole instances: the canary is max(1, share x instance_count) instances
    instance_count: Annotated[int, Field(ge=1, le=100)] = 2
    role_arn: Annotated[str | None, Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")] = (
        None  # default: aws.iam_role_arn
    )
    network_isolation: bool = True
    subnets: list[str] = []
    security_group_ids: list[str] = []
    termination_wait_seconds: Annotated[int, Field(ge=0, le=3600)] = 0  # the blue fleet kept after the shift
    max_execution_timeout_seconds: Annotated[int, Field(ge=600, le=14400)] = 3600  # the whole blue/green update
    alarm_period_seconds: Literal[10, 30, 60] = 60  # the CloudWatch alarms' period
    # how often the bake publishes the score-shift metric its alarm watches
    publish_seconds: Annotated[float, Field(gt=0, le=300)] = 30
    # scores on each side before the score shift is published: the alarm fires on any datapoint,
    # and PSI's sampling noise alone is about 9 x (1/n1 + 1/n2) with 10 bins (0.03 at 300 and 2,700)
    publish_min_scores: Annotated[int, Field(ge=100, le=1_000_000)] = 300
    wait_seconds: Annotated[int, Field(ge=60, le=7200)] = 1800  # for a created or updated endpoint to be InService

    @model_validator(mode="after")
    def _vpc(self) -> SageMakerEndpoint:
        if bool(self.subnets) != bool(self.security_group_ids):
            raise ValueError("a VPC needs both subnets and security_group_ids")
        return self


class Promotion(_Strict):
    """Online serving and canary promotion of registered challengers (``<usecase>__promotion``)."""

    endpoint: EndpointOptions = EndpointOptions()
    canary: CanaryOptions = CanaryOptions()
    traffic: TrafficOptions = TrafficOptions()
    guardrails: Guardrails = Guardrails()
    sagemaker: SageMakerEndpoint = SageMakerEndpoint()  # the aws target


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
    # VACUUM of the offline store's Iceberg table keeps snapshots this long (default: lakehouse.snapshot_retention_days)
    offline_snapshot_retention_days: Annotated[int | None, Field(ge=1, le=3650)] = None

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
    # Athena's limits, and how far below them the generated statements stay (docs/deployment.md)
    athena_max_statement_bytes: Annotated[int, Field(ge=16384, le=262144)] = 131072  # the service refuses > 262,144
    athena_max_files_per_statement: Annotated[int, Field(ge=1, le=5000)] = 1000  # landed files per Bronze INSERT
    athena_max_partitions_per_write: Annotated[int, Field(ge=1, le=100)] = (
        100  # HIVE_TOO_MANY_OPEN_PARTITIONS above 100
    )
    athena_max_maintenance_runs: Annotated[int, Field(ge=1, le=1000)] = 50  # OPTIMIZE / VACUUM while "more runs needed"

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
    explainability: Explainability | None = None
    scoring: Scoring | None = None
    monitoring: Monitoring | None = None
    promotion: Promotion | None = None
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
        problems: list[tuple[str, str]] = []
        add = problems.append
        if self.target == "aws" and self.aws is None:
            add(("aws", "target is aws but the aws section is missing"))
        if self.end_date is not None and self.end_date < self.start_date:
            add(("end_date", "end_date is before start_date"))
        clash = set(self.datasets) & set(self.gold)
        if clash:
            add(("gold", f"gold table names clash with data set names: {sorted(clash)}"))
        for gname, g in self.gold.items():
            for i, inp in enumerate(g.inputs):
                if inp not in self.datasets:
                    add(
                        (
                            f"gold.{gname}.inputs[{i}]",
                            f"unknown data set {inp!r}{_did_you_mean(inp, self.datasets)} (data sets: {', '.join(self.datasets)})",
                        )
                    )
        for vname, v in self.features.items():
            if v.source not in self.gold:
                add(
                    (
                        f"features.{vname}.source",
                        f"unknown Gold table {v.source!r}{_did_you_mean(v.source, self.gold)}",
                    )
                )
            if v.target == "aws" and self.target != "aws" and self.aws is None:
                add((f"features.{vname}.target", "the view is held on aws but the aws section is missing"))
        for tname, t in self.training_sets.items():
            if t.labels.source not in self.gold:
                add(
                    (
                        f"training_sets.{tname}.labels.source",
                        f"unknown Gold table {t.labels.source!r}{_did_you_mean(t.labels.source, self.gold)}",
                    )
                )
            seen: dict[str, str] = {}
            for i, vname in enumerate(t.features):
                if vname not in self.features:
                    add(
                        (
                            f"training_sets.{tname}.features[{i}]",
                            f"unknown feature view {vname!r}{_did_you_mean(vname, self.features)}",
                        )
                    )
                    continue
                if "offline" not in self.features[vname].stores:
                    add((f"training_sets.{tname}.features[{i}]", f"feature view {vname!r} has no offline store"))
                for f in self.features[vname].features:
                    if f in seen:
                        add(
                            (
                                f"training_sets.{tname}.features[{i}]",
                                f"feature {f!r} is in both {seen[f]!r} and {vname!r}",
                            )
                        )
                    seen[f] = vname
            clash = sorted(set(seen) & {t.labels.label, *t.labels.columns})
            if clash:
                add((f"training_sets.{tname}.labels", f"label/columns clash with feature names {clash}"))
        if self.explainability is not None and self.training is None:
            add(("explainability", "explains the trained model: the use case needs a training section"))
        if self.training is not None:
            t = self.training
            if t.training_set not in self.training_sets:
                add(
                    (
                        "training.training_set",
                        f"unknown training set {t.training_set!r}{_did_you_mean(t.training_set, self.training_sets)}",
                    )
                )
            else:
                ts = self.training_sets[t.training_set]
                available = [f for v in ts.features if v in self.features for f in self.features[v].features]
                for i, f in enumerate(t.features or []):
                    if f not in available:
                        add(
                            (
                                f"training.features[{i}]",
                                f"{f!r} is not a feature of training set {t.training_set!r}{_did_you_mean(f, available)}",
                            )
                        )
                for i, f in enumerate(t.extra_features):
                    if f not in ts.labels.columns:
                        add(
                            (
                                f"training.extra_features[{i}]",
                                f"{f!r} is not in training_sets.{t.training_set}.labels.columns",
                            )
                        )
                if t.task == "multiclass" and self.label_classes() is None:
                    add(
                        (
                            "training.classes",
                            f"a multiclass label needs its classes: set training.classes, or allowed values on "
                            f"the data set column {ts.labels.label!r} the label comes from",
                        )
                    )
            if self.explainability is not None and t.training_set in self.training_sets:
                ts = self.training_sets[t.training_set]
                if t.task != "binary":
                    add(("explainability", f"bias metrics need a binary task; training.task is {t.task}"))
                if t.promote and self.explainability.gate:
                    add(
                        (
                            "training.promote",
                            "a registered version would be champion before the fairness gate checks it: set "
                            "promote: false and promote after the explainability run (mlblueprints models promote)",
                        )
                    )
                # an unknown feature view is reported on its own; the facets are checked once it is fixed
                holdout = [*self.model_features(), *ts.labels.columns] if set(ts.features) <= set(self.features) else []
                for i, f in enumerate(self.explainability.facets if holdout else []):
                    if f.name not in holdout:
                        add(
                            (
                                f"explainability.facets[{i}].name",
                                f"{f.name!r} is not a column of the holdout (a model feature or one of "
                                f"training_sets.{t.training_set}.labels.columns){_did_you_mean(f.name, holdout)}",
                            )
                        )
            if t.entry_point is not None and not self.entry_point_path().is_file():
                add(("training.entry_point", f"file not found: {t.entry_point} (relative to the use case YAML)"))
        if self.scoring is not None:
            problems += self._scoring_problems()
            # with the model's features in question, a monitored column is not checked against them
            unsure = any(f.startswith(("training", "features")) for f, _ in problems)
            problems += self._monitoring_problems(check_columns=not unsure)
        problems += self._promotion_problems()
        _raise_problems(problems)
        return self

    def _promotion_problems(self) -> list[tuple[str, str]]:
        if self.promotion is None:
            return []
        t = self.training
        if t is None:
            return [("promotion", "promotion serves registered models: the use case needs a training section")]
        blue_green = self.target == "aws" and self.promotion.sagemaker.canary_mode == "blue_green"
        problems = self._sagemaker_endpoint_problems() if blue_green else []
        ts = self.training_sets.get(t.training_set)
        if ts is None:  # reported on training.training_set
            return problems
        return problems + [
            (
                f"training_sets.{t.training_set}.features[{i}]",
                f"the endpoint reads feature view {v!r} from the online store, which it does not keep "
                f"(features.{v}.stores: {self.features[v].stores})",
            )
            for i, v in enumerate(ts.features)
            if v in self.features and "online" not in self.features[v].stores
        ]

    def _sagemaker_endpoint_problems(self) -> list[tuple[str, str]]:
        """What SageMaker's deployment guardrails refuse, or silently replace by an all-at-once
        shift with no bake (docs/serving.md)."""
        p = self.promotion
        assert p is not None
        out: list[tuple[str, str]] = []
        sm, steps = p.sagemaker, p.canary.steps
        if sm.instance_type.split(".")[1].startswith("inf1"):
            out.append(
                (
                    "promotion.sagemaker.instance_type",
                    f"{sm.instance_type}: SageMaker's deployment guardrails exclude Inf1 instances (the update would "
                    "shift all traffic at once, with no canary and no bake)",
                )
            )
        if steps:
            pct = [round(100 * s) for s in steps]
            if any(b != (i + 1) * pct[0] for i, b in enumerate(pct)) or pct[0] > 50:
                out.append(
                    (
                        "promotion.canary.steps",
                        f"{steps}: SageMaker's LINEAR traffic shifting moves one fixed step of at most 50% of the "
                        f"capacity each time (e.g. [0.25, 0.5, 0.75]); use equal increments or one canary weight",
                    )
                )
        ba = p.canary.bake_seconds
        if ba != int(ba):
            out.append(("promotion.canary.bake_seconds", f"{ba}: SageMaker's WaitIntervalInSeconds is whole seconds"))
        return out

    def _monitored_column_problems(self, features: list[str]) -> list[tuple[str, str]]:
        m = self.monitoring
        assert m is not None
        out: list[tuple[str, str]] = []
        for i, c in enumerate(m.columns or []):
            if c not in features and c != "score":
                out.append(
                    (f"monitoring.columns[{i}]", f"{c!r} is not a feature of the model{_did_you_mean(c, features)}")
                )
        watched = [*(m.columns or features), *(["score"] if m.prediction_drift else [])]
        for c in m.per_column:
            if c not in watched:
                out.append(
                    (f"monitoring.per_column.{c}", f"{c!r} is not a monitored column{_did_you_mean(c, watched)}")
                )
        for i, c in enumerate(m.categorical):
            if c not in watched:
                out.append(
                    (f"monitoring.categorical[{i}]", f"{c!r} is not a monitored column{_did_you_mean(c, watched)}")
                )
        return out

    def _monitoring_problems(self, check_columns: bool = True) -> list[tuple[str, str]]:
        m = self.monitoring
        if m is None:
            return []
        if self.scoring is None or self.training is None:
            return [
                (
                    "monitoring",
                    "monitoring reads the predictions table: the use case needs training and scoring sections",
                )
            ]
        out: list[tuple[str, str]] = []
        try:
            features = self.model_features()
        except KeyError:  # an unknown training set or feature view, reported on its own field
            check_columns = False
            features = []
        if check_columns:
            out += self._monitored_column_problems(features)
        if (
            m.output_table in self.gold
            or m.output_table in self.datasets
            or m.output_table == self.scoring.output_table
        ):
            out.append(("monitoring.output_table", f"{m.output_table!r} is already the name of another table"))
        if "model_quality" in m.alert.signals and not m.model_quality.enabled:
            out.append(
                ("monitoring.alert.signals", "model_quality is a signal but monitoring.model_quality.enabled is false")
            )
        explicit = "signals" in m.alert.model_fields_set
        if explicit and "model_quality" in m.alert.signals and self.training.task != "binary":
            out.append(
                (
                    "monitoring.alert.signals",
                    f"model_quality (ROC-AUC, PR-AUC) needs a binary model; this one is {self.training.task}",
                )
            )
        if self.target == "aws" and m.alert.consecutive > 7:
            out.append(
                (
                    "monitoring.alert.consecutive",
                    f"{m.alert.consecutive} on aws: the drift alarms (CloudWatch) evaluate at most 7 periods of one day",
                )
            )
        return out

    def _scoring_problems(self) -> list[tuple[str, str]]:
        s, t = self.scoring, self.training
        if s is None:
            return []
        if t is None:
            return [("scoring", "scoring needs a model: add the training section")]
        out: list[tuple[str, str]] = []
        r = s.rows
        ts_name = r.training_set or t.training_set
        ts = self.training_sets.get(ts_name)
        if ts is None:
            out.append(
                (
                    "scoring.rows.training_set",
                    f"unknown training set {ts_name!r}{_did_you_mean(ts_name, self.training_sets)}",
                )
            )
        source = r.source or (ts.labels.source if ts else None)
        if r.source is not None and r.source not in self.gold:
            out.append(("scoring.rows.source", f"unknown Gold table {r.source!r}{_did_you_mean(r.source, self.gold)}"))
        for i, v in enumerate(r.features or []):
            if v not in self.features:
                out.append(
                    (f"scoring.rows.features[{i}]", f"unknown feature view {v!r}{_did_you_mean(v, self.features)}")
                )
            elif "offline" not in self.features[v].stores:
                out.append((f"scoring.rows.features[{i}]", f"feature view {v!r} has no offline store"))
        for field_, names in (("keys", r.keys or []), ("columns", r.columns or [])):
            for i, c in enumerate(names):
                try:
                    check_name(c, "column name")
                except ValueError as exc:
                    out.append((f"scoring.rows.{field_}[{i}]", str(exc)))
        reserved = {
            "event_time",
            "event_date",
            "score",
            "decision",
            "threshold",
            "model_name",
            "model_version",
            "mlflow_run_id",
            "input_snapshots",
            "scoring_run_id",
        }
        clash = sorted(set(r.keys or []) & (reserved - {"event_time"}))
        if clash:
            out.append(("scoring.rows.keys", f"{clash} are columns of the predictions table; they cannot be keys"))
        if s.threshold is not None and t.task != "binary":
            out.append(("scoring.threshold", f"a {t.task} model has no score threshold; remove it"))
        taken = {
            *self.datasets,
            *self.gold,
            *(
                f"{d}_{k}"
                for d in self.datasets
                for k in ("bronze", "silver", "quarantine", "duplicates", "bronze_files")
            ),
        }
        if s.output_table in taken or s.output_table.startswith(("fv_", "ts_")):
            out.append(("scoring.output_table", f"{s.output_table!r} is the name of another table of the use case"))
        if source is not None and source in self.gold and s.output_table == source:
            out.append(("scoring.output_table", "the predictions cannot be written into the rows' own table"))
        views = r.features if r.features is not None else (ts.features if ts else [])
        if s.schedule == "features" and not views:
            out.append(("scoring.schedule", "features: the rows join no feature view; use gold or a cron expression"))
        return out

    def scoring_rows(self) -> dict[str, Any]:
        """The scoring rows with every default resolved: ``source`` (Gold table), ``event_time``,
        ``keys``, ``columns`` (carried, keys excluded), ``views`` (feature views joined point in
        time; empty: the model's features are columns of the source) and ``training_set``."""
        s, t = self.scoring, self.training
        if s is None or t is None:
            raise ValueError(f"{self.name}: the use case has no scoring (or training) section")
        r = s.rows
        ts_name = r.training_set or t.training_set
        ts = self.training_sets[ts_name]
        source = r.source or ts.labels.source
        event_time = r.event_time or (ts.labels.event_time if source == ts.labels.source else None)
        event_time = event_time or self.gold[source].event_time
        keys = list(r.keys or self.gold[source].primary_key)
        label = ts.labels.label if source == ts.labels.source else None
        wanted = set(self.model_features())  # by default only what the model takes from the row itself
        carried = r.columns if r.columns is not None else [c for c in ts.labels.columns if c != label and c in wanted]
        views = list(r.features if r.features is not None else ts.features)
        return {
            "training_set": ts_name,
            "source": source,
            "event_time": event_time,
            "keys": keys,
            "columns": [c for c in dict.fromkeys(carried) if c not in keys and c != event_time],
            "views": views,
        }

    @property
    def scoring_schedule(self) -> str:
        """``features``, ``gold`` or a cron expression (default: features when the rows join
        feature views, else gold)."""
        s = self.scoring
        if s is None:
            raise ValueError(f"{self.name}: the use case has no scoring section")
        return s.schedule or ("features" if self.scoring_rows()["views"] else "gold")

    def scoring_suite(self) -> str | None:
        """The predictions' quality suite: ``scoring.quality``, else ``<usecase>/<output_table>.scoring``;
        None for an explicit empty string."""
        s = self.scoring
        if s is None:
            return None
        if s.quality == "":
            return None
        return s.quality or f"{self.name}/{s.output_table}.scoring"

    @property
    def model_name(self) -> str:
        return (self.training.model_name if self.training else None) or f"{self.name}_model"

    def model_features(self) -> list[str]:
        """The model's input columns, in order."""
        t = self.training
        if t is None:
            raise ValueError(f"{self.name}: the use case has no training section")
        ts = self.training_sets[t.training_set]
        base = t.features or [f for v in ts.features for f in self.features[v].features]
        return [*base, *t.extra_features]

    def label_classes(self) -> list[str] | None:
        """A multiclass label's classes, in the order of the model's outputs: ``training.classes``,
        else the allowed values of the data set column of the label's name (one is enough)."""
        t = self.training
        if t is None:
            return None
        if t.classes is not None:
            return list(t.classes)
        label = self.training_sets[t.training_set].labels.label if t.training_set in self.training_sets else None
        for ds in self.datasets.values():
            for c in ds.columns:
                if c.name == label and c.allowed:
                    return list(c.allowed)
        return None

    def entry_point_path(self) -> Path:
        """The training script: the team's own (``training.entry_point``), else the built-in one."""
        from mlblueprints.training import ENTRY_POINT, SCRIPT_DIR

        t = self.training
        if t is None or t.entry_point is None:
            return SCRIPT_DIR / ENTRY_POINT
        p = Path(t.entry_point)
        return p if p.is_absolute() else self.base_dir / p

    def view_target(self, view: str) -> str:
        """Where a feature view's stores live: its own ``target``, else the use case's."""
        return self.features[view].target or self.target

    # Where data lives. These are the only answers besides ``mlblueprints.backends`` that depend
    # on the target: an Iceberg namespace and an Asset URI are configuration, not behaviour.

    @property
    def namespace(self) -> str:
        """The Iceberg namespace of the use case's tables: the Glue database on aws."""
        return self.aws.glue_database if self.target == "aws" and self.aws else self.name

    def warehouse_uri(self, table: str) -> str:
        """Location of a lakehouse table (also its Airflow Asset URI, the same for both targets' DAGs)."""
        if self.target == "aws" and self.aws:
            return self.aws.s3_uri("warehouse", table)
        return f"file://mlblueprints/{self.name}/warehouse/{table}"

    def feature_view_uri(self, view: str, offline_table: str, feature_group: str) -> str:
        """Location of a feature view's offline store (its Asset URI; a new version is a new Asset)."""
        if self.view_target(view) == "aws" and self.aws is not None:
            base = self.aws.feature_store.offline_s3_uri or self.aws.s3_uri("feature-store")
            return f"{base.rstrip('/')}/{feature_group}"
        return f"file://mlblueprints/{self.name}/features/{offline_table}"

    @property
    def aws_settings(self) -> AwsTarget:
        """The ``aws`` section; a clear error when an aws backend is used without one."""
        if self.aws is None:
            raise ValueError(f"{self.name}: the aws section is required on the aws target")
        return self.aws

    @property
    def mlflow_tracking_server(self) -> str | None:
        """The SageMaker managed MLflow tracking server ARN of the aws target, or None (local SQLite)."""
        if self.target != "aws" or self.training is None:
            return None
        return self.training.sagemaker.mlflow_tracking_server_arn

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


def _did_you_mean(word: str, choices: Any) -> str:
    """`` (did you mean 'x'?)`` when a choice is close to ``word``, else ``""``."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def _join_path(base: tuple[Any, ...], rel: str) -> str:
    head = _field_path(base) if base else ""
    if not rel:
        return head or "<root>"
    if not head:
        return rel
    return head + rel if rel.startswith("[") else f"{head}.{rel}"


# pydantic adds the member type of a union to an error's location (``...max_depth.float``)
_TYPE_TAG = re.compile(r"^(float|int|str|bool|none|list\[.*\]|dict\[.*\]|literal\[.*\]|function-\w+(\[.*\])?)$")
_MISSING_HINTS: dict[str, str] = {}


def _unwrap(ann: Any) -> Any:
    while True:
        origin = typing.get_origin(ann)
        if origin is typing.Annotated:
            ann = typing.get_args(ann)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            if len(args) == 1:
                ann = args[0]
                continue
        return ann


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that validates the object at ``loc`` of a use case (None if not a model)."""
    ann: Any = UseCase
    for part in loc:
        ann = _unwrap(ann)
        origin = typing.get_origin(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            field = next((f for n, f in ann.model_fields.items() if part in (n, f.alias)), None)
            if field is None:
                return None
            ann = field.annotation
        elif origin is dict:
            ann = typing.get_args(ann)[1]
        elif origin is list:
            ann = typing.get_args(ann)[0]
        else:
            return None
    ann = _unwrap(ann)
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _yaml_scalar(root: Any, loc: tuple[Any, ...]) -> str | None:
    """The text of the YAML scalar at ``loc`` as written in the file (e.g. ``yes`` for a value
    YAML read as ``True``), from the composed node tree; None when it cannot be found."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next(
                (v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)),
                None,
            )
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            return None
        if node is None:
            return None
    return node.value if isinstance(node, yaml.ScalarNode) else None


def _problems(exc: ValidationError, root: Any) -> list[tuple[str, str]]:
    """One ``(field path, reason)`` per problem of a validation error, readable."""
    errors = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        tagged = bool(loc) and isinstance(loc[-1], str) and bool(_TYPE_TAG.match(loc[-1]))
        parent = _model_at(loc[:-1]) if tagged else None
        if tagged and not (parent is not None and loc[-1] in parent.model_fields):
            loc = loc[:-1]
        errors.append({**err, "loc": loc})
    # a union member that failed each way: one problem, listing what would have been accepted
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for err in errors:
        if err["loc"] in merged and err["type"].endswith("_type"):
            prev = merged[err["loc"]]
            prev["alternatives"].append(err["msg"].removeprefix("Input should be "))
            prev["msg"] = f"Input should be one of: {', '.join(prev['alternatives'])} (got {err.get('input')!r})"
            continue
        merged.setdefault(err["loc"], {**err, "alternatives": [err["msg"].removeprefix("Input should be ")]})
    errors = list(merged.values())

    out: list[tuple[tuple[Any, ...], str, str]] = []  # (loc, path, reason)
    suppressed: set[tuple[Any, ...]] = set()
    booleans: dict[tuple[Any, ...], list[tuple[str, bool, str]]] = {}
    for err in errors:
        loc, kind = err["loc"], err["type"]
        msg = err["msg"].removeprefix("Value error, ")
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _Problems):
            for rel, reason in cause.problems:
                out.append((loc, _join_path(loc, rel), reason))
            continue
        if kind == "extra_forbidden":
            parent, key = loc[:-1], loc[-1]
            model = _model_at(parent)
            known = [f.alias or n for n, f in model.model_fields.items() if not f.exclude] if model else []
            hint = _did_you_mean(key, known)
            if hint:
                suppressed.add((*parent, difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)[0]))
            elif known:
                hint = f" (fields here: {', '.join(known)})"
            out.append((loc, _field_path(parent), f"unknown field {key!r}{hint}"))
            continue
        if kind == "missing":
            out.append((loc, _field_path(loc), _MISSING_HINTS.get(_field_path(loc), "required field is missing")))
            continue
        value = err.get("input")
        if isinstance(value, bool) and kind in ("string_type", "literal_error", "enum"):
            raw = _yaml_scalar(root, loc) if root is not None else None
            expected = "a string" if kind == "string_type" else msg.removeprefix("Input should be ")
            if kind != "string_type" and f"'{raw}'" not in expected:  # quoting would not help
                out.append((loc, _field_path(loc), f"{msg} (YAML read the unquoted {raw} as a boolean)"))
                continue
            parent = loc[:-1] if loc and isinstance(loc[-1], int) else loc
            booleans.setdefault(parent, []).append((raw or str(value).lower(), value, expected))
            if len(booleans[parent]) == 1:
                out.append((parent, "__booleans__", ""))
            continue
        out.append((loc, _field_path(loc), msg))

    problems = []
    for loc, path, reason in out:
        if path == "__booleans__":
            items = booleans[loc]
            raws = [r for r, _, _ in items]
            vals = ", ".join(str(v).lower() for _, v, _ in items)
            expected = items[0][2]
            if len(items) == 1:
                reason = (
                    f"YAML read the unquoted {raws[0]} as the boolean {vals}, but {expected} is expected here; "
                    f"quote it: '{raws[0]}'"
                )
            else:
                reason = (
                    f"YAML read the unquoted {', '.join(raws)} as booleans ({vals}), but strings are expected here; "
                    f"quote them: [{', '.join(repr(r) for r in raws)}]"
                )
            problems.append((_field_path(loc), reason))
        elif loc in suppressed:
            continue  # a required field that is there under a misspelt name (reported as unknown)
        else:
            problems.append((path, reason))
    return problems


def parse_usecase(data: Any, path: Path | str = "<memory>", *, source: str | None = None) -> UseCase:
    """Validate a parsed YAML document; raise :class:`UseCaseError` listing every problem.

    ``source``, the YAML text, lets a problem quote a value as it was written (``yes`` rather
    than the ``True`` YAML read it as).
    """
    if not isinstance(data, dict):
        raise UseCaseError(path, "<root>", f"expected a mapping, got {type(data).__name__}")
    problems: list[tuple[str, str]] = []
    stem = Path(path).stem
    if str(path) != "<memory>" and isinstance(data.get("name"), str) and data["name"] != stem:
        problems.append(("name", f"must equal the file name {stem!r} (got {data['name']!r})"))
    try:
        uc = UseCase.model_validate({**data, "source_path": str(path)})
    except ValidationError as exc:
        root = None
        if source is not None:
            try:
                root = yaml.compose(source, Loader=yaml.SafeLoader)
            except yaml.YAMLError:
                root = None
        problems += _problems(exc, root)
    if problems:
        raise UseCaseError.of(path, problems)
    return uc


# a use-case file is a page of configuration: anything larger is not one
MAX_YAML_BYTES = 1 << 20
_NOT_UTF8_HINTS = (
    (codecs.BOM_UTF16_LE, "UTF-16 text (byte-order mark FF FE)"),
    (codecs.BOM_UTF16_BE, "UTF-16 text (byte-order mark FE FF)"),
    (b"\x1f\x8b", "gzip-compressed data"),
)


def _read_yaml(path: Path) -> tuple[Any, str]:
    """The parsed YAML of a use-case file and its text."""
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
        return yaml.safe_load(text), text
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<file>"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UseCaseError(path, where, f"invalid YAML: {problem}") from None
    except RecursionError:
        raise UseCaseError(path, "<file>", "invalid YAML: nested too deeply") from None


def load_usecase(path: Path | str) -> UseCase:
    """Load and check one use-case YAML. Every failure, whatever raised it, is a
    :class:`UseCaseError`: every problem of the file, one line each, naming the file, the field
    and the reason."""
    path = Path(path)
    try:
        data, text = _read_yaml(path)
        uc = parse_usecase(data, path, source=text)
        missing = [
            (f"gold.{table}.sql", f"file not found: {uc.gold[table].sql}")
            for table in uc.gold
            if not uc.gold_sql_path(table).is_file()
        ]
        if missing:
            raise UseCaseError.of(path, missing)
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
