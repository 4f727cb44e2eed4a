"""The training DAG on the aws target through dag.test() under moto (in process), botocore validating.

``<usecase>__training`` (training_set -> train -> evaluate -> register -> report) runs as Airflow
runs it, for a use case derived from dags/usecases/fraud_detection.yaml with ``target: aws``:

* Athena runs no SQL under moto: the Athena twin of ``test_features_aws.py`` answers the UNLOADs
  from DuckDB over the Gold table the local target built (``lake``) and over the feature views'
  offline stores in SageMaker Feature Store's layout (ISO-8601 text event times, Integral /
  Fractional / String columns, ``write_time``, ``api_invocation_time``, ``is_deleted``), made
  from the local target's offline stores plus stale appended writes the dedupe must drop. The
  training set built on aws must equal the local builder's, row for row.
* SageMaker: CreateTrainingJob / DescribeTrainingJob and CreateModelPackage(Group) go to moto,
  whose requests are kept as sent (and validated again against botocore's service model). moto
  marks a training job Completed at once and runs nothing, so the job's output is put where
  SageMaker would leave it: a real model.tar.gz - trained here on the same train split by the
  real training script (``mlblueprints.training.local.run_training_job``) - at the
  ``ModelArtifacts`` path moto's DescribeTrainingJob reports; and moto's answer gets the training
  and billable seconds SageMaker reports for a Spot job (moto has neither).
* MLflow stays on the local SQLite store (no tracking server ARN in the YAML).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import shutil
import tarfile
from datetime import date, timedelta
from pathlib import Path

import boto3
import botocore.session
import duckdb
import pandas as pd
import pytest
import sqlglot
import yaml
from botocore.validate import validate_parameters
from moto_world import REGION, AthenaTwin

from helpers import ROOT, runtime_home
from mlblueprints import runtime
from mlblueprints.aws import featurestore as fsreq
from mlblueprints.aws import requests as req
from mlblueprints.aws import training as tr
from mlblueprints.config import load_usecase
from mlblueprints.datagen import DefectConfig, generate_fraud
from mlblueprints.features import core
from mlblueprints.lakehouse import iceberg, local, naming
from mlblueprints.lakehouse.aws import gold_columns
from mlblueprints.lineage import RunInfo

pytestmark = [pytest.mark.aws, pytest.mark.slow]

moto = pytest.importorskip("moto")

# not another aws test's name: Asset names are global in the metadata DB
NAME = "fraud_training_aws"
BUCKET = "mlb-test-training"
DB = "fraud_training_lake"
PREFIX = "fraud"
GOLD = "transaction_features"
TS = "fraud_training"
VIEWS = ("card_activity", "merchant_activity")
START, DAYS = date(2024, 3, 1), 2
LO, HI = START, START + timedelta(days=DAYS - 1)
STALE = -999  # the feature value of stale appended writes; never in a training set
TRAINING_SECONDS, BILLABLE_SECONDS = 1000, 300  # what SageMaker reports for the Spot job


def _usecase_data(target: str, kms: str = "arn:aws:kms:eu-west-1:123456789012:key/test") -> dict:
    data = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    data.update(name=NAME, target=target, retry_delay_seconds=0)
    data["gold"][GOLD]["sql"] = str(ROOT / "dags/usecases/sql/fraud_detection/transaction_features.sql")
    data["training"].update(num_boost_round=30, checkpoint_interval_seconds=0, holdout_days=1)
    # the plumbing is under test, not the model: the first model passes the gate
    data["training"]["gate"].update(min_improvement=0.0, baseline={"pr_auc": 0.0, "roc_auc": 0.0})
    data["aws"].update(region=REGION, bucket=BUCKET, prefix=PREFIX, glue_database=DB, kms_key_arn=kms)
    return data


def _write_usecase(directory: Path, data: dict):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_usecase(path)


def _tar_gz(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(directory.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=p.relative_to(directory).as_posix())
    return buf.getvalue()


def _model_archives(uc_local, job: Path) -> dict[str, bytes]:
    """model.tar.gz and output.tar.gz as the SageMaker job of the use case leaves them: the real
    training script, run by the local runner on the local target's train split in ``job/train``."""
    from mlblueprints.training.core import hyperparameters
    from mlblueprints.training.local import run_training_job

    out = run_training_job(
        job / "try-1", job / "train", hyperparameters(uc_local), checkpoint_dir=job / "checkpoints", interrupt=None
    )
    return {
        "model.tar.gz": _tar_gz(Path(out["model_dir"])),  # /opt/ml/model
        "output.tar.gz": _tar_gz(Path(out["output_dir"])),  # /opt/ml/output/data
    }


def _store_layout(uc, view: str, relation: str) -> str:
    """SELECT of a local offline store in Feature Store's offline layout (one write per row)."""
    cols = core.resolve_columns(uc, view, dict(gold_columns(uc, GOLD)))
    out = [f'"{k}"' for k in cols.entity_names]
    out.append("strftime(event_time, '%Y-%m-%dT%H:%M:%SZ') AS event_time")
    for f, t in cols.features:
        out.append(f'CAST("{f}" AS {"DOUBLE" if fsreq.FEATURE_TYPE[t] == "Fractional" else "BIGINT"}) AS "{f}"')
    out += [
        "TIMESTAMP '2024-03-05 10:00:00' AS write_time",
        "TIMESTAMP '2024-03-05 09:59:59' AS api_invocation_time",
        "FALSE AS is_deleted",
    ]
    return f"SELECT {', '.join(out)} FROM {relation}"


@pytest.fixture(scope="module")
def lake(tmp_path_factory, airflow_db):
    """Gold, offline stores and the training set of the local target for two days; the train
    split and the model a SageMaker job would make from it."""
    from mlblueprints.features import local as flocal
    from mlblueprints.training import dataset

    base = tmp_path_factory.mktemp("training_aws")
    home = base / "home"
    generate_fraud(home / "landing", start=START, days=DAYS, rows=3000, seed=3, defects=DefectConfig.none())
    uc_local = _write_usecase(base / "local", _usecase_data("local"))
    with runtime_home(home):
        for i in range(DAYS):
            d = START + timedelta(days=i)
            run = RunInfo.for_usecase(uc_local, run_id=f"lake-{d}")
            touched = {}
            for ds in uc_local.datasets:
                local.ingest_bronze(uc_local, ds, [d], run)
                touched[ds] = local.build_silver(uc_local, ds, [d], run)["touched_event_dates"]
            local.build_gold(uc_local, GOLD, touched, run)
        run = RunInfo.for_usecase(uc_local, run_id="lake-features")
        for v in VIEWS:
            flocal.materialize(uc_local, v, LO, HI, run)
        ts = flocal.build_training_set(uc_local, TS, run)
        expected = iceberg.load(iceberg.catalog(), naming.identifier(uc_local, core.training_table(TS)))
        expected = expected.scan().to_arrow().to_pandas()
        job = base / "job"
        split = dataset.split(uc_local, ts["snapshot_id"], job)
        archives = _model_archives(uc_local, job)
        tables = {
            GOLD: iceberg.load(iceberg.catalog(), naming.identifier(uc_local, GOLD)),
            **{
                core.offline_table(uc_local, v): iceberg.load(
                    iceberg.catalog(), naming.identifier(uc_local, core.offline_table(uc_local, v))
                )
                for v in VIEWS
            },
        }
        con = duckdb.connect()
        con.execute(f"CREATE SCHEMA {DB}")
        for name, t in tables.items():
            iceberg.register_view(con, f"_{name}", t)
        con.execute(f'CREATE TABLE {DB}."{GOLD}" AS SELECT * FROM "_{GOLD}"')
        stale = {}
        for v in VIEWS:
            off = core.offline_table(uc_local, v)
            con.execute(f'CREATE TABLE {DB}."{off}" AS {_store_layout(uc_local, v, f"_{off}")}')
            # Feature Store is append-only: an earlier materialization of the same rows, written
            # before the current one, with other values - readers must keep the newest write
            first = uc_local.features[v].features[0]
            con.execute(
                f'INSERT INTO {DB}."{off}" SELECT * REPLACE ({STALE} AS "{first}", '
                "write_time - INTERVAL 1 DAY AS write_time, api_invocation_time - INTERVAL 1 DAY AS api_invocation_time) "
                f'FROM {DB}."{off}" USING SAMPLE 20 PERCENT (bernoulli, 1)'
            )
            stale[v] = con.execute(f'SELECT count(*) FROM {DB}."{off}" WHERE "{first}" = {STALE}').fetchone()[0]
            assert stale[v] > 0
    return {
        "home": home,
        "uc_local": uc_local,
        "expected": expected,
        "ts_local": ts,
        "split": split,
        "archives": archives,
        "con": con,
        "stale": stale,
    }


def _glue_tables(uc) -> dict[str, str]:
    """The Gold table and the views' offline stores as Glue lists them (moto keeps what it is
    given); returns their Iceberg metadata locations."""
    glue = boto3.client("glue", region_name=REGION)
    glue.create_database(DatabaseInput=req.glue_database_input(uc.aws, "training test"))
    locations = {}
    tables = {GOLD: [{"Name": n, "Type": t} for n, t in gold_columns(uc, GOLD)]}
    for v in VIEWS:
        cols = core.resolve_columns(uc, v, dict(gold_columns(uc, GOLD)))
        glue_type = {"Integral": "bigint", "Fractional": "double", "String": "string"}
        types = fsreq.feature_types(cols)
        tables[core.offline_table(uc, v)] = [
            *({"Name": n, "Type": glue_type[fsreq.FEATURE_TYPE[types[n]]]} for n in fsreq.feature_names(cols)),
            {"Name": "write_time", "Type": "timestamp"},
            {"Name": "api_invocation_time", "Type": "timestamp"},
            {"Name": "is_deleted", "Type": "boolean"},
        ]
    for name, cols in tables.items():
        location = uc.aws.s3_uri("warehouse", name)
        locations[name] = f"{location}/metadata/00007-{abs(hash(name)) % 10**8:08d}.metadata.json"
        glue.create_table(
            DatabaseName=DB,
            TableInput={
                "Name": name,
                "TableType": "EXTERNAL_TABLE",
                "Parameters": {"table_type": "ICEBERG", "metadata_location": locations[name]},
                "StorageDescriptor": {"Columns": cols, "Location": location},
            },
        )
    return locations


@pytest.fixture
def dag_world(lake, moto_world, airflow_db, monkeypatch):
    """moto (its server behind the Airflow connection) with the Athena twin and SageMaker's
    training output, and the aws use case YAML in a temp MLB_USECASES_DIR."""
    from moto.sagemaker import models as sm_models
    from moto.sagemaker.responses import SageMakerResponse

    from mlblueprints.training.aws import AwsTrainer

    mw = moto_world
    mw.bucket(BUCKET)
    kms = mw.kms_key("training")
    mw.workgroup(BUCKET)
    twin = AthenaTwin(DB, mw.tmp, kms, con=lake["con"]).install(monkeypatch)

    sent: dict[str, list[dict]] = {"CreateTrainingJob": [], "CreateModelPackageGroup": [], "CreateModelPackage": []}

    def keep(action: str, method):
        def handler(self):
            sent[action].append(json.loads(self.body))
            return method(self)

        return handler

    create_job = SageMakerResponse.create_training_job

    def create_training_job(self):
        out = keep("CreateTrainingJob", create_job)(self)
        # moto marks the job Completed without running it; SageMaker would leave the job's
        # /opt/ml/model as model.tar.gz (and /opt/ml/output/data as output.tar.gz) under
        # <S3OutputPath>/<job name>/output/ - the ModelArtifacts path moto reports. Put the
        # archives trained locally from the same train split there, encrypted like the job's output.
        request = sent["CreateTrainingJob"][-1]
        s3 = boto3.client("s3", region_name=REGION)
        bucket, key = req.split_s3_uri(request["OutputDataConfig"]["S3OutputPath"])
        for fname, body in lake["archives"].items():
            s3.put_object(
                Bucket=bucket,
                Key=f"{key}/{request['TrainingJobName']}/output/{fname}",
                Body=body,
                ServerSideEncryption="aws:kms",
                SSEKMSKeyId=request["OutputDataConfig"]["KmsKeyId"],
            )
        return out

    monkeypatch.setattr(SageMakerResponse, "create_training_job", create_training_job)
    for action, attr in (
        ("CreateModelPackageGroup", "create_model_package_group"),
        ("CreateModelPackage", "create_model_package"),
    ):
        monkeypatch.setattr(SageMakerResponse, attr, keep(action, getattr(SageMakerResponse, attr)))

    response_object = sm_models.FakeTrainingJob.response_object

    def with_spot_times(self):
        # moto reports no training / billable seconds; SageMaker does, and Spot bills less
        out = response_object.fget(self)
        if self.enable_managed_spot_training:
            out.update(TrainingTimeInSeconds=TRAINING_SECONDS, BillableTimeInSeconds=BILLABLE_SECONDS)
        return out

    monkeypatch.setattr(sm_models.FakeTrainingJob, "response_object", property(with_spot_times))
    usecases = mw.tmp / "usecases"
    uc = _write_usecase(usecases, _usecase_data("aws", kms))
    monkeypatch.setenv("MLB_USECASES_DIR", str(usecases))
    locations = _glue_tables(uc)
    yield {
        "uc": uc,
        "kms": kms,
        "home": mw.home,
        "athena": twin,
        "sent": sent,
        "locations": locations,
        "script_dir": AwsTrainer.script_dir,
    }


def _validate(operation: str, params: dict) -> None:
    model = botocore.session.get_session().get_service_model("sagemaker")
    validate_parameters(params, model.operation_model(operation).input_shape)


def test_training_dag_on_aws_under_moto(dag_world, lake):
    from mlblueprints.airflow import localrun

    uc, kms, sent = dag_world["uc"], dag_world["kms"], dag_world["sent"]
    s3 = boto3.client("s3", region_name=REGION)
    sm = boto3.client("sagemaker", region_name=REGION)

    dag = localrun.get_dag(f"{NAME}__training")
    dr = dag.test()
    tis = {ti.task_id: ti for ti in dr.get_task_instances()}
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    # the UNLOADs and the training job are the provider's operators between prepare and finish
    services = ["training_set.prepare", "training_set.athena", "training_set.finish"]
    services += ["train.prepare", "train.sagemaker_training", "train.finish"]
    assert {t: ti.state for t, ti in tis.items()} == dict.fromkeys(
        [*services, "evaluate", "register", "publish", "report"], "success"
    )
    res = {t.removesuffix(".finish"): ti.xcom_pull(task_ids=t) for t, ti in tis.items()}
    commit = runtime.git_commit()

    # ---- training set: the same rows as the local builder, stale Feature Store writes dropped
    ts = res["training_set"]
    local_ts = lake["ts_local"]
    for k in ("training_set", "rows", "positives", "feature_views", "coverage", "label_range"):
        assert ts[k] == local_ts[k], k
    assert set(ts) >= {*local_ts, "s3_uri", "sha256", "source_queries"}
    got = pd.read_parquet(ts["local_path"])
    want = lake["expected"][list(got.columns)]
    key = ["transaction_id"]
    pd.testing.assert_frame_equal(
        got.sort_values(key).reset_index(drop=True), want.sort_values(key).reset_index(drop=True), check_dtype=False
    )
    for v in VIEWS:
        assert not (got[lake["uc_local"].features[v].features[0]] == STALE).any()
    # the set on S3: content-addressed under the run's prefix, SSE-KMS
    safe_run = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in dr.run_id)
    assert (
        ts["snapshot_id"]
        == ts["s3_uri"]
        == (f"s3://{BUCKET}/{PREFIX}/training-sets/{TS}/{safe_run}/ts_{TS}-{ts['sha256'][:16]}.parquet")
    )
    head = s3.head_object(Bucket=BUCKET, Key=req.split_s3_uri(ts["s3_uri"])[1])
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == kms
    # lineage of what was read: the Glue tables' Iceberg metadata locations, and the queries
    assert ts["source_snapshots"] == dag_world["locations"]
    executions = dag_world["athena"].executions
    assert len(executions) == 1 + len(VIEWS) and sorted(ts["source_queries"]) == sorted(dag_world["locations"])
    for e in executions:
        assert e["query"].lstrip().upper().startswith("UNLOAD (")
        assert e["workgroup"] == "mlblueprints" and e["context"].get("Database") == DB
        assert e["config"]["EncryptionConfiguration"] == {"EncryptionOption": "SSE_KMS", "KmsKey": kms}
        sqlglot.parse_one(e["query"].split("(", 1)[1].rsplit(") TO", 1)[0], read="trino")
    assert any("ROW_NUMBER() OVER" in e["query"] and "write_time" in e["query"] for e in executions)
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/_training/").get("KeyCount") == 0, "staging left"

    # ---- CreateTrainingJob: one, well-formed, Spot + checkpoints + KMS + isolation + lineage
    [job] = sent["CreateTrainingJob"]
    _validate("CreateTrainingJob", job)
    tr_out = res["train"]
    name = tr.training_job_name(uc, dr.run_id, 1)
    assert job["TrainingJobName"] == tr_out["job_name"] == name != tr.training_job_name(uc, dr.run_id, 2)
    assert job["EnableManagedSpotTraining"] is True
    stop = job["StoppingCondition"]
    assert stop["MaxWaitTimeInSeconds"] >= stop["MaxRuntimeInSeconds"] == 3600
    assert job["CheckpointConfig"] == {
        "S3Uri": tr.checkpoint_s3_uri(uc, f"{dr.run_id}#{ts['sha256'][:16]}"),
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert job["CheckpointConfig"]["S3Uri"].startswith(f"s3://{BUCKET}/{PREFIX}/training/checkpoints/")
    assert job["OutputDataConfig"] == {"S3OutputPath": f"s3://{BUCKET}/{PREFIX}/training/output", "KmsKeyId": kms}
    assert job["ResourceConfig"]["VolumeKmsKeyId"] == kms
    assert job["EnableNetworkIsolation"] is True
    tags = {t["Key"]: t["Value"] for t in job["Tags"]}
    assert tags["mlblueprints:git-commit"] == commit and tags["mlblueprints:run-id"] == dr.run_id
    assert tags["mlblueprints:try-number"] == "1" and job["Environment"]["MLB_GIT_COMMIT"] == commit
    hps = tr.decode_hyperparameters(job["HyperParameters"])
    assert hps["sagemaker_program"] == "train.py" and hps["num_boost_round"] == 30
    assert hps["features"] == ",".join(uc.model_features())
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert channels == {"train": tr_out["train_s3_uri"], "code": tr_out["source_s3_uri"]}
    assert hps["sagemaker_submit_directory"] == "/opt/ml/input/data/code/sourcedir.tar.gz"
    # the train channel: the train split only, SSE-KMS
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=req.split_s3_uri(channels["train"])[1])["Contents"]
    assert [o["Key"].rsplit("/", 1)[1] for o in listed] == ["train.parquet"]
    train_obj = s3.get_object(Bucket=BUCKET, Key=listed[0]["Key"])
    assert train_obj["ServerSideEncryption"] == "aws:kms" and train_obj["SSEKMSKeyId"] == kms
    assert len(pd.read_parquet(io.BytesIO(train_obj["Body"].read()))) == tr_out["data"]["train"]["rows"]
    assert tr_out["data"] == lake["split"]

    # ---- the source archive: content-addressed, SSE-KMS, tagged with the git commit
    bucket, code_key = req.split_s3_uri(tr_out["source_s3_uri"])
    code = s3.get_object(Bucket=bucket, Key=code_key)
    assert code["ServerSideEncryption"] == "aws:kms" and code["SSEKMSKeyId"] == kms
    assert code["Metadata"]["git-commit"] == commit
    code_tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=code_key)["TagSet"]}
    assert code_tags["git-commit"] == commit and code_tags["mlblueprints:usecase"] == NAME
    body = code["Body"].read()
    assert code_key == tr.source_archive_key(uc, hashlib.sha256(body).hexdigest())
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        members = tar.getnames()
    assert "train.py" in members and all("__pycache__" not in m for m in members)
    script_files = sorted(
        p.relative_to(dag_world["script_dir"]).as_posix()
        for p in dag_world["script_dir"].rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    assert sorted(members) == script_files

    # ---- the model: fetched from ModelArtifacts, the booster for evaluate; Spot savings reported
    described = sm.describe_training_job(TrainingJobName=name)
    assert tr_out["model_data_url"] == described["ModelArtifacts"]["S3ModelArtifacts"]
    assert (Path(tr_out["model_dir"]) / "xgboost-model").is_file() and tr_out["try_number"] == 1
    assert Path(tr_out["model_dir"]) == Path(tr_out["job_dir"]) / "try-1" / "model"
    assert tr_out["meta"]["rounds"] == 30 and tr_out["job"] == "created"
    assert tr_out["metrics"]["spot_savings"] == {
        "training_seconds": TRAINING_SECONDS,
        "billable_seconds": BILLABLE_SECONDS,
        "savings_fraction": pytest.approx(0.7),
        "managed_spot": True,
    }
    ev = res["evaluate"]
    assert ev["decision"]["passed"] and ev["candidate"]["rows"] == lake["split"]["holdout"]["rows"]

    # ---- the model package: group created once, package well-formed, lineage as metadata
    reg = res["register"]
    assert reg["verdict"] == "registered" and reg["version"] == 1
    [group] = sent["CreateModelPackageGroup"]
    _validate("CreateModelPackageGroup", group)
    assert group["ModelPackageGroupName"] == "fraud-training-aws"
    [pkg] = sent["CreateModelPackage"]
    _validate("CreateModelPackage", pkg)
    assert reg["model_package"]["group"] == pkg["ModelPackageGroupName"] == "fraud-training-aws"
    assert pkg["ModelApprovalStatus"] == reg["model_package"]["approval_status"] == "PendingManualApproval"
    [container] = pkg["InferenceSpecification"]["Containers"]
    assert container["ModelDataUrl"] == tr_out["model_data_url"]
    assert container["Image"] == tr.framework_image_uri(uc, "inference")
    meta = pkg["CustomerMetadataProperties"]
    assert meta["git_commit"] == commit and meta["run_id"] == dr.run_id
    assert meta["training_job_name"] == name and meta["train_try_number"] == "1"
    assert meta["training_set_uri"] == ts["s3_uri"] and meta["training_set_sha256"] == ts["sha256"]
    assert meta[f"source_snapshots.{GOLD}"] == dag_world["locations"][GOLD]
    assert meta["config_hash"] == uc.config_hash() and meta["mlflow_version"] == "1"
    assert meta["feature_view.card_activity"] == "v1" and len(meta["lineage_sha256"]) == 64
    assert pkg["MetadataProperties"] == {"CommitId": commit, "GeneratedBy": name}
    stats_uri = pkg["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]
    assert stats_uri == reg["model_package"]["metrics_s3_uri"]
    stats_obj = s3.get_object(Bucket=BUCKET, Key=req.split_s3_uri(stats_uri)[1])
    assert stats_obj["ServerSideEncryption"] == "aws:kms" and stats_obj["SSEKMSKeyId"] == kms
    stats = json.loads(stats_obj["Body"].read())
    assert stats["binary_classification_metrics"]["auc"]["value"] == pytest.approx(ev["candidate"]["roc_auc"])
    cm = stats["binary_classification_metrics"]["confusion_matrix"]
    assert sum(cm["1"].values()) == ev["candidate"]["positives"]
    desc = sm.describe_model_package(ModelPackageName=reg["model_package"]["arn"])
    assert desc["CustomerMetadataProperties"] == meta and desc["ModelPackageGroupName"] == "fraud-training-aws"

    # ---- the run report
    report = json.loads(Path(res["report"]["report"]).read_text())
    assert report["missing"] == [] and ts["s3_uri"] in report["text"]

    # ---- the challenger Asset, for explainability and promotion
    assert res["publish"] == {"model": reg["model_name"], "version": 1, "run_id": dr.run_id}

    # ---- another worker (MWAA): the model and the holdout come back from S3
    from mlblueprints.airflow.runtime import connection_runtime
    from mlblueprints.training.aws import AwsTrainer

    holdout = Path(tr_out["job_dir"]) / "holdout" / "holdout.parquet"
    before = (Path(tr_out["model_dir"]) / "xgboost-model").read_bytes(), holdout.read_bytes()
    shutil.rmtree(tr_out["job_dir"])
    AwsTrainer(uc, connection_runtime(uc)).ensure_local(tr_out)
    assert ((Path(tr_out["model_dir"]) / "xgboost-model").read_bytes(), holdout.read_bytes()) == before


def _operator_context(run_id: str, try_number: int) -> dict:
    """What TrainingJobOperator.execute reads of the Airflow context."""
    from types import SimpleNamespace

    return {"run_id": run_id, "ti": SimpleNamespace(try_number=try_number, task_id="train.sagemaker_training")}


def test_a_retry_adopts_an_earlier_tries_job_only_when_it_trained_the_same_thing(dag_world):
    """A retry of the training task whose earlier try's job completed on the same data, image and
    hyperparameters uses that job (nothing trained twice); a job that differs in any of them,
    or of another run, is not adopted and the retry starts its own, named for its try."""
    from mlblueprints.airflow.operators import TrainingJobOperator

    uc = dag_world["uc"]
    run_id = "manual__2024-03-03T00:00:00+00:00"
    train = f"s3://{BUCKET}/{PREFIX}/training/data/x/train/"
    s3 = boto3.client("s3", region_name=REGION)
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/training/source/a/sourcedir.tar.gz", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/training/data/x/train/train.parquet", Body=b"x")
    request = tr.create_training_job_request(
        uc,
        job_name=tr.training_job_name(uc, run_id, 1),
        train_s3_uri=train,
        source_s3_uri=f"s3://{BUCKET}/{PREFIX}/training/source/a/sourcedir.tar.gz",
        output_s3_uri=tr.output_s3_uri(uc),
        checkpoint_s3_uri=tr.checkpoint_s3_uri(uc, run_id),
        hyperparameters={"num_boost_round": 3},
        git_commit="abc",
    )
    sm = boto3.client("sagemaker", region_name=REGION)
    sm.create_training_job(**copy.deepcopy(request))
    sent = dag_world["sent"]["CreateTrainingJob"]
    sent.clear()

    def operator(config: dict) -> TrainingJobOperator:
        return TrainingJobOperator(
            task_id="sagemaker_training",
            usecase=uc,
            config=copy.deepcopy(config),
            deferrable=False,
            check_interval=0,
            print_log=False,
            aws_conn_id="aws_default",
            region_name=REGION,
        )

    out = operator(request).execute(_operator_context(run_id, 3))
    assert out["how"] == "adopted" and out["Training"]["TrainingJobName"] == request["TrainingJobName"]
    assert sent == [], "adopted: nothing created"
    # other data, other hyperparameters: not the same training - try 3 creates its own job
    for changed in (
        {
            **request,
            "InputDataConfig": [
                {
                    **request["InputDataConfig"][0],
                    "DataSource": {
                        "S3DataSource": {
                            **request["InputDataConfig"][0]["DataSource"]["S3DataSource"],
                            "S3Uri": train.replace("/x/", "/y/"),
                        }
                    },
                },
                *request["InputDataConfig"][1:],
            ],
        },
        {**request, "HyperParameters": {**request["HyperParameters"], "num_boost_round": "4"}},
    ):
        assert tr.job_differences(changed, sm.describe_training_job(TrainingJobName=request["TrainingJobName"]))
    created = operator({**request, "HyperParameters": {**request["HyperParameters"], "num_boost_round": "4"}}).execute(
        _operator_context(run_id, 3)
    )
    assert created["how"] == "created" and created["Training"]["TrainingJobName"] == tr.training_job_name(uc, run_id, 3)
    [job] = sent
    assert job["TrainingJobName"] == tr.training_job_name(uc, run_id, 3)
    assert tr.decode_hyperparameters(job["HyperParameters"])["sagemaker_job_name"] == job["TrainingJobName"]
    assert {t["Key"]: t["Value"] for t in job["Tags"]}.get("mlblueprints:try-number") == "3"
    # another run's try 1 finds no earlier job of its own run
    other = operator(request).execute(_operator_context("other", 1))
    assert other["how"] == "created" and other["Training"]["TrainingJobName"] == tr.training_job_name(uc, "other", 1)


def test_offline_store_dedupe_keeps_the_newest_write_and_honours_deletes():
    """The offline-store query, as Athena receives it (Trino), run back in DuckDB."""
    from mlblueprints.config import parse_usecase
    from mlblueprints.features.aws_training_set import offline_store_sql
    from mlblueprints.lakehouse.sqlgen import to_trino

    data = _usecase_data("aws")
    data["features"]["card_merchant"] = {
        "source": GOLD,
        "entity": ["card_id", "merchant_id"],
        "features": ["amount"],
        "ttl": "1d",
    }
    uc = parse_usecase(data)
    cols = core.resolve_columns(uc, "card_merchant", dict(gold_columns(uc, GOLD)))
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE fv (record_id VARCHAR, card_id VARCHAR, merchant_id VARCHAR, event_time VARCHAR, "
        "amount DOUBLE, write_time TIMESTAMP, api_invocation_time TIMESTAMP, is_deleted BOOLEAN)"
    )
    t = "2024-03-01T10:00:00Z"
    con.execute(
        "INSERT INTO fv VALUES "
        f"('c1#m1', 'c1', 'm1', '{t}', 1.0, '2024-03-02 00:00:00', '2024-03-02 00:00:00', false),"
        f"('c1#m1', 'c1', 'm1', '{t}', 2.0, '2024-03-03 00:00:00', '2024-03-03 00:00:00', false),"  # newest
        f"('c1#m2', 'c1', 'm2', '{t}', 3.0, '2024-03-02 00:00:00', '2024-03-02 00:00:00', false),"
        f"('c1#m2', 'c1', 'm2', '{t}', 3.0, '2024-03-04 00:00:00', '2024-03-04 00:00:00', true),"  # deleted
        f"('c2#m1', 'c2', 'm1', '{t}', 4.0, NULL, '2024-03-01 00:00:00', NULL),"
        f"('c2#m1', 'c2', 'm1', '2024-03-01T11:00:00Z', 5.0, '2024-03-02 00:00:00', '2024-03-02 00:00:00', false)"
    )
    trino = to_trino(offline_store_sql(uc, "card_merchant", cols, "fv"))
    assert 'PARTITION BY "record_id", "event_time"' in trino
    rows = con.execute(sqlglot.transpile(trino, read="trino", write="duckdb")[0]).fetchall()
    assert sorted(rows) == [
        ("c1#m1", "c1", "m1", t, 2.0),
        ("c2#m1", "c2", "m1", t, 4.0),
        ("c2#m1", "c2", "m1", "2024-03-01T11:00:00Z", 5.0),
    ]


def test_mlflow_tracking_uri_follows_the_target():
    from mlblueprints.config import parse_usecase
    from mlblueprints.registry import local as registry

    arn = "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/mlb"
    data = _usecase_data("aws")
    data["training"]["sagemaker"]["mlflow_tracking_server_arn"] = arn
    assert registry.tracking_uri(parse_usecase(data)) == arn
    data["target"] = "local"
    assert registry.tracking_uri(parse_usecase(data)).startswith("sqlite:///")
    data["target"] = "aws"
    data["training"]["sagemaker"].pop("mlflow_tracking_server_arn")
    assert registry.tracking_uri(parse_usecase(data)).startswith("sqlite:///")
    assert registry.tracking_uri(None) == f"sqlite:///{runtime.path('mlflow') / 'mlflow.db'}"
