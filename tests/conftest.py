"""Test set-up: a private runtime directory and a real Airflow (SQLite) for the whole session.

Airflow reads its configuration when first imported, so the environment is set here, at import
time, before any test module can import it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="mlb-test-"))
os.environ["MLB_HOME"] = str(_SESSION_HOME)
os.environ["MLB_PROJECT_ROOT"] = str(ROOT)
os.environ.setdefault("MLB_DUCKDB_MEMORY", "1GB")

from mlblueprints import runtime  # noqa: E402

os.environ.update(runtime.airflow_env())
# dag.test() runs tasks in this process; keep retries quick if one is exercised
os.environ["AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY"] = "1"


@pytest.fixture(autouse=True)
def _session_airflow_env():
    """Keep every test on the session's Airflow: the CLI's set-up (a test may call ``cli.main`` in
    this process) points ``AIRFLOW_HOME`` and the metadata DB at that test's runtime directory, and
    a later test's subprocess would inherit it and write to another DB than this process reads."""
    before = {k: v for k, v in os.environ.items() if k.startswith("AIRFLOW")}
    yield
    for k in [k for k in os.environ if k.startswith("AIRFLOW") and k not in before]:
        del os.environ[k]
    os.environ.update(before)


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Migrate the session's SQLite metadata DB once (about 10 s)."""
    out = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=os.environ.copy(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(os.environ["AIRFLOW_HOME"]) / "airflow.db"


@pytest.fixture
def mlb_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh runtime directory for one test (Airflow keeps the session's DB)."""
    home = tmp_path / "mlb"
    home.mkdir()
    monkeypatch.setenv("MLB_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT
