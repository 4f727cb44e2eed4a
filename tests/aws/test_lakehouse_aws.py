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
import duckdb
import pytest
import sqlglot
import yaml

from helpers import ROOT, runtime_home
from mlblueprints.aws import requests as req
from mlblueprints.config import load_usecase
from mlblueprints.datagen import DefectConfig, generate_fraud
from mlblueprints.lakehouse import iceberg, local, naming
from mlblueprints.lineage import RunInfo

pytestmark = [pytest.mark.aws, pytest.mark.slow]

moto = pytest.importorskip("moto")
from moto import mock_aws  # noqa: E402
from moto.athena.models import AthenaBackend, QueryResults  # noqa: E402

REGION = "eu-west-1"
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


class AthenaTwin:
    """Answers SELECT and UNLOAD statements from the local twin's Iceberg tables via DuckDB."""

    def __init__(self, uc_local, home: Path):
        self.con = duckdb.connect()
        self.con.execute(f"CREATE SCHEMA {DB}")
        with runtime_home(home):
            cat = iceberg.catalog()
            for name in [
                naming.table_name(ds, k)
                for ds in uc_local.datasets
                for k in ("bronze", "silver", "quarantine", "duplicates")
            ] + list(uc_local.gold):
                t = iceberg.load(cat, naming.identifier(uc_local, name))
                iceberg.register_view(self.con, f"_{name}", t)
                self.con.execute(f'CREATE VIEW {DB}."{name}" AS SELECT * FROM "_{name}"')

    def run(self, trino_sql: str) -> tuple[list[str], list[tuple]]:
        duck = sqlglot.transpile(trino_sql, read="trino", write="duckdb")[0]
        cur = self.con.execute(duck)
        return [d[0] for d in cur.description], cur.fetchall()


def _text(v) -> str | None:
    if v is None:
        return None
    if isinstance(v, list):
        return "[" + ", ".join(str(x) for x in v) + "]"
    return v.isoformat() if hasattr(v, "isoformat") else str(v)


UNLOAD = re.compile(r"^\s*UNLOAD\s*\((?P<body>.*)\)\s*TO\s*'(?P<target>s3://[^']+)'", re.S | re.I)


@pytest.fixture
def aws_world(world, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({"conn_type": "aws", "extra": {"region_name": REGION}}))
    monkeypatch.setenv("MLB_ATHENA_POLL_SECONDS", "0")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MLB_HOME", str(home))
    twin = AthenaTwin(world["uc_local"], world["twin_home"])
    executions: list[dict] = []
    original = AthenaBackend.start_query_execution

    def start_query_execution(self, query, context, config, workgroup, execution_parameters):
        exec_id = original(self, query, context, config, workgroup, execution_parameters)
        executions.append({"query": query, "context": context, "config": config, "workgroup": workgroup})
        m = UNLOAD.match(query)
        head = query.lstrip().split(None, 1)[0].upper()
        if m:  # Athena would write the rows as Parquet under the target prefix
            cols, rows = twin.run(m["body"])
            local_file = tmp_path / f"unload-{exec_id}.parquet"
            twin.con.execute(
                f"COPY ({sqlglot.transpile(m['body'], read='trino', write='duckdb')[0]}) TO '{local_file}' (FORMAT parquet)"
            )
            bucket, key = req.split_s3_uri(m["target"])
            boto3.client("s3", region_name=REGION).upload_file(
                str(local_file),
                bucket,
                key + f"{exec_id}.parquet",
                ExtraArgs={"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_arn["arn"]},
            )
        elif head in ("SELECT", "WITH"):
            cols, rows = twin.run(query)
            header = {"Data": [{"VarCharValue": c} for c in cols]}
            data = [{"Data": [{"VarCharValue": _text(v)} if v is not None else {} for v in r]} for r in rows]
            self.query_results[exec_id] = QueryResults(
                rows=[header, *data], column_info=[{"Name": c, "Type": "varchar"} for c in cols]
            )
        return exec_id

    kms_arn: dict[str, str] = {}
    monkeypatch.setattr(AthenaBackend, "start_query_execution", start_query_execution)
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        kms_arn["arn"] = boto3.client("kms", region_name=REGION).create_key(Description="lake")["KeyMetadata"]["Arn"]
        boto3.client("athena", region_name=REGION).create_work_group(
            Name="mlblueprints", Configuration={"ResultConfiguration": {"OutputLocation": f"s3://{BUCKET}/athena/"}}
        )
        for p in world["landing"].rglob("*"):
            if p.is_file() and "_generator" not in p.parts:
                s3.upload_file(str(p), BUCKET, f"fraud/landing/{p.relative_to(world['landing']).as_posix()}")
        usecases = tmp_path / "usecases"
        usecases.mkdir()
        data = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
        data.update(name=NAME, target="aws", retry_delay_seconds=0)
        data["aws"].update(region=REGION, bucket=BUCKET, prefix="fraud", glue_database=DB, kms_key_arn=kms_arn["arn"])
        data["gold"]["transaction_features"]["sql"] = str(
            ROOT / "dags/usecases/sql/fraud_detection/transaction_features.sql"
        )
        (usecases / f"{NAME}.yaml").write_text(yaml.safe_dump(data))
        expectations = tmp_path / "expectations"
        shutil.copytree(ROOT / "expectations/fraud_detection", expectations / NAME)
        for f in (expectations / NAME).glob("*.json"):
            suite = json.loads(f.read_text())
            suite["name"] = f"{NAME}/{f.stem}"
            f.write_text(json.dumps(suite))
        monkeypatch.setenv("MLB_USECASES_DIR", str(usecases))
        monkeypatch.setenv("MLB_EXPECTATIONS_DIR", str(expectations))
        yield {
            "executions": executions,
            "kms": kms_arn["arn"],
            "uc": load_usecase(usecases / f"{NAME}.yaml"),
            "home": home,
        }


def test_lakehouse_dag_on_aws_under_moto(aws_world):
    from mlblueprints.airflow import localrun

    dag = localrun.get_dag(f"{NAME}__lakehouse")
    runs = [localrun.run_dag(dag, START + timedelta(days=i)) for i in range(DAYS)]
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
    rec = next(ti for ti in runs[-1].get_task_instances() if ti.task_id == "reconcile")
    result = rec.xcom_pull(task_ids="reconcile")
    rows = result["datasets"]["transactions"]
    assert result["ok"] and rows and all(r["landed"] > 0 and r["difference"] == 0 for r in rows)
    # the gates validated the unloaded rows with Great Expectations, in the worker
    gate = next(ti for ti in runs[-1].get_task_instances() if ti.task_id == "gate_silver__transactions").xcom_pull(
        task_ids="gate_silver__transactions"
    )
    assert gate["rows"] > 0 and gate["verdict"].startswith("PASSED") and gate["docs_path"].startswith(f"s3://{BUCKET}/")


def test_botocore_validation_is_on_for_our_requests(aws_world):
    """A malformed request never reaches the (mock) service: botocore rejects it."""
    uc = aws_world["uc"]
    glue = boto3.client("glue", region_name=REGION)
    good = req.glue_iceberg_table_input(uc.aws, "t", [("a", "string"), ("d", "date")], "d", 1 << 27)
    bad = json.loads(json.dumps(good))
    bad["OpenTableFormatInput"]["IcebergInput"]["CreateIcebergTableInput"]["Schema"]["Fields"][0]["Id"] = "one"
    with pytest.raises(botocore.exceptions.ParamValidationError):
        glue.create_table(**bad)
    athena = boto3.client("athena", region_name=REGION)
    with pytest.raises(botocore.exceptions.ParamValidationError):
        athena.start_query_execution(**{**req.athena_start_query(uc.aws, "SELECT 1", "short"), "WorkGroup": 7})
