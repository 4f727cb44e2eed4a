"""The DAG integrity test of the Astro project (the one `astro dev parse` runs): every DAG file
parses with no import error, every use case in dags/usecases/ has its pattern DAGs, and parsing
imports no heavy library (they are imported inside tasks). Runs in the project folder, on the
image's Python, with nothing but Airflow and requirements.txt installed."""

import os
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "pyarrow", "duckdb", "sklearn", "xgboost", "great_expectations", "evidently", "sagemaker", "mlflow", "shap")


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    before = set(sys.modules)
    b = DagBag(dag_folder=str(PROJECT / "dags"))
    b.heavy = sorted(m for m in HEAVY if m in sys.modules and m not in before)
    return b


def test_no_import_errors(bag):
    assert not bag.import_errors, "\n".join(f"{k}: {v}" for k, v in bag.import_errors.items())


def test_every_use_case_has_its_dags(bag):
    import yaml

    expected = set()
    for f in sorted((PROJECT / "dags" / "usecases").glob("*.yaml")):
        uc = yaml.safe_load(f.read_text())
        expected.add(f"{uc['name']}__lakehouse")
        if uc.get("features"):
            expected.add(f"{uc['name']}__features")
        if uc.get("training"):
            expected.add(f"{uc['name']}__training")
    assert expected and expected <= set(bag.dag_ids), sorted(expected - set(bag.dag_ids))


def test_parsing_imports_no_heavy_library(bag):
    assert bag.heavy == [], f"imported at parse time: {bag.heavy}"


def test_runtime_directory_is_writable():
    home = Path(os.environ.get("MLB_HOME") or PROJECT / "include" / ".mlb")
    home.mkdir(parents=True, exist_ok=True)
    (home / ".write-test").write_text("ok")
    (home / ".write-test").unlink()
