"""Operating the local runtime: one run of a DAG at a time (a second CLI run says so in one line),
runs of killed processes are marked failed at the next start, and a rejected file is set aside
with the one command reconciliation names."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from helpers import ROOT, fraud_usecase, read_table, runtime_home
from mlblueprints import cli
from mlblueprints.datagen import DefectConfig, generate_fraud
from mlblueprints.lakehouse import local, naming
from mlblueprints.lineage import RunInfo

DAY = date(2024, 3, 1)
DAG_ID = "fraud_detection__lakehouse"
HEADER = "transaction_id,event_time,card_id,customer_id,merchant_id,amount,currency,channel,merchant_category,country,is_fraud"


def _cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    return {**env, "MLB_HOME": str(home), "PYTHONPATH": str(ROOT / "include")}


def test_a_second_cli_run_of_a_busy_dag_says_so_in_one_line(tmp_path, monkeypatch):
    """While a run of the DAG holds its lock, the CLI refuses to start another one (dag.test would
    delete the first one's run) with one line and no traceback."""
    from mlblueprints.airflow import localrun

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("AIRFLOW_HOME", str(home / "airflow"))  # where the CLI's Airflow lives
    with localrun.run_lock(DAG_ID):
        out = subprocess.run(
            [sys.executable, "-m", "mlblueprints.cli", "lakehouse", "fraud_detection", DAY.isoformat()],
            env=_cli_env(home),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert out.returncode == 1, out.stderr[-3000:]
    lines = [ln for ln in out.stderr.strip().splitlines() if not ln.startswith(("WARNING", "INFO"))]
    assert lines[-1].startswith(f"mlblueprints lakehouse: {DAG_ID} is already running (process {os.getpid()}, started ")
    assert lines[-1].endswith("wait for that run to finish, then run this one again")
    assert "Traceback" not in out.stderr
    # once the lock is free, it can be taken again
    with localrun.run_lock(DAG_ID):
        pass


STEP = r"""
import sys
from datetime import date
from mlblueprints.airflow import localrun
dag = localrun.get_dag(sys.argv[1])
localrun.run_dag(dag, date.fromisoformat(sys.argv[2]))
"""


def _running_test_runs(dag_id: str) -> list[str]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    with create_session() as session:
        return list(
            session.scalars(
                select(DagRun.run_id).where(DagRun.dag_id == dag_id, DagRun.state == DagRunState.RUNNING)
            ).all()
        )


def _run_state(dag_id: str, run_id: str) -> tuple[str, list[str]]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        dr = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)).one()
        return str(dr.state), sorted({str(ti.state) for ti in dr.get_task_instances(session=session)})


@pytest.mark.slow
def test_the_run_of_a_killed_process_is_marked_failed_at_the_next_start(tmp_path, airflow_db):
    """A SIGKILLed dag.test leaves its run 'running' forever; fail_stuck_runs (called by setup)
    marks it failed - but only once no live process holds the DAG's lock."""
    from mlblueprints.airflow import localrun

    home = tmp_path / "home"
    generate_fraud(home / "landing", start=DAY, days=1, rows=20_000, seed=2, defects=DefectConfig.none())
    assert not _running_test_runs(DAG_ID)
    proc = subprocess.Popen(
        [sys.executable, "-c", STEP, DAG_ID, DAY.isoformat()],
        env={**os.environ, "MLB_HOME": str(home), "PYTHONPATH": str(ROOT / "include")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = time.monotonic()
        deadline = started + 600  # a new runtime directory migrates its DB first: minutes on a loaded machine
        runs: list[str] = []
        while not runs and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            runs = _running_test_runs(DAG_ID)
        assert runs, (
            f"the run never started (process exit code {proc.poll()}, {time.monotonic() - started:.0f} s): "
            f"{proc.stderr.read()[-3000:] if proc.poll() is not None else ''}"
        )
        time.sleep(2)  # a task or two under way
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    (run_id,) = runs
    assert _run_state(DAG_ID, run_id)[0] == "running"  # what a killed dag.test leaves behind
    with localrun.run_lock(DAG_ID):  # a live process running the DAG: its run is not touched
        assert localrun.fail_stuck_runs() == []
    assert _run_state(DAG_ID, run_id)[0] == "running"
    assert localrun.fail_stuck_runs() == [f"{DAG_ID} run {run_id}: its process is gone; marked failed"]
    state, ti_states = _run_state(DAG_ID, run_id)
    assert state == "failed"
    assert not set(ti_states) - {"success", "failed", "skipped", "upstream_failed", "removed"}
    assert localrun.fail_stuck_runs() == []


def test_a_rejected_file_is_set_aside_with_the_command_reconciliation_names(tmp_path, capsys):
    uc = fraud_usecase()
    day_dir = tmp_path / "landing" / "transactions" / DAY.isoformat()
    day_dir.mkdir(parents=True)
    (day_dir / "part-000.csv").write_text(
        HEADER + "\ntx_1,2024-03-01T10:00:00Z,card_1,c1,m1,10.00,USD,pos,grocery,US,0\n"
    )
    (day_dir / "part-001.jsonl").write_bytes('{"transaction_id": "tx_2"}\n'.encode("utf-16"))
    with runtime_home(tmp_path):
        run = RunInfo.for_usecase(uc, run_id="r1")
        ing = local.ingest_bronze(uc, "transactions", [DAY], run)
        rec = local.reconcile(uc, [local.build_silver(uc, "transactions", [DAY], run)], [ing])
        assert not rec["ok"]
        (problem,) = rec["problems"]
        command = "mlblueprints set-aside fraud_detection transactions/2024-03-01/part-001.jsonl"
        assert command in problem and "UTF-16" in problem
        assert "mlblueprints lakehouse fraud_detection 2024-03-01" in problem

        assert cli.main([*command.split()[1:], "--reason", "the vendor resends it as UTF-8"]) == 0
        out = capsys.readouterr().out
        assert "set aside by" in out and "the vendor resends it as UTF-8" in out
        assert (day_dir / "_part-001.jsonl").exists() and not (day_dir / "part-001.jsonl").exists()
        manifest = read_table(uc, naming.table_name("transactions", naming.BRONZE_FILES))
        aside = manifest[manifest["status"] == "set_aside"]
        assert aside["source_file"].tolist() == ["transactions/2024-03-01/part-001.jsonl"]

        run = RunInfo.for_usecase(uc, run_id="r2")
        ing = local.ingest_bronze(uc, "transactions", [DAY], run)
        assert ing["rejected_files"] == []
        assert local.reconcile(uc, [local.build_silver(uc, "transactions", [DAY], run)], [ing])["ok"]

        # an ingested file cannot be set aside: its rows are in Bronze already
        assert cli.main(["set-aside", "fraud_detection", "transactions/2024-03-01/part-000.csv"]) == 1
        err = capsys.readouterr().err.strip()
        assert err == (
            "mlblueprints set-aside: transactions/2024-03-01/part-000.csv: already ingested (as "
            "transactions/2024-03-01/part-000.csv); its rows are in Bronze, setting the file aside would not "
            "remove them"
        )
        assert cli.main(["set-aside", "fraud_detection", "transactions/2024-03-01/nope.csv"]) == 1
        assert "no such file" in capsys.readouterr().err
