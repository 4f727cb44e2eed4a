"""Drift statistics that stay cheap as data grows: the reference is summarised once per model
version (a :class:`ColumnSketch` per column, stored with the version), and every window is tested
against that summary with the test and threshold Evidently 0.7 would choose for the same data.

Evidently's choice (``get_stattest``, default for a column): a reference of at most 1,000 values
gets a p-value test (numerical: K-S, or chi-square / Z for at most 5 distinct values of reference
and current together; categorical: chi-square, Z for two values), a larger one a distance
(numerical: the Wasserstein distance normed by the reference's standard deviation, or the
Jensen-Shannon distance over value frequencies for at most 5 distinct values; categorical:
Jensen-Shannon). Distances drift at ``>= threshold`` (default 0.1), p-values at ``< threshold``
(default 0.05; K-S at ``<= threshold``, Evidently's own verdict is kept). Nulls and infinities are
dropped first, as Evidently does.

How each is computed from the sketch:

* a reference of at most ``EXACT_UP_TO`` values keeps the values themselves: Evidently's own
  test functions run on them (identical by construction);
* Jensen-Shannon over values: the sketch counts every value of a categorical column, and of a
  numerical one while it has at most ``TRACK_DISTINCT`` distinct values: exact;
* Wasserstein: ``W1 = integral over u of |Q_ref(u) - Q_cur(u)|`` (Q: the empirical quantile
  function); the sketch keeps the mean of the reference's Q over each of ``QUANTILE_POINTS`` equal
  slices of [0, 1], the window's is computed the same way, and W1 is the mean of the slices'
  absolute differences: exact wherever the two functions do not cross inside a slice, so the
  tails (where a midpoint rule would miss the largest values) are exact too; tested against
  Evidently, and measured in bench/monitoring.py;
* Jensen-Shannon or PSI of a numerical column with more than ``TRACK_DISTINCT`` distinct values
  bin reference and current together (Sturges), which needs the reference's values: refused for
  a reference of more than ``EXACT_UP_TO`` rows, with a message that says to use wasserstein.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

QUANTILE_POINTS = 4096
EXACT_UP_TO = 1000  # Evidently's small-reference branch (``reference_data.shape[0] <= 1000``)
TRACK_DISTINCT = 20  # numerical values counted while a column has at most this many
MAX_CATEGORIES = 10_000  # a categorical reference with more values is refused
LOW_CARDINALITY = 5  # Evidently: at most this many distinct values -> a test over value frequencies

DISTANCES = ("wasserstein", "jensenshannon", "psi")
P_VALUES = ("ks", "chisquare", "z")
METHODS = (*DISTANCES, *P_VALUES)
# methods a use case may name (the others are chosen by Evidently's rule for small references)
CONFIGURABLE = DISTANCES
DEFAULT_THRESHOLD = {"wasserstein": 0.1, "jensenshannon": 0.1, "psi": 0.1, "ks": 0.05, "chisquare": 0.05, "z": 0.05}
NUMERICAL, CATEGORICAL = "numerical", "categorical"


class DriftInputError(ValueError):
    """A column that cannot be tested (missing, empty, of the wrong kind); names the column."""


def _clean(values: Any, kind: str, column: str, what: str) -> np.ndarray:
    """The values a test sees: nulls (and, numerical, infinities) dropped."""
    if kind == NUMERICAL:
        try:
            arr = np.asarray(values).astype("float64")
        except (TypeError, ValueError):
            raise DriftInputError(f"column {column!r} of the {what}: not numerical values") from None
        return arr[np.isfinite(arr)]
    return _categories(values)


def _category(v: Any) -> str | None:
    """A categorical value as the string the counts are keyed by, or None for an infinity (which
    Evidently drops with the nulls). Numbers are compared by value, as Evidently's pandas counts
    do: an integer code and the same code read as a float (a column with nulls) are one value."""
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        f = float(v)
        if not math.isfinite(f):
            return None
        return str(int(f)) if f.is_integer() else repr(f)
    return str(v)


def _categories(values: Any) -> np.ndarray:
    """A categorical column's values as strings, nulls (None, NaN, pandas' NA, NaT) and infinities
    dropped; each distinct value is converted once (``pandas.factorize``), not each row."""
    import pandas as pd

    codes, uniques = pd.factorize(
        values if isinstance(values, pd.Series) else pd.Series(np.asarray(values, dtype=object))
    )
    keys = [_category(v) for v in np.asarray(uniques, dtype=object)]
    dropped = [i for i, k in enumerate(keys) if k is None]
    keep = codes >= 0
    if dropped:
        keep &= ~np.isin(codes, dropped)
    return np.array([k or "" for k in keys] or [""], dtype=str)[codes[keep]]


def _counts(arr: np.ndarray) -> dict[Any, int]:
    vals, counts = np.unique(arr, return_counts=True)
    return {v.item() if hasattr(v, "item") else v: int(c) for v, c in zip(vals, counts, strict=True)}


@dataclass
class ColumnSketch:
    """One column of the reference, summarised (see the module docstring)."""

    column: str
    kind: str
    rows: int  # including nulls
    count: int  # the values a test sees
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    quantiles: list[float] | None = None
    values: dict[Any, int] | None = None  # value -> count (None: too many distinct)
    raw: list[Any] | None = None  # every value, when there are at most EXACT_UP_TO

    @property
    def nulls(self) -> int:
        return self.rows - self.count

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.values is not None:  # JSON keys are strings: keep the values as [value, count] pairs
            d["values"] = [[k, v] for k, v in self.values.items()]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ColumnSketch:
        d = dict(d)
        if d.get("values") is not None:
            d["values"] = {k: int(v) for k, v in d["values"]}
        return cls(**d)


def sketch(column: str, values: Any, kind: str = NUMERICAL) -> ColumnSketch:
    """The sketch of one reference column."""
    if kind not in (NUMERICAL, CATEGORICAL):
        raise ValueError(f"column {column!r}: kind {kind!r} is neither {NUMERICAL} nor {CATEGORICAL}")
    rows = len(values)
    arr = _clean(values, kind, column, "reference")
    out = ColumnSketch(column=column, kind=kind, rows=rows, count=len(arr))
    if len(arr) <= EXACT_UP_TO:
        out.raw = [v.item() if hasattr(v, "item") else v for v in arr]
    if kind == CATEGORICAL:
        counts = _counts(arr)
        if len(counts) > MAX_CATEGORIES:
            raise DriftInputError(
                f"column {column!r}: {len(counts)} distinct values in the reference (at most {MAX_CATEGORIES} "
                "for a categorical column): declare it numerical or leave it out of monitoring.columns"
            )
        out.values = counts
        return out
    if len(arr) == 0:
        return out
    arr = np.sort(arr)
    out.mean, out.std = float(np.mean(arr)), float(np.std(arr))
    out.min, out.max = float(arr[0]), float(arr[-1])
    out.quantiles = _quantiles(arr).tolist()
    distinct = np.unique(arr)  # sorted already: cheap
    if len(distinct) <= TRACK_DISTINCT:
        out.values = _counts(arr)
    return out


def _quantiles(sorted_arr: np.ndarray) -> np.ndarray:
    """The mean of the empirical quantile function over each of ``QUANTILE_POINTS`` equal slices
    of [0, 1]: ``K * integral of Q(u) du`` over the slice, from the sorted values' running sums."""
    n, k = len(sorted_arr), QUANTILE_POINTS
    total = np.concatenate([[0.0], np.cumsum(sorted_arr, dtype="float64")])
    pos = np.arange(k + 1, dtype="float64") * n / k  # slice edges in value-index space
    whole = np.minimum(np.floor(pos).astype(np.int64), n)
    frac = pos - whole
    nxt = sorted_arr[np.minimum(whole, n - 1)]
    integral = total[whole] + frac * nxt  # sum of Q over index space [0, pos]
    return np.diff(integral) / (n / k)


@dataclass
class ColumnDrift:
    """The verdict of one column in one window."""

    column: str
    kind: str
    method: str
    statistic: float
    threshold: float
    drifted: bool
    reference_count: int
    current_count: int
    current_rows: int
    exact: bool  # computed on the reference's values, not its quantile function
    summary: dict[str, Any] = field(default_factory=dict)


def default_method(ref: ColumnSketch, cur: np.ndarray) -> str:
    """The test Evidently's ``_get_default_stattest`` picks for these data."""
    if ref.values is not None:
        n_values = len(set(ref.values) | set(_counts(cur)))
    else:
        n_values = LOW_CARDINALITY + 1  # more than TRACK_DISTINCT in the reference alone
    if ref.count <= EXACT_UP_TO:
        if ref.kind == NUMERICAL and n_values > LOW_CARDINALITY:
            return "ks"
        return "chisquare" if n_values > 2 else "z"
    if ref.kind == NUMERICAL and n_values > LOW_CARDINALITY:
        return "wasserstein"
    return "jensenshannon"


def test_column(
    ref: ColumnSketch, current: Any, method: str | None = None, threshold: float | None = None
) -> ColumnDrift:
    """Test one column of a window against the reference's sketch."""
    col = ref.column
    if ref.count == 0:
        raise DriftInputError(f"column {col!r}: the reference has no values (all {ref.rows} null)")
    rows = len(current)
    cur = _clean(current, ref.kind, col, "current window")
    if len(cur) == 0:
        raise DriftInputError(f"column {col!r}: no values in the current window ({rows} rows, all null)")
    chosen = method or default_method(ref, cur)
    if chosen not in METHODS:
        raise DriftInputError(f"column {col!r}: unknown method {chosen!r}; known: {', '.join(METHODS)}")
    th = DEFAULT_THRESHOLD[chosen] if threshold is None else float(threshold)
    exact = ref.raw is not None
    detected = None
    if exact:
        stat, detected = _evidently(ref, cur, method, th)
    elif chosen == "wasserstein":
        if ref.kind != NUMERICAL:
            raise DriftInputError(f"column {col!r}: wasserstein needs a numerical column")
        stat = _wasserstein(ref, np.sort(cur))
    elif chosen in ("jensenshannon", "psi"):
        r, c = _binned(ref, cur, fill_zeroes=chosen == "psi")
        stat = _jensenshannon(r, c) if chosen == "jensenshannon" else float(np.sum((r - c) * np.log(r / c)))
    else:
        raise DriftInputError(
            f"column {col!r}: {chosen} needs the reference's values, kept only up to {EXACT_UP_TO} rows "
            f"(this reference has {ref.count}); use one of {', '.join(CONFIGURABLE)}"
        )
    if detected is not None:  # Evidently's own verdict (K-S drifts at p <= threshold, chi-square and Z at <)
        drifted = detected
    else:
        drifted = stat >= th
    return ColumnDrift(
        column=col,
        kind=ref.kind,
        method=chosen,
        statistic=float(stat),
        threshold=th,
        drifted=bool(drifted),
        reference_count=ref.count,
        current_count=len(cur),
        current_rows=rows,
        exact=exact,
        summary=summarise(ref, cur, rows),
    )


def _evidently(ref: ColumnSketch, cur: np.ndarray, method: str | None, threshold: float) -> tuple[float, bool]:
    """Evidently's own test on the reference's values (``method`` None: its default choice, which
    may take a test its registry would refuse by name, e.g. chi-square for a numerical column)."""
    import pandas as pd
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType

    kind = ColumnType.Numerical if ref.kind == NUMERICAL else ColumnType.Categorical
    r, c = pd.Series(ref.raw), pd.Series(cur)
    test = get_stattest(r, c, kind, method)
    result = test(r, c, kind, threshold)
    return float(result.drift_score), bool(result.drifted)


def _wasserstein(ref: ColumnSketch, cur_sorted: np.ndarray) -> float:
    q_ref = np.asarray(ref.quantiles, dtype="float64")
    w1 = float(np.mean(np.abs(q_ref - _quantiles(cur_sorted))))
    return w1 / max(float(ref.std or 0.0), 0.001)


def _jensenshannon(p: np.ndarray, q: np.ndarray) -> float:
    from scipy.spatial import distance

    return float(distance.jensenshannon(p, q))


def _binned(ref: ColumnSketch, cur: np.ndarray, fill_zeroes: bool) -> tuple[np.ndarray, np.ndarray]:
    """Evidently's ``get_binned_data`` over values: the share of each value in reference and
    current (categorical, or a numerical reference of at most ``TRACK_DISTINCT`` values)."""
    if ref.values is None:
        raise DriftInputError(
            f"column {ref.column!r}: jensenshannon and psi of a numerical column with more than {TRACK_DISTINCT} "
            f"distinct values bin reference and current together, which needs the reference's values (kept only "
            f"up to {EXACT_UP_TO} rows; this reference has {ref.count}): use wasserstein for this column"
        )
    cur_counts = _counts(cur)
    keys = list(dict.fromkeys([*cur_counts, *ref.values]))
    r = np.array([ref.values.get(k, 0) / ref.count for k in keys], dtype="float64")
    c = np.array([cur_counts.get(k, 0) / len(cur) for k in keys], dtype="float64")
    if fill_zeroes:
        r, c = _fill(r), _fill(c)
    return r, c


def _fill(p: np.ndarray) -> np.ndarray:
    p = p.copy()
    nz = p[p != 0]
    if len(nz):
        low = nz.min()
        p[p == 0] = low / 10**6 if low <= 0.0001 else 0.0001
    return p


def summarise(ref: ColumnSketch, cur: np.ndarray, rows: int) -> dict[str, Any]:
    """The window's data summary of a column, beside the reference's: null share, and the share of
    values the reference never had (numerical: outside its range; categorical: unseen values)."""
    out: dict[str, Any] = {
        "rows": rows,
        "null_share": (rows - len(cur)) / rows if rows else 0.0,
        "reference_null_share": ref.nulls / ref.rows if ref.rows else 0.0,
    }
    if ref.kind == NUMERICAL:
        out.update(mean=float(np.mean(cur)), std=float(np.std(cur)), min=float(np.min(cur)), max=float(np.max(cur)))
        out["reference_mean"], out["reference_std"] = ref.mean, ref.std
        outside = np.count_nonzero((cur < (ref.min or 0.0)) | (cur > (ref.max or 0.0)))
        out["out_of_range_share"] = outside / len(cur)
    else:
        seen = set(ref.values or {})
        unseen = [v for v in _counts(cur) if v not in seen]
        out["unseen_values"] = sorted(map(str, unseen))[:20]
        out["unseen_share"] = float(np.isin(cur, np.array(unseen, dtype=object)).mean()) if unseen else 0.0
    return out
