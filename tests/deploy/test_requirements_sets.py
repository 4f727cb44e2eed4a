"""The generated dependency sets agree with the lock and with what the managed images need."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from mlblueprints.deploy import astro
from mlblueprints.deploy import requirements as reqs

ROOT = Path(__file__).resolve().parents[2]


def _lock() -> dict[str, str]:
    data = tomllib.loads((ROOT / "uv.lock").read_text())
    return {reqs.canonical(p["name"]): p["version"] for p in data["package"] if "version" in p}


def test_worker_set_runs_what_the_lock_tested():
    worker = reqs.pins((ROOT / reqs.WORKER_TXT).read_text())
    lock = _lock()
    differ = {k: (v, lock[k]) for k, v in worker.items() if k in lock and lock[k] != v and k not in reqs.NOT_ON_312}
    assert differ == {}, f"requirements/aws-worker.txt is stale against uv.lock: run `make requirements` ({differ})"
    # xgboost-cpu is the worker's xgboost (no CUDA libraries): the release the lock tested
    for alias, name in reqs.SAME_RELEASE_AS.items():
        assert worker[alias] == lock[name], (alias, worker[alias], name, lock[name])


def test_worker_set_leaves_out_what_a_worker_never_runs_and_what_airflow_brings():
    worker = reqs.pins((ROOT / reqs.WORKER_TXT).read_text())
    for name in ("sagemaker", "mlflow", "xgboost", "shap", "numba", "llvmlite", "importlib-metadata"):
        assert name not in worker, name
    assert not [n for n in worker if n.startswith("nvidia-")]
    for name in ("apache-airflow", "apache-airflow-core", "boto3", "botocore", "sqlalchemy", "fastapi", "pydantic"):
        assert name not in worker, f"{name} is the image's"
    for name in (
        "duckdb",
        "pyarrow",
        "pyiceberg",
        "great-expectations",
        "evidently",
        "mlflow-skinny",
        "xgboost-cpu",
        "smclarify",
        "matplotlib",
    ):
        assert name in worker, name
    text = (ROOT / reqs.WORKER_TXT).read_text()
    assert reqs.header_field(text, "airflow") == reqs.AIRFLOW_TARGET and reqs.header_field(text, "python") == "3.12"


def test_local_set_is_the_lock():
    local = reqs.pins((ROOT / reqs.LOCAL_TXT).read_text())
    lock = _lock()
    assert local and all(lock.get(k) == v for k, v in local.items()), (
        "requirements/local.txt is stale: run `make requirements`"
    )
    assert "apache-airflow" in local and "sagemaker" in local


def test_worker_in_agrees_with_pyproject_ranges():
    """A range in aws-worker.in is the one pyproject.toml gives the same package."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ranges = {reqs.canonical(re.split(r"[\[<>=!~ ]", d, maxsplit=1)[0]): re.sub(r"^[^<>=!~]*", "", d) for d in project}
    for line in reqs.top_level(ROOT):
        name = reqs.canonical(re.split(r"[\[<>=!~ ]", line, maxsplit=1)[0])
        spec = re.sub(r"^[^<>=!~]*", "", line)
        if name in ranges and spec:
            assert spec == ranges[name], (name, spec, ranges[name])


def test_astro_project_is_assembled(tmp_path):
    out = astro.assemble(ROOT, tmp_path / "astro", reqs.AIRFLOW_TARGET, "3.3-9")
    docker = (out / "Dockerfile").read_text()
    assert "FROM astrocrpublic.azurecr.io/runtime:3.3-9\n" in docker
    assert f"ARG AIRFLOW_TARGET={reqs.AIRFLOW_TARGET}\n" in docker
    for name in ("packages.txt", "airflow_settings.yaml", ".astro/config.yaml", ".astro/test_dag_integrity_default.py"):
        assert (out / name).is_file(), name
    assert (out / "dags" / "lakehouse.py").read_bytes() == (ROOT / "dags" / "lakehouse.py").read_bytes()
    assert (out / "include" / "mlblueprints" / "__init__.py").is_file() and (
        out / "plugins" / "mlblueprints_reports.py"
    ).is_file()
    pins = reqs.pins((out / "requirements.txt").read_text())
    assert pins == reqs.pins((ROOT / reqs.WORKER_TXT).read_text())
    settings = (out / "airflow_settings.yaml").read_text()
    assert "conn_id: aws_default" in settings
