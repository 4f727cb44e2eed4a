"""The three task types and a team's own training script, end to end.

Two levels:

* ``run_training_job`` (the built-in script as a real subprocess) for a multiclass and a
  regression objective other than the default: SIGKILL part-way, rerun, and the resumed model
  predicts bitwise what the uninterrupted run predicts (``np.array_equal``);
* the shipped regression example (``claim_cost``) through its DAGs: claims generated, the
  lakehouse backfilled, the feature views materialized, then ``claim_cost__training`` three
  times - as shipped (regression), as a multiclass task on ``severity`` and with the example
  scikit-learn script - each with try 1 killed (SIGKILL) part-way. Each run resumes, gates with
  the task's metrics and registers a model whose predictions on the holdout are bitwise those of
  an uninterrupted run of the same script on the same split.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from helpers import ROOT, runtime_home
from mlblueprints.training.local import TrainingInterrupted, run_training_job

pytestmark = pytest.mark.slow

ROWS, FEATURES, ROUNDS = 6_000, [f"x{j}" for j in range(6)], 60
BASE = {
    "features": FEATURES,
    "label": "y",
    "num_boost_round": ROUNDS,
    "seed": 3,
    "max_depth": 4,
    "eta": 0.2,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "checkpoint_interval_seconds": 0,
}


def _dataset(directory: Path, task: str) -> np.ndarray:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(ROWS, len(FEATURES)))
    z = x[:, 0] + 0.7 * x[:, 1] * x[:, 2] - 0.5 * np.abs(x[:, 3]) + 0.5 * rng.normal(size=ROWS)
    if task == "multiclass":
        y = np.digitize(z, np.quantile(z, [0.5, 0.8])).astype(np.int64)  # classes 0, 1, 2
    else:  # a cost: zero for most, skewed when there is one (what reg:tweedie is for)
        y = np.where(rng.random(ROWS) < 0.6, 0.0, np.exp(1 + 0.6 * z + 0.3 * rng.normal(size=ROWS)))
    cols: dict[str, Any] = {f: x[:, j] for j, f in enumerate(FEATURES)}
    cols["y"] = y
    directory.mkdir(parents=True)
    for k in range(3):
        pq.write_table(pa.table({c: v[k::3] for c, v in cols.items()}), directory / f"part-{k}.parquet")
    return pq.read_table(directory, columns=["y"]).column(0).to_numpy()  # in the order the files are read


def _scores(model_dir: Path, task: str, data: Path) -> np.ndarray:
    from mlblueprints.training.models import load_model

    x = pq.read_table(data, columns=FEATURES).to_pandas().to_numpy(np.float64)
    return load_model(model_dir, "xgboost", task, FEATURES).scores(x)


@pytest.mark.parametrize(
    ("task", "extra"),
    [
        ("multiclass", {"task": "multiclass", "num_class": 3}),
        ("regression", {"task": "regression", "objective": "reg:tweedie", "tweedie_variance_power": 1.4}),
    ],
)
def test_a_killed_job_of_each_task_resumes_to_the_uninterrupted_model(tmp_path, task, extra):
    data = tmp_path / "train"
    y = _dataset(data, task)
    hps = {**BASE, **extra}
    reference = run_training_job(tmp_path / "reference", data, {**hps, "checkpoint_interval_seconds": 300}, timeout=120)
    with pytest.raises(TrainingInterrupted) as info:
        run_training_job(tmp_path / "job", data, hps, interrupt={"signal": "SIGKILL", "after_rounds": 20}, timeout=120)
    assert info.value.result["exit_code"] == -9 and 20 <= info.value.result["last_round"] < ROUNDS
    resumed = run_training_job(tmp_path / "job", data, hps, timeout=120)
    meta = resumed["meta"]
    assert 0 < meta["resumed_from_round"] < ROUNDS and meta["rounds"] == ROUNDS
    assert meta["task"] == task and meta["objective"] == hps.get("objective", "multi:softprob")
    want = _scores(Path(reference["model_dir"]), task, data)
    got = _scores(Path(resumed["model_dir"]), task, data)
    assert np.array_equal(got, want)
    metric = "mlogloss" if task == "multiclass" else "rmse"  # the eval metric is fixed per objective family
    assert f"train_{metric}" in reference["metrics"], sorted(reference["metrics"])
    if task == "multiclass":  # one probability per class, and the model learned something
        assert got.shape == (ROWS, 3) and np.allclose(got.sum(axis=1), 1.0, atol=1e-5)
        assert (got.argmax(axis=1) == y).mean() > 0.6
    else:
        assert got.shape == (ROWS,) and (got > 0).all()  # tweedie predicts a positive mean
        assert np.corrcoef(got, y)[0, 1] > 0.5


def test_a_label_the_task_cannot_train_on_is_refused_with_its_values(tmp_path):
    data = tmp_path / "train"
    _dataset(data, "multiclass")  # classes 0..2, declared as 2 classes
    from mlblueprints.training.local import TrainingFailed

    with pytest.raises(TrainingFailed) as info:
        run_training_job(tmp_path / "job", data, {**BASE, "task": "multiclass", "num_class": 2}, timeout=120)
    assert "label 'y' must be a class index 0..1; found [2]" in str(info.value)


# ---------------------------------------------------------------------------------------------
# claim_cost through its DAGs

CLAIM_DAYS = 8


@pytest.fixture(scope="module")
def claims(tmp_path_factory, airflow_db):
    """claim_cost landed, backfilled through the lakehouse DAG and materialized (feature DAG)."""
    from mlblueprints import cli
    from mlblueprints.datagen.claims import generate_claims

    base = tmp_path_factory.mktemp("claims")
    uc_dir = base / "usecases"
    shutil.copytree(ROOT / "dags" / "usecases", uc_dir)
    path = uc_dir / "claim_cost.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["retry_delay_seconds"] = 0
    doc["training"].update(num_boost_round=80, checkpoint_interval_seconds=0)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    home = base / "home"
    old = os.environ.get("MLB_USECASES_DIR")
    os.environ["MLB_USECASES_DIR"] = str(uc_dir)
    try:
        with runtime_home(home):
            generate_claims(
                home / "landing", start=cli.CLAIMS_START, days=CLAIM_DAYS, policies=1500, claims_per_day=300
            )
            last = cli.CLAIMS_START.toordinal() + CLAIM_DAYS - 1
            first, last = cli.CLAIMS_START.isoformat(), type(cli.CLAIMS_START).fromordinal(last).isoformat()
            assert cli.main(["lakehouse", "claim_cost", "--from", first, "--to", last, "--stop-on-failure"]) == 0
            assert cli.main(["features", "run", "claim_cost"]) == 0
            yield {"home": home, "uc_dir": uc_dir, "doc": doc}
    finally:
        if old is None:
            os.environ.pop("MLB_USECASES_DIR", None)
        else:
            os.environ["MLB_USECASES_DIR"] = old


def _run(claims: dict[str, Any], training: dict[str, Any], labels: dict[str, Any] | None = None, conf: Any = None):
    """Rewrite the use case's training section (a ``None`` value removes a key) and run
    claim_cost__training; returns the use case, the DagRun and its task instances by step."""
    from mlblueprints.airflow import localrun
    from mlblueprints.config import load_usecase

    doc = yaml.safe_load(yaml.safe_dump(claims["doc"]))
    doc["training"].update(training)
    for k in [k for k, v in training.items() if v is None]:
        doc["training"].pop(k)
    if labels:
        doc["training_sets"]["claim_cost_training"]["labels"].update(labels)
    path = claims["uc_dir"] / "claim_cost.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    uc = load_usecase(path)
    dr = localrun.get_dag("claim_cost__training").test(run_conf=conf)
    tis = {ti.task_id.removesuffix(".finish"): ti for ti in dr.get_task_instances()}
    return uc, dr, tis


def _train(claims: dict[str, Any], training: dict[str, Any], labels: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`_run` with try 1 of ``train`` killed part-way, and an uninterrupted reference run
    of the same script on the same split."""
    from mlblueprints.registry import local as registry
    from mlblueprints.training.core import hyperparameters
    from mlblueprints.training.models import from_registry, load_model

    with runtime_home(claims["home"]):
        uc, dr, tis = _run(claims, training, labels, {"interrupt": {"signal": "SIGKILL", "after_rounds": 20}})
        res = {k: ti.xcom_pull(task_ids=ti.task_id) for k, ti in tis.items()}
        assert dr.state == "success", {k: (ti.state, res.get(k)) for k, ti in tis.items()}
        job = Path(res["train"]["job_dir"])
        ref = run_training_job(
            job.parent / f"{job.name}-reference",
            job / "train",
            hyperparameters(uc),
            script=uc.entry_point_path(),
            timeout=300,
        )
        reg = res["register"]
        holdout = pd.read_parquet(job / "holdout")
        x = holdout[uc.model_features()].to_numpy(np.float64)
        t = uc.training
        registered = from_registry(f"models:/{uc.model_name}/{reg['version']}", t.task, uc.model_features())
        lineage = registry.lineage(uc, version=reg["version"]) if reg["version"] else None
        text = (claims["home"] / "runs" / "claim_cost" / "training" / "latest.txt").read_text()
    return {
        "uc": uc,
        "dr": dr,
        "res": res,
        "tries": {k: ti.try_number for k, ti in tis.items()},
        "reference": load_model(Path(ref["model_dir"]), t.format, t.task, uc.model_features()).scores(x),
        "registered": registered.scores(x),
        "holdout": holdout,
        "lineage": lineage,
        "text": text,
    }


def test_regression_resumes_gates_on_rmse_and_registers(claims):
    run = _train(claims, {})
    res, lin = run["res"], run["lineage"]
    assert run["tries"]["train"] == 2
    meta = res["train"]["meta"]
    assert 0 < meta["resumed_from_round"] < 80 and meta["task"] == "regression"
    assert np.array_equal(run["registered"], run["reference"])
    ev = res["evaluate"]
    cand = ev["candidate"]
    assert set(cand) >= {"rmse", "mae", "r2"}
    y = run["holdout"]["claim_cost"].to_numpy()
    rmse = float(np.sqrt(np.mean((run["reference"] - y) ** 2)))
    assert cand["rmse"] == pytest.approx(rmse, rel=1e-9)  # the gate scored the registered model
    assert ev["decision"]["against"] == "baseline" and ev["decision"]["passed"]
    assert cand["r2"] > 0.05 and cand["rmse"] < float(np.std(y))  # better than predicting the mean
    assert res["register"]["verdict"] == "registered" and res["register"]["version"] == 1
    assert lin["lineage"]["task"] == "regression" and lin["lineage"]["objective"] == "reg:squarederror"
    assert lin["lineage"]["training_script"].startswith("built-in")
    assert (
        "rmse" in run["text"]
        and "lower is better" in run["text"]
        and "registered claim_cost_model version 1" in run["text"]
    )


def test_multiclass_on_severity_is_compared_with_its_baseline_not_the_regression_model(claims):
    run = _train(
        claims,
        {"task": "multiclass", "objective": None, "gate": {"primary_metric": "macro_f1"}},
        labels={"label": "severity"},
    )
    res, lin = run["res"], run["lineage"]
    assert run["tries"]["train"] == 2 and 0 < res["train"]["meta"]["resumed_from_round"] < 80
    assert np.array_equal(run["registered"], run["reference"])
    assert run["registered"].shape == (len(run["holdout"]), 3)
    ev = res["evaluate"]
    # version 1 is a regression model: not comparable metric by metric, so the baseline decides
    assert ev["decision"]["against"] == "baseline"
    assert any("is a regression model" in r for r in ev["decision"]["reasons"]), ev["decision"]
    assert {"macro_f1", "accuracy", "log_loss", "weighted_f1"} <= set(ev["candidate"])
    classes = ["low", "medium", "high"]  # the allowed values of severity, in the model's order
    truth = run["holdout"]["severity"].to_numpy()  # the holdout holds the encoded label: the class index
    assert set(truth) <= {0, 1, 2}
    acc = float((run["reference"].argmax(axis=1) == truth).mean())
    assert ev["candidate"]["accuracy"] == pytest.approx(acc, rel=1e-9)
    assert lin["lineage"]["task"] == "multiclass" and lin["lineage"]["classes"] == classes
    assert "confusion matrix" in run["text"] and "macro_f1" in run["text"]


def test_a_teams_own_sklearn_script_is_run_resumed_and_registered(claims):
    run = _train(
        claims,
        {
            "entry_point": "scripts/sklearn_gbm/train.py",
            "model_format": "sklearn",
            "hyperparameters": {"max_depth": 3, "learning_rate": 0.1},
        },
    )
    res, lin = run["res"], run["lineage"]
    assert run["tries"]["train"] == 2  # try 1 was killed after 20 trees; try 2 went on from its checkpoint
    ckpt = Path(res["train"]["job_dir"]) / "checkpoints" / "model.joblib"
    assert ckpt.is_file()
    assert np.array_equal(run["registered"], run["reference"])
    meta = res["train"]["meta"]
    assert meta["format"].startswith("sklearn") and meta["rounds"] == 80
    assert meta["first_round_reported"] > 20  # try 2 went on from the checkpoint (its chunks are 10 trees)
    assert res["evaluate"]["candidate"]["rmse"] > 0
    assert lin["lineage"]["model_format"] == "sklearn" and lin["lineage"]["training_script"].endswith("train.py")


@pytest.mark.parametrize(
    ("script", "fmt", "message"),
    [
        # a scikit-learn model under the default model_format (xgboost): say what was found
        (
            "scripts/sklearn_gbm/train.py",
            None,
            "the training script wrote a sklearn model to {model_dir} (model.joblib), but training.model_format is "
            "xgboost: declare what the script writes",
        ),
        # a script that exits 0 and writes nothing
        (
            "scripts/nothing/train.py",
            "sklearn",
            "the training script wrote no model to {model_dir} (model_format sklearn: expected a joblib file",
        ),
    ],
    ids=["undeclared-format", "no-model"],
)
def test_a_script_that_does_not_write_the_declared_model_fails_evaluate_once_with_what_it_found(
    claims, script, fmt, message
):
    nothing = claims["uc_dir"] / "scripts" / "nothing" / "train.py"
    nothing.parent.mkdir(parents=True, exist_ok=True)
    nothing.write_text("print('done')\n")
    with runtime_home(claims["home"]):
        uc, dr, tis = _run(claims, {"entry_point": script, "model_format": fmt, "hyperparameters": {"max_depth": 2}})
        trained = tis["train"].xcom_pull(task_ids=tis["train"].task_id)
        text = (claims["home"] / "runs" / "claim_cost" / "training" / "latest.txt").read_text()
    assert dr.state == "failed" and tis["train"].state == "success"
    assert tis["evaluate"].state == "failed" and tis["evaluate"].try_number == 1  # not retried: a rerun cannot help
    assert tis["register"].state == "upstream_failed"
    want = message.format(model_dir=trained["model_dir"])
    assert want in text, text
