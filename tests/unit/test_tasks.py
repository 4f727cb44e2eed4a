"""Task types (binary, multiclass, regression): their metrics, the gate's direction, what the
configuration refuses, and how a model of any declared format is loaded and refused."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from mlblueprints.config import Gate, UseCaseError, parse_usecase
from mlblueprints.training import evaluate as ev
from mlblueprints.training.models import ModelFormatError, detect_format, load_model

ROOT = Path(__file__).resolve().parents[2]
CLAIMS = ROOT / "dags" / "usecases" / "claim_cost.yaml"


def claims(**training) -> dict:
    d = yaml.safe_load(CLAIMS.read_text())
    d["gold"]["claim_features"]["sql"] = str(ROOT / "dags/usecases/sql/claim_cost/claim_features.sql")
    d["training"].update(training)
    return d


def problems(data: dict) -> list[str]:
    with pytest.raises(UseCaseError) as err:
        parse_usecase(data, "uc/claim_cost.yaml")
    return err.value.lines


# ---------------------------------------------------------------- metrics


def test_multiclass_metrics_on_a_table_worked_by_hand():
    classes = ["low", "medium", "high"]
    y = np.array([0, 0, 1, 1, 1, 2])
    p = np.array(
        [
            [0.8, 0.1, 0.1],  # low, right
            [0.2, 0.7, 0.1],  # low -> medium
            [0.1, 0.8, 0.1],  # medium, right
            [0.1, 0.6, 0.3],  # medium, right
            [0.5, 0.3, 0.2],  # medium -> low
            [0.1, 0.2, 0.7],  # high, right
        ]
    )
    m, d = ev.evaluate_multiclass(y, p, classes)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.8, 0.2, 0.8, 0.6, 0.3, 0.7])))
    # per class: low P=1/2 R=1/2, medium P=2/3 R=2/3, high P=1 R=1
    f1 = {"low": 0.5, "medium": 2 / 3, "high": 1.0}
    assert m["macro_f1"] == pytest.approx(np.mean(list(f1.values())))
    assert m["weighted_f1"] == pytest.approx((2 * 0.5 + 3 * 2 / 3 + 1 * 1.0) / 6)
    assert d["confusion_matrix"] == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    assert d["per_class"]["medium"] == {
        "precision": pytest.approx(2 / 3),
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(2 / 3),
        "support": 3,
    }
    # no skill: the priors (1/3, 1/2, 1/6); always predicting "medium"
    assert d["no_skill"]["accuracy"] == pytest.approx(0.5)
    assert d["no_skill"]["log_loss"] == pytest.approx(
        -(1 / 3 * math.log(1 / 3) + 0.5 * math.log(0.5) + 1 / 6 * math.log(1 / 6))
    )
    assert d["no_skill"]["macro_f1"] == pytest.approx(2 * 0.5 / (1.5 * 3))
    with pytest.raises(ValueError, match="3 columns"):
        ev.evaluate_multiclass(y, p[:, :2], classes)


def test_regression_metrics_and_mape_only_where_defined():
    y = np.array([0.0, 10.0, 20.0, 30.0])
    f = np.array([1.0, 12.0, 18.0, 33.0])
    m, d = ev.evaluate_regression(y, f)
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 4 + 4 + 9) / 4))
    assert m["mae"] == pytest.approx(2.0)
    assert m["mape"] == pytest.approx(np.mean([2 / 10, 2 / 20, 3 / 30]))  # the 0 target is left out
    assert d["mape_rows"] == 3
    assert m["r2"] == pytest.approx(1 - 18 / 500)
    assert d["residuals"]["mean"] == pytest.approx(1.0)
    assert d["no_skill"] == {"rmse": pytest.approx(np.std(y)), "mae": pytest.approx(10.0), "r2": 0.0}
    all_zero, _ = ev.evaluate_regression(np.zeros(3), np.ones(3))
    assert "mape" not in all_zero


# ---------------------------------------------------------------- the gate


def test_the_gate_knows_which_way_is_better():
    """Regression: a candidate with a lower RMSE than the reference passes, a higher one does not."""
    rules = Gate(primary_metric="rmse", tolerances={"r2": 0.02})
    ref = {"rmse": 100.0, "mae": 80.0, "r2": 0.50, "rows": 100}
    ns = {"rmse": 150.0, "mae": 120.0, "r2": 0.0}
    better = ev.gate(
        {"rmse": 90.0, "mae": 75.0, "r2": 0.55, "rows": 100},
        ref,
        rules,
        "champion v1",
        task="regression",
        no_skill_values=ns,
    )
    assert better.passed, better.reasons
    worse = ev.gate(
        {"rmse": 110.0, "mae": 75.0, "r2": 0.55, "rows": 100},
        ref,
        rules,
        "champion v1",
        task="regression",
        no_skill_values=ns,
    )
    assert not worse.passed
    assert worse.reasons == ["rmse 110.0000 does not beat the reference's 100.0000 by 0 (lower is better)"]
    regressed = ev.gate(
        {"rmse": 99.0, "mae": 75.0, "r2": 0.47, "rows": 100},
        ref,
        rules,
        "champion v1",
        task="regression",
        no_skill_values=ns,
    )
    assert not regressed.passed and regressed.reasons == ["r2 regresses by 0.0300 (tolerance 0.02)"]
    # first model: the no-skill values are the baseline (an RMSE above predicting the mean fails)
    useless = ev.gate(
        {"rmse": 160.0, "mae": 100.0, "r2": -0.1, "rows": 100},
        None,
        rules,
        "baseline",
        task="regression",
        no_skill_values=ns,
    )
    assert not useless.passed and useless.baseline["rmse"] == {"value": 150.0, "source": "no skill"}
    # a configured ceiling above no skill is tightened to it
    loose = ev.baseline_floors(Gate(baseline={"rmse": 500.0}), task="regression", no_skill_values=ns)
    assert loose["rmse"] == {"value": 150.0, "source": "no skill; the configured 500 is above it"}


def test_the_multiclass_gate_uses_the_task_defaults():
    rules = Gate()  # primary macro_f1, tolerance on accuracy and log loss
    ns = {"log_loss": 1.0, "accuracy": 0.5, "macro_f1": 0.2, "weighted_f1": 0.3}
    d = ev.gate(
        {"log_loss": 0.6, "accuracy": 0.7, "macro_f1": 0.5, "weighted_f1": 0.6, "rows": 10},
        None,
        rules,
        "baseline",
        task="multiclass",
        no_skill_values=ns,
    )
    assert d.passed and d.primary_metric == "macro_f1"
    assert {c["metric"] for c in d.comparison} == {"macro_f1", "log_loss", "accuracy", "weighted_f1"}


# ---------------------------------------------------------------- configuration


def test_the_shipped_regression_use_case_loads():
    uc = parse_usecase(claims(), "uc/claim_cost.yaml")
    t = uc.training
    assert t.task == "regression" and t.primary_metric == "rmse" and t.xgboost_objective == "reg:squarederror"
    assert t.threshold is None and uc.label_classes() is None


def test_a_metric_of_another_task_is_one_line_naming_the_valid_ones():
    [line] = problems(claims(gate={"primary_metric": "pr_auc"}))
    assert line == (
        "uc/claim_cost.yaml: training.gate.primary_metric: 'pr_auc' is not a metric of a regression task; "
        "use one of rmse, mae, mape, r2"
    )


def test_a_multiclass_label_without_classes_is_one_line():
    d = claims(task="multiclass", objective=None, gate={})
    d["training"].pop("objective")
    d["training_sets"]["claim_cost_training"]["labels"]["label"] = "claim_type_code"
    [line] = problems(d)
    assert line.startswith("uc/claim_cost.yaml: training.classes: a multiclass label needs its classes: set ")
    # the label's data set column has allowed values: they are the classes, in order
    d["training_sets"]["claim_cost_training"]["labels"]["label"] = "severity"
    uc = parse_usecase(d, "uc/claim_cost.yaml")
    assert uc.label_classes() == ["low", "medium", "high"]
    d["training"]["classes"] = ["high", "low", "medium"]
    assert parse_usecase(d, "uc/claim_cost.yaml").label_classes() == ["high", "low", "medium"]


def test_what_each_task_refuses():
    assert problems(claims(threshold={"max_fpr": 0.01})) == [
        "uc/claim_cost.yaml: training.threshold: a regression model has no score threshold; remove it"
    ]
    assert problems(claims(objective="binary:logistic"))[0].endswith(
        "'binary:logistic' is not a regression objective; use one of reg:squarederror, reg:absoluteerror, "
        "reg:pseudohubererror, reg:squaredlogerror, reg:tweedie, reg:gamma, count:poisson"
    )
    assert problems(claims(framework="pytorch")) == [
        "uc/claim_cost.yaml: training.framework: 'pytorch': use xgboost, sklearn or an image URI "
        "(<registry>/<repository>:<tag>)"
    ]
    assert problems(claims(model_format="sklearn")) == [
        "uc/claim_cost.yaml: training.model_format: the built-in training script writes an xgboost model; "
        "set entry_point too"
    ]
    assert problems(claims(entry_point="scripts/nope/train.py", model_format="sklearn")) == [
        "uc/claim_cost.yaml: training.entry_point: file not found: scripts/nope/train.py (relative to the use case YAML)"
    ]


# ---------------------------------------------------------------- models of any declared format


def test_models_are_loaded_by_their_declared_format_and_refused_otherwise(tmp_path):
    import joblib
    from sklearn.linear_model import LinearRegression, LogisticRegression

    x = np.arange(20, dtype=float).reshape(10, 2)
    y = np.arange(10, dtype=float)
    d = tmp_path / "sk"
    d.mkdir()
    joblib.dump(LinearRegression().fit(x, y), d / "model.joblib")
    assert detect_format(d) == "sklearn"
    m = load_model(d, "sklearn", "regression", ["a", "b"])
    assert m.scores(x).shape == (10,) and np.allclose(m.scores(x), y)
    # binary: the positive class's probability from predict_proba
    c = tmp_path / "clf"
    c.mkdir()
    joblib.dump(LogisticRegression().fit(x, (y > 4).astype(int)), c / "model.joblib")
    s = load_model(c, "sklearn", "binary", ["a", "b"]).scores(x)
    assert s.shape == (10,) and s[0] < 0.5 < s[-1]
    with pytest.raises(ModelFormatError, match=r"wrote a sklearn model .* but training.model_format is xgboost"):
        load_model(d, "xgboost", "regression", ["a", "b"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no model here")
    with pytest.raises(ModelFormatError) as err:
        load_model(empty, "sklearn", "regression", ["a", "b"])
    assert "wrote no model" in str(err.value) and "model.joblib" in str(err.value) and "notes.txt" in str(err.value)
