"""A materialization killed (SIGKILL) at any point, then rerun, leaves both stores consistent.

The materialization runs in a real subprocess. The test harness pauses it at one of three
moments (by wrapping a library function in the subprocess so that it announces the moment on
stdout and sleeps), kills it there with SIGKILL, checks what the kill left, and reruns:

* ``before_offline_commit``: the batch's Parquet files are written, no Iceberg commit yet;
* ``before_online``: the offline commit is done, the online transaction has not started;
* ``inside_online``: the SQLite transaction is open with 40,000 of 120,000 upserts applied.

Every rerun must end with the same offline rows and online rows as a run never interrupted.
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, read_table, runtime_home
from mlblueprints.config import load_usecase
from mlblueprints.datagen import DefectConfig, generate_fraud
from mlblueprints.features import core, online
from mlblueprints.features import local as fl
from mlblueprints.lakehouse import iceberg, local, naming
from mlblueprints.lineage import RunInfo

pytestmark = pytest.mark.slow
DAY = date(2024, 3, 1)
VIEW = "txn_amounts"  # keyed by transaction: one online upsert per Gold row, a long transaction

STEP = r"""
import sys, time
from datetime import date
from mlblueprints.config import load_usecase
from mlblueprints.features import local as fl, online
from mlblueprints.lakehouse import iceberg
from mlblueprints.lineage import RunInfo

uc = load_usecase(sys.argv[1])
moment = sys.argv[2]

def pause(name):
    print(name, flush=True)
    time.sleep(600)

if moment == "before_offline_commit":
    real_commit = iceberg.commit_files
    def commit_files(*a, **k):
        pause(moment)
        return real_commit(*a, **k)
    iceberg.commit_files = commit_files
elif moment == "before_online":
    real_apply = online.OnlineStore.apply_batch
    def apply_batch(self, *a, **k):
        pause(moment)
        return real_apply(self, *a, **k)
    online.OnlineStore.apply_batch = apply_batch
elif moment == "inside_online":
    real_fetch = fl._fetch
    def _fetch(*a, **k):
        for i, row in enumerate(real_fetch(*a, **k)):
            if i == 40_000:  # two chunks of 20,000 upserts applied, transaction open
                pause(moment)
            yield row
    fl._fetch = _fetch
day = date.fromisoformat(sys.argv[3])
fl.materialize(uc, sys.argv[4], day, day, RunInfo.for_usecase(uc, run_id="killed"))
print("finished", flush=True)
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A Gold table of one day (120k transactions) and a use case with a per-transaction view."""
    base = tmp_path_factory.mktemp("features-kill")
    uc_dir = base / "usecases"
    shutil.copytree(ROOT / "dags" / "usecases", uc_dir)
    doc = yaml.safe_load((uc_dir / "fraud_detection.yaml").read_text())
    doc["features"][VIEW] = {
        "source": "transaction_features",
        "entity": ["transaction_id"],
        "features": ["amount", "card_txn_count_1h", "merchant_txn_count_24h"],
        "ttl": "30d",
    }
    (uc_dir / "fraud_detection.yaml").write_text(yaml.safe_dump(doc))
    uc = load_usecase(uc_dir / "fraud_detection.yaml")
    gold_home = base / "gold"
    generate_fraud(gold_home / "landing", start=DAY, days=1, rows=120_000, seed=5, defects=DefectConfig.none())
    with runtime_home(gold_home):
        run = RunInfo.for_usecase(uc, run_id="gold")
        touched = {}
        for ds in uc.datasets:
            local.ingest_bronze(uc, ds, [DAY], run)
            touched[ds] = local.build_silver(uc, ds, [DAY], run)["touched_event_dates"]
        local.build_gold(uc, "transaction_features", touched, run)
    # homes are copied below: tables record paths relative to their home, so a copy is independent
    reference = base / "reference"
    shutil.copytree(gold_home, reference)
    with runtime_home(reference):
        for view in (VIEW, "card_activity"):
            fl.materialize(uc, view, DAY, DAY, RunInfo.for_usecase(uc, run_id="reference"))
        ref = {v: _state(uc, v) for v in (VIEW, "card_activity")}
    return {
        "uc": uc,
        "yaml": uc_dir / "fraud_detection.yaml",
        "gold_home": gold_home,
        "gold_files": _files(gold_home),
        "reference": ref,
    }


def _files(home: Path) -> dict[str, int]:
    """Every file of a home's warehouse (path -> size): what a copy must never change."""
    return {str(p.relative_to(home)): p.stat().st_size for p in (home / "warehouse").rglob("*") if p.is_file()}


def _state(uc, view: str) -> tuple[list, list]:
    off = read_table(uc, core.offline_table(uc, view)).astype(str)
    con = sqlite3.connect(online.store_path(uc))
    cols = [r[1] for r in con.execute(f"PRAGMA table_info({core.online_table(uc, view)})")]
    keep = ", ".join(c for c in cols if c not in ("_batch_id", "_offline_snapshot_id"))
    on = sorted(con.execute(f"SELECT {keep} FROM {core.online_table(uc, view)}").fetchall())
    return sorted(map(tuple, off.values.tolist())), on


def _kill_at(world: dict, home: Path, moment: str, view: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", STEP, str(world["yaml"]), moment, DAY.isoformat(), view],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**__import__("os").environ, "MLB_HOME": str(home), "PYTHONPATH": str(ROOT / "include")},
    )
    try:
        line = proc.stdout.readline().strip()
        assert line == moment, f"subprocess did not reach {moment}: {line!r} {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("moment", ["before_offline_commit", "before_online", "inside_online"])
def test_killed_materialization_then_rerun_matches_an_uninterrupted_one(world, tmp_path, moment):
    uc = world["uc"]
    home = tmp_path / "home"
    shutil.copytree(world["gold_home"], home)
    with runtime_home(home):
        # a first, complete materialization of another view: the store file exists and is shared
        fl.materialize(uc, "card_activity", DAY, DAY, RunInfo.for_usecase(uc, run_id="other"))
        other_before = _state(uc, "card_activity")
        _kill_at(world, home, moment, VIEW)

        table = iceberg.load(iceberg.catalog(), naming.identifier(uc, core.offline_table(uc, VIEW)))
        store = online.OnlineStore(online.store_path(uc))
        online_rows = (
            store.con.execute(f"SELECT count(*) FROM {core.online_table(uc, VIEW)}").fetchone()[0]
            if store.stored_types(core.online_table(uc, VIEW))
            else 0
        )
        if moment == "before_offline_commit":
            # files written but invisible: the table has no snapshot with data
            assert table is not None and iceberg.snapshot_id(table) is None
            assert list(iceberg.data_dir(table).glob("write-*/**/*.parquet"))
            assert iceberg.data_dir(table).is_relative_to(home)
        else:
            assert len(read_table(uc, core.offline_table(uc, VIEW))) == 120_000  # the offline commit landed
        # the online store never holds part of a batch: the killed transaction rolled back
        assert online_rows == 0
        assert _state(uc, "card_activity") == other_before  # the other view is untouched

        out = fl.materialize(uc, VIEW, DAY, DAY, RunInfo.for_usecase(uc, run_id="rerun"))
        assert out["offline_rows"] == 120_000 and out["online_entities"] == 120_000
        assert _state(uc, VIEW) == world["reference"][VIEW]
        assert _state(uc, "card_activity") == world["reference"]["card_activity"]
        # the online store says which offline snapshot it reflects: the current one
        stats = online.OnlineStore(online.store_path(uc)).stats(core.online_table(uc, VIEW))
        table.refresh()
        assert stats["offline_snapshot_id"] == iceberg.snapshot_id(table)
        # the copy read and wrote only its own files; the home it was copied from is untouched
        for name in (core.offline_table(uc, VIEW), "transaction_features"):
            t = iceberg.load(iceberg.catalog(), naming.identifier(uc, name))
            assert all(Path(f).is_relative_to(home) for f in iceberg.data_files(t))
    assert _files(world["gold_home"]) == world["gold_files"]
