"""Evaluation metrics, the operating-threshold rule and the registration gate."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_curve

from mlblueprints.config import Gate, ThresholdRule
from mlblueprints.training.evaluate import calibration_error, choose_threshold, evaluate, gate


def test_threshold_respects_the_fpr_budget_and_takes_the_most_recall():
    y = np.array([0, 0, 0, 0, 1, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    # one false positive allowed out of six negatives: flag scores >= 0.7 -> fp 1 (0.9), tp 3
    t = choose_threshold(y, s, ThresholdRule(max_fpr=1 / 6))
    assert t == 0.7
    assert choose_threshold(y, s, ThresholdRule(max_fpr=0.01)) == 0.95  # no FP allowed
    # precision rule: lowest threshold whose precision >= 0.75 -> 0.7 (3 of 4)
    assert choose_threshold(y, s, ThresholdRule(max_fpr=None, min_precision=0.75)) == 0.7


@settings(max_examples=50, deadline=None, derandomize=True)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.integers(0, 20)), min_size=4, max_size=80),
    st.floats(0.01, 0.5),
)
def test_threshold_is_the_lowest_within_budget(rows, max_fpr):
    y = np.array([r[0] for r in rows])
    s = np.array([r[1] / 20 for r in rows])
    if y.sum() in (0, len(y)):
        return
    t = choose_threshold(y, s, ThresholdRule(max_fpr=max_fpr))
    fpr = ((s >= t) & (y == 0)).sum() / (y == 0).sum()
    assert fpr <= max_fpr + 1e-12
    lower = s[s < t]
    if len(lower):  # the next lower threshold would break the budget
        nxt = lower.max()
        assert ((s >= nxt) & (y == 0)).sum() / (y == 0).sum() > max_fpr
    # agrees with scikit-learn's ROC curve
    fprs, _, ths = roc_curve(y, s, drop_intermediate=False)
    within = [th for f, th in zip(fprs, ths) if f <= max_fpr and np.isfinite(th)]
    if within:
        assert t == min(within)
    else:  # no threshold fits the budget: nothing is flagged
        assert not (s >= t).any()


def test_calibration_error():
    y = np.array([0, 1] * 50)
    assert calibration_error(y, np.full(100, 0.5)) == pytest.approx(0.0)
    assert calibration_error(y, np.full(100, 0.9)) == pytest.approx(0.4)


def test_evaluate_needs_both_classes():
    with pytest.raises(ValueError, match="0 positives"):
        evaluate(np.zeros(10), np.linspace(0, 1, 10), ThresholdRule())


def _m(**kw):
    base = {"roc_auc": 0.9, "pr_auc": 0.5, "precision": 0.8, "recall": 0.4, "calibration_error": 0.01}
    return {**base, **kw}


RULES = Gate(
    primary_metric="pr_auc",
    min_improvement=0.01,
    tolerances={"roc_auc": 0.01, "recall": 0.05, "calibration_error": 0.02},
    baseline={"pr_auc": 0.1},
)


def test_gate_passes_a_better_candidate():
    d = gate(_m(pr_auc=0.52), _m(), RULES, "champion v1")
    assert d.passed and d.reasons == []
    assert "PASSED" in d.text()


def test_gate_rejects_too_small_a_gain_and_regressions():
    assert not gate(_m(pr_auc=0.505), _m(), RULES, "champion v1").passed
    d = gate(_m(pr_auc=0.6, recall=0.3, calibration_error=0.05), _m(), RULES, "champion v1")
    assert not d.passed
    assert any("recall regresses by 0.1000" in r for r in d.reasons)
    assert any("calibration_error regresses by 0.0400" in r for r in d.reasons)  # lower is better
    assert "NOT PROMOTED" in d.text()


def test_first_model_goes_through_the_same_gate_against_the_baseline():
    assert gate(_m(pr_auc=0.2), None, RULES, "baseline").passed
    d = gate(_m(pr_auc=0.105), None, RULES, "baseline")
    assert not d.passed and "does not beat 0.1000" in d.reasons[0]
    no_primary = Gate(primary_metric="roc_auc", baseline={"pr_auc": 0.1})
    assert not gate(_m(), None, no_primary, "baseline").passed
