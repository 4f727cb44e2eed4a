"""The aws target through dag.test() under moto (in process), botocore validating every request.

moto stores what the DAG sends (S3 objects, Glue tables, Athena executions) but runs no SQL. The
Athena twin (``moto_world.AthenaTwin``) runs every statement on DuckDB over the tables the DAG
created through Glue and the landing files in S3, with Athena's limits and the tables' MERGE
keys enforced. What the DAG wrote is then compared with what the local target writes from the
same landing files (``lake_scenarios``): a statement that is wrong makes a table differ.
"""

from __future__ import annotations

import json
import re
from datetime import date, timedelta

import boto3
import botocore.exceptions
import pytest
from lake_scenarios import AwsLake, build_oracle, check_same_as_local, check_within_limits, days_of, install_suites
from moto_world import ACCOUNT, REGION, UNLOAD

from mlblueprints.aws import requests as req
from mlblueprints.datagen import DefectConfig, generate_fraud

pytestmark = [pytest.mark.aws, pytest.mark.slow]

moto = pytest.importorskip("moto")

BUCKET = "mlb-test-lake"
DB = "fraud_lake"
START = date(2024, 3, 1)
DAYS = 2
NAME = "fraud_detection_aws"
# every defect both targets handle the same way; malformed CSV lines are read by position on
# aws (a known difference, docs/lakehouse.md), so none here
DEFECTS = DefectConfig(
    malformed_record=0,
    invalid_type=2e-3,
    missing_required=2e-3,
    out_of_range=2e-3,
    unknown_category=2e-3,
    exact_duplicate=2e-3,
    key_duplicate=2e-3,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory, airflow_db):
    """Landing files, and the local target's tables built from them (the oracle)."""
    base = tmp_path_factory.mktemp("aws")
    landing = base / "landing"
    generate_fraud(landing, start=START, days=DAYS, rows=3000, seed=5, defects=DEFECTS)
    return {"base": base, "landing": landing, "oracle": build_oracle(landing, base, days_of(START, DAYS))}


@pytest.fixture
def aws_world(world, moto_world, monkeypatch):
    mw = moto_world
    lake = AwsLake.make(mw, monkeypatch, world["landing"], name=NAME, bucket=BUCKET, db=DB)
    install_suites(mw, monkeypatch, NAME)
    monkeypatch.setenv("MLB_USECASES_DIR", str(mw.tmp / "usecases"))
    yield {
        "lake": lake,
        "executions": lake.twin.executions,
        "kms": lake.uc.aws.kms_key_arn,
        "uc": lake.uc,
        "home": mw.home,
    }


def test_lakehouse_dag_on_aws_under_moto(aws_world, world, monkeypatch):
    from mlblueprints import runtime
    from mlblueprints.airflow import localrun

    lake = aws_world["lake"]
    twin = lake.twin
    # Athena answers "more runs needed" to compaction: the operator runs the statement again
    twin.more_runs.update({("optimize", "transactions_silver"): 2, ("vacuum", "transactions_bronze"): 1})
    # day 1: the Athena steps defer to their triggers (which poll moto's server over HTTP);
    # day 2: the same operators poll in the worker (MLB_DEFERRABLE=0)
    runs = [localrun.run_dag(localrun.get_dag(f"{NAME}__lakehouse"), START)]
    monkeypatch.setenv("MLB_DEFERRABLE", "0")
    twin.more_runs.update({("optimize", "transactions_silver"): 1})
    dag = localrun.get_dag(f"{NAME}__lakehouse")
    assert not dag.task_dict["silver__transactions.athena"].deferrable
    runs += [localrun.run_dag(dag, START + timedelta(days=i)) for i in range(1, DAYS)]
    for dr in runs:
        bad = {ti.task_id: ti.state for ti in dr.get_task_instances() if ti.state != "success"}
        assert dr.state == "success", bad

    # what the statements wrote is what the local target wrote from the same files, and every
    # statement stayed within Athena's limits (size, partitions per write, bucket owner)
    check_same_as_local(lake, world["oracle"])
    check_within_limits(lake)

    ex = aws_world["executions"]
    kinds = [e["query"].lstrip().split(None, 1)[0].upper() for e in ex]
    assert {"DELETE", "INSERT", "MERGE", "SELECT", "UNLOAD", "OPTIMIZE", "ALTER", "VACUUM"} <= set(kinds), kinds
    for e in ex:
        assert e["workgroup"] == "mlblueprints"
        assert e["context"] == {"Database": DB, "Catalog": "AwsDataCatalog"} or e["context"].get("Database") == DB
        assert e["config"]["EncryptionConfiguration"] == {"EncryptionOption": "SSE_KMS", "KmsKey": aws_world["kms"]}
        assert e["config"]["ExpectedBucketOwner"] == ACCOUNT
    unloads = [UNLOAD.match(e["query"]) for e in ex if e["query"].startswith("UNLOAD")]
    assert unloads and all("format = 'PARQUET', compression = 'ZSTD'" in m["props"] for m in unloads)
    assert {u["format"] for u in twin.unloads} == {"PARQUET"} and {u["compression"] for u in twin.unloads} == {"ZSTD"}

    # tables: created once per run by the tables step, before any step writes
    for dr in runs:
        tis = {ti.task_id: ti for ti in dr.get_task_instances()}
        assert tis["tables"].state == "success"
        created = tis["tables"].xcom_pull(task_ids="tables")["created"]
        assert (len(created) > 10) == (dr is runs[0]), created
    assert dag.task_dict["ingest__transactions.prepare"].upstream_task_ids == {"tables"}

    # Bronze: the partial rows of a killed attempt are deleted before the files are inserted
    first_delete = kinds.index("DELETE")
    assert kinds[first_delete + 1] == "INSERT"
    inserts = [e["query"] for e in ex if e["query"].startswith("INSERT")]
    assert any("transactions_landing_csv" in q for q in inserts) and any(
        "transactions_landing_jsonl" in q for q in inserts
    )

    # compaction: the partitions the run wrote, repeated while Athena asked for more runs, then
    # VACUUM with the configured retention (7 days)
    maint = twin.maintenance
    optimizes = [m for m in maint if m["op"] == "optimize" and m["table"] == "transactions_silver"]
    assert [m.get("more_runs_needed", False) for m in optimizes][:3] == [True, True, False]
    assert all(re.fullmatch(r"event_date IN \(DATE '[\d-]+'(, DATE '[\d-]+')*\)", m["where"]) for m in optimizes)
    vacuums = [m for m in maint if m["op"] == "vacuum" and not m.get("more_runs_needed")]
    assert vacuums and all(m["retention_seconds"] == str(7 * 86400) for m in vacuums)
    assert any(m.get("more_runs_needed") for m in maint if m["op"] == "vacuum")

    s3 = boto3.client("s3", region_name=REGION)
    written = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="fraud/")["Contents"]
        if not o["Key"].startswith(("fraud/landing/", "fraud/_gates/"))
    ]
    assert any("/_manifest/" in k for k in written) and any(k.endswith(".html") for k in written)
    for key in written:  # the worker's uploads: SSE-KMS with our key, bucket keys on
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == aws_world["kms"], key
        assert head.get("BucketKeyEnabled") is True, key

    glue = boto3.client("glue", region_name=REGION)
    tables = {t["Name"] for t in glue.get_tables(DatabaseName=DB)["TableList"]}
    assert {
        "transactions_bronze",
        "transactions_silver",
        "transactions_quarantine",
        "transactions_duplicates",
        "transaction_features",
        "transactions_landing_csv",
        "transactions_landing_jsonl",
    } <= tables

    # the reconcile task read counts back from the tables and found them consistent
    rec = next(ti for ti in runs[-1].get_task_instances() if ti.task_id == "reconcile.finish")
    result = rec.xcom_pull(task_ids="reconcile.finish")
    rows = result["datasets"]["transactions"]
    assert result["ok"] and rows and all(r["landed"] > 0 and r["difference"] == 0 for r in rows)
    # the gates validated the unloaded rows with Great Expectations, in the worker
    gate = next(
        ti for ti in runs[-1].get_task_instances() if ti.task_id == "gate_silver__transactions.finish"
    ).xcom_pull(task_ids="gate_silver__transactions.finish")
    silver_rows = int(
        (lake.table("transactions_silver")["event_date"].dt.date.isin([START, START + timedelta(days=1)])).sum()
    )
    assert gate["rows"] > 0 and gate["verdict"].startswith("PASSED") and gate["docs_path"].startswith(f"s3://{BUCKET}/")
    assert gate["rows"] <= silver_rows

    # lineage: Athena cannot set Iceberg snapshot properties, so Silver, Gold and compaction write
    # a record per table they commit (run, code, config, statements, Glue metadata location)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="fraud/lineage/")["Contents"]]
    assert {"transactions_silver", "transactions_quarantine", "transaction_features"} <= {k.split("/")[2] for k in keys}
    for dr in runs:
        safe_run = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in dr.run_id)
        gold = [k for k in keys if k.startswith(f"fraud/lineage/transaction_features/{safe_run}__")]
        assert gold and all(k.endswith(("__gold.json", "__compaction.json")) for k in gold), gold
        record = json.loads(
            s3.get_object(Bucket=BUCKET, Key=next(k for k in gold if k.endswith("__gold.json")))["Body"].read()
        )
        props = record["properties"]
        assert props["mlb.run-id"] == dr.run_id and props["mlb.git-commit"] == runtime.git_commit()
        assert props["mlb.config-hash"] == aws_world["uc"].config_hash() and props["mlb.step"] == "gold"
        assert record["table"] == f"{DB}.transaction_features" and record["query_execution_ids"]


def test_service_steps_are_provider_tasks_between_prepare_and_finish(aws_world):
    """On aws every Athena step is prepare -> the provider's operator (deferrable) -> finish, with
    the step's Asset on finish; the report reads the steps' results through the finish tasks."""
    from mlblueprints.airflow import localrun
    from mlblueprints.airflow.operators import AthenaStatementsOperator

    dag = localrun.get_dag(f"{NAME}__lakehouse")
    t = dag.task_dict
    for step in ("ingest__transactions", "silver__transactions", "gate_silver__transactions", "reconcile", "compact"):
        op = t[f"{step}.athena"]
        assert isinstance(op, AthenaStatementsOperator) and op.deferrable, step
        assert t[f"{step}.prepare"].downstream_task_ids == {f"{step}.athena"}
        assert t[f"{step}.athena"].downstream_task_ids == {f"{step}.finish"}
    assert [a.name for a in t["gate_gold__transaction_features.finish"].outlets] == [f"{NAME}.transaction_features"]
    assert (
        not t["gate_gold__transaction_features.prepare"].outlets
        and not t["gate_gold__transaction_features.athena"].outlets
    )
    assert "report" in t and t["report"].trigger_rule == "all_done"


def test_botocore_validation_is_on_for_our_requests(aws_world):
    """The project's own clients - made from the Airflow connection, as a task makes them -
    validate every request: a malformed one never reaches the (mock) service."""
    from mlblueprints.airflow.runtime import connection_runtime
    from mlblueprints.features import aws as fa

    uc = aws_world["uc"]
    rt = connection_runtime(uc)
    _, fs = fa.clients(rt, uc)
    for client in (rt.client("glue"), rt.client("athena"), rt.client("s3"), rt.client("sagemaker"), fs):
        assert client.meta.config.parameter_validation is True, client.meta.service_model.service_name
    good = req.glue_iceberg_table_input(uc.aws, "t", [("a", "string"), ("d", "date")], "d", 1 << 27)
    bad = json.loads(json.dumps(good))
    bad["OpenTableFormatInput"]["IcebergInput"]["CreateIcebergTableInput"]["Schema"]["Fields"][0]["Id"] = "one"
    with pytest.raises(botocore.exceptions.ParamValidationError):
        rt.client("glue").create_table(**bad)
    with pytest.raises(botocore.exceptions.ParamValidationError):
        rt.client("athena").start_query_execution(
            **{**req.athena_start_query(uc.aws, "SELECT 1", "short"), "WorkGroup": 7}
        )
    with pytest.raises(botocore.exceptions.ParamValidationError):
        fs.put_record(FeatureGroupName=7, Record=[])  # a number where a name goes
