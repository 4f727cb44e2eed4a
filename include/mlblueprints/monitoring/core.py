"""What monitoring computes for one window, the same on both targets: the reference sketch of a
model version, the per-column drift and data-quality rows of a window, delayed-label model
quality, and the window's signals. Frames in, plain rows out; storage is the backends'."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from mlblueprints.config import UseCase
from mlblueprints.monitoring import stats

SCORE = "score"
DATASET = ""  # the column of dataset-level rows
# the monitoring table's columns (config types); one row per metric of a column in a window
TABLE_COLUMNS: list[tuple[str, str]] = [
    ("usecase", "string"),
    ("model_name", "string"),
    ("model_version", "bigint"),
    ("window_start", "date"),
    ("window_end", "date"),
    ("column", "string"),
    ("signal", "string"),  # column_drift | prediction_drift | dataset_drift | data_quality | model_quality
    ("metric", "string"),  # the test (wasserstein, ...) or the measure (null_share, roc_auc, ...)
    ("statistic", "double"),
    ("threshold", "double"),
    ("drifted", "boolean"),  # the statistic breaks its threshold
    ("rows", "bigint"),
    ("detail", "string"),  # JSON: the column's summary, or why it could not be tested
    ("run_id", "string"),
]
DECISION_COLUMNS: list[tuple[str, str]] = [
    ("usecase", "string"),
    ("model_name", "string"),
    ("model_version", "bigint"),
    ("window_start", "date"),
    ("window_end", "date"),
    ("rows", "bigint"),
    ("decided", "boolean"),
    ("fired", "boolean"),
    ("signals", "string"),  # JSON list
    ("drifted_columns", "string"),  # JSON list
    ("streak", "int"),
    ("reason", "string"),
    ("run_id", "string"),
    ("decided_at", "timestamp"),
]


def metric_rows(
    ident_: Mapping[str, Any], lo: Any, hi: Any, rows: Sequence[Mapping[str, Any]], run_id: str
) -> list[dict[str, Any]]:
    """The monitoring table's rows of a window: its identity (``lo``, ``hi``: its first and last
    event date, in the backend's type), each metric row, the run."""
    head = {k: ident_[k] for k in ("usecase", "model_name", "model_version")}
    return [{**head, "window_start": lo, "window_end": hi, **r, "run_id": run_id} for r in rows]


def decision_row(
    ident_: Mapping[str, Any], lo: Any, hi: Any, decision: Mapping[str, Any], run_id: str, decided_at: Any
) -> dict[str, Any]:
    """The decisions table's row of a window's decision (lists as JSON text)."""
    return {
        **{k: ident_[k] for k in ("usecase", "model_name", "model_version")},
        "window_start": lo,
        "window_end": hi,
        "rows": int(decision["rows"]),
        "decided": bool(decision["decided"]),
        "fired": bool(decision["fired"]),
        "signals": json.dumps(list(decision["signals"])),
        "drifted_columns": json.dumps(list(decision["drifted_columns"])),
        "streak": int(decision["streak"]),
        "reason": str(decision["reason"]),
        "run_id": run_id,
        "decided_at": decided_at,
    }


def columns(uc: UseCase) -> list[str]:
    """The monitored columns: ``monitoring.columns`` (default the model's features), then the score."""
    m = uc.monitoring
    assert m is not None
    cols = list(m.columns or uc.model_features())
    if m.prediction_drift and SCORE not in cols:
        cols.append(SCORE)
    return cols


def kind(uc: UseCase, column: str) -> str:
    m = uc.monitoring
    return stats.CATEGORICAL if m is not None and column in m.categorical else stats.NUMERICAL


def reference_key(uc: UseCase, version: int) -> str:
    """What a stored reference sketch depends on: the version, the reference's definition and the
    monitored columns with their kinds (a change of any of them computes a new one)."""
    m = uc.monitoring
    assert m is not None
    doc = {
        "version": int(version),
        "reference": m.reference.model_dump(mode="json"),
        "columns": [[c, kind(uc, c)] for c in columns(uc)],
        "sketch": [stats.QUANTILE_POINTS, stats.EXACT_UP_TO, stats.TRACK_DISTINCT],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def reference_sketch(uc: UseCase, frame: Any, version: int, source: str) -> dict[str, Any]:
    """The sketch of every monitored column of the reference frame (features and score)."""
    missing = [c for c in columns(uc) if c not in frame.columns]
    if missing:
        raise stats.DriftInputError(f"the reference ({source}) has no column(s) {missing}")
    return {
        "key": reference_key(uc, version),
        "version": int(version),
        "source": source,
        "rows": len(frame),
        "columns": {c: stats.sketch(c, frame[c].to_numpy(), kind(uc, c)).as_dict() for c in columns(uc)},
    }


def _finite(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def evaluate(
    uc: UseCase,
    reference: Mapping[str, Any],
    current: Any,
    *,
    labels: Any = None,
    registered_metrics: Mapping[str, Any] | None = None,
    label_column: str | None = None,
) -> dict[str, Any]:
    """Every metric row of one window (without the window's identity, which the caller adds), the
    window's signals and the drifted columns. Problems with one column (missing, all null, not of
    its kind) are rows with ``drifted`` None and a message, never an exception: the other
    columns are still tested. ``labels``: the window's rows with a landed label (``score`` and
    ``label_column``), for delayed-label model quality."""
    m = uc.monitoring
    assert m is not None
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    drifted: list[str] = []
    quality_breaches: list[str] = []
    n = len(current)
    tested_features = drifted_features = 0
    score_drifted = False
    dq = m.data_quality
    for col in columns(uc):
        signal = "prediction_drift" if col == SCORE else "column_drift"
        test = m.per_column.get(col)
        method = (test.method if test and test.method else None) or m.method
        threshold = (test.threshold if test and test.threshold is not None else None) or m.threshold
        ref = stats.ColumnSketch.from_dict(reference["columns"][col])
        if col not in current.columns:
            msg = f"column {col!r} is missing from the current window"
            problems.append(msg)
            quality_breaches.append(col)
            rows.append(_row(col, "data_quality", "missing", None, None, True, n, {"problem": msg}))
            continue
        values = current[col].to_numpy()
        try:
            d = stats.test_column(ref, values, method, threshold) if n else None
        except stats.DriftInputError as exc:
            problems.append(str(exc))
            rows.append(_row(col, signal, method or "drift", None, threshold, None, n, {"problem": str(exc)}))
            d = None
        if d is not None:
            rows.append(_row(col, signal, d.method, d.statistic, d.threshold, d.drifted, n, d.summary))
            if col == SCORE:
                score_drifted = d.drifted
            else:
                tested_features += 1
                drifted_features += int(d.drifted)
            if d.drifted:
                drifted.append(col)
        if n:
            for metric, value, limit in _quality(ref, values, dq):
                breach = value is not None and value > limit
                rows.append(_row(col, "data_quality", metric, value, limit, breach, n, {}))
                if breach:
                    quality_breaches.append(col)
    share = drifted_features / tested_features if tested_features else 0.0
    dataset_drift = bool(tested_features) and share >= m.drift_share
    rows.append(
        _row(
            DATASET,
            "dataset_drift",
            "drifted_share",
            share,
            m.drift_share,
            dataset_drift,
            n,
            {"tested": tested_features, "drifted": drifted_features},
        )
    )
    quality = model_quality(uc, labels, registered_metrics or {}, label_column) if n else None
    if quality is not None:
        rows += quality["rows"]
    signals = {
        "dataset_drift": dataset_drift,
        "prediction_drift": bool(score_drifted),
        "data_quality": bool(quality_breaches),
        "model_quality": bool(quality and quality["degraded"]),
    }
    return {
        "rows": rows,
        "signals": signals,
        "drifted_columns": drifted,
        "quality_breaches": sorted(set(quality_breaches)),
        "drifted_share": share,
        "problems": problems,
        "model_quality": {k: v for k, v in (quality or {}).items() if k != "rows"},
        "current_rows": n,
    }


def _row(
    column: str,
    signal: str,
    metric: str,
    statistic: float | None,
    threshold: float | None,
    drifted: bool | None,
    rows: int,
    detail: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "column": column,
        "signal": signal,
        "metric": metric,
        "statistic": _finite(statistic),
        "threshold": _finite(threshold),
        "drifted": drifted,
        "rows": int(rows),
        "detail": json.dumps(dict(detail), sort_keys=True, default=str),
    }


def _quality(ref: stats.ColumnSketch, values: Any, dq: Any) -> list[tuple[str, float | None, float]]:
    """(measure, value, limit) of a column: null share, its increase over the reference's, and the
    share of values the reference never had."""
    import numpy as np

    n = len(values)
    if ref.kind == stats.NUMERICAL:
        try:
            arr = np.asarray(values, dtype="float64")
        except (TypeError, ValueError):
            return [("null_share", None, dq.max_null_share)]
        finite = arr[np.isfinite(arr)]
        nulls = n - len(finite)
        outside = (
            int(np.count_nonzero((finite < ref.min) | (finite > ref.max))) / len(finite)
            if len(finite) and ref.min is not None
            else 0.0
        )
        unseen = ("out_of_range_share", outside, dq.max_out_of_range_share)
    else:
        keep = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        nulls = n - len(keep)
        seen = set(ref.values or {})
        share = sum(1 for v in keep if str(v) not in seen) / len(keep) if keep else 0.0
        unseen = ("unseen_share", share, dq.max_unseen_share)
    null_share = nulls / n
    ref_null = ref.nulls / ref.rows if ref.rows else 0.0
    return [
        ("null_share", null_share, dq.max_null_share),
        ("null_share_increase", max(0.0, null_share - ref_null), dq.max_null_share_increase),
        unseen,
    ]


def model_quality(
    uc: UseCase, labels: Any, registered: Mapping[str, Any], label_column: str | None
) -> dict[str, Any] | None:
    """The version's ROC-AUC and PR-AUC on the window's labelled rows against the figures it was
    registered with; None when the use case does not check it. Too few labelled rows (or
    positives): measured but not decided."""
    m = uc.monitoring
    assert m is not None and uc.training is not None
    mq = m.model_quality
    if not mq.enabled or uc.training.task != "binary":
        return None
    n = 0 if labels is None else len(labels)
    positives = 0 if not n else int((labels[label_column].astype("float64") == 1).sum())
    base = {"labelled": n, "positives": positives}
    if n < mq.min_labelled or positives < mq.min_positives or positives == n:
        note = (
            f"{n} labelled rows ({positives} positive) in the window: model quality needs "
            f"{mq.min_labelled} with {mq.min_positives} positives and some negatives; not decided"
        )
        return {
            **base,
            "degraded": False,
            "decided": False,
            "note": note,
            "rows": [_row(DATASET, "model_quality", "labelled_rows", float(n), float(mq.min_labelled), None, n, base)],
        }
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = labels[label_column].astype("float64").to_numpy()
    s = labels[SCORE].astype("float64").to_numpy()
    got = {"roc_auc": float(roc_auc_score(y, s)), "pr_auc": float(average_precision_score(y, s))}
    limits = {"roc_auc": mq.max_roc_auc_drop, "pr_auc": mq.max_pr_auc_drop}
    rows, degraded = [], []
    for metric, value in got.items():
        was = registered.get(metric)
        if was is None:
            rows.append(_row(DATASET, "model_quality", metric, value, None, None, n, {**base, "registered": None}))
            continue
        drop = float(was) - value
        breach = drop > limits[metric]
        degraded += [metric] if breach else []
        rows.append(
            _row(
                DATASET,
                "model_quality",
                f"{metric}_drop",
                drop,
                limits[metric],
                breach,
                n,
                {**base, "value": value, "registered": float(was)},
            )
        )
    return {**base, **got, "degraded": bool(degraded), "decided": True, "degraded_metrics": degraded, "rows": rows}


def signal_names(decided: Sequence[str]) -> str:
    return ", ".join(decided) if decided else "none"
