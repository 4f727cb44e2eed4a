"""Resumable training: ``train.py`` under the script-mode contract, interrupted and resumed.

Every run is a real subprocess started by :func:`run_training_job`, on a synthetic binary
classification data set (20,000 rows x 12 features, 4 Parquet files, rows shuffled). The
uninterrupted run (no checkpoint at all: interval 300 s) is the reference: every interrupted and
resumed run must end with a model whose predictions on the training data are bitwise equal to
it (``np.array_equal``), with row subsampling and column subsampling (per tree and per node) on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xgboost as xgb

from mlblueprints.training.local import TrainingFailed, TrainingInterrupted, run_training_job
from mlblueprints.training.models import load_booster

ROWS, N_FEATURES, ROUNDS = 20_000, 12, 80
FEATURES = [f"x{j:02d}" for j in range(N_FEATURES)]
HPS: dict[str, Any] = {
    "features": FEATURES,
    "label": "is_positive",
    "num_boost_round": ROUNDS,
    "seed": 7,
    "max_depth": 5,  # not xgboost's default (6): every tree must obey it (see test_reference_run)
    "eta": 0.2,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "colsample_bynode": 0.9,
    "min_child_weight": 1,
    "checkpoint_interval_seconds": 300,
}
TIMEOUT = 120


def write_dataset(directory: Path, rows: int = ROWS, seed: int = 11, files: int = 4, order_seed: int = 0) -> None:
    """A learnable binary target from 12 features (some nulls), written as ``files`` shuffled parts."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, N_FEATURES))
    z = x[:, 0] + 0.8 * x[:, 1] * x[:, 2] + np.sin(2 * x[:, 3]) - 0.6 * np.abs(x[:, 4]) + rng.normal(size=rows)
    y = (z > np.quantile(z, 0.75)).astype(np.int64)
    x[rng.random(size=x.shape) < 0.01] = np.nan
    cols: dict[str, Any] = {"record_id": np.arange(rows)}
    cols.update({f: pa.array(x[:, j], mask=np.isnan(x[:, j])) for j, f in enumerate(FEATURES)})
    cols["is_positive"] = y
    table = pa.table(cols)
    perm = np.random.default_rng(order_seed).permutation(rows)
    directory.mkdir(parents=True, exist_ok=True)
    for k in range(files):
        pq.write_table(table.take(pa.array(perm[k::files])), directory / f"part-{k:03d}.parquet")


def predictions(result: dict[str, Any], data_dir: Path) -> np.ndarray:
    table = pq.read_table(data_dir, columns=FEATURES).to_pandas()
    booster = load_booster(Path(result["model_dir"]) / "xgboost-model")
    return booster.predict(xgb.DMatrix(table[FEATURES].to_numpy(np.float32), feature_names=FEATURES))


def ckpt_dirs(checkpoint_dir: Path) -> list[Path]:
    return sorted(checkpoint_dir.glob("ckpt-*"))


def assert_valid(ckpt: Path) -> dict[str, Any]:
    """A ``ckpt-*`` directory has a manifest that parses and a model matching its sha256."""
    manifest = json.loads((ckpt / "manifest.json").read_text())
    model = (ckpt / manifest["model_file"]).read_bytes()
    assert hashlib.sha256(model).hexdigest() == manifest["model_sha256"], ckpt
    assert ckpt.name == f"ckpt-{manifest['rounds']:08d}"
    return manifest


class Watcher:
    """Polls a checkpoint directory while a job runs; records any ``ckpt-*`` seen without a valid manifest."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.seen: set[str] = set()
        self.violations: list[str] = []
        self.max_visible = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            visible = ckpt_dirs(self.dir) if self.dir.is_dir() else []
            self.max_visible = max(self.max_visible, len(visible))
            for ckpt in visible:
                try:
                    assert_valid(ckpt)
                    self.seen.add(ckpt.name)
                except FileNotFoundError:
                    if ckpt.exists():  # still there, yet without its manifest or model
                        self.violations.append(f"{ckpt.name}: incomplete")
                except (ValueError, KeyError, AssertionError) as exc:
                    if ckpt.exists():
                        self.violations.append(f"{ckpt.name}: {exc!r}")
            self._stop.wait(0.002)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("train-data") / "train"
    write_dataset(d)
    return d


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Any]:
    """The uninterrupted run (no checkpoint written: the interval is longer than the run)."""
    job = tmp_path_factory.mktemp("reference") / "job"
    result = run_training_job(job, data_dir, HPS, timeout=TIMEOUT)
    result["predictions"] = predictions(result, data_dir)
    return result


def test_reference_run(reference: dict[str, Any], data_dir: Path) -> None:
    meta, metrics = reference["meta"], reference["metrics"]
    # the serving contract: the model dir holds the booster alone, under the name the SageMaker
    # XGBoost image serves (it loads every file there as a booster); the rest is output data
    assert sorted(p.name for p in Path(reference["model_dir"]).iterdir()) == ["xgboost-model"]
    assert sorted(p.name for p in Path(reference["output_dir"]).iterdir()) == [
        "model_meta.json",
        "training_metrics.json",
    ]
    every_file = [xgb.Booster(model_file=str(p)) for p in Path(reference["model_dir"]).iterdir()]
    assert [b.num_boosted_rounds() for b in every_file] == [ROUNDS]
    assert reference["exit_code"] == 0 and reference["interrupted"] is None
    assert meta["rounds"] == ROUNDS and meta["rounds_trained_in_this_process"] == ROUNDS
    assert meta["resumed_from_round"] is None
    assert meta["features"] == FEATURES and meta["label"] == "is_positive" and meta["seed"] == 7
    assert meta["params"]["seed_per_iteration"] == 1 and meta["params"]["nthread"] == 2
    assert meta["hyperparameters_source"] == "SM_HPS"
    assert metrics["checkpoint_count"] == 0 and reference["checkpoints"] == []
    assert 0 < metrics["train_logloss"] < 0.45  # the target is learnable (prior logloss 0.56)
    # the hyperparameters reach every round (xgboost 1.7 would drop them on the per-round updater switch
    # if they were not passed again): no tree deeper than max_depth 5, i.e. more than 63 nodes
    model = json.loads(load_booster(Path(reference["model_dir"]) / "xgboost-model").save_raw("json"))
    nodes = [int(t["tree_param"]["num_nodes"]) for t in model["learner"]["gradient_booster"]["model"]["trees"]]
    assert len(nodes) == ROUNDS and max(nodes) <= 2 ** (5 + 1) - 1
    y = pq.read_table(data_dir, columns=["is_positive"]).column(0).to_numpy()
    p = reference["predictions"]
    assert p[y == 1].mean() > 0.5 > p[y == 0].mean()


@pytest.mark.slow
def test_sigkill_midway_then_rerun_resumes_and_matches(
    tmp_path: Path, data_dir: Path, reference: dict[str, Any]
) -> None:
    job = tmp_path / "job"
    hps = {**HPS, "checkpoint_interval_seconds": 0}  # a checkpoint after every round
    with Watcher(job / "checkpoints") as watch:
        with pytest.raises(TrainingInterrupted) as info:
            run_training_job(job, data_dir, hps, interrupt={"signal": "SIGKILL", "after_rounds": 15}, timeout=TIMEOUT)
        killed = info.value.result
        assert killed["exit_code"] == -9 and killed["interrupted"] == "SIGKILL"
        assert 15 <= killed["last_round"] < ROUNDS, "the kill came after training had finished"

        # what the kill left: at most the newest two checkpoints, each complete
        left = ckpt_dirs(job / "checkpoints")
        assert 1 <= len(left) <= 2
        rounds_left = [assert_valid(c)["rounds"] for c in left]

        result = run_training_job(job, data_dir, hps, timeout=TIMEOUT)
    meta = result["meta"]
    assert meta["resumed_from_round"] == max(rounds_left) > 0
    assert meta["rounds_trained_in_this_process"] == ROUNDS - meta["resumed_from_round"] < ROUNDS
    assert np.array_equal(predictions(result, data_dir), reference["predictions"])
    assert meta["data_fingerprint"] == reference["meta"]["data_fingerprint"]

    # atomic: no ckpt-* directory without a valid manifest was ever visible; the newest 2 are kept
    assert not watch.violations, watch.violations[:5]
    assert len(watch.seen) >= 10
    assert watch.max_visible <= 3  # two kept plus the one being renamed in before the prune
    final = ckpt_dirs(job / "checkpoints")
    assert [c.name for c in final] == [f"ckpt-{ROUNDS - 2:08d}", f"ckpt-{ROUNDS - 1:08d}"]
    assert not [p for p in (job / "checkpoints").iterdir() if p.name.startswith((".tmp-", ".trash-"))]


@pytest.mark.slow
def test_sigterm_writes_checkpoint_at_signal_and_rerun_resumes_there(
    tmp_path: Path, data_dir: Path, reference: dict[str, Any]
) -> None:
    job = tmp_path / "job"
    # interval 300 s: the only checkpoint can be the one written because of the SIGTERM
    with pytest.raises(TrainingInterrupted) as info:
        run_training_job(job, data_dir, HPS, interrupt={"signal": "SIGTERM", "after_rounds": 15}, timeout=TIMEOUT)
    stopped = info.value.result
    assert stopped["exit_code"] == 143 and stopped["interrupted"] == "SIGTERM"
    at = stopped["metrics"]["rounds"]
    assert stopped["metrics"]["interrupted"] is True and stopped["metrics"]["checkpoint_count"] == 1
    assert 15 <= at < ROUNDS
    assert stopped["checkpoints"] == [f"ckpt-{at:08d}"]
    assert assert_valid(job / "checkpoints" / f"ckpt-{at:08d}")["reason"] == "sigterm"
    assert stopped["meta"] is None and not (job / "model" / "xgboost-model").exists()

    result = run_training_job(job, data_dir, HPS, timeout=TIMEOUT)
    assert result["meta"]["resumed_from_round"] == at
    assert result["meta"]["rounds_trained_in_this_process"] == ROUNDS - at
    assert np.array_equal(predictions(result, data_dir), reference["predictions"])


@pytest.mark.slow
def test_corrupt_partial_and_foreign_checkpoints_are_skipped(
    tmp_path: Path, data_dir: Path, reference: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    job, ckpt = tmp_path / "job", tmp_path / "stable-checkpoints"
    hps = {**HPS, "checkpoint_interval_seconds": 0}
    with pytest.raises(TrainingInterrupted):
        run_training_job(
            job,
            data_dir,
            hps,
            checkpoint_dir=ckpt,
            interrupt={"signal": "SIGTERM", "after_rounds": 10},
            timeout=TIMEOUT,
        )
    older, newest = ckpt_dirs(ckpt)
    good_round = assert_valid(older)["rounds"]
    assert assert_valid(newest)["rounds"] == good_round + 1

    # corrupt the newest: flip bytes in the middle of its model (manifest intact)
    model = newest / "model.ubj"
    blob = bytearray(model.read_bytes())
    blob[len(blob) // 2 : len(blob) // 2 + 8] = bytes(b ^ 0xFF for b in blob[len(blob) // 2 : len(blob) // 2 + 8])
    model.write_bytes(bytes(blob))
    # a partial one (as an interrupted S3 sync leaves it): model, no manifest
    partial = ckpt / "ckpt-00000050"
    partial.mkdir()
    shutil.copy(older / "model.ubj", partial / "model.ubj")
    # a write in progress when a process died: temp dir without manifest
    tmp = ckpt / ".tmp-ckpt-00000052-999-1"
    tmp.mkdir()
    shutil.copy(older / "model.ubj", tmp / "model.ubj")
    # foreign: a complete, valid checkpoint written for other parameters (a real run, max_depth 3)
    other = tmp_path / "other"
    run_training_job(
        other / "job", data_dir, {**hps, "max_depth": 3, "num_boost_round": 61}, checkpoint_dir=other / "ckpt"
    )
    shutil.copytree(other / "ckpt" / "ckpt-00000060", ckpt / "ckpt-00000060")
    # foreign: same model, but its manifest says it was trained on other data
    shutil.copytree(older, ckpt / "ckpt-00000055")
    manifest = json.loads((ckpt / "ckpt-00000055" / "manifest.json").read_text())
    manifest.update(rounds=55, data_fingerprint="0" * 64)
    (ckpt / "ckpt-00000055" / "manifest.json").write_text(json.dumps(manifest))
    # truncated: a short model file
    shutil.copytree(older, ckpt / "ckpt-00000045")
    manifest = json.loads((ckpt / "ckpt-00000045" / "manifest.json").read_text())
    (ckpt / "ckpt-00000045" / "manifest.json").write_text(json.dumps({**manifest, "rounds": 45}))
    (ckpt / "ckpt-00000045" / "model.ubj").write_bytes((older / "model.ubj").read_bytes()[:100])

    caplog.set_level(logging.INFO, logger="mlblueprints.training.local")
    result = run_training_job(job, data_dir, hps, checkpoint_dir=ckpt, timeout=TIMEOUT)
    assert result["meta"]["resumed_from_round"] == good_round
    assert np.array_equal(predictions(result, data_dir), reference["predictions"])
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "skipping ckpt-00000060: foreign: written for other parameters" in logged
    assert "skipping ckpt-00000055: foreign: written for other training data" in logged
    assert "skipping ckpt-00000050: partial: no manifest" in logged
    assert "skipping ckpt-00000045: corrupt: model file has 100 bytes" in logged
    assert f"skipping {newest.name}: corrupt: model sha256 does not match the manifest" in logged
    assert "removing .tmp-ckpt-00000052-999-1" in logged
    # once this run has checkpoints of its own, the others are gone
    assert [c.name for c in ckpt_dirs(ckpt)] == [f"ckpt-{ROUNDS - 2:08d}", f"ckpt-{ROUNDS - 1:08d}"]
    assert not tmp.exists()


@pytest.mark.slow
def test_hyperparameters_json_and_file_order(tmp_path: Path, data_dir: Path, reference: dict[str, Any]) -> None:
    """Without SM_HPS the script reads hyperparameters.json (values as the SageMaker SDK writes
    them, JSON-encoded strings); the same rows in other files and another order give the same model."""
    config = tmp_path / "config"
    config.mkdir()
    as_sdk = {k: json.dumps(",".join(v) if isinstance(v, list) else v) for k, v in HPS.items()}
    as_sdk.update(sagemaker_program=json.dumps("train.py"), sagemaker_submit_directory=json.dumps("s3://b/k.tar.gz"))
    (config / "hyperparameters.json").write_text(json.dumps(as_sdk))
    shuffled = tmp_path / "reordered"
    write_dataset(shuffled / "a" / "b", files=3, order_seed=99)  # same rows, other files, nested dir
    result = run_training_job(
        tmp_path / "job", shuffled, {}, env={"SM_HPS": None, "SM_INPUT_CONFIG_DIR": str(config)}, timeout=TIMEOUT
    )
    meta = result["meta"]
    assert meta["hyperparameters_source"] == str(config / "hyperparameters.json")
    assert meta["params_fingerprint"] == reference["meta"]["params_fingerprint"]
    assert meta["data_fingerprint"] == reference["meta"]["data_fingerprint"]
    assert np.array_equal(predictions(result, data_dir), reference["predictions"])


def test_bad_hyperparameters_fail_with_a_readable_reason(tmp_path: Path, data_dir: Path) -> None:
    hps = {k: v for k, v in HPS.items() if k != "label"}
    with pytest.raises(TrainingFailed) as info:
        run_training_job(tmp_path / "job", data_dir, {**hps, "label": "no_such_column"}, timeout=TIMEOUT)
    result = info.value.result
    assert result["exit_code"] == 2 and result["interrupted"] is None
    assert "missing column(s) ['no_such_column']" in str(info.value)
    assert "no_such_column" in (tmp_path / "job" / "output" / "failure").read_text()
