"""Run the project's DAGs locally: a real Airflow with a SQLite metadata DB under the runtime dir.

DAG runs go through ``dag.test()`` (the same code path as ``airflow dags test``): real task
instances, XComs, retries and Asset events recorded in the metadata DB, no scheduler process.
Environment variables must be in place before Airflow is imported, so :func:`setup` comes first.

A DAG returned by :func:`get_dag` runs one ``dag.test()`` at a time per metadata DB: the run holds
a lock file (``<AIRFLOW_HOME>/locks/<dag_id>.lock``) for as long as it runs, and a second process
asking for the same DAG gets :class:`RunConflict` (one line) instead of deleting the first one's
run. The operating system releases the lock of a killed process, which is how :func:`setup` tells
the runs of killed processes, left ``running`` forever, from live ones: it marks them failed.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
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
        for line in fail_stuck_runs():
            log.warning("%s", line)
    return env


class RunConflict(RuntimeError):
    """The DAG is already running in another process on the same metadata DB (try again once it
    has finished)."""


def _lock_path(dag_id: str) -> Path:
    airflow_home = Path(os.environ.get("AIRFLOW_HOME") or runtime.home() / "airflow")
    locks = airflow_home / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return locks / f"{dag_id}.lock"


@contextlib.contextmanager
def run_lock(dag_id: str) -> Iterator[None]:
    """Hold the lock of ``dag_id`` for the duration; :class:`RunConflict` when another live
    process holds it (the operating system releases the lock of a killed process)."""
    path = _lock_path(dag_id)
    f = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunConflict(
            f"{dag_id} is already running ({holder}); wait for that run to finish, then run this one again"
        ) from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()}, started {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
        f.flush()
        yield
    finally:
        f.seek(0)
        f.truncate()
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _lock_held(dag_id: str) -> bool:
    """Whether a live process runs ``dag_id`` now (holds its lock)."""
    path = _lock_path(dag_id)
    with path.open("a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def fail_stuck_runs() -> list[str]:
    """Mark failed the ``dag.test()`` runs left ``running`` or ``queued`` by a process that is
    gone (nobody holds their DAG's lock), and their unfinished task instances; a scheduler with
    ``max_active_runs=1`` would otherwise wait for them forever. Runs started by a scheduler or
    the UI are not touched. Returns one line per run marked failed."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from airflow.utils.types import DagRunTriggeredByType
    from sqlalchemy import select

    finished = {
        TaskInstanceState.SUCCESS,
        TaskInstanceState.FAILED,
        TaskInstanceState.SKIPPED,
        TaskInstanceState.UPSTREAM_FAILED,
        TaskInstanceState.REMOVED,
    }
    out = []
    now = datetime.now(UTC)
    with create_session() as session:
        runs = session.scalars(
            select(DagRun).where(
                DagRun.state.in_([DagRunState.RUNNING, DagRunState.QUEUED]),
                DagRun.triggered_by == DagRunTriggeredByType.TEST,
            )
        ).all()
        for dr in runs:
            if _lock_held(dr.dag_id):
                continue
            for ti in dr.get_task_instances(session=session):
                if ti.state not in finished:
                    ti.state = TaskInstanceState.FAILED
                    ti.end_date = now
            dr.state = DagRunState.FAILED
            dr.end_date = now
            out.append(f"{dr.dag_id} run {dr.run_id}: its process is gone; marked failed")
        session.commit()
    return out


def quiet_retry_waits() -> None:
    """dag.test() logs "No tasks to run" once a second while a task waits for its retry; the
    command line shows the task outcomes instead. An expected failure that a retry recovers from
    (an exception with ``one_line = True``, e.g. a simulated Spot interruption) is logged as one
    line instead of a traceback."""
    import structlog

    logging.getLogger("airflow.sdk.definitions.dag").setLevel(logging.ERROR)
    processors = list(structlog.get_config().get("processors") or [])
    if processors and processors[0] is not _one_line_expected_failures:
        structlog.configure(processors=[_one_line_expected_failures, *processors])


def _one_line_expected_failures(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    exc = event.get("exc_info")
    if exc is True:
        exc = sys.exc_info()
    err = exc[1] if isinstance(exc, tuple) else exc if isinstance(exc, BaseException) else None
    while err is not None and not getattr(err, "one_line", False):
        err = err.__cause__ or err.__context__
    if err is not None:
        event.pop("exc_info", None)
        event["event"] = f"{event.get('event')}: {err}"
    return event


def get_dag(dag_id: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    # Airflow's reader of .airflowignore uses a pathspec API that pathspec has deprecated (after
    # importing Airflow, whose configuration resets the warning filters)
    warnings.filterwarnings("ignore", message="GitWildMatchPattern")
    bag = DagBag(dag_folder=str(runtime.project_root() / "dags"))
    if dag_id not in bag.dags:
        problems = "; ".join(f"{k}: {v}" for k, v in bag.import_errors.items())
        raise KeyError(f"no DAG {dag_id!r} in dags/ (found {sorted(bag.dags)}){' - ' + problems if problems else ''}")
    dag = bag.dags[dag_id]
    _one_run_at_a_time(dag)
    return dag


def _one_run_at_a_time(dag: Any) -> None:
    """Make ``dag.test()`` hold the DAG's lock while it runs (see :func:`run_lock`)."""
    test = dag.test

    @functools.wraps(test)
    def locked_test(*args: Any, **kwargs: Any) -> Any:
        with run_lock(dag.dag_id):
            return test(*args, **kwargs)

    dag.test = locked_test


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
