"""A scoring run killed (SIGKILL) at any point leaves the predictions as the previous run left
them; the rerun gives exactly what an uninterrupted run gives, with no duplicate.

The steps of one run (plan -> score -> gate -> commit, the DAG's step functions) run in a real
subprocess over an interval that already holds a previous run's predictions. The harness pauses
the subprocess at one of these moments (it wraps a library function so that the subprocess
announces the moment on stdout and sleeps), kills it there with SIGKILL, checks what the kill
left, and runs the steps again:

* ``inside_score``: three record batches predicted and written as staged Parquet;
* ``before_commit``: every prediction staged and gated, the Iceberg commit not started;
* ``inside_commit``: the commit's manifests written, the catalog not yet pointed at them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, runtime_home, table_fingerprint
from mlblueprints.config import load_usecase

pytestmark = pytest.mark.slow
MOMENTS = ("inside_score", "before_commit", "inside_commit")

STEPS = r"""
import os, sys, time
from mlblueprints.config import load_usecase
from mlblueprints.core.context import StepContext
from mlblueprints.lineage import RunInfo
from mlblueprints.scoring import local, steps

uc = load_usecase(sys.argv[1])
moment, run_id, days = sys.argv[2], sys.argv[3], sys.argv[4:]

def pause():
    os.write(1, (moment + "\n").encode())  # the file descriptor: a library may have replaced sys.stdout
    time.sleep(600)

if moment == "inside_score":
    real_write, written = local._Writers.write, []
    def write(self, table):
        real_write(self, table)
        written.append(table.num_rows)
        if len(written) == 3:
            pause()
    local._Writers.write = write
elif moment == "before_commit":
    from mlblueprints.lakehouse import iceberg
    real_commit = iceberg.commit_files
    def commit_files(*a, **k):
        pause()
        return real_commit(*a, **k)
    iceberg.commit_files = commit_files
elif moment == "inside_commit":
    from pyiceberg.catalog.sql import SqlCatalog
    real_commit_table = SqlCatalog.commit_table
    def commit_table(self, table, requirements, updates):
        if any(type(u).__name__ == "AddSnapshotUpdate" for u in updates):
            pause()
        return real_commit_table(self, table, requirements, updates)
    SqlCatalog.commit_table = commit_table
ctx = StepContext(uc=uc, run=RunInfo.for_usecase(uc, run_id=run_id), params={"event_dates": days})
planned = steps.plan(ctx)
scored = steps.score(ctx, planned)
gated = steps.gate(ctx, planned, scored)
steps.commit(ctx, planned, scored, gated)
print("finished", flush=True)
"""


@pytest.fixture(scope="module")
def world(scoring_base, tmp_path_factory) -> dict:
    """A home holding a previous run's predictions of the interval, and the same home after an
    uninterrupted second run (the reference every killed-then-rerun run must equal)."""
    base = tmp_path_factory.mktemp("scoring-kill")
    uc_dir = base / "usecases"
    shutil.copytree(scoring_base["uc_dir"], uc_dir)
    path = uc_dir / "fraud_detection.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["scoring"]["batch_size"] = 1000  # many record batches: the kill lands between two of them
    path.write_text(yaml.safe_dump(doc))
    lo, hi = scoring_base["range"]
    days = [lo.isoformat(), hi.isoformat()]
    previous = base / "previous"
    shutil.copytree(scoring_base["home"], previous)
    w = {"uc": load_usecase(path), "yaml": path, "days": days, "previous": previous}
    assert _steps(w, previous, "none", "previous").returncode == 0
    reference = base / "reference"
    shutil.copytree(previous, reference)
    assert _steps(w, reference, "none", "rerun").returncode == 0
    with runtime_home(previous):
        w["previous_rows"] = table_fingerprint(w["uc"], "predictions")
    with runtime_home(reference):
        w["reference_rows"] = table_fingerprint(w["uc"], "predictions")
    assert len(w["reference_rows"]) > 10_000 and w["previous_rows"] != w["reference_rows"]  # the run ids differ
    return w


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "MLB_HOME": str(home), "PYTHONPATH": str(ROOT / "include")}


def _steps(world: dict, home: Path, moment: str, run_id: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", STEPS, str(world["yaml"]), moment, run_id, *world["days"]],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=900,
    )


def _kill_at(world: dict, home: Path, moment: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", STEPS, str(world["yaml"]), moment, "killed", *world["days"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(home),
    )
    try:
        line = proc.stdout.readline().strip()
        assert line == moment, f"the subprocess did not reach {moment}: {line!r} {proc.stderr.read()[-3000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL


def _staged(home: Path) -> list[Path]:
    return list((home / "warehouse").glob("fraud_detection/predictions/data/write-*/**/*.parquet"))


@pytest.mark.parametrize("moment", MOMENTS)
def test_a_killed_scoring_run_leaves_the_previous_predictions_and_the_rerun_converges(world, tmp_path, moment):
    from mlblueprints.lakehouse import iceberg, naming

    uc = world["uc"]
    home = tmp_path / "home"
    shutil.copytree(world["previous"], home)
    staged_before = set(_staged(home))
    _kill_at(world, home, moment)
    with runtime_home(home):
        # readers see the previous run's predictions, whole: nothing of the killed run
        assert table_fingerprint(uc, "predictions") == world["previous_rows"]
        table = iceberg.load(iceberg.catalog(), naming.identifier(uc, "predictions"))
        live = set(iceberg.data_files(table))
    left = [p for p in set(_staged(home)) - staged_before if str(p) not in live]
    assert left, "the killed run's staged files are there, referenced by no snapshot"
    rerun = _steps(world, home, "none", "rerun")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    with runtime_home(home):
        assert table_fingerprint(uc, "predictions") == world["reference_rows"]  # no duplicate, nothing lost
