"""The aws target through dag.test() under moto (in process), botocore validating every request.

moto stores what the DAG sends (S3 objects, Glue tables, Athena executions) but does not run
SQL. To exercise the steps that read query results (Silver statistics, reconciliation, the
UNLOAD a gate validates), Athena's answers to those SELECTs come from a twin: the tables the
local target built from the same landed files, queried with DuckDB after sqlglot turns the
Trino SQL back into DuckDB SQL. Statements that write (MERGE, INSERT, DELETE, OPTIMIZE) are only
recorded and checked: that the SQL parses as Trino, that results are encrypted with the use
case's KMS key, that requests go to the configured workgroup and database.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import date, timedelta
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
import sqlglot
import yaml
from moto_world import REGION, UNLOAD, AthenaTwin

from helpers import ROOT, runtime_home
from mlblueprints.aws import requests as req
from mlblueprints.config import load_usecase
from mlblueprints.datagen import DefectConfig, generate_fraud
from mlblueprints.lakehouse import iceberg, local, naming
from mlblueprints.lineage import RunInfo

pytestmark = [pytest.mark.aws, pytest.mark.slow]

moto = pytest.importorskip("moto")

BUCKET = "mlb-test-lake"
DB = "fraud_lake"
START = date(2024, 3, 1)
DAYS = 2
NAME = "fraud_detection_aws"


@pytest.fixture(scope="module")
def world(tmp_path_factory, airflow_db):
    """Landing files, the local twin built from them, and an aws use case YAML."""
    base = tmp_path_factory.mktemp("aws")
    landing = base / "landing"
    generate_fraud(
        landing,
        start=START,
        days=DAYS,
        rows=3000,
        seed=5,
        defects=DefectConfig(malformed_record=2e-3, invalid_type=2e-3, exact_duplicate=2e-3),
    )
    twin_home = base / "twin"
    shutil.copytree(landing, twin_home / "landing")
    uc_local = load_usecase(ROOT / "dags/usecases/fraud_detection.yaml")
    with runtime_home(twin_home):
        for i in range(DAYS):
            d = START + timedelta(days=i)
            run = RunInfo.for_usecase(uc_local, run_id=f"twin-{d}")
            touched = {}
            for ds in uc_local.datasets:
                local.ingest_bronze(uc_local, ds, [d], run)
                touched[ds] = local.build_silver(uc_local, ds, [d], run)["touched_event_dates"]
            local.build_gold(uc_local, "transaction_features", touched, run)
    return {"base": base, "landing": landing, "twin_home": twin_home, "uc_local": uc_local}


def twin_of(world: dict, tmp: Path, kms: str) -> AthenaTwin:
    """The Athena twin over the tables the local target built from the same landed files."""
    twin = AthenaTwin(DB, tmp, kms)
    uc_local = world["uc_local"]
    with runtime_home(world["twin_home"]):
        cat = iceberg.catalog()
        for name in [
            naming.table_name(ds, k)
            for ds in uc_local.datasets
            for k in ("bronze", "silver", "quarantine", "duplicates")
        ] + list(uc_local.gold):
            iceberg.register_view(twin.con, f"_{name}", iceberg.load(cat, naming.identifier(uc_local, name)))
            twin.con.execute(f'CREATE VIEW {DB}."{name}" AS SELECT * FROM "_{name}"')
    return twin


@pytest.fixture
def aws_world(world, moto_world, monkeypatch):
    mw = moto_world
    mw.bucket(BUCKET)
    kms = mw.kms_key("lake")
    mw.workgroup(BUCKET)
    twin = twin_of(world, mw.tmp, kms).install(monkeypatch)
    s3 = boto3.client("s3", region_name=REGION)
    for p in world["landing"].rglob("*"):
        if p.is_file() and "_generator" not in p.parts:
            s3.upload_file(str(p), BUCKET, f"fraud/landing/{p.relative_to(world['landing']).as_posix()}")
    usecases = mw.tmp / "usecases"
    usecases.mkdir()
    data = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    data.update(name=NAME, target="aws", retry_delay_seconds=0)
    data["aws"].update(region=REGION, bucket=BUCKET, prefix="fraud", glue_database=DB, kms_key_arn=kms)
    data["gold"]["transaction_features"]["sql"] = str(
        ROOT / "dags/usecases/sql/fraud_detection/transaction_features.sql"
    )
    (usecases / f"{NAME}.yaml").write_text(yaml.safe_dump(data))
    expectations = mw.tmp / "expectations"
    shutil.copytree(ROOT / "expectations/fraud_detection", expectations / NAME)
    for f in (expectations / NAME).glob("*.json"):
        suite = json.loads(f.read_text())
        suite["name"] = f"{NAME}/{f.stem}"
        f.write_text(json.dumps(suite))
    monkeypatch.setenv("MLB_USECASES_DIR", str(usecases))
    monkeypatch.setenv("MLB_EXPECTATIONS_DIR", str(expectations))
    yield {"executions": twin.executions, "kms": kms, "uc": load_usecase(usecases / f"{NAME}.yaml"), "home": mw.home}


def test_lakehouse_dag_on_aws_under_moto(aws_world, monkeypatch):
    from mlblueprints import runtime
    from mlblueprints.airflow import localrun

    # day 1: the Athena steps defer to their triggers (which poll moto's server over HTTP);
    # day 2: the same operators poll in the worker (MLB_DEFERRABLE=0)
    runs = [localrun.run_dag(localrun.get_dag(f"{NAME}__lakehouse"), START)]
    monkeypatch.setenv("MLB_DEFERRABLE", "0")
    dag = localrun.get_dag(f"{NAME}__lakehouse")
    assert not dag.task_dict["silver__transactions.athena"].deferrable
    runs += [localrun.run_dag(dag, START + timedelta(days=i)) for i in range(1, DAYS)]
    for dr in runs:
        bad = {ti.task_id: ti.state for ti in dr.get_task_instances() if ti.state != "success"}
        assert dr.state == "success", bad
    ex = aws_world["executions"]
    kinds = [e["query"].lstrip().split(None, 1)[0].upper() for e in ex]
    assert {"DELETE", "INSERT", "MERGE", "SELECT", "UNLOAD", "OPTIMIZE"} <= set(kinds), kinds

    # every statement: valid Trino, our workgroup and database, results encrypted with our key
    for e in ex:
        q = e["query"]
        m = UNLOAD.match(q)
        if m:
            sqlglot.parse_one(m["body"], read="trino", error_level=sqlglot.ErrorLevel.RAISE)
        elif q.lstrip().upper().startswith("OPTIMIZE"):
            assert re.fullmatch(r'OPTIMIZE "fraud_lake"\."\w+" REWRITE DATA USING BIN_PACK', q), q
        else:
            tree = sqlglot.parse_one(q, read="trino", error_level=sqlglot.ErrorLevel.RAISE)
            assert not isinstance(tree, sqlglot.exp.Command), q[:200]
        assert e["workgroup"] == "mlblueprints"
        assert e["context"] == {"Database": DB, "Catalog": "AwsDataCatalog"} or e["context"].get("Database") == DB
        enc = e["config"]["EncryptionConfiguration"]
        assert enc == {"EncryptionOption": "SSE_KMS", "KmsKey": aws_world["kms"]}, e["config"]

    # Bronze: the partial rows of a killed attempt are deleted before the files are inserted
    first_delete = kinds.index("DELETE")
    assert kinds[first_delete + 1] == "INSERT"
    inserts = [e["query"] for e in ex if e["query"].startswith("INSERT")]
    assert any("transactions_landing_csv" in q for q in inserts) and any(
        "transactions_landing_jsonl" in q for q in inserts
    )
    # Silver: quarantine, duplicates and Silver are MERGEs keyed on record identity / primary key
    merges = [e["query"] for e in ex if e["query"].startswith("MERGE")]
    assert any(
        'MERGE INTO "fraud_lake"."transactions_silver"' in q and 't."transaction_id" = s."transaction_id"' in q
        for q in merges
    )
    assert any('"transaction_features"' in q for q in merges), "Gold ran on the event dates the twin reported"

    s3 = boto3.client("s3", region_name=REGION)
    written = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="fraud/")["Contents"]
        if not o["Key"].startswith(("fraud/landing/", "fraud/_gates/"))
    ]
    assert any("/_manifest/" in k for k in written) and any(k.endswith(".html") for k in written)
    for key in written:
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == aws_world["kms"], key

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

    # the reconcile task read counts back from (the twin of) the tables and found them consistent
    rec = next(ti for ti in runs[-1].get_task_instances() if ti.task_id == "reconcile.finish")
    result = rec.xcom_pull(task_ids="reconcile.finish")
    rows = result["datasets"]["transactions"]
    assert result["ok"] and rows and all(r["landed"] > 0 and r["difference"] == 0 for r in rows)
    # the gates validated the unloaded rows with Great Expectations, in the worker
    gate = next(
        ti for ti in runs[-1].get_task_instances() if ti.task_id == "gate_silver__transactions.finish"
    ).xcom_pull(task_ids="gate_silver__transactions.finish")
    assert gate["rows"] > 0 and gate["verdict"].startswith("PASSED") and gate["docs_path"].startswith(f"s3://{BUCKET}/")

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
