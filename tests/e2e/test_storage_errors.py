"""When the disk refuses a write (full, a size limit, read-only), a step fails with one line naming
the step, the reason and the path, and a rerun once the disk is fixed completes it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from helpers import ROOT, fraud_usecase, runtime_home
from mlblueprints.datagen import DefectConfig, generate_fraud
from mlblueprints.lakehouse import local
from mlblueprints.lineage import RunInfo

DAY = date(2024, 3, 1)

LIMITED = r"""
import resource, signal, sys
from datetime import date
from mlblueprints.config import load_usecase
from mlblueprints.lakehouse import local
from mlblueprints.lineage import RunInfo

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
uc = load_usecase(sys.argv[1])
try:
    local.build_silver(uc, "transactions", [date(2024, 3, 1)], RunInfo.for_usecase(uc, run_id="limited"))
except local.StorageError as exc:
    print("StorageError:", exc)
"""


@pytest.fixture
def bronze_home(tmp_path):
    home = tmp_path / "home"
    generate_fraud(home / "landing", start=DAY, days=1, rows=20_000, seed=4, defects=DefectConfig.none())
    uc = fraud_usecase()
    with runtime_home(home):
        ing = local.ingest_bronze(uc, "transactions", [DAY], RunInfo.for_usecase(uc, run_id="bronze"))
    return uc, home, ing


def test_a_write_the_disk_refuses_is_one_line_and_a_rerun_completes(bronze_home):
    uc, home, ing = bronze_home
    out = subprocess.run(
        [sys.executable, "-c", LIMITED, str(ROOT / "dags" / "usecases" / "fraud_detection.yaml")],
        env={**os.environ, "MLB_HOME": str(home), "PYTHONPATH": str(ROOT / "include")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("StorageError:")]
    assert len(lines) == 1, out.stdout[-2000:] + out.stderr[-3000:]
    line = lines[0]
    assert line.startswith("StorageError: fraud_detection build_silver: file too large for a file size limit (")
    assert f"{home}/warehouse/fraud_detection/transactions_silver/data/write-" in line
    assert line.endswith("then rerun (the step is idempotent)")
    with runtime_home(home):
        run = RunInfo.for_usecase(uc, run_id="rerun")
        silver = local.build_silver(uc, "transactions", [DAY], run)
        assert silver["rows_landed"] == ing["rows_landed"]
        assert local.reconcile(uc, [silver], [ing])["ok"]


def _make_read_only(path: Path) -> bool:
    """Make a folder refuse new files, as far as this user can; False when it cannot be done."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return True
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


def _undo_read_only(path: Path) -> None:
    if os.geteuid() != 0:
        path.chmod(0o755)
    else:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


def test_a_read_only_table_folder_is_one_line(bronze_home):
    uc, home, _ = bronze_home
    with runtime_home(home):
        run = RunInfo.for_usecase(uc, run_id="s")
        local.build_silver(uc, "transactions", [DAY], run)
        data = home / "warehouse" / "fraud_detection" / "transactions_silver" / "data"
        if not _make_read_only(data):
            pytest.skip("cannot make a folder read-only here (root without chattr)")
        try:
            with pytest.raises(local.StorageError) as err:
                local.build_silver(uc, "transactions", [DAY], run)
        finally:
            _undo_read_only(data)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith("fraud_detection build_silver: ")
        assert ("permission denied" in msg or "operation not permitted" in msg) and str(data) in msg
        local.build_silver(uc, "transactions", [DAY], run)  # fixed: the rerun completes


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_recognised():
    with pytest.raises(OSError) as err, open("/dev/full", "w") as f:
        f.write("x")
        f.flush()
    assert local.storage_problem(err.value).startswith("no space left on the device")
    assert local.storage_problem(ValueError("something else")) is None
