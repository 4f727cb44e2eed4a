"""A task killed (SIGKILL) in the middle of a write, then rerun, leaves no partial or duplicate data.

Each step runs in a real subprocess. The test watches the warehouse and kills the process at
a precise moment: while DuckDB is writing the first Parquet files (nothing committed yet), or
between two Iceberg commits of the same step. The rerun must converge to exactly the tables a
run that was never interrupted produces.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from helpers import ROOT, all_tables, fraud_usecase, runtime_home, table_fingerprint
from mlblueprints.datagen import DefectConfig, generate_fraud
from mlblueprints.lakehouse import iceberg, local, naming
from mlblueprints.lineage import RunInfo

pytestmark = pytest.mark.slow
DAY = date(2024, 3, 1)
IGNORE = ("_ingest_time", "_ingest_run_id", "ingest_time", "ingest_run_id")

STEP = r"""
import sys
from datetime import date
from mlblueprints.config import load_usecase
from mlblueprints.lakehouse import local
from mlblueprints.lineage import RunInfo
uc = load_usecase(sys.argv[1])
run = RunInfo.for_usecase(uc, run_id="killed")
step, dataset = sys.argv[2], sys.argv[3]
getattr(local, step)(uc, dataset, [date.fromisoformat(sys.argv[4])], run)
"""


@pytest.fixture(scope="module")
def landing(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("kill-landing")
    generate_fraud(
        src,
        start=DAY,
        days=1,
        rows=300_000,
        seed=11,
        defects=DefectConfig(exact_duplicate=2e-3, key_duplicate=0, malformed_record=1e-3),
    )
    return src


@pytest.fixture(scope="module")
def reference(tmp_path_factory, landing) -> dict[str, list]:
    """The tables of a run that was never interrupted."""
    return full_run(fraud_usecase(), fresh_home(tmp_path_factory.mktemp("kill-ref"), landing, "reference"))


def fresh_home(tmp_path: Path, landing: Path, name: str) -> Path:
    home = tmp_path / name
    shutil.copytree(landing, home / "landing")
    return home


def full_run(uc, home: Path) -> dict[str, list]:
    with runtime_home(home):
        run = RunInfo.for_usecase(uc, run_id="reference")
        local.ingest_bronze(uc, "transactions", [DAY], run)
        local.build_silver(uc, "transactions", [DAY], run)
        return {t: table_fingerprint(uc, t, IGNORE) for t in all_tables(uc)}


def write_dirs(home: Path) -> set[Path]:
    return set((home / "warehouse").glob("*/*/data/write-*"))


def snapshot_of(uc, table: str) -> int | None:
    return iceberg.snapshot_id(iceberg.load(iceberg.catalog(), naming.identifier(uc, table)))


def kill_during(uc, home: Path, step: str, when) -> str:
    """Start ``step`` in a subprocess and SIGKILL it the moment ``when(home, before)`` holds."""
    env = {**os.environ, "MLB_HOME": str(home), "MLB_DUCKDB_THREADS": "1", "PYTHONPATH": str(ROOT / "include")}
    before = write_dirs(home)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            STEP,
            str(ROOT / "dags/usecases/fraud_detection.yaml"),
            step,
            "transactions",
            DAY.isoformat(),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{step} finished before the kill point: {proc.stderr.read().decode()[-2000:]}")
            if when(home, before):
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                return "killed"
            time.sleep(0.002)
        raise AssertionError("kill point never reached")
    finally:
        if proc.poll() is None:
            proc.kill()


def writing(home: Path, before: set[Path]) -> bool:
    """DuckDB has started writing Parquet files of a new write (nothing is committed yet)."""
    return any(any(d.rglob("*.parquet")) for d in write_dirs(home) - before)


def test_kill_during_bronze_write_then_rerun(tmp_path, landing, reference):
    uc = fraud_usecase()
    home = fresh_home(tmp_path, landing, "killed")
    with runtime_home(home):
        kill_during(uc, home, "ingest_bronze", writing)
        # nothing half-written is visible
        assert table_fingerprint(uc, "transactions_bronze") == []
        run = RunInfo.for_usecase(uc, run_id="rerun")
        local.ingest_bronze(uc, "transactions", [DAY], run)
        local.build_silver(uc, "transactions", [DAY], run)
        got = {t: table_fingerprint(uc, t, IGNORE) for t in all_tables(uc)}
        assert got == reference
        # the killed writer's files are garbage, and compaction's clean-up removes them
        removed = iceberg.remove_orphan_files(
            iceberg.load(iceberg.catalog(), naming.identifier(uc, "transactions_bronze")), older_than_seconds=0
        )
        assert removed >= 1


@pytest.mark.parametrize("moment", ["first_write", "after_first_commit"])
def test_kill_during_silver_then_rerun(tmp_path, landing, reference, moment):
    uc = fraud_usecase()
    home = fresh_home(tmp_path, landing, "killed")
    with runtime_home(home):
        run = RunInfo.for_usecase(uc, run_id="first")
        local.ingest_bronze(uc, "transactions", [DAY], run)
        bronze_before = table_fingerprint(uc, "transactions_bronze")
        if moment == "first_write":
            kill_during(uc, home, "build_silver", writing)
            for t in ("transactions_silver", "transactions_quarantine", "transactions_duplicates"):
                assert table_fingerprint(uc, t) == [], t
        else:
            q0 = snapshot_of(uc, "transactions_quarantine")

            def after_first_commit(home_: Path, before: set[Path]) -> bool:
                return snapshot_of(uc, "transactions_quarantine") != q0

            kill_during(uc, home, "build_silver", after_first_commit)
            assert table_fingerprint(uc, "transactions_quarantine") != []
        assert table_fingerprint(uc, "transactions_bronze") == bronze_before
        local.build_silver(uc, "transactions", [DAY], RunInfo.for_usecase(uc, run_id="rerun"))
        got = {t: table_fingerprint(uc, t, IGNORE) for t in all_tables(uc)}
        assert got == reference
        report = local.reconcile(uc, [{"dataset": "transactions", "landing_dates": [DAY.isoformat()]}], [])
        assert report["ok"], report["problems"]
