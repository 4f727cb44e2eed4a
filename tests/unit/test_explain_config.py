"""The explainability section of a use case: what it accepts, and one line per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlblueprints.config import UseCaseError, parse_usecase

ROOT = Path(__file__).resolve().parents[2]
FRAUD = ROOT / "dags" / "usecases" / "fraud_detection.yaml"


def fraud(explainability: dict) -> dict:
    d = yaml.safe_load(FRAUD.read_text())
    d["explainability"] = explainability
    return d


def parse(explainability: dict):
    return parse_usecase(fraud(explainability), "x/fraud_detection.yaml")


def test_a_section_with_facets_and_a_gate_loads():
    uc = parse(
        {
            "facets": [
                {"name": "channel", "value_or_threshold": ["online", "atm"]},
                {"name": "amount", "value_or_threshold": [1000]},
            ],
            "gate": {"DI": {"min": 0.8, "max": 1.25}, "CI": {"max": 0.9}},
        }
    )
    e = uc.explainability
    assert e is not None and e.label_value == 1 and e.sample_size == 1000
    assert e.facets[1].value_or_threshold == [1000]
    assert "DI" in e.post_training_metrics and "CI" in e.pre_training_metrics
    assert e.thresholds() == {"DI": (0.8, 1.25), "CI": (None, 0.9)}
    assert parse_usecase(fraud({}), "x/fraud_detection.yaml").explainability.facets == []


@pytest.mark.parametrize(
    ("section", "field", "reason"),
    [
        (
            {"facets": [{"name": "gender", "value_or_threshold": ["f"]}]},
            "explainability.facets[0].name",
            "'gender' is not a column of the holdout",
        ),
        (
            {"facets": [{"name": "amount", "value_or_threshold": [10, 20]}]},
            "explainability.facets[0].value_or_threshold",
            "give one number (a threshold) or a list of values as strings",
        ),
        (
            {"facets": [{"name": "channel", "value_or_threshold": ["online"]}], "gate": {"DI": {}}},
            "explainability.gate.DI",
            "set min, max or both",
        ),
        (
            {"facets": [{"name": "channel", "value_or_threshold": ["online"]}], "gate": {"DI": {"min": 2, "max": 1}}},
            "explainability.gate.DI",
            "min 2 is above max 1",
        ),
        (
            {
                "facets": [{"name": "channel", "value_or_threshold": ["online"]}],
                "post_training_metrics": ["DPPL"],
                "gate": {"DI": {"min": 0.8}},
            },
            "explainability.gate.DI",
            "DI is not computed",
        ),
        ({"gate": {"CI": {"max": 0.5}}}, "explainability.gate", "no facet is configured"),
        ({"pre_training_metrics": ["CI", "XX"]}, "explainability.pre_training_metrics[1]", "Input should be 'CI'"),
    ],
)
def test_mistakes_are_one_line_naming_the_field(section, field, reason):
    with pytest.raises(UseCaseError) as e:
        parse(section)
    msg = str(e.value)
    assert field in msg and reason in msg, msg


def test_bias_metrics_need_a_binary_task():
    d = fraud({"facets": [{"name": "channel", "value_or_threshold": ["online"]}]})
    d["training"].update(task="regression", objective="reg:squarederror", gate={})
    d["training"].pop("threshold", None)
    with pytest.raises(UseCaseError, match="bias metrics need a binary task; training.task is regression"):
        parse_usecase(d, "x/fraud_detection.yaml")
