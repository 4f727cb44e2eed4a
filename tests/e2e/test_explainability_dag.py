"""The explainability DAG end to end through dag.test(): the training DAG registers a version on
the shared pipeline's features; the explainability DAG explains that version, logs analysis.json
(Clarify's layout) with it, and tags it when a bound must break - and not when it passes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml

from helpers import ROOT, runtime_home
from mlblueprints.config import load_usecase

pytestmark = pytest.mark.slow

FACETS = [{"name": "channel", "value_or_threshold": ["online"]}]
# CI (class imbalance) lies in [-1, 1] by definition: a minimum of 2 must break, [-1, 1] must pass
BREAKS = {"CI": {"min": 2.0}}
PASSES = {"CI": {"min": -1.0, "max": 1.0}}


def _write(uc_dir: Path, gate: dict) -> None:
    path = uc_dir / "fraud_detection.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["explainability"] = {"facets": FACETS, "gate": gate, "sample_size": 200}
    path.write_text(yaml.safe_dump(doc))


def _results(dr) -> dict:
    return {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in dr.get_task_instances()}


@pytest.fixture(scope="module")
def world(pipeline, tmp_path_factory, airflow_db):
    base = tmp_path_factory.mktemp("explainability")
    uc_dir = base / "usecases"
    shutil.copytree(ROOT / "dags" / "usecases", uc_dir)
    doc = yaml.safe_load((uc_dir / "fraud_detection.yaml").read_text())
    doc["retry_delay_seconds"] = 0
    doc["training"].update(num_boost_round=40, checkpoint_interval_seconds=0, holdout_days=1)
    (uc_dir / "fraud_detection.yaml").write_text(yaml.safe_dump(doc))
    _write(uc_dir, BREAKS)
    home = base / "home"
    shutil.copytree(pipeline.home / "warehouse", home / "warehouse")
    old = os.environ.get("MLB_USECASES_DIR")
    os.environ["MLB_USECASES_DIR"] = str(uc_dir)
    try:
        with runtime_home(home):
            from mlblueprints.airflow import localrun
            from mlblueprints.features import local as features
            from mlblueprints.lakehouse.local import latest_gold_range
            from mlblueprints.lineage import RunInfo

            uc = load_usecase(uc_dir / "fraud_detection.yaml")
            lo, hi = latest_gold_range(uc, ["transaction_features"])
            for view in uc.features:
                features.materialize(uc, view, lo, hi, RunInfo.for_usecase(uc, run_id="features"))
            trained = localrun.get_dag("fraud_detection__training").test()
            yield {"home": home, "uc_dir": uc_dir, "trained": trained, "training": _results(trained)}
    finally:
        if old is None:
            os.environ.pop("MLB_USECASES_DIR", None)
        else:
            os.environ["MLB_USECASES_DIR"] = old


def test_a_registered_version_is_explained_tagged_when_a_bound_breaks_and_untagged_when_it_passes(world):
    from mlblueprints.airflow import localrun
    from mlblueprints.explain import core
    from mlblueprints.registry import local as registry

    assert world["trained"].state == "success"
    reg = world["training"]["register"]
    assert reg["verdict"] == "registered" and world["training"]["publish"]["version"] == reg["version"]
    version = reg["version"]
    with runtime_home(world["home"]):
        uc = load_usecase(world["uc_dir"] / "fraud_detection.yaml")
        dr = localrun.get_dag("fraud_detection__explainability").test(run_conf={"version": version})
        res = _results(dr)
        assert dr.state == "success", {ti.task_id: ti.state for ti in dr.get_task_instances()}
        assert res["target"]["version"] == version and res["target"]["chosen_by"] == "the version Param"

        # analysis.json, fetched from the version's run, has Clarify's layout
        got = registry.fetch_artifact(uc, version, "explainability/analysis.json", world["home"] / "check")
        doc = core.read_analysis(got)
        schema = json.loads((ROOT / "include/mlblueprints/explain/analysis.schema.json").read_text())
        jsonschema.validate(doc, schema)
        assert doc["pre_training_bias_metrics"]["label"] == "is_fraud"
        [group] = doc["post_training_bias_metrics"]["facets"]["channel"]
        assert group["value_or_threshold"] == "online"
        assert {m["name"] for m in group["metrics"]} >= {"DI", "DPPL"}
        shap = doc["explanations"]["kernel_shap"]["label0"]["global_shap_values"]
        assert set(shap) == set(uc.model_features()) and any(v > 0 for v in shap.values())

        # the bound that must break: the version is tagged, promotion refuses it in one line
        tag = registry.client(uc).get_model_version(uc.model_name, str(version)).tags.get(registry.FAIRNESS_FAILED_TAG)
        assert res["gate"]["passed"] is False
        assert tag and tag.startswith("CI of channel=online (pre_training) = ") and "outside [2, inf]" in tag
        with pytest.raises(registry.PromotionRefused) as refused:
            registry.promote(uc, version)
        assert "\n" not in str(refused.value) and "CI of channel=online" in str(refused.value)
        text = (world["home"] / "runs" / "fraud_detection" / "explainability" / "latest.txt").read_text()
        assert "fairness gate: FAILED" in text and "promotion refuses it" in text

        # the same version under a bound it meets: no tag, and it can be promoted
        _write(world["uc_dir"], PASSES)
        dr = localrun.get_dag("fraud_detection__explainability").test(run_conf={"version": version})
        assert dr.state == "success" and _results(dr)["gate"]["passed"] is True
        tags = registry.client(uc).get_model_version(uc.model_name, str(version)).tags
        assert registry.FAIRNESS_FAILED_TAG not in tags
        registry.promote(uc, version)
        assert registry.model_version(uc, registry.CHAMPION)["version"] == version
