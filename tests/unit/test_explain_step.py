"""The explainability pattern's steps on a version registered in the local MLflow registry: the
analysis is logged with the version in Clarify's layout, a broken bound tags the version and
promotion refuses it saying why; a pass leaves no tag."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers import register_explainable_version
from mlblueprints import patterns
from mlblueprints.config import parse_usecase
from mlblueprints.core.context import StepContext
from mlblueprints.core.results import check
from mlblueprints.lineage import RunInfo

ROOT = Path(__file__).resolve().parents[2]
GATE = {"DI": {"min": 0.8, "max": 1.25}, "DPPL": {"min": -0.1, "max": 0.1}}
RESULTS = "mlblueprints.core.results"


def usecase(explainability: dict | None = None, target: str = "local"):
    """The shipped use case with this explainability section (None: without one)."""
    d = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    d["target"] = target
    d["gold"]["transaction_features"]["sql"] = str(ROOT / "dags/usecases/sql/fraud_detection/transaction_features.sql")
    d.pop("explainability")
    if explainability is not None:
        d["explainability"] = explainability
    return parse_usecase(d)


def explainability(gate: dict | None = None, facet: str = "online") -> dict:
    return {"facets": [{"name": "channel", "value_or_threshold": [facet]}], "gate": gate or GATE, "sample_size": 300}


def test_the_pattern_is_declared_on_the_challenger_asset_and_training_has_no_fairness_step():
    from mlblueprints.core.naming import registered_model_asset

    assert patterns.declare("explainability", usecase()) is None  # no section, no DAG
    uc = usecase(explainability())
    spec = patterns.declare("explainability", uc)
    assert spec.dag_id == "fraud_detection__explainability"
    assert spec.schedule.assets == registered_model_asset(uc).name
    assert [s.id for s in spec.steps] == ["target", "analyse", "gate", "report"]
    assert [(p.name, p.default, p.type) for p in spec.params] == [("version", 0, "integer")]
    training = patterns.declare("training", uc)
    assert "fairness" not in [s.id for s in training.steps]
    assert registered_model_asset(uc).name in training.step("publish").emits


def register(uc, tmp_path: Path, biased: bool, run_id: str = "train-1") -> int:
    """A booster flagging high f0 registered with a holdout of the fraud use case's columns
    (``helpers.register_explainable_version``); its version."""
    return register_explainable_version(uc, tmp_path, biased=biased, run_id=run_id)[0]


def run(uc, params: dict | None = None, triggering: dict | None = None, run_id: str = "explain-1") -> dict:
    from mlblueprints.explain import steps

    ctx = StepContext(uc=uc, run=RunInfo(run_id=run_id), params=params or {}, triggering=triggering or {})
    out = {"target": check("target", f"{RESULTS}:ExplainTargetResult", steps.target(ctx))}
    out["analyse"] = check("analyse", f"{RESULTS}:ExplainResult", steps.analyse(ctx, out["target"]))
    out["gate"] = check("gate", f"{RESULTS}:FairnessResult", steps.gate(ctx, out["target"]))
    return out


def tags(uc, version: int) -> dict:
    from mlblueprints.registry.local import client

    return dict(client(uc).get_model_version(uc.model_name, str(version)).tags)


def test_a_biased_version_is_tagged_and_promotion_refuses_it_in_one_line(tmp_path, mlb_home, capsys):
    from mlblueprints import cli
    from mlblueprints.registry import local as registry

    uc = usecase(explainability())
    version = register(uc, tmp_path, biased=True)
    out = run(uc, params={"version": version})
    assert out["target"]["chosen_by"] == "the version Param"
    fair = out["gate"]
    assert not fair["passed"]
    di = next(r for r in fair["reasons"] if r.startswith("DI of channel=online (post_training) = "))
    assert di.endswith("is outside [0.8, 1.25]")
    assert tags(uc, version)[registry.FAIRNESS_FAILED_TAG] == fair["tag"] == "; ".join(fair["reasons"])
    # the analysis is an artifact of the version's run, in Clarify's layout
    doc = json.loads(registry.fetch_artifact(uc, version, "explainability/analysis.json", tmp_path / "dl").read_text())
    metric = next(m for m in doc["post_training_bias_metrics"]["facets"]["channel"][0]["metrics"] if m["name"] == "DI")
    assert metric["value"] > 1.25  # the online group is flagged more often than the rest
    assert doc["explanations"]["kernel_shap"]["label0"]["global_shap_values"]
    assert doc["mlblueprints"]["model_version"] == version
    per_record = registry.fetch_artifact(uc, version, "explainability/explanations_shap/out.csv", tmp_path / "dl")
    assert len(pd.read_csv(per_record)) == 300
    assert out["analyse"]["top_features"][0] == uc.model_features()[0]
    # promotion refuses it, saying which metric broke which bound
    with pytest.raises(registry.PromotionRefused, match=r"version 1 is not promoted: it failed the fairness gate: "):
        registry.promote(uc, version)
    assert registry.model_version(uc, registry.CHAMPION) is None
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "_load", lambda name: uc)
        assert cli.main(["models", "promote", "fraud_detection", str(version)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DI of channel=online (post_training)" in err[0] and "outside [0.8, 1.25]" in err[0]


def test_a_version_that_passes_carries_no_tag_and_a_recheck_clears_an_old_one(tmp_path, mlb_home):
    from mlblueprints.core.naming import registered_model_asset
    from mlblueprints.registry import local as registry

    uc = usecase(explainability())
    version = register(uc, tmp_path, biased=False)
    # an earlier check under a bound it broke
    strict = usecase(explainability({"DI": {"min": 1.5}}))
    assert not run(strict, params={"version": version})["gate"]["passed"]
    assert registry.FAIRNESS_FAILED_TAG in tags(uc, version)
    event = {registered_model_asset(uc).name: [{"model": uc.model_name, "version": version}]}
    out = run(uc, triggering=event, run_id="explain-2")
    assert out["target"]["chosen_by"] == "the challenger event"
    assert out["gate"]["passed"] and out["gate"]["reasons"] == [] and out["gate"]["tag"] is None
    values = {(m["stage"], m["name"]): m["value"] for m in out["analyse"]["metrics"]}
    assert values[("post_training", "DI")] == pytest.approx(1.0)
    assert values[("pre_training", "CI")] == pytest.approx(0.0)
    assert registry.FAIRNESS_FAILED_TAG not in tags(uc, version)
    assert tags(uc, version)[registry.EXPLAINED_BY_TAG] == "explain-2"
    registry.promote(uc, version)
    assert registry.model_version(uc, registry.CHAMPION)["version"] == version


def test_bad_inputs_fail_with_one_line(tmp_path, mlb_home):
    from mlblueprints.errors import PermanentError
    from mlblueprints.explain import steps
    from mlblueprints.explain.core import ExplainDataError

    uc = usecase(explainability())
    ctx = StepContext(uc=uc, run=RunInfo(run_id="r"))
    with pytest.raises(PermanentError, match=r"^fraud_detection_model: no version to explain: set the version Param"):
        steps.target(ctx)
    version = register(uc, tmp_path, biased=False)
    with pytest.raises(PermanentError, match=r"^fraud_detection_model version 7: not in the registry"):
        steps.target(StepContext(uc=uc, run=RunInfo(run_id="r"), params={"version": 7}))
    absent = usecase(explainability(facet="atm"))
    ctx = StepContext(uc=absent, run=RunInfo(run_id="r"), params={"version": version})
    with pytest.raises(ExplainDataError, match=r"^facet 'channel': value\(s\) \['atm'\] do not occur .*\)$"):
        steps.analyse(ctx, steps.target(ctx))


def test_the_run_report_shows_the_metrics_against_their_bounds(tmp_path, mlb_home):
    from mlblueprints.explain.report import render

    uc = usecase(explainability())
    version = register(uc, tmp_path, biased=True)
    text = render(uc, "r1", run(uc, params={"version": version}))
    di = next(line for line in text.splitlines() if line.strip().startswith("DI "))
    assert "channel=online" in di and "[0.8, 1.25] BROKEN" in di
    ci = next(line for line in text.splitlines() if line.strip().startswith("CI "))
    assert "BROKEN" not in ci and "ok" not in ci  # not gated
    assert "fairness gate: FAILED" in text and "explainability/analysis.json" in text
    assert "promotion refuses it" in text


def test_promote_straight_to_champion_with_a_fairness_gate_is_refused_at_parse_time():
    from mlblueprints.config import UseCaseError

    d = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    d["gold"]["transaction_features"]["sql"] = str(ROOT / "dags/usecases/sql/fraud_detection/transaction_features.sql")
    d["explainability"] = explainability()
    d["training"]["promote"] = True
    with pytest.raises(UseCaseError, match=r"training\.promote"):
        parse_usecase(d)
