"""The fairness step of the training pattern: declared between evaluate and register, it writes
Clarify's analysis.json of the candidate on the holdout and blocks a biased candidate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlblueprints import patterns
from mlblueprints.config import parse_usecase
from mlblueprints.core.context import StepContext
from mlblueprints.core.results import check
from mlblueprints.lineage import RunInfo

ROOT = Path(__file__).resolve().parents[2]
GATE = {"DI": {"min": 0.8, "max": 1.25}, "DPPL": {"min": -0.1, "max": 0.1}}


def usecase(explainability: dict | None = None, target: str = "local"):
    d = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    d["target"] = target
    d["gold"]["transaction_features"]["sql"] = str(ROOT / "dags/usecases/sql/fraud_detection/transaction_features.sql")
    if explainability is not None:
        d["explainability"] = explainability
    return parse_usecase(d)


def explainability(gate: dict | None = None) -> dict:
    return {"facets": [{"name": "channel", "value_or_threshold": ["online"]}], "gate": gate or GATE, "sample_size": 300}


@pytest.mark.parametrize("target", ["local", "aws"])
def test_fairness_is_declared_before_register_only_with_a_section(target):
    from mlblueprints.airflow.builder import build_dag

    plain = patterns.declare("training", usecase(target=target))
    assert "fairness" not in [s.id for s in plain.steps]
    assert "fair" not in plain.step("register").inputs
    uc = usecase(explainability(), target)
    spec = patterns.declare("training", uc)
    ids = [s.id for s in spec.steps]
    assert ids.index("evaluate") < ids.index("fairness") < ids.index("register")
    assert spec.step("fairness").inputs == {"trained": "train", "ev": "evaluate"}
    assert spec.step("register").inputs["fair"] == "fairness"
    dag = build_dag(spec, uc)
    assert "evaluate" in dag.task_dict["fairness"].upstream_task_ids
    assert "fairness" in dag.task_dict["register"].upstream_task_ids


def job(tmp_path: Path, uc, biased: bool) -> tuple[dict, dict]:
    """A trained booster and a holdout of the fraud use case's columns. The model flags high f0;
    with ``biased`` the online rows have higher f0 (the model flags them more), else each online
    row has a point-of-sale twin with the same features."""
    import xgboost as xgb

    feats = uc.model_features()
    rng = np.random.default_rng(11)
    n = 1000
    x = rng.normal(size=(n, len(feats)))
    y = (x[:, 0] + 0.3 * rng.normal(size=n) > 1.0).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "seed": 1},
        xgb.DMatrix(x, label=y, feature_names=feats),
        num_boost_round=20,
    )
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    booster.save_model(str(model_dir / "model.ubj"))
    online = x.copy()
    if biased:
        online[:, 0] += 1.5
    hx = np.vstack([x, online])
    holdout = pd.DataFrame(hx, columns=feats)
    holdout["channel"] = ["pos"] * n + ["online"] * n
    holdout["transaction_id"] = [f"t{i}" for i in range(2 * n)]
    holdout["is_fraud"] = np.r_[y, y]
    (tmp_path / "holdout").mkdir()
    holdout.to_parquet(tmp_path / "holdout" / "holdout.parquet")
    trained = {"job_dir": str(tmp_path), "model_dir": str(model_dir), "job_name": "job-1"}
    ev = {"candidate": {"threshold": 0.5}, "evaluation_dir": str(tmp_path / "evaluation")}
    return trained, ev


def run(tmp_path: Path, biased: bool, gate: dict | None = None) -> dict:
    from mlblueprints.explain.steps import fairness

    uc = usecase(explainability(gate))
    trained, ev = job(tmp_path, uc, biased)
    out = fairness(StepContext(uc=uc, run=RunInfo(run_id="r1")), trained, ev)
    check("fairness", "mlblueprints.core.results:FairnessResult", out)
    return out


def test_a_biased_candidate_is_blocked_naming_the_metric_and_threshold(tmp_path, mlb_home):
    out = run(tmp_path, biased=True)
    assert not out["passed"]
    assert any(
        r.startswith("DI of channel=online (post_training) = ") and "outside [0.8, 1.25]" in r for r in out["reasons"]
    )
    assert any(r.startswith("DPPL of channel=online") for r in out["reasons"])
    doc = json.loads(Path(out["analysis"]).read_text())
    di = next(m for m in doc["post_training_bias_metrics"]["facets"]["channel"][0]["metrics"] if m["name"] == "DI")
    assert di["value"] > 1.25  # the online group is flagged more often than the rest
    assert doc["explanations"]["kernel_shap"]["label0"]["global_shap_values"]
    assert out["top_features"][0] == usecase().model_features()[0]
    assert len(pd.read_csv(Path(out["analysis"]).parent / "explanations_shap" / "out.csv")) == 300


def test_an_unbiased_candidate_passes(tmp_path, mlb_home):
    out = run(tmp_path, biased=False)
    assert out["passed"] and out["reasons"] == []
    values = {(m["stage"], m["name"]): m["value"] for m in out["metrics"]}
    assert values[("post_training", "DI")] == pytest.approx(1.0)
    assert values[("post_training", "DPPL")] == pytest.approx(0.0)
    assert values[("pre_training", "CI")] == pytest.approx(0.0)


def test_register_and_lineage_carry_the_fairness_verdict(tmp_path, mlb_home):
    from mlblueprints.training.steps import lineage

    uc = usecase(explainability())
    fair = run(tmp_path, biased=True)
    ctx = StepContext(uc=uc, run=RunInfo(run_id="r1"))
    ts = {"table": "t", "snapshot_id": 1, "source_snapshots": {}, "feature_views": []}
    trained = {"try_number": 1, "job_name": "job-1", "data": {}}
    ev = {"decision": {"passed": True, "against": "baseline"}, "holdout": None, "candidate": {}}
    lin = lineage(ctx, ts, trained, ev, fair)
    assert lin["gate"] == "not promoted"
    assert lin["fairness"].startswith("failed: DI of channel=online")
    assert lineage(ctx, ts, trained, ev)["gate"] == "passed"


def test_a_facet_value_absent_from_the_holdout_fails_with_one_line(tmp_path, mlb_home):
    from mlblueprints.explain.core import ExplainDataError
    from mlblueprints.explain.steps import fairness

    uc = usecase({"facets": [{"name": "channel", "value_or_threshold": ["atm"]}]})
    trained, ev = job(tmp_path, uc, biased=False)
    with pytest.raises(
        ExplainDataError, match=r"^facet 'channel': value\(s\) \['atm'\] do not occur .*\['online', 'pos'\]\)$"
    ):
        fairness(StepContext(uc=uc, run=RunInfo(run_id="r1")), trained, ev)


def test_the_run_report_shows_the_metrics_against_their_gate(tmp_path, mlb_home):
    from mlblueprints.training.report import render

    fair = run(tmp_path, biased=True)
    text = render(usecase(explainability()), "r1", {"fairness": fair}, [])
    di = next(line for line in text.splitlines() if line.strip().startswith("DI "))
    assert "channel=online" in di and "[0.8, 1.25] BROKEN" in di
    ci = next(line for line in text.splitlines() if line.strip().startswith("CI "))
    assert "BROKEN" not in ci and "ok" not in ci  # not gated
    assert "fairness gate: FAILED" in text and "analysis.json" in text
