"""Batch scoring, target-independent: the interval, the model and its inputs, the predictions'
layout, the decision rule, the gate's own expectations, the score histogram, the cost estimate.

Pure: no I/O, no heavy import at module level (numpy inside the functions that need it).

What a registered version is for is read from its lineage (the version tags the training
pattern writes, ``mlblueprints.registry``): the task, the features it was trained on in order,
the threshold chosen on the holdout (binary), the classes (multiclass), the target range
(regression). A scoring run refuses a version whose task or features are not the use case's,
and rows that do not give every feature with a number type, each with one line naming what is
wrong.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from mlblueprints.config import UseCase
from mlblueprints.errors import PermanentError

# feature types a model takes (booleans as 0/1); everything else must be cast in the Gold SQL
NUMERIC_TYPES = ("int", "bigint", "double", "float", "boolean")
# columns of the predictions table besides the keys (``event_date`` is the partition)
LINEAGE_COLUMNS = ("model_name", "model_version", "mlflow_run_id", "input_snapshots", "scoring_run_id")
HISTOGRAM_BINS = 20


class ScoringError(PermanentError, ValueError):
    """A scoring run that cannot go on with these inputs (no model to score with, features
    missing or of another type, a predictions table of another layout); one line, naming what."""

    one_line = True  # the local runner logs it as its message, not as a traceback

    def __init__(self, uc: UseCase | str, reason: str):
        self.usecase = uc if isinstance(uc, str) else uc.name
        self.reason = reason
        super().__init__(f"{self.usecase}: scoring: {reason}")


# ---------------------------------------------------------------- the interval


def _day(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def interval(
    chosen: Sequence[date],
    extras: Iterable[Mapping[str, Any] | None],
    interval_start: Any = None,
    interval_end: Any = None,
    scheduled: bool = False,
) -> tuple[date, date, str] | None:
    """The event dates [lo, hi] a run scores and where they come from: the dates chosen (the
    ``event_dates`` Param: their min..max); else the ranges of the triggering Asset events
    (``{"range": [lo, hi]}`` of the Gold or feature-view events, merged); else, for a run of a
    cron schedule, its data interval (the days from its start to the day before its end)."""
    if chosen:
        return min(chosen), max(chosen), "param event_dates"
    los, his = [], []
    for e in extras:
        rng = (e or {}).get("range")
        if rng and len(rng) == 2:
            los.append(_day(rng[0]))
            his.append(_day(rng[1]))
    if los:
        return min(los), max(his), "triggering Asset events"
    if scheduled and interval_start is not None and interval_end is not None:
        lo, end = _day(interval_start), _day(interval_end)
        hi = end - timedelta(days=1) if end > lo else lo
        return lo, hi, "the run's data interval"
    return None


# ---------------------------------------------------------------- the model


def no_model_message(uc: UseCase, alias: str) -> str:
    return (
        f"no {alias} for model {uc.model_name}: promote a version (mlblueprints models promote {uc.name} <version>) "
        f"or pin one (scoring.model.version, the version Param, or mlblueprints scoring run {uc.name} --version N)"
    )


def _features_of(lineage: Mapping[str, Any]) -> list[str] | None:
    hps = lineage.get("hyperparameters")
    if isinstance(hps, str):
        try:
            hps = json.loads(hps)
        except ValueError:
            hps = None
    feats = (hps or {}).get("features") if isinstance(hps, Mapping) else None
    if isinstance(feats, str):
        return [f for f in feats.split(",") if f]
    if isinstance(feats, list):
        return [str(f) for f in feats]
    return None


def model_from_registry(uc: UseCase, registered: Mapping[str, Any], alias: str | None) -> dict[str, Any]:
    """What a scoring run needs of a registered version (``Registry.lineage(version)``), checked
    against the use case: the task it was trained for, the features in order, the threshold a
    binary model was registered with (``scoring.threshold`` overrides it), the classes."""
    t = uc.training
    s = uc.scoring
    if t is None:
        raise ScoringError(uc, "the use case has no training section")
    lin = dict(registered.get("lineage") or {})
    name, version = registered["model_name"], int(registered["version"])
    label = f"{name} v{version}"
    task = str(lin.get("task") or "binary")
    if task != t.task:
        raise ScoringError(
            uc, f"{label} is a {task} model but training.task is {t.task}: pin a version trained for {t.task}"
        )
    features = _features_of(lin)
    wanted = uc.model_features()
    if features is None:
        raise ScoringError(uc, f"{label} records no feature list in its lineage: it cannot be scored safely")
    if features != wanted:
        gone = [f for f in wanted if f not in features]
        extra = [f for f in features if f not in wanted]
        what = []
        if extra:
            what.append(f"it needs {extra}, which the use case no longer declares")
        if gone:
            what.append(f"it was not trained on {gone}")
        if not what:
            what.append("the same features in another order")
        raise ScoringError(
            uc,
            f"{label} was trained on other features than training.features declares now ({'; '.join(what)}): "
            "pin the version trained on these features, or retrain",
        )
    metrics = lin.get("metrics") if isinstance(lin.get("metrics"), Mapping) else {}
    threshold, source = None, None
    if task == "binary":
        if s is not None and s.threshold is not None:
            threshold, source = float(s.threshold), "scoring.threshold"
        elif isinstance(metrics.get("threshold"), (int, float)):
            threshold, source = float(metrics["threshold"]), f"registered with {label}"
        else:
            raise ScoringError(uc, f"{label} records no decision threshold in its metrics: set scoring.threshold")
    classes = lin.get("classes") if task == "multiclass" else None
    if task == "multiclass":
        classes = list(classes or uc.label_classes() or [])
        if not classes:
            raise ScoringError(uc, f"{label} records no classes: set training.classes")
    return {
        "name": name,
        "version": version,
        "alias": alias,
        "label": label,
        "mlflow_run_id": registered.get("mlflow_run_id"),
        "model_uri": f"models:/{name}/{version}",
        "task": task,
        "model_format": lin.get("model_format") or "xgboost",
        "features": features,
        "threshold": threshold,
        "threshold_source": source,
        "classes": classes,
        "target_range": lin.get("target_range") if task == "regression" else None,
        "training_set": lin.get("training_set"),
        "training_set_snapshot_id": lin.get("training_set_snapshot_id"),
        "trained_in_run": lin.get("run_id"),
        "git_commit": lin.get("git_commit"),
        "aliases": list(registered.get("aliases") or []),
    }


def check_inputs(uc: UseCase, model: Mapping[str, Any], given: Mapping[str, str], what: str) -> None:
    """Every feature of the model must be given (by a feature view or a column of the rows,
    ``given``: column -> type) with a number type; one line naming what is missing or wrong."""
    missing = [f for f in model["features"] if f not in given]
    if missing:
        raise ScoringError(
            uc,
            f"{model['label']} needs feature(s) {missing} that {what} do not give "
            f"(they give: {', '.join(sorted(given)) or 'nothing'}); add the view or column to scoring.rows",
        )
    for f in model["features"]:
        if given[f] not in NUMERIC_TYPES:
            raise ScoringError(
                uc,
                f"feature {f!r} is {given[f]} in {what}; {model['label']} takes numbers "
                f"({', '.join(NUMERIC_TYPES)}): cast it in the Gold SQL",
            )


def check_trained_types(
    uc: UseCase, model: Mapping[str, Any], trained: Mapping[str, str], now: Mapping[str, str]
) -> None:
    """A feature whose type changed since the model was trained (``trained``: the training set's
    column types, ``now``: what the scoring rows give) is refused, naming the column."""
    wide = {"int": "bigint", "float": "double"}
    for f in model["features"]:
        was, is_ = trained.get(f), now.get(f)
        if was is None or is_ is None:
            continue
        if wide.get(was, was) != wide.get(is_, is_):
            raise ScoringError(
                uc,
                f"feature {f!r} changed type: {model['label']} was trained on {was} (training set "
                f"{model.get('training_set')} snapshot {model.get('training_set_snapshot_id')}), the rows now give "
                f"{is_}; fix the Gold SQL, or bump the feature view's version and retrain",
            )


def check_rows(uc: UseCase, rows: Mapping[str, Any], types: Mapping[str, str]) -> None:
    """The rows' keys, event time and carried columns are columns of the Gold table (``types``:
    column -> type) with the types they need; one line naming the column otherwise."""
    have = ", ".join(types)
    for role, cols in (("key", rows["keys"]), ("event time", [rows["event_time"]]), ("carried", rows["columns"])):
        for c in cols:
            if c not in types:
                raise ScoringError(
                    uc, f"scoring.rows: {role} column {c!r} is not in Gold table {rows['source']!r} (it has: {have})"
                )
    if types[rows["event_time"]] != "timestamp":
        raise ScoringError(
            uc,
            f"scoring.rows: event time column {rows['event_time']!r} must be a timestamp, it is {types[rows['event_time']]}",
        )
    for k in rows["keys"]:
        if types[k] not in ("string", "int", "bigint", "date", "timestamp"):
            raise ScoringError(
                uc, f"scoring.rows: key column {k!r} is {types[k]}; keys are strings, integers, dates or timestamps"
            )


# ---------------------------------------------------------------- the predictions


def output_columns(task: str, keys: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The predictions table's columns with config types: the keys, ``event_time``, ``score``,
    ``decision`` (binary: 0/1 at the threshold; multiclass: the most probable class; none for a
    regression), ``threshold`` (binary), the lineage, and ``event_date`` (the partition)."""
    cols = [*keys, ("event_time", "timestamp"), ("score", "double")]
    if task == "binary":
        cols += [("decision", "int"), ("threshold", "double")]
    elif task == "multiclass":
        cols += [("decision", "string")]
    cols += [
        ("model_name", "string"),
        ("model_version", "bigint"),
        ("mlflow_run_id", "string"),
        ("input_snapshots", "string"),
        ("scoring_run_id", "string"),
        ("event_date", "date"),
    ]
    return cols


def decide(task: str, raw: Any, threshold: float | None, classes: Sequence[str] | None) -> tuple[Any, Any]:
    """(score, decision) of model outputs ``raw``: binary - the probability and 1 where it is at
    least the threshold; multiclass - the probability of the most probable class and that class
    (the first one on a tie, as numpy's argmax and the serving container's predicted_label pick);
    regression - the prediction and no decision."""
    import numpy as np

    out = np.asarray(raw, dtype=np.float64)
    if task == "binary":
        if threshold is None:
            raise ValueError("a binary decision needs a threshold")
        return out, (out >= threshold).astype(np.int32)
    if task == "multiclass":
        idx = out.argmax(axis=1)
        return out[np.arange(len(out)), idx], np.asarray(classes, dtype=object)[idx]
    return out, None


def gate_expectations(task: str, keys: Sequence[str], rows_in: int) -> list[dict[str, Any]]:
    """What every predictions gate checks besides the use case's suite: one prediction per input
    row, one per key, a score on every row and, for a classifier, a probability in [0, 1]."""
    out: list[dict[str, Any]] = [
        {"type": "expect_table_row_count_to_equal", "kwargs": {"value": int(rows_in)}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "score"}},
    ]
    if len(keys) == 1:
        out.append({"type": "expect_column_values_to_be_unique", "kwargs": {"column": keys[0]}})
    else:
        out.append({"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": list(keys)}})
    if task in ("binary", "multiclass"):
        out.append(
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "score", "min_value": 0, "max_value": 1},
            }
        )
        out.append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "decision"}})
    for e in out:
        e["severity"] = "critical"
        e["meta"] = {"why": "built into every predictions gate (mlblueprints.scoring.core.gate_expectations)"}
    return out


@dataclass
class Histogram:
    """Counts of scores in ``bins`` equal-width bins over [lo, hi] (values outside are counted
    as below / above), accumulated batch by batch."""

    lo: float
    hi: float
    bins: int = HISTOGRAM_BINS
    counts: list[int] = field(default_factory=list)
    below: int = 0
    above: int = 0
    total: int = 0
    sum: float = 0.0
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * self.bins

    def add(self, values: Any) -> None:
        import numpy as np

        v = np.asarray(values, dtype=np.float64)
        v = v[~np.isnan(v)]
        if not len(v):
            return
        self.total += len(v)
        self.sum += float(v.sum())
        self.min = float(v.min()) if self.min is None else min(self.min, float(v.min()))
        self.max = float(v.max()) if self.max is None else max(self.max, float(v.max()))
        self.below += int((v < self.lo).sum())
        self.above += int((v > self.hi).sum())
        inside = v[(v >= self.lo) & (v <= self.hi)]
        counts, _ = np.histogram(inside, bins=self.bins, range=(self.lo, self.hi))
        self.counts = [a + int(b) for a, b in zip(self.counts, counts)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "lo": self.lo,
            "hi": self.hi,
            "bins": self.bins,
            "counts": self.counts,
            "below": self.below,
            "above": self.above,
            "total": self.total,
            "mean": self.sum / self.total if self.total else None,
            "min": self.min,
            "max": self.max,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Histogram:
        h = cls(float(d["lo"]), float(d["hi"]), int(d["bins"]), list(d["counts"]))
        h.below, h.above, h.total = int(d.get("below", 0)), int(d.get("above", 0)), int(d.get("total", 0))
        h.min, h.max = d.get("min"), d.get("max")
        h.sum = float(d["mean"] or 0.0) * h.total if d.get("mean") is not None else 0.0
        return h


def histogram_for(task: str, target_range: Sequence[float] | None = None) -> Histogram:
    """Probabilities over [0, 1]; a regression's predictions over the target range it was
    trained on (or [0, 1] when unknown: values beyond are counted as below / above)."""
    if task == "regression" and target_range and len(target_range) == 2:
        lo, hi = float(target_range[0]), float(target_range[1])
        if math.isfinite(lo) and math.isfinite(hi) and hi > lo:
            return Histogram(lo, hi)
    return Histogram(0.0, 1.0)


def histogram_text(h: Mapping[str, Any], width: int = 40, label: str = "score") -> str:
    """The histogram as text: one line per bin with its range, count and a bar (log scale when
    the counts span more than two orders of magnitude, so rare high scores stay visible)."""
    counts = list(h.get("counts") or [])
    total = int(h.get("total") or 0)
    if not total:
        return f"{label} histogram: no scores"
    lo, hi, n = float(h["lo"]), float(h["hi"]), len(counts)
    step = (hi - lo) / n
    top = max(counts) or 1
    nonzero = [c for c in counts if c]
    log = bool(nonzero) and top / min(nonzero) > 100

    def bar(c: int) -> str:
        if not c:
            return ""
        frac = math.log1p(c) / math.log1p(top) if log else c / top
        return "#" * max(1, round(frac * width))

    digits = 2 if hi - lo <= 1.0 else 0
    lines = [f"{label} histogram ({total:,} rows{', log scale' if log else ''}):"]
    if h.get("below"):
        lines.append(f"  {'< ' + format(lo, f'.{digits}f'):>21}  {h['below']:>10,}")
    for i, c in enumerate(counts):
        a, b = lo + i * step, lo + (i + 1) * step
        rng = f"[{a:.{digits}f}, {b:.{digits}f}{']' if i == n - 1 else ')'}"
        lines.append(f"  {rng:>21}  {c:>10,}  {bar(c)}")
    if h.get("above"):
        lines.append(f"  {'> ' + format(hi, f'.{digits}f'):>21}  {h['above']:>10,}")
    return "\n".join(lines)


# ---------------------------------------------------------------- cost


def transform_cost_estimate(
    rows: int,
    rows_per_second_per_vcpu: float,
    usd_per_hour: float,
    vcpus: int,
    instance_count: int = 1,
    startup_minutes: float = 6.0,
) -> dict[str, Any]:
    """An estimate of what a Batch Transform job costs to score ``rows``: the time the instances
    need at the measured throughput per vCPU (scaled by the instance's vCPUs), plus the minutes a
    job spends starting its instances and container (billed too), at the instance's hourly price.
    An estimate: the container's CSV parsing and HTTP round trips are not in the measured figure."""
    if rows_per_second_per_vcpu <= 0:
        raise ValueError("throughput must be positive")
    seconds = rows / (rows_per_second_per_vcpu * vcpus * instance_count)
    billed_hours = instance_count * (seconds + startup_minutes * 60) / 3600
    return {
        "rows": rows,
        "compute_seconds": round(seconds, 1),
        "startup_minutes": startup_minutes,
        "billed_instance_hours": round(billed_hours, 4),
        "usd": round(billed_hours * usd_per_hour, 4),
    }
