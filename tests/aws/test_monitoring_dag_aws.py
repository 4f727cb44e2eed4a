"""The monitoring DAG on the aws target through dag.test() under moto, after a scoring run on aws.

The world is the scoring test's (``test_scoring_aws``): the training DAG on aws registers a model,
it is promoted and its package approved, and ``<usecase>__scoring`` scores two days (Athena
twin, transform twin). Then ``<usecase>__monitoring`` runs as Airflow runs it:

* ``measure``: Athena (the twin) UNLOADs the window's predictions and the labels landed in Gold
  for them; the worker joins each prediction with the features of the transform job's input its
  scoring run recorded (the scoring lineage record's ``input_s3_uri``);
* ``decide``: the history read through Athena, the window's metric rows staged on S3 and MERGEd
  into the ``monitoring`` Iceberg table (created through Glue), the decision MERGEd into
  ``monitoring_decisions``, the tables' maintenance; the metrics to CloudWatch (moto).

Checked against independent computations: the window's rows against the local target's training
set (the same rows' features, as the point-in-time builder gave them) and the predictions table's
scores; the table's metric rows against ``monitoring.core`` on a frame built from those; a rerun
leaves no duplicate row and no second decision or alert; a window whose amounts the scoring input
doubled raises the drift alert naming those columns.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
from moto_world import REGION, run_direct
from test_scoring_aws import _run, scoring_world  # noqa: F401 (fixture)
from test_training_dag_aws import DB, HI, LO, NAME, dag_world, lake  # noqa: F401 (fixtures)

from mlblueprints.aws import requests as req

pytestmark = [pytest.mark.aws, pytest.mark.slow]

moto = pytest.importorskip("moto")

# the keys the tables are MERGEd on (the twin refuses a MERGE keyed otherwise)
METRIC_KEY = ("model_version", "window_start", "window_end", "column", "signal", "metric")
DECISION_KEY = ("model_version", "window_start", "window_end", "run_id")
DRIFTED = ["amount", "card_amount_avg_7d", "merchant_amount_avg_7d"]  # 3 of the 5 monitored features


@pytest.fixture
def monitoring_world(scoring_world):  # noqa: F811
    """The scoring world with a lower minimum window (a day of the world has ~1,500 rows)."""
    import yaml

    from mlblueprints.config import load_usecase

    twin = scoring_world["athena"]
    twin.merge_keys["monitoring"] = METRIC_KEY
    twin.merge_keys["monitoring_decisions"] = DECISION_KEY
    path = Path(os.environ["MLB_USECASES_DIR"]) / f"{NAME}.yaml"
    data = yaml.safe_load(path.read_text())
    data["monitoring"]["alert"]["min_rows"] = 500
    path.write_text(yaml.safe_dump(data))
    return {**scoring_world, "uc": load_usecase(path)}


def _scored(world) -> tuple[int, dict]:
    """Train, promote, approve and score [LO, HI] on aws; the version and the scoring commit."""
    from mlblueprints.backends import backend_for

    uc = world["uc"]
    sm = boto3.client("sagemaker", region_name=REGION)
    dr, tis = _run(f"{NAME}__training")
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    registered = tis["register"].xcom_pull(task_ids="register")
    version, arn = registered["version"], registered["model_package"]["arn"]
    backend_for(uc, "registry").promote(version)
    meta = sm.describe_model_package(ModelPackageName=arn)["CustomerMetadataProperties"]
    sm.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved", CustomerMetadataProperties=meta)
    dr, tis = _run(f"{NAME}__scoring", {"event_dates": [LO.isoformat(), HI.isoformat()]})
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    return version, tis["commit.finish"].xcom_pull(task_ids="commit.finish")


def _monitor(day, version):
    dr, tis = _run(f"{NAME}__monitoring", {"event_dates": [day.isoformat()], "version": version})
    states = {t: ti.state for t, ti in tis.items()}
    assert dr.state == "success", states
    return dr, states, {t.removesuffix(".finish"): ti.xcom_pull(task_ids=t) for t, ti in tis.items()}


def _table(con, name: str) -> pd.DataFrame:
    return con.execute(f'SELECT * FROM {DB}."{name}"').df()


def _drift_events(uc) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from mlblueprints.core.naming import drift_alert_asset

    with create_session() as session:
        rows = session.execute(
            select(AssetEvent.extra)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == drift_alert_asset(uc).name)
        ).all()
    return [dict(r[0] or {}) for r in rows]


def _double_amounts(uri: str, day, features: list[str]) -> int:
    """Double the amount columns of ``day``'s records in the scoring run's transform input (what
    the job scored, as a shifted day would have given it); returns how many records changed."""
    s3 = boto3.client("s3", region_name=REGION)
    bucket, prefix = req.split_s3_uri(uri)
    at = [2 + features.index(c) for c in DRIFTED]  # after the hex key and the event time
    changed = 0
    for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
        head = s3.head_object(Bucket=bucket, Key=o["Key"])
        lines = gzip.decompress(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()).decode().splitlines()
        out = []
        for line in lines:
            f = line.split(",")
            if f[1][:10] == day.isoformat():
                for i in at:
                    f[i] = repr(float(f[i]) * 2) if f[i] else f[i]
                changed += 1
            out.append(",".join(f))
        s3.put_object(
            Bucket=bucket,
            Key=o["Key"],
            Body=gzip.compress(("\n".join(out) + "\n").encode()),
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId=head["SSEKMSKeyId"],
        )
    return changed


def test_monitoring_dag_on_aws_under_moto(monitoring_world, lake):  # noqa: F811
    from mlblueprints.aws.session import boto3_runtime
    from mlblueprints.backends import backend_for
    from mlblueprints.lineage import RunInfo
    from mlblueprints.monitoring import core

    uc, twin = monitoring_world["uc"], monitoring_world["athena"]
    con = twin.con
    version, _ = _scored(monitoring_world)
    expected = lake["expected"].set_index("transaction_id")
    # the labels of some of the first day's rows have not landed yet (null in Gold): they are not
    # labelled rows of the window
    con.execute(
        f"UPDATE {DB}.\"transaction_features\" SET is_fraud = NULL WHERE event_date = DATE '{LO}' "
        "AND hash(transaction_id) % 5 = 0"
    ).fetchall()
    pending = {
        r[0]
        for r in con.execute(
            f'SELECT transaction_id FROM {DB}."transaction_features" WHERE is_fraud IS NULL'
        ).fetchall()
    }
    assert 100 < len(pending) < 1000

    # ---- the calm day: every task as a provider task between prepare and finish where Athena works
    dr, states, res = _monitor(LO, version)
    services = [f"{s}.{t}" for s in ("measure", "decide") for t in ("prepare", "athena", "finish")]
    assert states == {**dict.fromkeys(["plan", *services, "report"], "success"), "alert": "skipped"}
    decided = res["decide"]
    assert decided["decided"] and not decided["fired"] and decided["rerun_of"] is None
    assert decided["written"]["decision_recorded"]
    # a 2024 window is older than CloudWatch takes: counted, not sent; the alerting path is there
    assert decided["published"]["skipped"]["too_old"] > 0 and decided["published"]["alerting"]["alarms"]

    # ---- the window's rows: the predictions of the day, with the features the job read
    rt = boto3_runtime(uc)
    monitor = backend_for(uc, "monitor", rt)
    model = res["plan"]["model"]
    feats = list(model["features"])
    run = RunInfo.for_usecase(uc, run_id="check")
    frame, labels, label = run_direct(uc, rt, monitor.window(LO, LO, model), run)
    preds = con.execute(
        f"SELECT transaction_id, score, event_date FROM {DB}.\"predictions\" WHERE event_date = DATE '{LO}'"
    ).df()
    others = con.execute(f"SELECT count(*) FROM {DB}.\"predictions\" WHERE event_date <> DATE '{LO}'").fetchall()[0][0]
    assert len(frame) == len(preds) == res["measure"]["rows"] > 500 and others > 0
    assert frame["transaction_id"].is_unique and set(frame["transaction_id"]) == set(preds["transaction_id"])
    got = frame.set_index("transaction_id")
    np.testing.assert_array_equal(got.loc[preds["transaction_id"], "score"], preds["score"])
    np.testing.assert_array_equal(  # no skew: the training set's features of the same rows, to the bit
        got[feats].to_numpy(dtype=float), expected.loc[got.index, feats].to_numpy(dtype=float)
    )
    assert {str(d)[:10] for d in frame["event_date"]} == {LO.isoformat()}
    # the labels landed in Gold for those rows, as the local target joins them
    landed = got.loc[[t for t in got.index if t not in pending]]
    assert label == "is_fraud" and len(labels) == len(landed) == len(frame) - len(pending)
    gold = expected.loc[landed.index, "is_fraud"].astype(float)
    assert sorted(zip(labels["score"], labels["is_fraud"])) == sorted(zip(landed["score"], gold))
    # another version scored nothing of the window: its window is empty
    none, no_labels, _ = run_direct(uc, rt, monitor.window(LO, LO, {**model, "version": version + 1}), run)
    assert none.empty and no_labels is None
    assert gold.sum() > 0  # positives among the labelled rows: a label join gone wrong shows

    # ---- the reference: the version's training set object, row for row
    ref, what = monitor.reference(model)
    assert what.startswith("training set ") and model["training_set_snapshot_id"] in what
    assert len(ref) == len(expected)
    for c in feats:
        np.testing.assert_array_equal(np.sort(ref[c].to_numpy(float)), np.sort(expected[c].to_numpy(float)))
    assert "score" in ref and ref["score"].between(0, 1).all()

    # ---- the metric rows in the Athena table: what the core computes for an independent frame
    independent = expected.loc[preds["transaction_id"], feats].reset_index()
    independent["score"] = preds["score"].to_numpy()
    sketch = core.reference_sketch(uc, ref, version, what)
    registered = (backend_for(uc, "registry").lineage(version=version)["lineage"] or {}).get("metrics") or {}
    want = core.evaluate(
        uc,
        sketch,
        independent,
        labels=pd.DataFrame({"score": landed["score"].to_numpy(), "is_fraud": gold.to_numpy()}),
        registered_metrics=registered,
        label_column="is_fraud",
    )["rows"]
    table = _table(con, "monitoring")
    assert len(table) == len(want) > 10
    assert set(table["run_id"]) == {dr.run_id} and set(table["model_version"]) == {version}
    assert {str(d)[:10] for d in table["window_start"]} == {str(d)[:10] for d in table["window_end"]} == {str(LO)}
    have = {(r["column"], r["signal"], r["metric"]): r for r in table.to_dict("records")}
    for w in want:
        h = have[(w["column"], w["signal"], w["metric"])]
        for c in ("statistic", "threshold"):
            if w[c] is None or (isinstance(w[c], float) and np.isnan(w[c])):
                assert h[c] is None or np.isnan(h[c]), (w, h)
            else:
                assert h[c] == pytest.approx(w[c], rel=1e-12, abs=1e-12), (w, h)
        assert (None if pd.isna(h["drifted"]) else bool(h["drifted"])) == w["drifted"], (w, h)
        # the summary's mean and std add the rows up in the order the join gives them: equal but in the last digits
        assert h["rows"] == w["rows"] and _close(json.loads(h["detail"] or "null"), json.loads(w["detail"] or "null"))
    # the same rows and the decision through the backend's Athena reads (what `monitoring show` prints)
    shown = monitor.metrics(last=5)
    assert len(shown) == len(table) and set(map(tuple, shown[list(METRIC_KEY[3:])].to_numpy())) == set(have)
    [first] = monitor.history()
    assert (first["window_start"], first["window_end"], first["decided"], first["fired"]) == (
        str(LO),
        str(LO),
        True,
        False,
    )
    assert first["run_id"] == dr.run_id and first["model_version"] == version and first["signals"] == []

    # ---- a rerun of the window replaces its rows: no duplicate, no second decision
    dr2, states2, res2 = _monitor(LO, version)
    assert res2["decide"]["rerun_of"] == dr.run_id and not res2["decide"]["written"]["decision_recorded"]
    again = _table(con, "monitoring")
    assert len(again) == len(table) and not again.duplicated(list(METRIC_KEY)).any()
    assert set(again["run_id"]) == {dr2.run_id}
    assert len(_table(con, "monitoring_decisions")) == 1

    # ---- the second day scored again (its predictions now point at the new run's input); in what
    # that job scored, the amounts doubled: the alert, naming the columns
    rescored, tis = _run(f"{NAME}__scoring", {"event_dates": [HI.isoformat()]})
    assert rescored.state == "success", {t: ti.state for t, ti in tis.items()}
    runs = dict(con.execute(f'SELECT event_date, min(scoring_run_id) FROM {DB}."predictions" GROUP BY 1').fetchall())
    assert runs[HI] == rescored.run_id and runs[LO] != rescored.run_id
    assert _double_amounts(_input_uri(uc, rescored.run_id), HI, list(model["features"])) > 500
    dr3, states3, res3 = _monitor(HI, version)
    assert states3["alert"] == "success", states3
    assert res3["decide"]["fired"] and "dataset_drift" in res3["decide"]["signals"]
    assert set(DRIFTED) <= set(res3["decide"]["drifted_columns"])
    [event] = _drift_events(uc)
    assert event["window"] == [str(HI), str(HI)] and set(DRIFTED) <= set(event["drifted_columns"])
    decisions = _table(con, "monitoring_decisions")
    assert len(decisions) == 2 and decisions["fired"].sum() == 1
    # both days at once: each prediction with the input of the run that made it (the first day's
    # from the first run, the second day's from the rescoring, doubled), once
    both, _, _ = run_direct(uc, rt, monitor.window(LO, HI, model), run)
    assert both["transaction_id"].is_unique and len(both) == len(expected)
    day = both["event_date"].astype(str).str[:10]
    for d, factor in ((LO, 1.0), (HI, 2.0)):
        rows_of = both[day == str(d)].set_index("transaction_id")
        np.testing.assert_array_equal(
            rows_of["amount"].to_numpy(float), factor * expected.loc[rows_of.index, "amount"].to_numpy(float)
        )

    # ---- a rerun of the drifted window: no second alert, no duplicate rows
    rows_before = len(_table(con, "monitoring"))
    dr4, states4, res4 = _monitor(HI, version)
    assert states4["alert"] == "skipped" and res4["decide"]["rerun_of"] == dr3.run_id
    assert len(_drift_events(uc)) == 1 and len(_table(con, "monitoring_decisions")) == 2
    after = _table(con, "monitoring")
    assert len(after) == rows_before and not after.duplicated(list(METRIC_KEY)).any()
    # the first window's rows are still there, as they were; the last window alone is the newest
    first_window = after[after["window_end"].astype(str).str[:10] == str(LO)]
    assert len(first_window) == len(table) and set(first_window["run_id"]) == {dr2.run_id}
    newest = monitor.metrics(last=1)
    assert len(newest) == len(after) - len(table) and {str(e)[:10] for e in newest["window_end"]} == {str(HI)}
    assert [h["window_end"] for h in monitor.history()] == [str(LO), str(HI)]

    # ---- written again with fewer rows: the window holds exactly those (the others deleted);
    # the same run's statements run twice record its decision once
    ident_ = {
        "usecase": uc.name,
        "model_name": model["name"],
        "model_version": version,
        "window_start": str(LO),
        "window_end": str(LO),
    }
    fewer = [r for r in want if r["signal"] != "data_quality"]
    assert 0 < len(fewer) < len(want)
    again_run = RunInfo.for_usecase(uc, run_id="written-again")
    fresh = {**res["decide"], "rerun_of": None, "window_start": str(LO), "window_end": str(LO)}
    for _ in range(2):
        run_direct(uc, rt, monitor.write(ident_, fewer, fresh, again_run), again_run)
    now = _table(con, "monitoring")
    kept_rows = now[now["window_end"].astype(str).str[:10] == str(LO)]
    assert sorted(kept_rows["metric"] + kept_rows["column"]) == sorted(r["metric"] + r["column"] for r in fewer)
    assert set(kept_rows["run_id"]) == {"written-again"} and len(now) == len(after) - len(want) + len(fewer)
    decisions = _table(con, "monitoring_decisions")
    assert len(decisions) == 3 and (decisions["run_id"] == "written-again").sum() == 1
    # maintenance of the window's partition after each MERGE, as scoring does
    kept = [(m["op"], m.get("partitions")) for m in twin.maintenance if m["table"] == "monitoring"]
    assert kept[:3] == [("optimize", 1), ("alter", None), ("vacuum", None)]
    assert not [e for e in twin.executions if e.get("failed")]
    drops = [e["query"] for e in twin.executions if e["query"].startswith("DROP TABLE IF EXISTS")]
    assert len([q for q in drops if "monitoring_stage_" in q]) == 6  # each write's staged rows, dropped


def _close(a, b) -> bool:
    """JSON documents equal, numbers to 1e-12 relative."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return a == pytest.approx(b, rel=1e-12, abs=1e-12, nan_ok=True)
    return a == b


def _input_uri(uc, run_id: str) -> str:
    """The transform input the scoring run recorded in its lineage record."""
    s3 = boto3.client("s3", region_name=REGION)
    bucket, prefix = req.split_s3_uri(uc.aws.s3_uri("lineage", uc.scoring.output_table))
    records = [
        json.loads(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())
        for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
        if o["Key"].endswith("__scoring.json")
    ]
    [uri] = [r["input_s3_uri"] for r in records if r["properties"]["mlb.run-id"] == run_id]
    return uri
