"""The closed loop through dag.test(): a champion scores days before and after the generator's
drift knob shifts the amounts; monitoring of the drifted day raises the drift alert (an Asset
event that queues the training DAG), a rerun of that window changes nothing, and the training
run that follows registers a challenger (the promotion pattern's input)."""

from __future__ import annotations

import json
import os
import shutil
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import ROOT, run_days, runtime_home

START = date(2024, 3, 1)
DRIFT_DAY = date(2024, 3, 5)
ROWS = 20_000
STEADY = ["amount", "event_hour", "card_txn_count_1h"]

pytestmark = pytest.mark.slow


def _results(dr: Any) -> dict[str, Any]:
    return {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in dr.get_task_instances()}


def _states(dr: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}


def _events(asset: str) -> list[dict[str, Any]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetEvent.extra, AssetEvent.source_run_id)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == asset)
        ).all()
    return [{**(r[0] or {}), "source_run_id": r[1]} for r in rows]


def _unpause(dag_id: str) -> None:
    """What ``airflow dags unpause`` does: Airflow queues runs of unpaused DAGs only."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=False))


def _queued(dag_id: str, asset: str) -> bool:
    from airflow.models.asset import AssetDagRunQueue, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return (
            session.execute(
                select(AssetDagRunQueue.target_dag_id)
                .join(AssetModel, AssetDagRunQueue.asset_id == AssetModel.id)
                .where(AssetDagRunQueue.target_dag_id == dag_id, AssetModel.name == asset)
            ).first()
            is not None
        )


@pytest.fixture(scope="module")
def loop(tmp_path_factory, airflow_db):
    """Four calm days landed, features materialized, a champion trained (holdout: day 4); day 5
    (drifted: amounts x2, more online and foreign spending, twice the fraud) is landed but not
    processed yet. Of the monitored features, the amount and its two 7-day averages move."""
    from mlblueprints.airflow import localrun
    from mlblueprints.config import load_usecase
    from mlblueprints.datagen import DefectConfig, DriftConfig, generate_fraud
    from mlblueprints.features import local as features
    from mlblueprints.lakehouse.local import latest_gold_range
    from mlblueprints.lineage import RunInfo

    base = tmp_path_factory.mktemp("monitoring")
    uc_dir = base / "usecases"
    shutil.copytree(ROOT / "dags" / "usecases", uc_dir)
    doc = yaml.safe_load((uc_dir / "fraud_detection.yaml").read_text())
    doc["retry_delay_seconds"] = 0
    doc["training"].update(num_boost_round=40, holdout_days=1, promote=True)
    doc.pop("explainability")  # promotion at registration is refused behind a fairness gate
    # the shipped monitoring section: the features that are steady from the first day of data
    assert doc["monitoring"]["columns"] == [*STEADY, "card_amount_avg_7d", "merchant_amount_avg_7d"]
    (uc_dir / "fraud_detection.yaml").write_text(yaml.safe_dump(doc))
    home = base / "home"
    old = os.environ.get("MLB_USECASES_DIR")
    os.environ["MLB_USECASES_DIR"] = str(uc_dir)
    try:
        with runtime_home(home):
            generate_fraud(
                home / "landing",
                start=START,
                days=5,
                rows=ROWS,
                seed=11,
                defects=DefectConfig.none(),
                drift=DriftConfig(start=DRIFT_DAY, amount_scale=2.0),
            )
            uc = load_usecase(uc_dir / "fraud_detection.yaml")
            lake = localrun.get_dag("fraud_detection__lakehouse")
            calm = [START + timedelta(days=i) for i in range(4)]
            assert [r.state for r in run_days(lake, calm)] == ["success"] * 4
            lo, hi = latest_gold_range(uc, ["transaction_features"])
            for view in uc.features:
                features.materialize(uc, view, lo, hi, RunInfo.for_usecase(uc, run_id="features-1"))
            trained = localrun.get_dag("fraud_detection__training").test()
            assert trained.state == "success", _states(trained)
            yield {"home": home, "uc": uc, "uc_dir": uc_dir, "lake": lake, "first": _results(trained)}
    finally:
        if old is None:
            os.environ.pop("MLB_USECASES_DIR", None)
        else:
            os.environ["MLB_USECASES_DIR"] = old


def _score_and_monitor(day: date) -> tuple[Any, Any]:
    from mlblueprints.airflow import localrun

    scored = localrun.get_dag("fraud_detection__scoring").test(run_conf={"event_dates": [day.isoformat()]})
    assert scored.state == "success", _states(scored)
    monitored = localrun.get_dag("fraud_detection__monitoring").test(run_conf={"event_dates": [day.isoformat()]})
    assert monitored.state == "success", _states(monitored)
    return scored, monitored


def test_drift_raises_the_alert_that_retrains_and_a_rerun_changes_nothing(loop):
    from mlblueprints.airflow import localrun
    from mlblueprints.features import local as features
    from mlblueprints.lineage import RunInfo
    from mlblueprints.monitoring import local as mon

    uc = loop["uc"]
    champion = loop["first"]["register"]["version"]
    with runtime_home(loop["home"]):
        # a calm day: measured, recorded, no alert
        _, calm = _score_and_monitor(DRIFT_DAY - timedelta(days=1))
        res = _results(calm)
        assert res["measure"]["model_version"] == champion and res["measure"]["rows"] > 3_000
        assert res["decide"]["decided"] and not res["decide"]["fired"], res["decide"]["reason"]
        assert res["measure"]["drifted_columns"] == [], res["measure"]["metrics"]
        assert _states(calm)["alert"] == "skipped"
        ref_key = res["measure"]["reference"]["key"]
        assert res["measure"]["reference"]["source"].startswith("training set ")
        # Evidently's report, on the same rows here (the window and the reference are smaller than
        # report_rows): its per-column statistics are the table's
        rep = res["measure"]["report"]
        assert rep["rows"]["current"] == res["measure"]["rows"] and Path(rep["html"]).stat().st_size > 100_000
        ours = {
            r["column"]: r for r in res["measure"]["metrics"] if r["signal"] in ("column_drift", "prediction_drift")
        }
        theirs = {
            m["config"]["column"]: m
            for m in json.loads(Path(rep["snapshot"]).read_text())["metrics"]
            if m["config"]["type"].endswith(":ValueDrift")
        }
        assert set(theirs) == set(ours)
        for col, m in theirs.items():
            assert m["value"] == pytest.approx(ours[col]["statistic"], abs=2e-3), col
            assert (m["value"] >= m["config"]["threshold"]) == ours[col]["drifted"], col

        # the drifted day lands, its features are materialized, it is scored and monitored
        assert localrun.run_dag(loop["lake"], DRIFT_DAY).state == "success"
        for view in uc.features:
            features.materialize(uc, view, DRIFT_DAY, DRIFT_DAY, RunInfo.for_usecase(uc, run_id="features-2"))
        _unpause("fraud_detection__training")
        _, drifted = _score_and_monitor(DRIFT_DAY)
        res = _results(drifted)
        # the same version and reference definition: the sketch logged with the version is read back
        assert res["measure"]["reference"]["key"] == ref_key
        d = res["decide"]
        assert d["fired"], d["reason"]
        cols = set(res["measure"]["drifted_columns"]) - {"score"}
        assert cols == {"amount", "card_amount_avg_7d", "merchant_amount_avg_7d"}, res["measure"]["metrics"]
        assert "dataset_drift" in d["signals"] and res["measure"]["drifted_share"] == pytest.approx(3 / 5)
        [event] = [e for e in _events("fraud_detection.drift_alert") if e["source_run_id"] == drifted.run_id]
        assert event["window"] == [DRIFT_DAY.isoformat()] * 2 and "amount" in event["drifted_columns"]
        assert _queued("fraud_detection__training", "fraud_detection.drift_alert")

        # the history: one decision per window, every metric of both windows in the Iceberg table
        hist = mon.history(uc)
        assert [(h["window_end"], h["fired"]) for h in hist] == [
            ((DRIFT_DAY - timedelta(days=1)).isoformat(), False),
            (DRIFT_DAY.isoformat(), True),
        ]
        table = mon.metrics(uc)
        n_rows = len(table)
        assert set(table["window_end"].astype(str).str[:10]) == {h["window_end"] for h in hist}

        # a rerun of the drifted window: same rows, no second decision, no second alert
        again = localrun.get_dag("fraud_detection__monitoring").test(run_conf={"event_dates": [DRIFT_DAY.isoformat()]})
        assert again.state == "success", _states(again)
        assert _results(again)["decide"]["rerun_of"] == drifted.run_id
        assert _states(again)["alert"] == "skipped"
        assert len(mon.history(uc)) == 2 and len(mon.metrics(uc)) == n_rows
        assert len(_events("fraud_detection.drift_alert")) == 1

        # the training run the alert queued: the gate decides, a challenger is registered and announced
        retrained = localrun.get_dag("fraud_detection__training").test()
        assert retrained.state == "success", _states(retrained)
        reg = _results(retrained)["register"]
        assert reg["verdict"] == "registered", reg
        assert reg["version"] > champion
        assert any(e.get("version") == reg["version"] for e in _events("fraud_detection.model.challenger"))

        # the CLI shows the history and the last decision
        from mlblueprints import cli

        assert cli.main(["monitoring", "show", "fraud_detection"]) == 0
