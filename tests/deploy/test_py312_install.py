"""The managed targets' dependency sets installed for real on Python 3.12, the Python of MWAA's
and Astro's Airflow 3 images (there is no Docker here to run the images themselves):

- a fresh 3.12 environment gets what the image brings - the targeted Airflow and the Amazon
  provider - then the deliverable's own requirements are installed with pip, as MWAA and the
  Astro image do, with the constraint line as written (only the image's path is mapped to the
  unpacked copy); ``pip check`` passes and Airflow is not moved;
- MWAA: the bundle is unpacked as MWAA lays it out (dags/ and plugins.zip extracted under
  AIRFLOW_HOME), its startup script is sourced, and the DAGs are parsed: no import error, every
  DAG present, no heavy import at parse time, the reports plugin loaded;
- Astro: the project's own DAG integrity test (the one `astro dev parse` runs) passes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from mlblueprints.deploy import astro, mwaa
from mlblueprints.deploy import requirements as reqs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
UV = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
EXPECTED_DAGS = {
    f"{uc}__{p}" for uc in ("fraud_detection", "claim_cost") for p in ("lakehouse", "features", "training", "scoring")
} | {"fraud_detection__explainability", "fraud_detection__monitoring", "fraud_detection__promotion"}
HEAVY = ["pandas", "pyarrow", "duckdb", "sklearn", "xgboost", "great_expectations", "evidently", "mlflow", "pyiceberg"]


def _run(cmd: list[str], timeout: float = 1200, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert out.returncode == 0, f"{' '.join(cmd[:4])}...\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


def _image_env(tmp: Path) -> Path:
    """A fresh Python 3.12 environment holding what the image's Airflow brings."""
    py = reqs.find_python("3.12")
    assert py, "no Python 3.12 on this machine: `make python312` finds or installs one (or set PYTHON312)"
    venv = tmp / "venv"
    started = time.monotonic()
    _run([UV, "venv", "--seed", "--python", py, str(venv)], env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})
    image = [p.format(version=reqs.AIRFLOW_TARGET) for p in reqs.IMAGE_PACKAGES]
    _run([UV, "pip", "install", "--python", str(venv / "bin" / "python"), *image])
    print(
        f"\nthe image's packages (Airflow {reqs.AIRFLOW_TARGET}, the Amazon provider): {time.monotonic() - started:.0f} s"
    )
    return venv / "bin" / "python"


def _pip_install(python: Path, requirements: Path) -> dict[str, str]:
    """pip install -r as the images do; returns the environment's versions afterwards."""
    before = _freeze(python)
    started = time.monotonic()
    # --no-compile: byte-compiling every installed module is most of pip's time and proves nothing here
    _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-compile", "-r", str(requirements)])
    print(f"\npip install -r {requirements.name}: {time.monotonic() - started:.0f} s")
    _run([str(python), "-m", "pip", "check"])
    after = _freeze(python)
    for pkg in ("apache-airflow", "apache-airflow-core", "apache-airflow-task-sdk"):
        assert after[pkg] == before[pkg], f"installing the requirements moved {pkg}"
    assert after["apache-airflow"] == reqs.AIRFLOW_TARGET
    return after


def _freeze(python: Path) -> dict[str, str]:
    out = _run([str(python), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"])
    return {reqs.canonical(p["name"]): p["version"] for p in json.loads(out.stdout)}


PARSE = """
import json, sys
before = set(sys.modules)
from airflow.dag_processing.dagbag import DagBag
after_airflow = set(sys.modules)
bag = DagBag(dag_folder=sys.argv[1])
heavy = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules and m not in after_airflow)
from airflow import plugins_manager
apps, _ = plugins_manager.get_fastapi_plugins()
import mlblueprints
# what the steps import when they run (after parse time): every pattern's steps and the libraries
# imported inside functions, so a worker set that lacks one fails here, not in a task on MWAA
import importlib
missing = []
for m in json.loads(sys.argv[3]):
    try:
        importlib.import_module(m)
    except ImportError as exc:
        missing.append(f"{m}: {exc}")
print(json.dumps({"dags": sorted(bag.dag_ids), "errors": {k: str(v) for k, v in bag.import_errors.items()},
                  "heavy": heavy, "apps": [a["url_prefix"] for a in apps], "package": mlblueprints.__file__,
                  "missing": missing}))
"""
RUN_TIME = [
    *(f"mlblueprints.{p}.steps" for p in ("lakehouse", "features", "training", "scoring", "explain", "serving")),
    "smclarify.bias.report",  # explain.core: the bias metrics
    "matplotlib.figure",  # explain.html: the report's plots
]


def test_mwaa_bundle_installs_and_parses_on_python_312(tmp_path):
    bundle = mwaa.build(ROOT, tmp_path / "dist" / "mwaa")
    # unpack as MWAA lays it out under AIRFLOW_HOME (/usr/local/airflow there)
    home = tmp_path / "usr_local_airflow"
    shutil.copytree(bundle / "dags", home / "dags")
    with zipfile.ZipFile(bundle / "plugins.zip") as z:
        z.extractall(home / "plugins")
    runtime_dir = tmp_path / "runtime"
    requirements = tmp_path / "requirements.txt"
    requirements.write_text((bundle / "requirements.txt").read_text().replace(mwaa.MWAA_HOME, str(home)))
    startup = tmp_path / "startup.sh"
    startup.write_text((bundle / "startup.sh").read_text().replace(mwaa.RUNTIME_DIR, str(runtime_dir)))

    python = _image_env(tmp_path)
    versions = _pip_install(python, requirements)
    assert "sagemaker" not in versions and "mlflow" not in versions and "shap" not in versions
    assert not [p for p in versions if p.startswith("nvidia-")], "CUDA libraries in the worker set"
    assert versions["pandas"].startswith("2.") and versions["pyiceberg"].startswith("0.12.")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLB_", "PYTHONPATH"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(home / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path / 'airflow.db'}",
    )
    cmd = f'. "{startup}" && exec "{python}" -c "$0" "$1" "$2" "$3"'
    args = [str(home / "dags"), json.dumps(HEAVY), json.dumps(RUN_TIME)]
    out = _run(["sh", "-c", cmd, PARSE, *args], env=env, timeout=600)
    parsed = json.loads(out.stdout.strip().splitlines()[-1])
    assert parsed["errors"] == {}
    assert set(parsed["dags"]) == EXPECTED_DAGS
    assert parsed["heavy"] == []
    assert parsed["missing"] == []
    assert "/mlblueprints" in parsed["apps"]  # the reports plugin, from plugins.zip
    assert parsed["package"].startswith(str(home / "plugins" / "mlblueprints"))  # the vendored package
    assert runtime_dir.is_dir()  # the startup script made MLB_HOME


def test_astro_requirements_install_and_its_integrity_test_passes_on_python_312(tmp_path):
    project = astro.assemble(ROOT, tmp_path / "astro", reqs.AIRFLOW_TARGET)
    assert "FROM astrocrpublic.azurecr.io/runtime:" in (project / "Dockerfile").read_text()
    python = _image_env(tmp_path)
    _pip_install(python, project / "requirements.txt")
    _run([UV, "pip", "install", "--python", str(python), "pytest"])  # what `astro dev parse` brings along
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLB_", "PYTHONPATH"))}
    env.update(  # what the Dockerfile sets, with the image's /usr/local/airflow mapped to the project folder
        AIRFLOW_HOME=str(tmp_path / "airflow_home"),
        AIRFLOW__CORE__DAGS_FOLDER=str(project / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path / 'airflow.db'}",
        MLB_HOME=str(project / "include" / ".mlb"),
        MLB_PROJECT_ROOT=str(project),
    )
    test = project / ".astro" / "test_dag_integrity_default.py"
    out = _run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)], env=env, cwd=project, timeout=600
    )
    assert "4 passed" in out.stdout, out.stdout[-2000:]
    print(f"\n{sys.version.split()[0]} runs the tests; the Astro project's env: {out.stdout.splitlines()[-1]}")
