"""The scoring DAG end to end through dag.test(), on the shared pipeline's features and the fraud
model the training DAG registered as champion (``scoring_base``).

Checked against independent computations: the Gold rows of the interval (pyiceberg's reader),
the model's own ``predict`` on a DMatrix, the training set the point-in-time builder wrote, and
the online store's newest value per entity.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import read_table, runtime_home, table_fingerprint
from mlblueprints.config import load_usecase

pytestmark = pytest.mark.slow


def _env(uc_dir: Path):
    old = os.environ.get("MLB_USECASES_DIR")
    os.environ["MLB_USECASES_DIR"] = str(uc_dir)
    return old


def _restore(old: str | None) -> None:
    if old is None:
        os.environ.pop("MLB_USECASES_DIR", None)
    else:
        os.environ["MLB_USECASES_DIR"] = old


def _dates(world: dict) -> list[str]:
    lo, hi = world["range"]
    return [(hi - timedelta(days=1)).isoformat(), hi.isoformat()]


def _run(conf: dict):
    from mlblueprints.airflow import localrun

    dr = localrun.get_dag("fraud_detection__scoring").test(run_conf=conf)
    tis = {ti.task_id: ti for ti in dr.get_task_instances()}
    return dr, tis, {k: ti.xcom_pull(task_ids=ti.task_id) for k, ti in tis.items()}


@pytest.fixture(scope="module")
def world(scoring_base, tmp_path_factory, airflow_db):
    home = tmp_path_factory.mktemp("scoring") / "home"
    shutil.copytree(scoring_base["home"], home)
    old = _env(scoring_base["uc_dir"])
    try:
        with runtime_home(home):
            uc = load_usecase(scoring_base["uc_dir"] / "fraud_detection.yaml")
            w = {**scoring_base, "home": home, "uc": uc}
            dr, tis, res = _run({"event_dates": _dates(w)})
            yield {**w, "dr": dr, "tis": tis, "res": res}
    finally:
        _restore(old)


def _interval_gold(world: dict) -> pd.DataFrame:
    """The Gold rows of the scored event dates, read with pyiceberg (not the code under test)."""
    gold = read_table(world["uc"], "transaction_features")
    days = {date.fromisoformat(d) for d in _dates(world)}
    lo, hi = min(days), max(days)
    et = pd.to_datetime(gold["event_time"])
    return gold[(et >= pd.Timestamp(lo)) & (et < pd.Timestamp(hi + timedelta(days=1)))]


def _scored_features(world: dict) -> pd.DataFrame:
    """The feature rows the scorer fed the model (its own relation, over the pinned snapshots)."""
    from mlblueprints.core.duck import connect
    from mlblueprints.scoring.local import scoring_sql

    con = connect()
    try:
        return con.sql(scoring_sql(world["uc"], con, world["res"]["plan"])).df()
    finally:
        con.close()


def test_every_row_of_the_interval_is_scored_once_with_its_lineage(world):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from mlblueprints.features import core as fcore
    from mlblueprints.lakehouse import iceberg, naming
    from mlblueprints.registry import local as registry

    dr, tis, res = world["dr"], world["tis"], world["res"]
    assert dr.state == "success", {k: ti.state for k, ti in tis.items()}
    assert {k: ti.state for k, ti in tis.items()} == dict.fromkeys(
        ["plan", "score", "gate", "commit", "report"], "success"
    )
    uc = world["uc"]
    with runtime_home(world["home"]):
        gold = _interval_gold(world)
        preds = read_table(uc, "predictions")
        lineage = registry.lineage(uc, alias="champion")
        table = iceberg.load(iceberg.catalog(), naming.identifier(uc, "predictions"))
        current = {
            t: iceberg.snapshot_id(iceberg.load(iceberg.catalog(), naming.identifier(uc, t)))
            for t in ("transaction_features", *(fcore.offline_table(uc, v) for v in uc.features))
        }
        # identity partitions on a DATE column are days since the epoch
        partitions = sorted(
            (date(1970, 1, 1) + timedelta(days=int(k))).isoformat() for k in iceberg.partition_files(table)
        )
    # one prediction per Gold row of the interval, and no other
    assert len(gold) > 1000 and res["plan"]["rows_in"] == len(gold) == res["score"]["rows"] == len(preds)
    assert preds["transaction_id"].is_unique and set(preds["transaction_id"]) == set(gold["transaction_id"])
    # partitioned by event date: the two days
    assert partitions == _dates(world)
    # the decision at the threshold the champion was registered with
    thr = lineage["lineage"]["metrics"]["threshold"]
    assert (preds["threshold"] == thr).all() and (preds["decision"] == (preds["score"] >= thr).astype(int)).all()
    assert preds["score"].between(0, 1).all() and 0 < preds["decision"].mean() < 0.2
    # lineage on every prediction: model, version, MLflow run, the snapshots read, the scoring run
    assert (preds["model_name"] == uc.model_name).all() and (preds["model_version"] == lineage["version"]).all()
    assert (preds["mlflow_run_id"] == lineage["mlflow_run_id"]).all() and (preds["scoring_run_id"] == dr.run_id).all()
    assert {json.loads(s) == {k: v for k, v in current.items()} for s in preds["input_snapshots"].unique()} == {True}
    # ... and on the commit: one snapshot, with the run, the model and the inputs
    props = dict(table.current_snapshot().summary.additional_properties)
    assert props["mlb.run-id"] == dr.run_id and props["mlb.model-version"] == str(lineage["version"])
    assert json.loads(props["mlb.input-snapshots"]) == current and props["mlb.step"] == "scoring"
    # the Asset: range, snapshot and model version
    with create_session() as session:
        events = session.execute(
            select(AssetModel.name, AssetEvent.extra).join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
        ).all()
    [extra] = [e for n, e in events if n == "fraud_detection.predictions" and e.get("run_id") == dr.run_id]
    assert extra["range"] == _dates(world) and extra["version"] == lineage["version"]
    assert extra["snapshot_id"] == table.current_snapshot().snapshot_id and extra["rows"] == len(preds)
    # the report: rows, the histogram, the share flagged, where the table is
    text = (world["home"] / "runs" / "fraud_detection" / "scoring" / "latest.txt").read_text()
    assert f"scored: {len(preds):,} rows" in text and "score histogram" in text and "flagged (score >=" in text
    assert f"{100 * preds['decision'].mean():.2f} %" in text and "Iceberg table fraud_detection.predictions" in text


def test_each_prediction_is_the_models_own_predict(world):
    import mlflow.xgboost
    import xgboost as xgb

    from mlblueprints.registry import local as registry

    uc = world["uc"]
    feats = uc.model_features()
    with runtime_home(world["home"]):
        x = _scored_features(world)  # every row of the interval: the ones with a missing feature included
        registry.client(uc)
        booster = mlflow.xgboost.load_model(f"models:/{uc.model_name}@champion")
        preds = read_table(uc, "predictions").set_index("transaction_id")
    own = booster.predict(xgb.DMatrix(x[feats].to_numpy(np.float64), feature_names=feats))
    got = preds.loc[x["transaction_id"], "score"].to_numpy()
    assert np.abs(got - own).max() <= 1e-7  # float32 precision of the model's output
    assert x[feats].isna().any().any(), "some rows are scored with missing features (new entities)"


def test_rows_are_scored_with_the_features_training_sets_and_the_online_store_give(world):
    """No train/serve skew: for the same transactions, the features the scorer used equal the
    point-in-time builder's training set, field by field; for each card's and merchant's newest
    transaction, they equal what the online store serves for the entity."""
    from mlblueprints.features.online import get_online_features

    uc = world["uc"]
    feats = uc.model_features()
    with runtime_home(world["home"]):
        scored = _scored_features(world).set_index("transaction_id").sort_index()
        ts = read_table(uc, "ts_fraud_training").set_index("transaction_id")
        train = ts.loc[scored.index, feats]
        pd.testing.assert_frame_equal(scored[feats], train.astype(float), check_names=False)
        gold = _interval_gold(world).set_index("transaction_id")
        for view, key in (("card_activity", "card_id"), ("merchant_activity", "merchant_id")):
            v = uc.features[view]
            rows = scored.join(gold[[key]]).reset_index()
            newest = rows.sort_values("event_time").groupby(key).tail(1)
            # entities whose newest transaction shares its instant with another are ambiguous; skip them
            tied = rows.merge(newest[[key, "event_time"]], on=[key, "event_time"]).groupby(key).size()
            newest = newest[newest[key].map(tied) == 1].sample(min(200, len(newest)), random_state=2)
            online = get_online_features(uc, view, list(newest[key]), as_of="watermark")
            for (_, row), got in zip(newest.iterrows(), online):
                assert got is not None, row[key]
                assert pd.Timestamp(got["event_time"]) == row["event_time"], row[key]
                for f in v.features:
                    want = row[f]
                    assert (got[f] is None and np.isnan(want)) or float(got[f]) == want, (view, row[key], f)


def test_a_rerun_replaces_the_interval_and_changes_nothing_else(world):
    uc = world["uc"]
    drop = ("scoring_run_id",)
    with runtime_home(world["home"]):
        before = table_fingerprint(uc, "predictions", drop)
        dr, _, res = _run({"event_dates": _dates(world), "version": world["res"]["plan"]["model"]["version"]})
        after = table_fingerprint(uc, "predictions", drop)
        runs = set(read_table(uc, "predictions")["scoring_run_id"])
        # one day again: only that day's predictions get the new run id
        dr2, _, _ = _run({"event_dates": _dates(world)[:1]})
        again = read_table(uc, "predictions")
        text = (world["home"] / "runs" / "fraud_detection" / "scoring" / "latest.txt").read_text()
    assert dr.state == "success" and res["plan"]["model"]["alias"] is None  # pinned by the version Param
    assert after == before and runs == {dr.run_id}
    assert len(again) == len(before) and again["transaction_id"].is_unique
    with runtime_home(world["home"]):
        assert table_fingerprint(uc, "predictions", drop) == before
    day = again["event_date"].astype(str) == _dates(world)[0]
    assert set(again.loc[day, "scoring_run_id"]) == {dr2.run_id} and set(again.loc[~day, "scoring_run_id"]) == {
        dr.run_id
    }
    assert "interval: event dates" in text


def test_an_empty_interval_succeeds_with_zero_predictions_said_in_the_report(world):
    uc = world["uc"]
    with runtime_home(world["home"]):
        before = table_fingerprint(uc, "predictions")
        dr, tis, res = _run({"event_dates": ["2023-01-01"]})
        text = (world["home"] / "runs" / "fraud_detection" / "scoring" / "latest.txt").read_text()
        after = table_fingerprint(uc, "predictions")
    assert dr.state == "success", {k: ti.state for k, ti in tis.items()}
    assert res["plan"]["rows_in"] == 0 and res["score"]["rows"] == 0 and res["commit"]["rows"] == 0
    assert "scored: 0 rows - the interval has no rows to score" in text and "no rows in the interval" in text
    assert after == before


# ---------------------------------------------------------------- bad input: one clear line each


@pytest.fixture
def fresh(scoring_base, tmp_path):
    """A private copy of the scored-ready home and of its use cases (tests may break them)."""
    home = tmp_path / "home"
    shutil.copytree(scoring_base["home"], home)
    uc_dir = tmp_path / "usecases"
    shutil.copytree(scoring_base["uc_dir"], uc_dir)
    old = _env(uc_dir)
    try:
        with runtime_home(home):
            yield {**scoring_base, "home": home, "uc_dir": uc_dir}
    finally:
        _restore(old)


def _fails_with(fresh: dict, capsys, line: str, conf_dates: list[str] | None = None) -> None:
    """``mlblueprints scoring run`` fails: exit 1, the plan task failed once (no retry: the same
    inputs fail the same way), the reason as one line in what the command prints, nothing written."""
    from mlblueprints import cli
    from mlblueprints.lakehouse import iceberg, naming

    uc = load_usecase(fresh["uc_dir"] / "fraud_detection.yaml")
    dates = conf_dates or [fresh["range"][1].isoformat()]
    assert cli.main(["scoring", "run", "fraud_detection", "--dates", *dates]) == 1
    out = capsys.readouterr().out
    # the run report the command prints names the failed step and its one-line reason
    [hit] = [ln.strip() for ln in out.splitlines() if line in ln and ln.strip().startswith("plan: ")]
    assert hit.count(": ") >= 2 and "Traceback" not in hit
    report = json.loads(sorted((fresh["home"] / "runs" / "fraud_detection" / "scoring").glob("*.json"))[-1].read_text())
    assert report["missing"] == ["commit", "gate", "plan", "score"]
    assert iceberg.load(iceberg.catalog(), naming.identifier(uc, "predictions")) is None  # nothing written
    from airflow.models.dagrun import DagRun

    [dr] = [d for d in DagRun.find(dag_id="fraud_detection__scoring") if d.run_id == report["run_id"]]
    [plan] = [ti for ti in dr.get_task_instances() if ti.task_id == "plan"]
    assert plan.state == "failed" and plan.try_number == 1


def test_no_champion_fails_with_one_clear_line(fresh, capsys):
    from mlblueprints.registry import local as registry

    uc = load_usecase(fresh["uc_dir"] / "fraud_detection.yaml")
    registry.client(uc).delete_registered_model_alias(uc.model_name, "champion")
    _fails_with(
        fresh,
        capsys,
        "fraud_detection: scoring: no champion for model fraud_detection_model: promote a version "
        "(mlblueprints models promote fraud_detection <version>) or pin one",
    )


def test_a_model_whose_features_the_views_do_not_give_is_refused(fresh, capsys):
    path = fresh["uc_dir"] / "fraud_detection.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["scoring"]["rows"] = {"features": ["card_activity"]}  # the merchant features are not joined
    path.write_text(yaml.safe_dump(doc))
    _fails_with(
        fresh,
        capsys,
        "fraud_detection: scoring: fraud_detection_model v1 needs feature(s) ['merchant_txn_count_1h', "
        "'merchant_txn_count_24h', 'merchant_amount_avg_7d'] that the feature views ['card_activity'] and the "
        "columns ['amount', 'event_hour'] of transaction_features do not give",
    )


def _rewrite_gold(fresh: dict, replace: str) -> None:
    """Replace the Gold table by a copy whose columns ``replace`` (a DuckDB REPLACE list) retypes:
    what a changed Gold SQL leaves when the table is rebuilt."""
    from mlblueprints.core.duck import connect
    from mlblueprints.lakehouse import iceberg, naming

    uc = load_usecase(fresh["uc_dir"] / "fraud_detection.yaml")
    ident = naming.identifier(uc, "transaction_features")
    cat = iceberg.catalog()
    con = connect()
    iceberg.register_view(con, "old", iceberg.load(cat, ident))
    con.execute(f"CREATE TABLE retyped AS SELECT * REPLACE ({replace}) FROM old")
    cat.drop_table(ident)
    table = iceberg.ensure_table(cat, ident, iceberg.query_schema(con, "SELECT * FROM retyped"), "event_date", {})
    iceberg.write(
        con,
        table,
        "SELECT * FROM retyped",
        replace=None,
        partition_by="event_date",
        snapshot_properties={},
        target_file_size=1 << 27,
    )
    con.close()


def test_a_feature_whose_type_changed_since_training_is_refused(fresh, capsys):
    _rewrite_gold(fresh, "CAST(round(amount * 100) AS BIGINT) AS amount")  # cents now, an integer
    _fails_with(
        fresh,
        capsys,
        "fraud_detection: scoring: feature 'amount' changed type: fraud_detection_model v1 was trained on double "
        "(training set fraud_detection.ts_fraud_training snapshot",
    )


def test_a_view_feature_whose_gold_column_changed_type_is_refused(fresh, capsys):
    _rewrite_gold(fresh, "CAST(card_txn_count_1h AS VARCHAR) AS card_txn_count_1h")
    _fails_with(
        fresh,
        capsys,
        "fraud_detection: features.card_activity: column 'card_txn_count_1h': type changed: the offline store holds "
        "bigint, Gold now gives string; bump features.card_activity.version to start a new store",
    )
