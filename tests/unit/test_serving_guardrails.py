"""The canary's guardrails and the DORA metrics: against hand-computed values and the reference
implementations (scipy's K-S statistic, scikit-learn's ROC-AUC)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlblueprints.config import Guardrails
from mlblueprints.serving import guardrails as g
from mlblueprints.serving.dora import dora, duration


def test_psi_by_hand():
    # expected: 10 values -> deciles at 1.9, 2.8, ...; actual all in the top bin
    expected = [float(i) for i in range(1, 11)]
    actual = [10.0] * 5
    cuts = sorted({g.percentile(expected, i / 10) for i in range(1, 10)})
    assert len(cuts) == 9
    pe = [0.1] * 10
    pa = [g.PSI_EPSILON] * 9 + [1.0]
    want = sum((a - e) * math.log(a / e) for a, e in zip(pa, pe))
    assert g.psi(expected, actual) == pytest.approx(want)
    assert g.psi(expected, expected) == pytest.approx(0.0)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(0, 1), min_size=1, max_size=80),
    st.lists(st.floats(0, 1), min_size=1, max_size=80),
)
def test_ks_is_scipys(a, b):
    from scipy.stats import ks_2samp

    assert g.ks(a, b) == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.1, 0.2, 0.5, 0.7, 0.9]), st.integers(0, 1)), min_size=2, max_size=60))
def test_roc_auc_is_sklearns_ties_included(pairs):
    from sklearn.metrics import roc_auc_score

    scores, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    if len(set(labels)) < 2:
        assert math.isnan(g.roc_auc(scores, labels))
    else:
        assert g.roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


def _captures(variant, n, status=200, latency=2.0, score=0.1, start=0):
    return [
        {
            "variant": variant,
            "status": status,
            "latency_ms": latency,
            "response": {"score": score, "id": f"{variant}{start + i}"} if status == 200 else {"error": "x"},
        }
        for i in range(n)
    ]


def test_each_guardrail_trips_on_its_own_fault_and_only_then():
    rules = Guardrails(min_requests=50, max_error_rate=0.01, max_p99_latency_ms=100)
    rng = np.random.default_rng(0)
    champ = [
        {"variant": "champion", "status": 200, "latency_ms": 2.0, "response": {"score": float(s)}}
        for s in rng.beta(1, 20, 900)
    ]

    def verdicts(ch):
        return {v["guardrail"]: v["ok"] for v in g.evaluate(rules, g.samples(champ + ch), "champion", "challenger")}

    good = [
        {"variant": "challenger", "status": 200, "latency_ms": 2.0, "response": {"score": float(s)}}
        for s in rng.beta(1, 20, 100)
    ]
    assert set(verdicts(good).values()) == {True}
    errors = good[:195] + _captures("challenger", 5, status=500)
    assert verdicts(errors) == {**verdicts(good), "error_rate": False}
    slow = [{**c, "latency_ms": 150.0} for c in good]
    assert verdicts(slow) == {**verdicts(good), "p99_latency_ms": False}
    shifted = [{**c, "response": {"score": min(1.0, c["response"]["score"] + 0.3)}} for c in good]
    assert verdicts(shifted) == {**verdicts(good), "score_shift_psi": False}
    few = good[:10]
    v = verdicts(few)
    assert v["min_requests"] is False and v["score_shift_psi"] is None  # too few scores to judge a shift
    assert g.tripped(g.evaluate(rules, g.samples(champ + few), "champion", "challenger")) == [
        "min_requests: 10 challenger requests (900 champion) < 50"
    ]
    # client errors (4xx) are not the variant's errors, and a request no variant answered is nobody's
    assert verdicts(good + _captures("challenger", 20, status=422))["error_rate"] is True
    assert "None" not in g.samples([{"variant": None, "status": 400, "latency_ms": 1, "response": {}}])


def test_quality_is_judged_only_with_enough_of_each_class():
    rules = Guardrails(min_requests=1)
    champ = [
        {"variant": "champion", "status": 200, "latency_ms": 1.0, "response": {"score": s / 100, "id": f"a{s}"}}
        for s in range(100)
    ]
    ch = [
        {"variant": "challenger", "status": 200, "latency_ms": 1.0, "response": {"score": 1 - s / 100, "id": f"b{s}"}}
        for s in range(100)
    ]
    labels = {**{f"a{s}": int(s >= 50) for s in range(100)}, **{f"b{s}": int(s >= 50) for s in range(100)}}
    q = {v["guardrail"]: v for v in g.evaluate(rules, g.samples(champ + ch), "champion", "challenger", labels)}
    assert q["roc_auc_drop"]["value"] == pytest.approx(1.0) and q["roc_auc_drop"]["ok"] is False
    few = {k: v for k, v in labels.items() if k.startswith("a") or int(k[1:]) < 60}  # challenger: 10 positives
    q = {v["guardrail"]: v for v in g.evaluate(rules, g.samples(champ + ch), "champion", "challenger", few)}
    assert q["roc_auc_drop"]["ok"] is None and "not judged" in q["roc_auc_drop"]["detail"]


def test_dora_by_hand():
    now = datetime(2026, 6, 30, 12, tzinfo=UTC)

    def at(days_ago, minutes=0.0):
        return (now - timedelta(days=days_ago) + timedelta(minutes=minutes)).isoformat()

    rows = [
        # promoted 10 min after start; commit 2 days before start: lead time 2 days 10 min
        {"started_at": at(20), "finished_at": at(20, 10), "committed_at": at(22), "outcome": "promoted"},
        {"started_at": at(10), "finished_at": at(10, 4), "committed_at": at(10, -60), "outcome": "rolled_back"},
        {"started_at": at(5), "finished_at": at(5, 6), "committed_at": None, "outcome": "promoted"},
        {"started_at": at(4), "finished_at": at(4, 1), "committed_at": at(5), "outcome": "superseded"},
        {"started_at": at(3), "finished_at": at(3, 2), "committed_at": at(3, -30), "outcome": "rolled_back"},
        {"started_at": at(40), "finished_at": at(40, 1), "committed_at": at(41), "outcome": "promoted"},  # too old
    ]
    m = dora(rows, now, days=30)
    assert m["deployments"] == 5
    assert m["deployment_frequency_per_week"] == pytest.approx(2 * 7 / 30)
    assert m["lead_time_seconds_median"] == pytest.approx(2 * 86400 + 600) and m["lead_time_unknown"] == 1
    assert m["change_failure_rate"] == pytest.approx(2 / 4)
    assert m["time_to_restore_seconds_median"] == pytest.approx((4 * 60 + 2 * 60) / 2)
    assert m["time_to_restore_seconds_max"] == pytest.approx(240)
    assert dora([], now)["change_failure_rate"] is None


@pytest.mark.parametrize(
    ("s", "text"), [(None, "-"), (12.34, "12.3s"), (250, "4m 10s"), (7500, "2h 05m"), (3 * 86400 + 4 * 3600, "3d 4h")]
)
def test_durations_read_well(s, text):
    assert duration(s) == text
