"""The features DAG on the aws target through dag.test() under moto (in process), botocore validating.

``<usecase>__features`` (plan -> materialize__<view> -> report) runs as Airflow runs it, for a use
case derived from dags/usecases/fraud_detection.yaml with ``target: aws``, against the twins of
``test_features_aws.py``:

* ``sagemaker`` CreateFeatureGroup / DescribeFeatureGroup go to moto (patched by
  ``sagemaker_like_aws`` where moto differs from SageMaker: it drops ``OnlineStoreConfig`` and
  raises ``KeyError`` for an unknown group);
* moto 5.2.5 does not implement ``sagemaker-featurestore-runtime`` at all, so PutRecord cannot go
  to moto: the task's own clients (made by ``AwsFeatures.clients`` from the Airflow connection's
  session, botocore validation on) send every request, and ``FeatureStoreTwin`` - attached to that
  session before the clients are made - answers them in memory, validating each once more;
* Athena runs no SQL under moto: the Athena twin answers the UNLOAD and the SELECT of each view
  from DuckDB over a Gold table the local target built (the ``lake`` fixture).
"""

from __future__ import annotations

import copy
import json

import boto3
import botocore.session
import pytest
import yaml
from botocore.validate import validate_parameters
from test_features_aws import (  # noqa: F401  (lake and sagemaker_like_aws are fixtures used here)
    BUCKET,
    DB,
    GOLD,
    HI,
    LO,
    REGION,
    AthenaTwin,
    FeatureStoreTwin,
    _expected,
    _glue_gold,
    lake,
    sagemaker_like_aws,
)

from helpers import ROOT
from mlblueprints.config import load_usecase
from mlblueprints.features import core

pytestmark = [pytest.mark.aws, pytest.mark.slow]

moto = pytest.importorskip("moto")
from moto import mock_aws  # noqa: E402
from moto.athena.models import AthenaBackend  # noqa: E402

# not the lakehouse aws test's name: Asset names are global in the metadata DB, and the same
# name with another bucket would make that test's Assets inactive
NAME = "fraud_features_aws"
VIEWS = ("card_activity", "merchant_activity")  # the views the shipped use case declares


@pytest.fixture
def dag_world(lake, sagemaker_like_aws, airflow_db, monkeypatch, tmp_path):  # noqa: F811
    """moto, the Athena and Feature Store twins, an Airflow AWS connection, and an aws use case
    YAML (the shipped one with ``target: aws``) in a temp MLB_USECASES_DIR."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({"conn_type": "aws", "extra": {"region_name": REGION}}))
    monkeypatch.setenv("MLB_ATHENA_POLL_SECONDS", "0")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MLB_HOME", str(home))

    twin = AthenaTwin(lake, tmp_path)
    original_start = AthenaBackend.start_query_execution

    def start_query_execution(self, query, context, config, workgroup, execution_parameters):
        exec_id = original_start(self, query, context, config, workgroup, execution_parameters)
        twin.answer(self, exec_id, query, context, config, workgroup)
        return exec_id

    monkeypatch.setattr(AthenaBackend, "start_query_execution", start_query_execution)

    # moto 5.2.5 does not implement sagemaker-featurestore-runtime (PutRecord answers "Not yet
    # implemented"), so the PutRecord requests are answered by the in-memory FeatureStoreTwin of
    # test_features_aws.py. The task builds its clients from the connection's session
    # (AwsFeatures.clients): the twin is attached to that session before the real clients are made
    # from it, so botocore still validates every request; CreateFeatureGroup goes to moto and its
    # parameters are kept as sent.
    from mlblueprints.airflow.aws_features import AwsFeatures

    store = FeatureStoreTwin()
    created: list[dict] = []
    clients: list = []
    original_clients = AwsFeatures.clients

    def keep_create(params, **_):
        created.append(copy.deepcopy(params))

    def task_clients(self, session):
        store.attach(session)
        session.events.register("before-parameter-build.sagemaker.CreateFeatureGroup", keep_create)
        made = original_clients(self, session)
        clients.extend(made)
        return made

    monkeypatch.setattr(AwsFeatures, "clients", task_clients)

    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        kms = boto3.client("kms", region_name=REGION).create_key(Description="features")["KeyMetadata"]["Arn"]
        twin.kms = kms
        boto3.client("athena", region_name=REGION).create_work_group(
            Name="mlblueprints", Configuration={"ResultConfiguration": {"OutputLocation": f"s3://{BUCKET}/athena/"}}
        )
        usecases = tmp_path / "usecases"
        usecases.mkdir()
        data = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
        data.update(name=NAME, target="aws", retry_delay_seconds=0)
        data["gold"][GOLD]["sql"] = str(ROOT / "dags/usecases/sql/fraud_detection/transaction_features.sql")
        # glue_database: the database the Athena twin serves Gold from
        data["aws"].update(region=REGION, bucket=BUCKET, prefix="fraud", glue_database=DB, kms_key_arn=kms)
        data["aws"]["feature_store"] = {"put_record_workers": 4}
        (usecases / f"{NAME}.yaml").write_text(yaml.safe_dump(data))
        monkeypatch.setenv("MLB_USECASES_DIR", str(usecases))
        uc = load_usecase(usecases / f"{NAME}.yaml")
        assert set(uc.features) == set(VIEWS) and all(uc.view_target(v) == "aws" for v in VIEWS)
        _glue_gold(uc)  # the Gold table as the lakehouse DAG leaves it in Glue
        yield {
            "uc": uc,
            "kms": kms,
            "home": home,
            "athena": twin,
            "store": store,
            "created": created,
            "clients": clients,
        }


def test_features_dag_on_aws_under_moto(dag_world, lake):  # noqa: F811
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from mlblueprints.airflow import localrun

    uc, store, kms = dag_world["uc"], dag_world["store"], dag_world["kms"]
    # one throttled PutRecord: retried by the task (the runtime client itself does not retry)
    store.faults[lake["dup_card"]] = ["ThrottlingException"]

    dag = localrun.get_dag(f"{NAME}__features")
    dr = dag.test(run_conf={"event_dates": [LO.isoformat(), HI.isoformat()]})
    tis = {ti.task_id: ti for ti in dr.get_task_instances()}
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    assert set(tis) == {"plan", "report", *(f"materialize__{v}" for v in VIEWS)}
    plan = tis["plan"].xcom_pull(task_ids="plan")
    assert plan == {"range": [LO.isoformat(), HI.isoformat()], "views": sorted(VIEWS), "source": "param event_dates"}
    outs = {v: tis[f"materialize__{v}"].xcom_pull(task_ids=f"materialize__{v}") for v in VIEWS}

    # the task's clients: made from the connection's session, botocore's parameter validation on
    services = sorted(c.meta.service_model.service_name for c in dag_world["clients"])
    assert services == ["sagemaker", "sagemaker", "sagemaker-featurestore-runtime", "sagemaker-featurestore-runtime"]
    assert all(c.meta.config.parameter_validation for c in dag_world["clients"])

    # CreateFeatureGroup: one request per view, valid against the service model; moto holds the groups
    sm_model = botocore.session.get_session().get_service_model("sagemaker")
    created = {r["FeatureGroupName"]: r for r in dag_world["created"]}
    assert (
        sorted(created)
        == sorted(core.feature_group_name(uc, v) for v in VIEWS)
        == sorted(f"{NAME.replace('_', '-')}-{v.replace('_', '-')}-v1" for v in VIEWS)
    )
    sm = boto3.client("sagemaker", region_name=REGION)
    for view in VIEWS:
        group = core.feature_group_name(uc, view)
        request = created[group]
        validate_parameters(request, sm_model.operation_model("CreateFeatureGroup").input_shape)
        assert request["RecordIdentifierFeatureName"] == uc.features[view].entity[0]
        assert request["EventTimeFeatureName"] == "event_time"
        assert request["OnlineStoreConfig"] == {
            "EnableOnlineStore": True,
            "SecurityConfig": {"KmsKeyId": kms},
            "TtlDuration": {"Unit": "Weeks", "Value": 1},  # ttl: 7d
        }
        assert request["OfflineStoreConfig"]["DataCatalogConfig"] == {
            "Catalog": "AwsDataCatalog",
            "Database": DB,
            "TableName": f"fv_{view}_v1",
        }
        tags = {t["Key"]: t["Value"] for t in request["Tags"]}
        assert tags["mlblueprints:usecase"] == NAME and tags["mlblueprints:view"] == view
        got = sm.describe_feature_group(FeatureGroupName=group)
        assert got["FeatureGroupStatus"] == "Created" and got["FeatureGroupArn"] == outs[view]["feature_group_arn"]
        assert got["FeatureDefinitions"] == request["FeatureDefinitions"]
        offline = got["OfflineStoreConfig"]
        assert offline["TableFormat"] == "Iceberg"
        assert offline["S3StorageConfig"]["S3Uri"] == f"s3://{BUCKET}/fraud/feature-store"
        assert offline["S3StorageConfig"]["KmsKeyId"] == kms
        assert got["RoleArn"] == uc.aws.iam_role_arn == "arn:aws:iam::123456789012:role/mlblueprints-execution"
        assert got["OnlineStoreConfig"] == request["OnlineStoreConfig"]  # kept by sagemaker_like_aws

    # PutRecord: every request valid against the service model, counts as the XCom summary says
    rt_model = botocore.session.get_session().get_service_model("sagemaker-featurestore-runtime")
    put_shape = rt_model.operation_model("PutRecord").input_shape
    for p in store.puts:
        validate_parameters(p, put_shape)
        assert p["TargetStores"] in (["OfflineStore"], ["OnlineStore"])
    assert store.failed_attempts == 1
    retried = 0
    for view in VIEWS:
        out, exp = outs[view], _expected(lake, uc, view)
        group = core.feature_group_name(uc, view)
        offline_puts = [
            p for p in store.puts if p["FeatureGroupName"] == group and p["TargetStores"] == ["OfflineStore"]
        ]
        online_puts = [p for p in store.puts if p["FeatureGroupName"] == group and p["TargetStores"] == ["OnlineStore"]]
        assert out["target"] == "aws" and out["feature_group"] == group and out["feature_group_created"] is True
        assert len(offline_puts) == out["put_record"]["offline"]["sent"] == out["offline_rows"] == exp["offline_rows"]
        assert len(online_puts) == out["put_record"]["online"]["sent"] == out["online_entities"]
        assert (
            out["online_entities"]
            == exp["online_entities"]
            == len({p["Record"][0]["ValueAsString"] for p in online_puts})
        )
        for k in ("rows_in", "skipped_null_key", "skipped_null_event_time", "collapsed_duplicates"):
            assert out[k] == exp[k], (view, k)
        retried += out["put_record"]["offline"]["retried"] + out["put_record"]["online"]["retried"]
        assert out["run_id"] == dr.run_id and out["try_number"] == 1
    assert retried == store.failed_attempts
    assert len(store.puts) == sum(o["offline_rows"] + o["online_entities"] for o in outs.values())

    # Athena: two statements per view, our workgroup and database, results encrypted with our key
    executions = dag_world["athena"].executions
    assert len(executions) == 2 * len(VIEWS)
    for e in executions:
        assert e["workgroup"] == "mlblueprints" and e["context"].get("Database") == DB
        assert e["config"]["EncryptionConfiguration"] == {"EncryptionOption": "SSE_KMS", "KmsKey": kms}
    s3 = boto3.client("s3", region_name=REGION)
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="fraud/_features/").get("KeyCount") == 0, "staging not deleted"

    # the materialize tasks emitted the view Assets, with the range in their extra
    with create_session() as session:
        events = session.execute(
            select(AssetModel.name, AssetEvent.source_task_id, AssetEvent.extra)
            .join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
            .where(AssetEvent.source_dag_id == f"{NAME}__features", AssetEvent.source_run_id == dr.run_id)
        ).all()
    assert sorted((n, t) for n, t, _ in events) == sorted((f"{NAME}.features.{v}", f"materialize__{v}") for v in VIEWS)
    for _, _, extra in events:
        assert extra["range"] == [LO.isoformat(), HI.isoformat()] and extra["version"] == 1

    # the report: JSON under MLB_HOME/runs/<usecase>/features/, with the tasks' results
    reports = dag_world["home"] / "runs" / NAME / "features"
    [path] = reports.glob("*.json")
    assert tis["report"].xcom_pull(task_ids="report") == {"report": str(path)}
    report = json.loads(path.read_text())
    assert report["usecase"] == NAME and report["run_id"] == dr.run_id and report["missing"] == []
    assert report["tasks"]["plan"] == plan
    for view in VIEWS:
        assert report["tasks"][f"materialize__{view}"]["put_record"] == outs[view]["put_record"]
        assert view in report["text"] and outs[view]["feature_group"] in report["text"]
    assert (reports / "latest.txt").read_text().strip() == report["text"].strip()
