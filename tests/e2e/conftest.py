"""One generated data set, run through the lakehouse DAG day by day, shared by the e2e tests."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from helpers import fraud_usecase, read_table, run_days, runtime_home
from mlblueprints.datagen import DefectConfig, GenerationManifest, generate_fraud

START = date(2024, 3, 1)
DAYS = 4
ROWS = 20_000
DEFECTS = DefectConfig(
    malformed_record=1e-3,
    invalid_type=1e-3,
    missing_required=1e-3,
    out_of_range=1e-3,
    unknown_category=1e-3,
    exact_duplicate=1e-3,
    key_duplicate=1e-3,
)


@dataclass
class Pipeline:
    home: Path
    manifest: GenerationManifest
    days: list[date]
    runs: list[Any]
    dag: Any
    # task id -> state of each run, read when the runs ended: a later test that runs the lakehouse
    # DAG for the same days (the bias-knob world does) replaces these runs in the shared Airflow DB
    task_states: list[dict[str, str]]


def generate(
    home: Path, rows: int = ROWS, days: int = DAYS, seed: int = 7, defects: DefectConfig = DEFECTS
) -> GenerationManifest:
    return generate_fraud(home / "landing", start=START, days=days, rows=rows, seed=seed, defects=defects)


@pytest.fixture(scope="session")
def pipeline(airflow_db) -> Pipeline:
    from mlblueprints.airflow import localrun

    home = Path(tempfile.mkdtemp(prefix="mlb-e2e-"))
    with runtime_home(home):
        manifest = generate(home)
        dag = localrun.get_dag("fraud_detection__lakehouse")
        days = [START + timedelta(days=i) for i in range(DAYS)]
        runs = run_days(dag, days)
        states = [{ti.task_id: ti.state for ti in dr.get_task_instances()} for dr in runs]
    return Pipeline(home, manifest, days, runs, dag, states)


@pytest.fixture
def in_pipeline_home(pipeline):
    with runtime_home(pipeline.home):
        yield pipeline


@pytest.fixture(scope="session")
def uc():
    return fraud_usecase()


@pytest.fixture(scope="session")
def scoring_base(pipeline, tmp_path_factory, airflow_db) -> dict[str, Any]:
    """The shared pipeline's Gold with both feature views materialized and a fraud model trained by
    the training DAG (40 rounds) and made champion: what the scoring tests start from (they copy
    ``home``). ``uc_dir`` holds the use cases the model was trained with."""
    import os
    import shutil

    import yaml

    from helpers import ROOT
    from mlblueprints.airflow import localrun
    from mlblueprints.config import load_usecase
    from mlblueprints.features import local as features
    from mlblueprints.lakehouse.local import latest_gold_range
    from mlblueprints.lineage import RunInfo

    base = tmp_path_factory.mktemp("scoring-base")
    uc_dir = base / "usecases"
    shutil.copytree(ROOT / "dags" / "usecases", uc_dir)
    doc = yaml.safe_load((uc_dir / "fraud_detection.yaml").read_text())
    doc["retry_delay_seconds"] = 0
    doc["training"].update(num_boost_round=40, holdout_days=1, promote=True)
    doc.pop("explainability")  # promote at registration is refused with a fairness gate: scoring needs no gate
    (uc_dir / "fraud_detection.yaml").write_text(yaml.safe_dump(doc))
    home = base / "home"
    shutil.copytree(pipeline.home / "warehouse", home / "warehouse")
    old = os.environ.get("MLB_USECASES_DIR")
    os.environ["MLB_USECASES_DIR"] = str(uc_dir)
    try:
        with runtime_home(home):
            uc = load_usecase(uc_dir / "fraud_detection.yaml")
            lo, hi = latest_gold_range(uc, ["transaction_features"])
            for view in uc.features:  # what the feature DAG does (tested on its own)
                features.materialize(uc, view, lo, hi, RunInfo.for_usecase(uc, run_id="features"))
            dr = localrun.get_dag("fraud_detection__training").test()
            assert dr.state == "success", [(ti.task_id, ti.state) for ti in dr.get_task_instances()]
            days = read_table(uc, "transaction_features")["event_date"]
            lo, hi = min(days), max(days)  # the event dates Gold holds (its recompute range reaches further)
    finally:
        if old is None:
            os.environ.pop("MLB_USECASES_DIR", None)
        else:
            os.environ["MLB_USECASES_DIR"] = old
    return {"home": home, "uc_dir": uc_dir, "doc": doc, "range": (lo, hi)}
