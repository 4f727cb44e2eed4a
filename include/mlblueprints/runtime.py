"""The local runtime: one directory holds everything the local target writes.

``MLB_HOME`` (default ``./.mlb``) contains::

    airflow/        AIRFLOW_HOME: the SQLite metadata DB, logs
    landing/        landed files, ``<dataset>/<YYYY-MM-DD>/<file>`` (the generator writes here)
    warehouse/      Iceberg tables (data + metadata) and ``catalog.db`` (the SQLite catalog)
    online/         online feature stores, one SQLite file per use case
    training/       per training run: train/holdout splits, checkpoints, models of each try
    mlflow/         MLflow tracking and model registry (``mlflow.db``) and artifacts
    quality/        Great Expectations validation results and Data Docs HTML
    runs/           one JSON summary per lakehouse run

Delete the directory to start over. Nothing here imports a heavy library.
"""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache
from pathlib import Path

ENV_HOME = "MLB_HOME"
DEFAULT_HOME = ".mlb"


def home() -> Path:
    """The runtime directory, absolute, created on first use."""
    p = Path(os.environ.get(ENV_HOME) or DEFAULT_HOME).expanduser().resolve()
    p.mkdir(parents=True, exist_ok=True)
    return p


def path(*parts: str) -> Path:
    p = home().joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p


def project_root() -> Path:
    """The repository (or deployment bundle) root: the directory holding ``dags/``.

    ``MLB_PROJECT_ROOT`` overrides; otherwise the nearest parent of this package, or of the
    current directory, that has a ``dags/usecases`` folder.
    """
    env = os.environ.get("MLB_PROJECT_ROOT")
    if env:
        return Path(env).resolve()
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in (start, *start.parents):
            if (parent / "dags" / "usecases").is_dir():
                return parent
    return Path.cwd().resolve()


def usecases_dir() -> Path:
    return Path(os.environ.get("MLB_USECASES_DIR") or project_root() / "dags" / "usecases")


def expectations_dir() -> Path:
    return Path(os.environ.get("MLB_EXPECTATIONS_DIR") or project_root() / "expectations")


@lru_cache(maxsize=1)
def commit_time(commit: str | None) -> str | None:
    """When ``commit`` was made (ISO 8601, from git in the project root; ``MLB_GIT_COMMIT_TIME``
    wins, for images built without ``.git``); None when git does not know it."""
    env = os.environ.get("MLB_GIT_COMMIT_TIME")
    if env:
        return env
    sha = (commit or "").removesuffix("-dirty")
    if not sha or sha == "unknown":
        return None
    try:
        out = subprocess.run(
            ["git", "show", "-s", "--format=%cI", sha],
            cwd=project_root(),
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def git_commit() -> str:
    """The commit of the code that runs (lineage). ``MLB_GIT_COMMIT`` wins (set it in images
    built without ``.git``); ``unknown`` when neither is available."""
    env = os.environ.get("MLB_GIT_COMMIT")
    if env:
        return env
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_root(),
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        commit = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=project_root(),
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def airflow_env(home_dir: Path | None = None) -> dict[str, str]:
    """Environment for a local Airflow that keeps its state under the runtime directory.

    Parallelism is sized for a laptop (the LocalExecutor default of 32 workers does not fit 2
    cores); the DAG folder is the project's ``dags/``.
    """
    h = home_dir or home()
    af = h / "airflow"
    return {
        "AIRFLOW_HOME": str(af),
        "AIRFLOW__CORE__DAGS_FOLDER": str(project_root() / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(project_root() / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{af / 'airflow.db'}",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        MLB_HOME_KEY: str(h),
    }


MLB_HOME_KEY = ENV_HOME
