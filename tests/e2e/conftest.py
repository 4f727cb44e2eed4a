"""One generated data set, run through the lakehouse DAG day by day, shared by the e2e tests."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from helpers import fraud_usecase, run_days, runtime_home
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
    return Pipeline(home, manifest, days, runs, dag)


@pytest.fixture
def in_pipeline_home(pipeline):
    with runtime_home(pipeline.home):
        yield pipeline


@pytest.fixture(scope="session")
def uc():
    return fraud_usecase()
