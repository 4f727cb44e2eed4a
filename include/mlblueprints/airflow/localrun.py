"""Run the project's DAGs locally: a real Airflow with a SQLite metadata DB under the runtime dir.

DAG runs go through ``dag.test()`` (the same code path as ``airflow dags test``): real task
instances, XComs, retries and Asset events recorded in the metadata DB, no scheduler process.
Environment variables must be in place before Airflow is imported, so :func:`setup` comes first.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from mlblueprints import runtime

log = logging.getLogger(__name__)


def setup(migrate: bool = True) -> dict[str, str]:
    """Point Airflow at the runtime directory and migrate its SQLite DB (idempotent)."""
    if "airflow" in sys.modules and os.environ.get("AIRFLOW_HOME") != str(runtime.home() / "airflow"):
        log.warning("airflow was imported before setup(); its configuration may not be the runtime's")
    from mlblueprints import relocate

    relocate.check_home()
    env = runtime.airflow_env()
    os.environ.update(env)
    # Airflow's API test client imports starlette's, which warns about httpx on every start
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    if migrate:
        out = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return env


def quiet_retry_waits() -> None:
    """dag.test() logs "No tasks to run" once a second while a task waits for its retry; the
    command line shows the task outcomes instead."""
    logging.getLogger("airflow.sdk.definitions.dag").setLevel(logging.ERROR)


def get_dag(dag_id: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(runtime.project_root() / "dags"))
    if dag_id not in bag.dags:
        problems = "; ".join(f"{k}: {v}" for k, v in bag.import_errors.items())
        raise KeyError(f"no DAG {dag_id!r} in dags/ (found {sorted(bag.dags)}){' - ' + problems if problems else ''}")
    return bag.dags[dag_id]


def logical_date_for(landing: date) -> datetime:
    """The logical date whose data interval covers ``landing``.

    The lakehouse DAGs use a data-interval timetable: a manual run at logical date D covers the
    last complete interval before D, i.e. the day D - 1. So landing day X is processed by the
    run at X + 1 day 00:00 UTC (the scheduler's run for X, launched at the end of X, is the same).
    """
    return datetime.combine(landing + timedelta(days=1), time(), tzinfo=UTC)


def run_dag(dag: Any, landing: date, conf: dict[str, Any] | None = None) -> Any:
    """One DAG run for one landing day; returns the DagRun."""
    return dag.test(logical_date=logical_date_for(landing), run_conf=conf or None)


def failed_tasks(dagrun: Any) -> list[str]:
    return sorted(ti.task_id for ti in dagrun.get_task_instances() if ti.state not in ("success", "skipped"))
