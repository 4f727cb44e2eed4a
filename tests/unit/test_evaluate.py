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
        evaluate(np.zeros(10), np.linspace(0, 1, 10), ThresholdRule(max_fpr=0.01))


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
    assert not d.passed
    assert d.reasons == ["pr_auc 0.1050 does not beat the baseline's 0.1000 by 0.01 (higher is better)"]


def _holdout(rows: int, positives: int, **kw):
    return _m(rows=rows, positives=positives, **kw)


def test_every_configured_baseline_metric_is_checked():
    rules = Gate(primary_metric="pr_auc", baseline={"pr_auc": 0.1, "precision": 0.9, "calibration_error": 0.005})
    d = gate(_holdout(1000, 20, pr_auc=0.5, precision=0.8, calibration_error=0.01), None, rules, "baseline")
    assert not d.passed
    assert d.reasons == [
        "precision 0.8000 does not reach the baseline 0.9000 (configured)",
        "calibration_error 0.0100 does not reach the baseline 0.0050 (configured)",  # a ceiling: lower is better
    ]
    ok = gate(_holdout(1000, 20, pr_auc=0.5, precision=0.95, calibration_error=0.004), None, rules, "baseline")
    assert ok.passed and ok.reasons == []
    checked = {c["metric"] for c in ok.comparison}
    assert checked == {"pr_auc", "roc_auc", "precision", "calibration_error"}


def test_baseline_floors_hold_against_a_reference_model_too():
    rules = Gate(primary_metric="pr_auc", min_improvement=0.01, baseline={"precision": 0.9})
    champion = _holdout(1000, 20, precision=0.95)
    # beats the champion on pr_auc, within tolerances, but below the precision floor
    d = gate(_holdout(1000, 20, pr_auc=0.6, precision=0.85), champion, rules, "champion v3")
    assert not d.passed and d.reasons == ["precision 0.8500 does not reach the baseline 0.9000 (configured)"]


def test_without_a_baseline_the_floor_is_no_skill_on_the_holdout():
    common = Gate(primary_metric="pr_auc")  # nothing configured
    # a label with 68% positives: a model without skill already has PR-AUC 0.68
    d = gate(_holdout(1000, 680, pr_auc=0.66, roc_auc=0.55), None, common, "baseline")
    assert not d.passed
    assert d.reasons == ["pr_auc 0.6600 does not beat the baseline's 0.6800 by 0 (higher is better)"]
    assert d.baseline == {
        "roc_auc": {"value": 0.5, "source": "no skill"},
        "pr_auc": {"value": 0.68, "source": "no skill: the holdout's positive rate"},
    }
    assert "baseline: roc_auc 0.5000 (no skill); pr_auc 0.6800 (no skill: the holdout's positive rate)" in d.text()
    assert gate(_holdout(1000, 680, pr_auc=0.75, roc_auc=0.6), None, common, "baseline").passed
    worse_than_random = gate(_holdout(1000, 680, pr_auc=0.75, roc_auc=0.45), None, common, "baseline")
    assert worse_than_random.reasons == ["roc_auc 0.4500 does not reach the baseline 0.5000 (no skill)"]


def test_a_rare_label_baseline_cannot_wave_through_a_useless_model_of_a_common_label():
    rare = Gate(primary_metric="pr_auc", baseline={"pr_auc": 0.05, "roc_auc": 0.6})
    d = gate(_holdout(1000, 680, pr_auc=0.6, roc_auc=0.7), None, rare, "baseline")
    assert not d.passed
    assert d.baseline["pr_auc"] == {
        "value": 0.68,
        "source": "no skill: the holdout's positive rate; the configured 0.05 is below it",
    }
    assert d.baseline["roc_auc"] == {"value": 0.6, "source": "configured"}
    # on a rare label the configured values are the floors, as configured
    assert gate(_holdout(1000, 10, pr_auc=0.06, roc_auc=0.61), None, rare, "baseline").passed
    assert not gate(_holdout(1000, 10, pr_auc=0.04, roc_auc=0.61), None, rare, "baseline").passed


def test_comparison_with_the_newest_version_uses_the_model_rules():
    rules = Gate(primary_metric="roc_auc", min_improvement=0.0, tolerances={"recall": 0.05})
    newest = _holdout(1000, 680, roc_auc=0.8, pr_auc=0.85)
    worse = gate(
        _holdout(1000, 680, roc_auc=0.79, pr_auc=0.85), newest, rules, "v2 (newest registered version; no champion)"
    )
    assert not worse.passed and worse.against == "v2 (newest registered version; no champion)"
    assert worse.reasons == ["roc_auc 0.7900 does not beat the reference's 0.8000 by 0 (higher is better)"]
    assert "NOT PROMOTED against v2 (newest registered version; no champion)" in worse.text()
    assert gate(_holdout(1000, 680, roc_auc=0.81, pr_auc=0.85), newest, rules, "v2").passed
