"""A runtime directory (MLB_HOME) can be moved or copied: a copy reads and writes only its own
files, and the original's orphan cleanup never touches the copy's."""

from __future__ import annotations

import shutil
import sqlite3
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from helpers import fraud_usecase, read_table, runtime_home
from mlblueprints import relocate
from mlblueprints.lakehouse import iceberg, local, naming
from mlblueprints.lineage import RunInfo

HEADER = "transaction_id,event_time,card_id,customer_id,merchant_id,amount,currency,channel,merchant_category,country,is_fraud"
TABLES = ("transactions_bronze", "transactions_silver", "transactions_quarantine", "transaction_features")


def _land(home: Path, day: date, ids: range) -> None:
    d = home / "landing" / "transactions" / day.isoformat()
    d.mkdir(parents=True, exist_ok=True)
    rows = [f"tx_{i},{day}T10:00:00Z,card_{i % 3},c1,m1,1{i}.00,USD,pos,grocery,US,0" for i in ids]
    (d / "part-000.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")


def _run(home: Path, day: date) -> None:
    uc = fraud_usecase()
    with runtime_home(home):
        run = RunInfo.for_usecase(uc, run_id=f"run-{day}")
        ing = local.ingest_bronze(uc, "transactions", [day], run)
        sil = local.build_silver(uc, "transactions", [day], run)
        local.build_gold(uc, "transaction_features", {"transactions": sil["touched_event_dates"]}, run)
        assert local.reconcile(uc, [sil], [ing])["ok"]


def _state(home: Path) -> dict[str, list[str]]:
    uc = fraud_usecase()
    with runtime_home(home):
        out = {}
        for name in TABLES:
            t = iceberg.load(iceberg.catalog(), naming.identifier(uc, name))
            assert t is not None
            assert all(Path(f).is_relative_to(home) for f in iceberg.data_files(t)), name
            out[name] = sorted(read_table(uc, name).get("transaction_id", []).tolist())
        return out


def _files(home: Path) -> dict[str, int]:
    return {str(p.relative_to(home)): p.stat().st_size for p in (home / "warehouse").rglob("*") if p.is_file()}


def test_a_copied_home_is_independent_and_a_moved_one_keeps_working(tmp_path):
    a = tmp_path / "a"
    _land(a, date(2024, 3, 1), range(3))
    _run(a, date(2024, 3, 1))
    before = _state(a)
    files_a = _files(a)

    b = tmp_path / "b"
    shutil.copytree(a, b)
    _land(b, date(2024, 3, 2), range(10, 14))
    _run(b, date(2024, 3, 2))
    assert _state(b)["transactions_silver"] == sorted(
        [*before["transactions_silver"], *(f"tx_{i}" for i in range(10, 14))]
    )
    assert _files(a) == files_a  # the copy wrote nothing into the original

    # the original's orphan cleanup (here without the one-hour grace) leaves the copy whole
    uc = fraud_usecase()
    with runtime_home(a):
        for name in TABLES:
            iceberg.remove_orphan_files(iceberg.load(iceberg.catalog(), naming.identifier(uc, name)), 0)
    assert _state(a) == before
    copied = _state(b)

    c = tmp_path / "c"
    shutil.move(b, c)
    _land(c, date(2024, 3, 3), range(20, 22))
    _run(c, date(2024, 3, 3))
    assert _state(c)["transactions_silver"] == sorted([*copied["transactions_silver"], "tx_20", "tx_21"])
    assert not b.exists()  # nothing wrote into the old place


def test_tables_of_an_old_absolute_home_refuse_to_load_elsewhere(tmp_path):
    """Tables written with absolute paths (before relative ones) are refused in a copy instead of
    being read and written where the original lives."""
    old = tmp_path / "old"
    wh = old / "warehouse"
    wh.mkdir(parents=True)
    cat = SqlCatalog("mlblueprints", uri=f"sqlite:///{wh / 'catalog.db'}", warehouse=wh.as_uri())
    cat.create_namespace("fraud_detection")
    cat.create_table("fraud_detection.t", schema=pa.schema([("a", pa.int64())]))
    copy = tmp_path / "copy"
    shutil.copytree(old, copy)
    with runtime_home(copy), pytest.raises(iceberg.MovedHomeError, match="outside this runtime directory"):
        iceberg.load(iceberg.catalog(), "fraud_detection.t")
    with runtime_home(old):
        assert iceberg.load(iceberg.catalog(), "fraud_detection.t") is not None


def test_mlflow_paths_follow_a_moved_home(tmp_path):
    a = tmp_path / "a"
    (a / "mlflow").mkdir(parents=True)
    relocate.check_home(a)
    con = sqlite3.connect(a / "mlflow" / "mlflow.db")
    con.execute("CREATE TABLE experiments (experiment_id INTEGER, artifact_location VARCHAR(256))")
    con.execute("CREATE TABLE runs (run_uuid VARCHAR(32), artifact_uri VARCHAR(200), n INTEGER)")
    con.execute("INSERT INTO experiments VALUES (1, ?)", ((a / "mlflow" / "artifacts" / "fraud").as_uri(),))
    con.execute("INSERT INTO runs VALUES ('r1', ?, 1)", ((a / "mlflow" / "artifacts" / "fraud" / "r1").as_uri(),))
    con.execute("INSERT INTO runs VALUES ('r2', ?, 2)", (str(tmp_path / "ab" / "elsewhere"),))
    con.commit()
    con.close()
    b = tmp_path / "b"
    shutil.move(a, b)
    assert relocate.check_home(b) == a
    con = sqlite3.connect(b / "mlflow" / "mlflow.db")
    assert con.execute("SELECT artifact_location FROM experiments").fetchone()[0] == (
        (b / "mlflow" / "artifacts" / "fraud").as_uri()
    )
    assert [r[0] for r in con.execute("SELECT artifact_uri FROM runs ORDER BY n")] == [
        (b / "mlflow" / "artifacts" / "fraud" / "r1").as_uri(),
        str(tmp_path / "ab" / "elsewhere"),  # a path outside the home is left alone
    ]
    assert (b / relocate.MARKER).read_text().strip() == str(b.resolve())
