"""The training DAG end to end through dag.test(), on the features the shared pipeline built.

The first run is interrupted like a Spot reclaim (SIGKILL part-way through training); the task's
retry resumes from the checkpoint, the model beats the configured baseline and is registered in
MLflow as ``challenger`` with its lineage. A deliberately worse candidate (trained on shuffled
labels) against that champion is not registered.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, runtime_home
from mlblueprints.config import load_usecase

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(pipeline, tmp_path_factory, airflow_db):
    base = tmp_path_factory.mktemp("training")
    uc_dir = base / "usecases"
    shutil.copytree(ROOT / "dags" / "usecases", uc_dir)
    doc = yaml.safe_load((uc_dir / "fraud_detection.yaml").read_text())
    doc["retry_delay_seconds"] = 0
    doc["training"].update(num_boost_round=150, checkpoint_interval_seconds=0, holdout_days=1)
    (uc_dir / "fraud_detection.yaml").write_text(yaml.safe_dump(doc))
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
            for view in uc.features:  # what the feature DAG does (tested on its own)
                features.materialize(uc, view, lo, hi, RunInfo.for_usecase(uc, run_id="features"))
            dag = localrun.get_dag("fraud_detection__training")
            dr = dag.test(run_conf={"interrupt": {"signal": "SIGKILL", "after_rounds": 60}})
            results = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in dr.get_task_instances()}
            tries = {ti.task_id: ti.try_number for ti in dr.get_task_instances()}
            yield {"home": home, "uc": uc, "dag": dag, "dr": dr, "results": results, "tries": tries, "uc_dir": uc_dir}
    finally:
        if old is None:
            os.environ.pop("MLB_USECASES_DIR", None)
        else:
            os.environ["MLB_USECASES_DIR"] = old


def test_spot_kill_is_resumed_and_the_first_model_is_registered(world):
    dr, res = world["dr"], world["results"]
    assert dr.state == "success", {ti.task_id: ti.state for ti in dr.get_task_instances()}
    assert world["tries"]["train"] == 2  # try 1 was killed part-way
    meta = res["train"]["meta"]
    assert meta["resumed_from_round"] and 0 < meta["resumed_from_round"] < 150
    assert meta["rounds"] == 150 and meta["rounds_trained_in_this_process"] == 150 - meta["resumed_from_round"]
    ev = res["evaluate"]
    assert ev["champion"] is None and ev["decision"]["against"] == "baseline" and ev["decision"]["passed"]
    reg = res["register"]
    assert reg["verdict"] == "registered" and reg["version"] == 1 and reg["aliases"] == ["challenger"]
    with runtime_home(world["home"]):
        text = (world["home"] / "runs" / "fraud_detection" / "training" / "latest.txt").read_text()
    assert "gate: PASSED against baseline" in text and "registered fraud_detection_model version 1" in text


def test_registered_version_carries_complete_lineage(world):
    from mlblueprints.features import core
    from mlblueprints.lakehouse import iceberg, naming
    from mlblueprints.registry import local as registry

    uc = world["uc"]
    with runtime_home(world["home"]):
        got = registry.lineage(uc, version=1)
        ts = iceberg.load(iceberg.catalog(), naming.identifier(uc, core.training_table("fraud_training")))
        fv = {
            core.offline_table(uc, v): iceberg.snapshot_id(
                iceberg.load(iceberg.catalog(), naming.identifier(uc, core.offline_table(uc, v)))
            )
            for v in uc.features
        }
    lin = got["lineage"]
    assert got["aliases"] == ["challenger"]
    assert lin["git_commit"] and len(lin["config_hash"]) == 16
    assert lin["training_set_snapshot_id"] == iceberg.snapshot_id(ts)
    for table, snap in fv.items():
        assert lin["source_snapshots"][table] == snap
    assert lin["feature_views"] == {"card_activity": 1, "merchant_activity": 1}
    assert lin["dag_id"] == "fraud_detection__training" and lin["run_id"] == world["dr"].run_id
    assert lin["train_try_number"] == 2 and lin["training_job_name"]
    assert lin["hyperparameters"]["num_boost_round"] == 150 and lin["hyperparameters"]["seed"] == 42
    assert lin["metrics"]["pr_auc"] == pytest.approx(got["metrics"]["candidate_pr_auc"])
    # the same through the command line
    from mlblueprints import cli

    with runtime_home(world["home"]):
        os.environ["MLB_USECASES_DIR"] = str(world["uc_dir"])
        assert cli.main(["models", "lineage", "fraud_detection", "--version", "1"]) == 0


def test_a_worse_candidate_is_not_registered(world, monkeypatch):
    import pandas as pd

    from mlblueprints.registry import local as registry
    from mlblueprints.training import dataset

    uc = world["uc"]
    real_split = dataset.split

    def shuffled_split(uc_, snapshot_id, job_dir: Path):
        out = real_split(uc_, snapshot_id, job_dir)
        path = job_dir / "train" / "train.parquet"
        df = pd.read_parquet(path)
        df["is_fraud"] = df["is_fraud"].sample(frac=1.0, random_state=0).to_numpy()  # no signal left
        df.to_parquet(path, index=False)
        return out

    monkeypatch.setattr(dataset, "split", shuffled_split)
    with runtime_home(world["home"]):
        registry.promote(uc, 1)
        dr = world["dag"].test()
        res = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in dr.get_task_instances()}
        versions = registry.client().search_model_versions(f"name = '{uc.model_name}'")
        champion = registry.model_version(uc, registry.CHAMPION)
    assert dr.state == "success"  # the run completes; its verdict is "not promoted"
    ev = res["evaluate"]
    assert ev["decision"]["against"] == "champion v1" and not ev["decision"]["passed"]
    assert ev["candidate"]["pr_auc"] < ev["champion"]["pr_auc"]
    assert res["register"]["verdict"] == "not promoted" and res["register"]["version"] is None
    assert [int(v.version) for v in versions] == [1] and champion["version"] == 1
    report = json.loads(
        sorted((world["home"] / "runs" / "fraud_detection" / "training").glob("*.json"))[-1].read_text()
    )
    assert "NOT PROMOTED against champion v1" in report["text"]
