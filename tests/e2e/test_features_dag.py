"""The feature DAG end to end through dag.test(), on the Gold table the shared pipeline built.

Checks the promise of the pattern: both stores are fed from one batch, so for every entity the
online value is the newest offline value, field by field; a rerun changes nothing; each view
emits its Asset; a broken view fails alone, without retries, and says which column.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sqlite3

import pytest
import yaml

from helpers import ROOT, fraud_usecase, read_table, runtime_home
from mlblueprints.features import core, online
from mlblueprints.lakehouse.local import latest_gold_range

pytestmark = pytest.mark.slow


def _conf(uc) -> dict:
    lo, hi = latest_gold_range(uc, ["transaction_features"])
    return {"event_dates": [lo.isoformat(), hi.isoformat()]}


@pytest.fixture(scope="module")
def features_run(pipeline):
    from mlblueprints.airflow import localrun

    with runtime_home(pipeline.home):
        uc = fraud_usecase()
        dag = localrun.get_dag("fraud_detection__features")
        dr = dag.test(run_conf=_conf(uc))
        results = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in dr.get_task_instances()}
    return dr, dag, results


@pytest.fixture
def home(pipeline, features_run):
    with runtime_home(pipeline.home):
        yield pipeline.home


def _online_rows(uc, view):
    con = sqlite3.connect(online.store_path(uc))
    cols = [r[1] for r in con.execute(f"PRAGMA table_info({core.online_table(uc, view)})")]
    keep = ", ".join(c for c in cols if c not in ("_batch_id", "_offline_snapshot_id"))
    return sorted(con.execute(f"SELECT {keep} FROM {core.online_table(uc, view)}").fetchall())


def test_features_dag_materializes_every_view(home, features_run):
    dr, _, results = features_run
    assert dr.state == "success", {ti.task_id: ti.state for ti in dr.get_task_instances()}
    uc = fraud_usecase()
    gold = read_table(uc, "transaction_features")
    for view, spec in uc.features.items():
        out = results[f"materialize__{view}"]
        assert out["rows_in"] == len(gold)  # the range covers every Gold date of the pipeline
        assert out["rows_in"] == (
            out["offline_rows"] + out["skipped_null_key"] + out["skipped_null_event_time"] + out["collapsed_duplicates"]
        )
        offline = read_table(uc, core.offline_table(uc, view))
        assert len(offline) == out["offline_rows"]
        assert not offline.duplicated([*spec.entity, "event_time"]).any()
        assert out["online_entities"] == offline[spec.entity].drop_duplicates().shape[0]
    report = json.loads(next((home / "runs" / uc.name / "features").glob("manual__*.json")).read_text())
    assert report["missing"] == []
    assert "online lookup" in report["text"] and "card_activity" in report["text"]


def test_online_value_is_the_newest_offline_value_field_by_field(home):
    uc = fraud_usecase()
    for view, spec in uc.features.items():
        offline = read_table(uc, core.offline_table(uc, view))
        newest = offline.sort_values("event_time").groupby(spec.entity).tail(1)
        sample = newest.sample(n=min(200, len(newest)), random_state=random.Random(view).randint(0, 10**6))
        got = online.get_online_features(uc, view, list(sample[spec.entity[0]]), as_of="watermark")
        for (_, want), have in zip(sample.iterrows(), got):
            assert have is not None, (view, want[spec.entity[0]])
            for col in [*spec.entity, "event_time", *spec.features]:
                w, h = want[col], have[col]
                if w is None or (isinstance(w, float) and math.isnan(w)):
                    assert h is None, (view, col)
                else:
                    assert h == w, (view, col, w, h)


def test_rerun_through_the_dag_changes_nothing(home, features_run):
    _, dag, _ = features_run
    uc = fraud_usecase()
    before = {v: (read_table(uc, core.offline_table(uc, v)).shape, _online_rows(uc, v)) for v in uc.features}
    offline_before = {
        v: sorted(map(tuple, read_table(uc, core.offline_table(uc, v)).astype(str).values.tolist()))
        for v in uc.features
    }
    dr = dag.test(run_conf=_conf(uc))
    assert dr.state == "success"
    after = {v: (read_table(uc, core.offline_table(uc, v)).shape, _online_rows(uc, v)) for v in uc.features}
    assert after == before
    for v in uc.features:
        assert (
            sorted(map(tuple, read_table(uc, core.offline_table(uc, v)).astype(str).values.tolist()))
            == (offline_before[v])
        )


def test_each_view_emits_its_asset_with_the_range(home, features_run):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dr, _, results = features_run
    with create_session() as session:
        rows = session.execute(
            select(AssetModel.name, AssetEvent.source_run_id, AssetEvent.extra).join(
                AssetEvent, AssetEvent.asset_id == AssetModel.id
            )
        ).all()
    mine = {n: extra for n, run_id, extra in rows if run_id == dr.run_id}
    for view in ("card_activity", "merchant_activity"):
        extra = mine[f"fraud_detection.features.{view}"]
        assert extra["range"] == results[f"materialize__{view}"]["range"]
        assert extra["offline_snapshot_id"] == results[f"materialize__{view}"]["offline_snapshot_id"]
    # the Gold gate's event says which event dates were recomputed: what triggers this DAG
    gold = [e for n, _, e in rows if n == "fraud_detection.transaction_features"]
    assert gold and all(len(e["range"]) == 2 for e in gold)


def test_a_broken_view_fails_alone_without_retries(pipeline, tmp_path, monkeypatch, airflow_db):
    from mlblueprints.airflow import localrun

    uc_dir = tmp_path / "usecases"
    shutil.copytree(ROOT / "dags" / "usecases", uc_dir)
    doc = yaml.safe_load((uc_dir / "fraud_detection.yaml").read_text())
    doc["features"]["card_activity"]["features"].append("card_velocity_score")  # not a Gold column
    doc["features"]["card_activity"]["version"] = 2
    (uc_dir / "fraud_detection.yaml").write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("MLB_USECASES_DIR", str(uc_dir))
    home = tmp_path / "home"
    shutil.copytree(pipeline.home / "landing", home / "landing")
    shutil.copytree(pipeline.home / "warehouse", home / "warehouse")
    with runtime_home(home):
        uc = fraud_usecase()
        dag = localrun.get_dag("fraud_detection__features")
        dr = dag.test(run_conf=_conf(uc))
        tis = {ti.task_id: ti for ti in dr.get_task_instances()}
    assert dr.state == "failed"
    assert tis["materialize__card_activity"].state == "failed"
    assert tis["materialize__card_activity"].try_number == 1  # the same Gold fails the same way: no retry
    assert tis["materialize__merchant_activity"].state == "success"
    with runtime_home(home):
        report = json.loads(next((home / "runs" / "fraud_detection" / "features").glob("manual__*.json")).read_text())
        # nothing half-written for the broken view: no v2 offline table, no v2 online table
        from mlblueprints.lakehouse import iceberg, naming

        assert iceberg.load(iceberg.catalog(), naming.identifier(uc, "fv_card_activity_v2")) is None
        store = online.OnlineStore(online.store_path(uc))
        assert store.stored_types("fv_card_activity_v2") is None
    assert report["missing"] == ["materialize__card_activity"]
    assert (
        "card_activity: FAILED: fraud_detection: features.card_activity: column 'card_velocity_score': "
        "feature column is not in Gold table 'transaction_features'" in report["text"]
    )
