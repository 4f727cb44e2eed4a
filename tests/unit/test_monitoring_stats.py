"""The drift tests of monitoring/stats.py against Evidently 0.7 on the same data.

Evidently's side is its own public path: ``Report([ValueDrift(column, method, threshold), ...],
include_tests=True)`` (the per-column metrics of ``DataDriftPreset``) on two ``Dataset``s, each column's method, score and verdict (the status of its ValueDrift test)
read from ``snapshot.dict()``. Ours is ``test_column(sketch(reference), current)``. Data are drawn
by hypothesis (derandomized: the same examples every run) through numpy generators.

Tolerances: the exact branches (a reference of at most 1,000 values, Jensen-Shannon and PSI over
value counts) agree to 1e-9. The Wasserstein distance from the sketch's quantile function is a
lower bound of the exact one (slice means lose what cancels where the two quantile functions cross
inside a slice, i.e. noise); over 3,000 seeded pairs (references of 1,001-20,000 rows, windows of
20-20,000, shifted or scaled or not) the worst absolute difference was 1.9e-3 for light and
moderate tails (normal, exponential, log-normal sigma 1, Poisson, rounded, mixtures) and 7.2e-3 for
heavy tails (log-normal sigma 2, Pareto alpha 1.5). The bounds below sit a little above those, and
verdicts must agree wherever Evidently's statistic is farther than the bound from the threshold.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlblueprints.monitoring import stats

EXACT_TOL = 1e-9
W_TOL = {"light": 2.5e-3, "heavy": 8e-3}
HEAVY = ("lognormal2", "pareto")
LIGHT = ("normal", "lognormal", "exponential", "poisson", "rounded", "mixture")

SETTINGS = settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)


# ---------------------------------------------------------------------- the two sides


def evidently(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    kinds: dict[str, str],
    methods: dict[str, str] | None = None,
    thresholds: dict[str, float] | None = None,
) -> dict[str, dict]:
    """Evidently's verdicts per column: {column: {method, statistic, threshold, drifted}}, from the
    ValueDrift metrics DataDriftPreset is made of (the preset also counts drifted columns through
    Evidently's legacy path, which drops infinities only from columns that have nulls: with
    infinities and no null, it fails on a binned test, e.g. PSI of a 20-value column)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests
    from evidently.metrics import ValueDrift

    names = {t.display_name: n for n, by_type in _registered_stat_tests.items() for t in by_type.values()}
    definition = DataDefinition(
        numerical_columns=[c for c, k in kinds.items() if k == stats.NUMERICAL],
        categorical_columns=[c for c, k in kinds.items() if k == stats.CATEGORICAL],
    )
    metrics = [ValueDrift(column=c, method=(methods or {}).get(c), threshold=(thresholds or {}).get(c)) for c in kinds]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snap = Report(metrics, include_tests=True).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
    d = snap.dict()
    status = {t["metric_config"]["metric_id"]: t["status"] for t in d["tests"] if t["id"] == "drift"}
    out = {}
    for m in d["metrics"]:
        cfg = m["config"]
        if cfg["type"].endswith(":ValueDrift"):
            out[cfg["column"]] = {
                "method": names.get(cfg["method"], cfg["method"]),
                "statistic": float(m["value"]),
                "threshold": float(cfg["threshold"]),
                "drifted": status[m["id"]] == "FAIL",
            }
    return out


def ours(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    kinds: dict[str, str],
    methods: dict[str, str] | None = None,
    thresholds: dict[str, float] | None = None,
    roundtrip: bool = False,
) -> dict[str, stats.ColumnDrift]:
    out = {}
    for col, kind in kinds.items():
        sk = stats.sketch(col, reference[col], kind)
        if roundtrip:
            sk = stats.ColumnSketch.from_dict(json.loads(json.dumps(sk.as_dict())))
        out[col] = stats.test_column(sk, current[col], (methods or {}).get(col), (thresholds or {}).get(col))
    return out


def assert_same(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    kinds: dict[str, str],
    methods: dict[str, str] | None = None,
    thresholds: dict[str, float] | None = None,
    tol: float | dict[str, float] = EXACT_TOL,
) -> dict[str, stats.ColumnDrift]:
    """Same method for every column, statistics within ``tol`` (per column when a dict), and the
    same verdict wherever Evidently's statistic is farther than ``tol`` from the threshold (exact
    branches: always)."""
    theirs = evidently(reference, current, kinds, methods, thresholds)
    mine = ours(reference, current, kinds, methods, thresholds)
    for col in kinds:
        e, o = theirs[col], mine[col]
        t = tol[col] if isinstance(tol, dict) else tol
        where = f"column {col}: ours {o.method} {o.statistic!r} vs Evidently {e['method']} {e['statistic']!r}"
        assert o.method == e["method"], where
        assert o.threshold == pytest.approx(e["threshold"]), where
        assert abs(o.statistic - e["statistic"]) <= t, where
        if t <= EXACT_TOL or abs(e["statistic"] - e["threshold"]) > t:
            assert o.drifted == e["drifted"], where
    return mine


# ---------------------------------------------------------------------- data


def draw(rng: np.random.Generator, family: str, n: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    if family == "normal":
        return rng.normal(shift, scale, n)
    if family == "lognormal":
        return rng.lognormal(3.5 + shift, scale, n)
    if family == "lognormal2":
        return rng.lognormal(shift, 2 * scale, n)
    if family == "exponential":
        return rng.exponential(40_000.0 * scale, n) + 40_000.0 * shift
    if family == "pareto":
        return rng.pareto(1.5, n) * scale + shift
    if family == "rounded":
        return np.round(rng.normal(shift, scale, n), 1)
    if family == "poisson":
        return rng.poisson(max(0.5, 20 * scale + 5 * shift), n).astype("float64")
    if family == "mixture":
        return np.where(rng.random(n) < 0.3, rng.normal(shift - 3, scale, n), rng.normal(shift + 2, scale, n))
    raise AssertionError(family)


def dirty(rng: np.random.Generator, values: np.ndarray, nulls: float, infs: float) -> np.ndarray:
    """Some values replaced by NaN and by +-inf."""
    v = values.astype("float64").copy()
    v[rng.random(len(v)) < nulls] = np.nan
    hit = rng.random(len(v)) < infs
    v[hit] = rng.choice([np.inf, -np.inf], int(hit.sum()))
    return v


def categories(rng: np.random.Generator, n: int, k: int, shift: float, unseen: int, nulls: float) -> np.ndarray:
    shares = 1.0 / np.arange(1, k + 1)
    shares = np.roll(shares, int(round(shift * k)))
    shares = np.append(shares, [0.02] * unseen)
    names = np.array([f"v{j}" for j in range(k)] + [f"new{j}" for j in range(unseen)], dtype=object)
    out = names[rng.choice(len(names), n, p=shares / shares.sum())]
    out[rng.random(n) < nulls] = None
    return out


drift = st.sampled_from([0.0, 0.0, 0.05, 0.1, 0.2, 0.5])
null_share = st.sampled_from([0.0, 0.01, 0.2])


# ---------------------------------------------------------------------- the default tests


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    family=st.sampled_from(LIGHT + HEAVY),
    n_ref=st.integers(1001, 20_000),
    n_cur=st.integers(20, 20_000),
    shift=drift,
    scale=st.sampled_from([1.0, 1.0, 0.8, 1.3]),
    nulls=null_share,
    infs=st.sampled_from([0.0, 0.001]),
)
def test_wasserstein_from_the_sketch_matches_evidently(seed, family, n_ref, n_cur, shift, scale, nulls, infs):
    rng = np.random.default_rng(seed)
    ref = pd.DataFrame({"x": dirty(rng, draw(rng, family, n_ref), nulls, infs)})
    cur = pd.DataFrame({"x": dirty(rng, draw(rng, family, n_cur, shift, scale), nulls, infs)})
    if np.isfinite(ref["x"]).sum() <= stats.EXACT_UP_TO or not np.isfinite(cur["x"]).any():
        return  # the small-reference branch and empty windows have their own tests
    tol = W_TOL["heavy" if family in HEAVY else "light"]
    out = assert_same(ref, cur, {"x": stats.NUMERICAL}, tol=tol)
    if out["x"].method == "wasserstein":
        assert not out["x"].exact


def test_wasserstein_is_exact_for_a_shifted_copy():
    """No crossing anywhere (the window is the reference moved by a constant): the sketch's W1 is
    the shift, and the statistic is it over the reference's population std (ddof 0, Evidently's)."""
    rng = np.random.default_rng(7)
    for n in (1001, 1500, 5000):
        ref = rng.lognormal(0.0, 1.0, n)
        cur = ref + 0.2 * np.std(ref)
        r = stats.test_column(stats.sketch("x", ref), cur)
        assert r.method == "wasserstein" and not r.exact
        assert r.statistic == pytest.approx(0.2, rel=1e-9)
        e = evidently(pd.DataFrame({"x": ref}), pd.DataFrame({"x": cur}), {"x": stats.NUMERICAL})["x"]
        assert r.statistic == pytest.approx(e["statistic"], rel=1e-9)


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    n_ref=st.integers(1001, 20_000),
    n_cur=st.integers(1, 20_000),
    k_ref=st.integers(1, 5),
    extra=st.integers(0, 3),
    shift=drift,
    nulls=null_share,
)
def test_low_cardinality_numerical_matches_evidently(seed, n_ref, n_cur, k_ref, extra, shift, nulls):
    """At most 5 distinct values (reference and window together): Jensen-Shannon over values;
    6-20 in the reference: Wasserstein (the sketch still counts them)."""
    rng = np.random.default_rng(seed)
    ref_codes = rng.choice(k_ref, n_ref).astype("float64")
    p = np.ones(k_ref + extra)
    p[-1] += 10 * shift
    cur_codes = rng.choice(k_ref + extra, n_cur, p=p / p.sum()).astype("float64")
    ref = pd.DataFrame({"x": dirty(rng, ref_codes, nulls, 0.001)})
    cur = pd.DataFrame({"x": dirty(rng, cur_codes, nulls, 0.001)})
    if np.isfinite(ref["x"]).sum() <= stats.EXACT_UP_TO or not np.isfinite(cur["x"]).any():
        return
    n_values = len(set(ref["x"][np.isfinite(ref["x"])]) | set(cur["x"][np.isfinite(cur["x"])]))
    out = assert_same(ref, cur, {"x": stats.NUMERICAL}, tol=EXACT_TOL if n_values <= 5 else W_TOL["light"])
    assert out["x"].method == ("jensenshannon" if n_values <= 5 else "wasserstein")


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    n_ref=st.integers(1001, 20_000),
    n_cur=st.integers(1, 20_000),
    k=st.integers(1, 60),
    shift=drift,
    unseen=st.integers(0, 3),
    nulls=null_share,
)
def test_categorical_matches_evidently(seed, n_ref, n_cur, k, shift, unseen, nulls):
    rng = np.random.default_rng(seed)
    ref = pd.DataFrame({"c": categories(rng, n_ref, k, 0.0, 0, nulls)})
    cur = pd.DataFrame({"c": categories(rng, n_cur, k, shift, unseen, nulls)})
    if ref["c"].notna().sum() <= stats.EXACT_UP_TO or cur["c"].isna().all():
        return
    out = assert_same(ref, cur, {"c": stats.CATEGORICAL})
    assert out["c"].method == "jensenshannon"
    # the values the reference never had (the new ones, and any rare one its sample missed)
    never = sorted(set(cur["c"].dropna()) - set(ref["c"].dropna()))
    assert out["c"].summary["unseen_values"] == never[:20]
    assert out["c"].summary["unseen_share"] == pytest.approx(cur["c"].isin(never).sum() / cur["c"].notna().sum())


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    n_ref=st.integers(2, 1000),
    n_cur=st.integers(2, 3000),
    what=st.sampled_from(["continuous", "codes", "binary", "categories", "two categories"]),
    shift=drift,
    nulls=null_share,
)
def test_small_references_use_evidentlys_p_value_tests(seed, n_ref, n_cur, what, shift, nulls):
    """A reference of at most 1,000 values: K-S, chi-square or Z on the reference's own values."""
    rng = np.random.default_rng(seed)
    if what == "continuous":
        kind = stats.NUMERICAL
        r, c = draw(rng, "normal", n_ref), draw(rng, "normal", n_cur, shift)
        r, c = dirty(rng, r, nulls, 0.01), dirty(rng, c, nulls, 0.01)
    elif what in ("codes", "binary"):
        kind, k = stats.NUMERICAL, 5 if what == "codes" else 2
        r = rng.choice(k, n_ref).astype("float64")
        c = rng.choice(k, n_cur, p=_tilted(k, shift)).astype("float64")
        r, c = dirty(rng, r, nulls, 0.01), dirty(rng, c, nulls, 0.01)
    else:
        kind = stats.CATEGORICAL
        k = 6 if what == "categories" else 2
        r, c = categories(rng, n_ref, k, 0.0, 0, nulls), categories(rng, n_cur, k, shift, 0, nulls)
    ref, cur = pd.DataFrame({"x": r}), pd.DataFrame({"x": c})
    if ref["x"].replace([np.inf, -np.inf], np.nan).dropna().empty:
        return
    if cur["x"].replace([np.inf, -np.inf], np.nan).dropna().empty:
        return
    out = assert_same(ref, cur, {"x": kind})
    assert out["x"].exact and out["x"].method in stats.P_VALUES


def _tilted(k: int, shift: float) -> np.ndarray:
    p = np.ones(k)
    p[0] += 4 * shift
    return p / p.sum()


@pytest.mark.parametrize(
    ("what", "method"),
    [("continuous", "ks"), ("codes", "chisquare"), ("binary", "z"), ("categories", "chisquare")],
)
def test_p_value_tests_flag_drift_below_the_threshold(what, method):
    """A clear drift and none, each p-value test: drifted exactly when Evidently says so (a flipped
    comparison flags the stable window and passes the drifted one). Seed 4: every stable window
    here has p >= 0.2, far from the threshold."""
    rng = np.random.default_rng(4)
    seen = set()
    for shift in (0.0, 1.0):
        if what == "continuous":
            kind, r, c = stats.NUMERICAL, rng.normal(0, 1, 800), rng.normal(shift, 1, 800)
        elif what == "categories":
            kind, r, c = stats.CATEGORICAL, categories(rng, 800, 6, 0, 0, 0), categories(rng, 800, 6, shift / 2, 0, 0)
        else:
            k = 4 if what == "codes" else 2
            kind, r, c = stats.NUMERICAL, rng.choice(k, 800) * 1.0, rng.choice(k, 800, p=_tilted(k, shift)) * 1.0
        out = assert_same(pd.DataFrame({"x": r}), pd.DataFrame({"x": c}), {"x": kind})["x"]
        assert out.method == method
        assert out.drifted == (shift > 0)
        seen.add(out.drifted)
    assert seen == {True, False}


def test_ks_drifts_at_a_p_value_equal_to_the_threshold():
    """K-S drifts at p <= threshold in Evidently (chi-square and Z at p < threshold)."""
    rng = np.random.default_rng(1)
    ref, cur = rng.normal(size=500), rng.normal(0.1, size=400)
    sk = stats.sketch("x", ref)
    p = stats.test_column(sk, cur).statistic
    assert stats.test_column(sk, cur, threshold=p).drifted
    theirs = evidently(pd.DataFrame({"x": ref}), pd.DataFrame({"x": cur}), {"x": "numerical"}, thresholds={"x": p})
    assert theirs["x"]["drifted"]


# ---------------------------------------------------------------------- per-column overrides


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    n_ref=st.integers(1001, 10_000),
    n_cur=st.integers(1, 10_000),
    method=st.sampled_from(["psi", "jensenshannon"]),
    threshold=st.sampled_from([None, 0.05, 0.2]),
    what=st.sampled_from(["categorical", "low cardinality", "20 values"]),
    shift=drift,
    nulls=null_share,
)
def test_method_and_threshold_overrides_match_evidently(seed, n_ref, n_cur, method, threshold, what, shift, nulls):
    rng = np.random.default_rng(seed)
    if what == "categorical":
        kind = stats.CATEGORICAL
        r, c = categories(rng, n_ref, 8, 0.0, 0, nulls), categories(rng, n_cur, 8, shift, 1, nulls)
    else:
        kind, k = stats.NUMERICAL, 4 if what == "low cardinality" else 20
        r = dirty(rng, rng.choice(k, n_ref) * 1.0, nulls, 0.001)
        c = dirty(rng, rng.choice(k, n_cur, p=_tilted(k, shift)) * 1.0, nulls, 0.001)
    ref, cur = pd.DataFrame({"x": r}), pd.DataFrame({"x": c})
    if ref["x"].replace([np.inf, -np.inf], np.nan).dropna().shape[0] <= stats.EXACT_UP_TO:
        return
    if cur["x"].replace([np.inf, -np.inf], np.nan).dropna().empty:
        return
    thresholds = None if threshold is None else {"x": threshold}
    out = assert_same(ref, cur, {"x": kind}, {"x": method}, thresholds)
    assert out["x"].method == method and not out["x"].exact


@pytest.mark.parametrize("method", ["psi", "jensenshannon"])
def test_binned_overrides_on_a_small_numerical_reference(method):
    """Jensen-Shannon and PSI of a continuous column bin reference and window together (Sturges):
    on a reference of at most 1,000 values, Evidently's own code on the kept values."""
    rng = np.random.default_rng(5)
    for shift in (0.0, 0.3, 1.0):
        ref = pd.DataFrame({"x": dirty(rng, rng.normal(size=900), 0.05, 0.01)})
        cur = pd.DataFrame({"x": dirty(rng, rng.normal(shift, size=5000), 0.05, 0.01)})
        assert assert_same(ref, cur, {"x": "numerical"}, {"x": method})["x"].exact


def test_psi_shares_count_values_not_rows():
    """PSI (unlike Jensen-Shannon, which scipy renormalises) changes when shares are divided by
    rows including nulls: a reference with many nulls must still give Evidently's PSI."""
    rng = np.random.default_rng(11)
    ref = pd.DataFrame({"c": categories(rng, 5000, 5, 0.0, 0, 0.4)})
    cur = pd.DataFrame({"c": categories(rng, 4000, 5, 0.2, 1, 0.1)})
    assert_same(ref, cur, {"c": "categorical"}, {"c": "psi"})
    ref = pd.DataFrame({"x": dirty(rng, rng.choice(4, 5000) * 1.0, 0.4, 0.0)})
    cur = pd.DataFrame({"x": dirty(rng, rng.choice(4, 4000, p=_tilted(4, 0.2)) * 1.0, 0.1, 0.0)})
    assert_same(ref, cur, {"x": "numerical"}, {"x": "psi"})


# ---------------------------------------------------------------------- values as pandas has them


def test_integer_codes_read_as_floats_are_the_same_category():
    """A categorical column of integer codes is float in a window with nulls: 1 and 1.0 are one
    value, as in Evidently's counts (they were two, and a stable column looked drifted)."""
    rng = np.random.default_rng(2)
    ref = pd.DataFrame({"code": rng.integers(0, 4, 3000)})
    cur = pd.DataFrame({"code": np.where(rng.random(3000) < 0.1, np.nan, rng.integers(0, 4, 3000))})
    out = assert_same(ref, cur, {"code": "categorical"})["code"]
    assert not out.drifted and out.summary["unseen_values"] == []


def test_pandas_nulls_and_infinities_in_categorical_columns():
    rng = np.random.default_rng(4)
    r = pd.array(rng.choice(["a", "b", "c"], 3000), dtype="string")
    c = rng.choice(["a", "b", "c"], 3000).astype(object)
    c[:300] = None
    ref = pd.DataFrame({"s": r, "f": rng.choice([1.0, 2.0, 3.0, np.inf], 3000), "k": pd.Categorical(r)})
    cur = pd.DataFrame({"s": pd.array(c, dtype="string"), "f": rng.choice([1.0, 2.0, 3.0], 3000)})
    cur["k"] = pd.Categorical(c)
    out = assert_same(ref, cur, {"s": "categorical", "f": "categorical", "k": "categorical"})
    assert out["s"].current_count == 2700 and out["s"].summary["unseen_values"] == []
    assert out["f"].reference_count == ref["f"].replace(np.inf, np.nan).count()


# ---------------------------------------------------------------------- errors


def test_errors_name_the_column():
    rng = np.random.default_rng(0)
    sk = stats.sketch("amount", rng.normal(size=2000))
    for empty in ([], [np.nan, np.inf, None]):
        with pytest.raises(stats.DriftInputError, match="'amount'.*no values in the current window"):
            stats.test_column(sk, np.array(empty, dtype="float64"))
    with pytest.raises(stats.DriftInputError, match="'channel'.*no values in the current window"):
        stats.test_column(stats.sketch("channel", ["a", "b"] * 600, "categorical"), [None, np.nan])
    with pytest.raises(stats.DriftInputError, match="'amount'.*reference has no values"):
        stats.test_column(stats.sketch("amount", [np.nan] * 10), [1.0, 2.0])
    with pytest.raises(stats.DriftInputError, match="'channel'.*reference has no values"):
        stats.test_column(stats.sketch("channel", [None] * 10, "categorical"), ["a"])
    with pytest.raises(stats.DriftInputError, match="'card_id'.*10001 distinct values"):
        stats.sketch("card_id", [f"c{i}" for i in range(stats.MAX_CATEGORIES + 1)], "categorical")
    for method in ("jensenshannon", "psi"):
        with pytest.raises(stats.DriftInputError, match="'amount'.*use wasserstein"):
            stats.test_column(sk, rng.normal(size=100), method=method)
    with pytest.raises(stats.DriftInputError, match="'amount'.*ks needs the reference's values"):
        stats.test_column(sk, rng.normal(size=100), method="ks")
    with pytest.raises(stats.DriftInputError, match="'amount'.*not numerical"):
        stats.sketch("amount", ["a", "b"])


# ---------------------------------------------------------------------- the sketch stored with a version


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    what=st.sampled_from(["continuous", "codes", "categorical", "small continuous", "small categorical"]),
    n_cur=st.integers(1, 5000),
    shift=drift,
    method=st.sampled_from([None, "psi", "jensenshannon", "wasserstein"]),
)
def test_sketch_round_trips_through_json(seed, what, n_cur, shift, method):
    rng = np.random.default_rng(seed)
    n_ref = 500 if what.startswith("small") else 3000
    if what.endswith("categorical"):
        kind = "categorical"
        r, c = categories(rng, n_ref, 6, 0.0, 0, 0.05), categories(rng, n_cur, 6, shift, 1, 0.05)
        if method == "wasserstein":
            method = None
    elif what == "codes":
        kind, r, c = "numerical", dirty(rng, rng.choice(4, n_ref) * 1.0, 0.05, 0.01), rng.choice(5, n_cur) * 1.0
    else:
        kind, r, c = "numerical", dirty(rng, draw(rng, "lognormal", n_ref), 0.05, 0.01), draw(rng, "lognormal", n_cur)
        if what == "continuous" and method in ("psi", "jensenshannon"):
            method = None
    ref, cur = pd.DataFrame({"x": r}), pd.DataFrame({"x": c})
    if cur["x"].isna().all():
        return
    a = ours(ref, cur, {"x": kind}, {"x": method} if method else None)["x"]
    b = ours(ref, cur, {"x": kind}, {"x": method} if method else None, roundtrip=True)["x"]
    assert (a.method, a.statistic, a.drifted, a.exact) == (b.method, b.statistic, b.drifted, b.exact)
    assert a.summary == b.summary
