"""Spot training and model registry requests of the aws target (``mlblueprints.aws.training``).

Every request is checked twice against botocore's ``sagemaker`` / ``s3`` service models:
``botocore.validate.validate_parameters`` (types, required members, lengths, enums - what boto3
checks before sending) and :func:`check_patterns`, which applies the model's ``pattern`` of
every string, map key and value with full-match semantics (botocore does not check patterns;
SageMaker does, server side).

What moto 5.2 does with them (in process, ``mock_aws``):

* CreateTrainingJob / DescribeTrainingJob are implemented. moto keeps the hyperparameters,
  resources, stopping condition, Spot flag, checkpoint, VPC and isolation settings and the
  tags, but drops ``Environment``, replaces ``MetricDefinitions`` with its own, marks the job
  Completed at once and reports no ``TrainingTimeInSeconds`` / ``BillableTimeInSeconds``: the
  round trip asserts what moto keeps; Spot savings are tested on sample DescribeTrainingJob
  answers instead.
* CreateModelPackageGroup / CreateModelPackage / DescribeModelPackage are implemented, with
  ``CustomerMetadataProperties``, ``ModelMetrics`` and the approval status kept. moto ignores
  ``ClientToken`` (every call adds a version), so the idempotency of a retried registration is
  asserted on the request (same inputs, same token) rather than through moto.
* S3 PutObject with SSE-KMS and ``Tagging`` is implemented (object tags read back).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from urllib.parse import parse_qs

import boto3
import botocore.session
import pytest
import yaml
from botocore.validate import validate_parameters

from helpers import ROOT
from mlblueprints.aws import training as tr
from mlblueprints.config import parse_usecase

pytestmark = [pytest.mark.aws]

regex = pytest.importorskip("regex")
moto = pytest.importorskip("moto")
from moto import mock_aws  # noqa: E402

REGION = "eu-west-1"
KMS = "arn:aws:kms:eu-west-1:123456789012:key/1f0c0b9e-5a9e-4d0e-9d6c-1a2b3c4d5e6f"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
RUN = {"run_id": "scheduled__2024-03-01T00:00:00+00:00", "try_number": 1, "dag_id": "fraud_detection__training"}
SOURCE = "s3://mlb-fraud-lakehouse/fraud_detection/training/source/abc/sourcedir.tar.gz"

_SESSION = botocore.session.get_session()
SM_MODEL = _SESSION.get_service_model("sagemaker")
S3_MODEL = _SESSION.get_service_model("s3")


# ---------------------------------------------------------------- helpers


def _data() -> dict:
    return yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())


def make_uc(name: str | None = None, region: str = REGION, **sagemaker):
    data = _data()
    if name:
        data["name"] = name
    data["aws"]["region"] = region
    data["training"].setdefault("sagemaker", {}).update(sagemaker)
    return parse_usecase(data)


def _patterns_ok(value, shape, path, errors):
    pattern = shape.metadata.get("pattern")
    if shape.type_name == "string" and pattern is not None and isinstance(value, str):
        if not regex.fullmatch(pattern, value):
            errors.append(f"{path}: {value!r} does not match {pattern}")
    elif shape.type_name == "structure" and isinstance(value, dict):
        for k, v in value.items():
            if k in shape.members:
                _patterns_ok(v, shape.members[k], f"{path}.{k}", errors)
    elif shape.type_name == "list" and isinstance(value, list):
        for i, v in enumerate(value):
            _patterns_ok(v, shape.member, f"{path}[{i}]", errors)
    elif shape.type_name == "map" and isinstance(value, dict):
        for k, v in value.items():
            _patterns_ok(k, shape.key, f"{path}<key {k}>", errors)
            _patterns_ok(v, shape.value, f"{path}[{k}]", errors)


def check_patterns(params: dict, shape) -> None:
    errors: list[str] = []
    _patterns_ok(params, shape, "", errors)
    assert not errors, "\n".join(errors)


def validate(model, operation: str, params: dict) -> None:
    shape = model.operation_model(operation).input_shape
    validate_parameters(params, shape)
    check_patterns(params, shape)


def job_request(uc, **kw):
    args = dict(
        job_name=tr.training_job_name(uc, RUN["run_id"], RUN["try_number"]),
        train_s3_uri="s3://mlb-fraud-lakehouse/fraud_detection/training-sets/fraud_training/snap-1/",
        source_s3_uri=SOURCE,
        output_s3_uri=tr.output_s3_uri(uc),
        checkpoint_s3_uri=tr.checkpoint_s3_uri(uc, RUN["run_id"]),
        hyperparameters={
            **uc.training.hyperparameters,
            "num_boost_round": uc.training.num_boost_round,
            "seed": uc.training.seed,
            "objective": "binary:logistic",
            "features": uc.model_features(),
            "label": "is_fraud",
            "checkpoint_interval_seconds": uc.training.checkpoint_interval_seconds,
        },
        git_commit=COMMIT,
        run=RUN,
    )
    args.update(kw)
    return tr.create_training_job_request(uc, **args)


def tags(request: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in request["Tags"]}


# ---------------------------------------------------------------- job names


def test_job_name_unique_per_try_deterministic_and_valid():
    uc = make_uc()
    runs = ["scheduled__2024-03-01T00:00:00+00:00", "scheduled__2024-03-02T00:00:00+00:00", "manual__x"]
    names = {(r, t): tr.training_job_name(uc, r, t) for r in runs for t in range(1, 6)}
    assert len(set(names.values())) == len(names), "a retry or another run would collide"
    assert tr.training_job_name(uc, runs[0], 1) == names[(runs[0], 1)]
    shape = SM_MODEL.operation_model("CreateTrainingJob").input_shape.members["TrainingJobName"]
    for name in names.values():
        assert name.startswith("fraud-detection-")
        assert tr.SAGEMAKER_NAME_RE.match(name) and regex.fullmatch(shape.metadata["pattern"], name)
        assert len(name) <= 63
    # another use case, same run and try: another job
    assert tr.training_job_name(make_uc(name="fraud_detection_eu"), runs[0], 1) != names[(runs[0], 1)]
    with pytest.raises(ValueError):
        tr.training_job_name(uc, runs[0], -1)


@pytest.mark.parametrize(
    "name",
    [
        "a" * 80,
        "fraud_detection_for_the_retail_banking_division_of_" + "x" * 40,
        "a" * 49 + "_" + "b" * 30,  # the cut falls right after a '_'
        "f" + "_0" * 40,
    ],
)
def test_job_name_at_the_length_limit(name):
    uc = make_uc(name=name)
    job = tr.training_job_name(uc, "run", 1)
    assert tr.SAGEMAKER_NAME_RE.match(job), job
    assert len(job) <= 63
    assert "--" not in job and not job.endswith("-")
    validate(SM_MODEL, "CreateTrainingJob", job_request(uc, job_name=job))
    # two long names equal up to the cut still name different jobs
    twin = make_uc(name=name[:-1] + ("z" if name[-1] != "z" else "y"))
    assert tr.training_job_name(twin, "run", 1) != job
    # the whole name budget is used: 50 characters of use case name (49 when the cut lands on
    # a '-'), '-', 12 hex
    assert len(job) in (62, 63) and re.fullmatch(r"[0-9a-f]{12}", job[-12:]) and job[-13] == "-"
    if name == "a" * 80:
        assert job == "a" * 50 + "-" + job[-12:]


# ---------------------------------------------------------------- image


def test_framework_image_uri_per_region():
    assert tr.framework_image_uri(make_uc(region="eu-west-1")) == (
        "141502667606.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-xgboost:1.7-1"
    )
    assert tr.framework_image_uri(make_uc(region="us-east-1")) == (
        "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
    )
    assert tr.framework_image_uri(make_uc(region="cn-north-1")).endswith(
        ".dkr.ecr.cn-north-1.amazonaws.com.cn/sagemaker-xgboost:1.7-1"
    )
    custom = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/my-xgboost:2024-03"
    assert tr.framework_image_uri(make_uc(image_uri=custom)) == custom
    with pytest.raises(ValueError, match="unknown SageMaker XGBoost framework version"):
        tr.framework_image_uri(make_uc(framework_version="9.9-9"))
    with pytest.raises(ValueError, match="tagged per processor"):
        tr.framework_image_uri(make_uc(framework_version="0.90-2"))


def test_framework_image_uri_agrees_with_the_sagemaker_sdk():
    image_uris = pytest.importorskip("sagemaker.core.image_uris")
    for region in ("eu-west-1", "us-east-1", "ap-southeast-2", "cn-north-1", "us-gov-west-1"):
        for version in ("1.5-1", "1.7-1", "3.0-5", "1"):
            for scope in ("training", "inference"):
                expected = image_uris.retrieve(
                    "xgboost", region=region, version=version, image_scope=scope, instance_type="ml.m5.xlarge"
                )
                assert tr.xgboost_image_uri(region, version, scope) == expected, (region, version, scope)


def test_module_imports_neither_sagemaker_nor_boto3():
    code = (
        "import sys; from mlblueprints.aws import training as tr; "
        "print(tr.xgboost_image_uri('eu-west-1', '1.7-1')); "
        "print(sorted(m for m in ('sagemaker', 'sagemaker.core', 'boto3', 'botocore') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "include")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    image, loaded = out.stdout.strip().splitlines()
    assert image.endswith("sagemaker-xgboost:1.7-1")
    assert loaded == "[]"


# ---------------------------------------------------------------- CreateTrainingJob


@pytest.mark.parametrize("spot", [True, False])
@pytest.mark.parametrize("vpc", [True, False])
@pytest.mark.parametrize("isolation", [True, False])
def test_create_training_job_request_is_valid(spot, vpc, isolation):
    vpc_cfg = {"subnets": ["subnet-0a1b2c3d", "subnet-4e5f6a7b"], "security_group_ids": ["sg-0123abcd"]} if vpc else {}
    uc = make_uc(
        spot={"enabled": spot, "max_runtime_seconds": 3600, "max_wait_seconds": 7200},
        network_isolation=isolation,
        **vpc_cfg,
    )
    req = job_request(uc)
    validate(SM_MODEL, "CreateTrainingJob", req)

    # Spot and the stopping condition
    assert req["EnableManagedSpotTraining"] is spot
    stop = req["StoppingCondition"]
    assert stop["MaxRuntimeInSeconds"] == 3600
    if spot:
        assert stop["MaxWaitTimeInSeconds"] >= stop["MaxRuntimeInSeconds"]
        assert stop["MaxWaitTimeInSeconds"] == 7200
    else:
        assert "MaxWaitTimeInSeconds" not in stop  # SageMaker refuses MaxWait without managed Spot
    assert req["CheckpointConfig"] == {
        "S3Uri": tr.checkpoint_s3_uri(uc, RUN["run_id"]),
        "LocalPath": "/opt/ml/checkpoints",
    }

    # network isolation: the code comes in as a channel, not downloaded by the container
    channels = {c["ChannelName"]: c for c in req["InputDataConfig"]}
    assert channels["train"]["ContentType"] == "application/x-parquet"
    assert channels["train"]["DataSource"]["S3DataSource"]["S3DataType"] == "S3Prefix"
    hps = tr.decode_hyperparameters(req["HyperParameters"])
    assert req["EnableNetworkIsolation"] is isolation
    if isolation:
        assert channels["code"]["DataSource"]["S3DataSource"]["S3Uri"] == SOURCE
        assert hps["sagemaker_submit_directory"] == "/opt/ml/input/data/code/sourcedir.tar.gz"
    else:
        assert set(channels) == {"train"}
        assert hps["sagemaker_submit_directory"] == SOURCE

    # VPC only when configured
    if vpc:
        assert req["VpcConfig"] == {
            "Subnets": ["subnet-0a1b2c3d", "subnet-4e5f6a7b"],
            "SecurityGroupIds": ["sg-0123abcd"],
        }
    else:
        assert "VpcConfig" not in req

    # KMS on the output and the volume (the source archive: test_source_archive_upload)
    assert req["OutputDataConfig"] == {"S3OutputPath": tr.output_s3_uri(uc), "KmsKeyId": KMS}
    assert req["ResourceConfig"] == {
        "InstanceType": "ml.m5.xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 30,
        "VolumeKmsKeyId": KMS,
    }
    assert "EnableInterContainerTrafficEncryption" not in req

    # image, metrics, role, lineage
    spec = req["AlgorithmSpecification"]
    assert spec["TrainingImage"] == "141502667606.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-xgboost:1.7-1"
    assert spec["TrainingInputMode"] == "File"
    assert spec["MetricDefinitions"] == [{"Name": "train:logloss", "Regex": tr.TRAIN_METRIC_REGEX}]
    assert req["RoleArn"] == "arn:aws:iam::123456789012:role/mlblueprints-execution"
    assert req["Environment"]["SM_CHECKPOINT_DIR"] == "/opt/ml/checkpoints"
    assert req["Environment"]["MLB_GIT_COMMIT"] == COMMIT
    assert req["Environment"]["MLB_RUN_ID"] == RUN["run_id"]
    t = tags(req)
    assert t["mlblueprints:git-commit"] == COMMIT
    assert t["mlblueprints:config-hash"] == uc.config_hash()
    assert t["mlblueprints:usecase"] == "fraud_detection"
    assert t["mlblueprints:run-id"] == RUN["run_id"]
    assert t["mlblueprints:try-number"] == "1"


def test_distributed_training_encrypts_inter_container_traffic():
    req = job_request(make_uc(instance_count=3))
    validate(SM_MODEL, "CreateTrainingJob", req)
    assert req["ResourceConfig"]["InstanceCount"] == 3
    assert req["EnableInterContainerTrafficEncryption"] is True


@pytest.mark.parametrize(
    "instance_type, local",
    [
        ("ml.m5.xlarge", False),
        ("ml.c5.2xlarge", False),
        ("ml.m5d.xlarge", True),
        ("ml.g4dn.xlarge", True),
        ("ml.p4d.24xlarge", True),
        ("ml.g5.2xlarge", True),
        ("ml.p3.2xlarge", False),
    ],
)
def test_volume_kms_key_only_on_ebs_instances(instance_type, local):
    req = job_request(make_uc(instance_type=instance_type))
    validate(SM_MODEL, "CreateTrainingJob", req)
    assert ("VolumeKmsKeyId" in req["ResourceConfig"]) is not local


def test_hyperparameters_are_json_encoded_and_decode_like_the_container():
    uc = make_uc()
    req = job_request(uc, hyperparameters={"max_depth": 6, "eta": 0.1, "flag": True, "objective": "binary:logistic"})
    raw = req["HyperParameters"]
    assert all(isinstance(v, str) for v in raw.values())
    assert raw["max_depth"] == "6" and raw["eta"] == "0.1" and raw["flag"] == "true"
    assert raw["objective"] == '"binary:logistic"' and raw["sagemaker_program"] == '"train.py"'
    # sagemaker_training / recent sagemaker_containers: json.loads per value, raw string on failure
    decoded = tr.decode_hyperparameters(raw)
    # older sagemaker_containers: all values at once, or none - works because every value is JSON
    assert {k: json.loads(v) for k, v in raw.items()} == decoded
    assert decoded == {
        "max_depth": 6,
        "eta": 0.1,
        "flag": True,
        "objective": "binary:logistic",
        "sagemaker_program": "train.py",
        "sagemaker_submit_directory": "/opt/ml/input/data/code/sourcedir.tar.gz",
        "sagemaker_region": REGION,
        "sagemaker_container_log_level": 20,
        "sagemaker_job_name": req["TrainingJobName"],
    }
    with pytest.raises(ValueError, match="reserved"):
        job_request(uc, hyperparameters={"sagemaker_program": "evil.py"})
    with pytest.raises(ValueError, match="2500"):
        job_request(uc, hyperparameters={"features": [f"feature_{i:04d}" for i in range(300)]})
    with pytest.raises(ValueError, match="JSON cannot carry"):
        job_request(uc, hyperparameters={"eta": float("nan")})
    with pytest.raises(ValueError, match="at most 100"):
        job_request(uc, hyperparameters={f"h{i}": i for i in range(96)})
    with pytest.raises(ValueError, match=r"\.tar\.gz"):
        job_request(uc, source_s3_uri="s3://b/code/train.py")
    with pytest.raises(ValueError, match="s3://"):
        job_request(uc, train_s3_uri="/local/path")


def test_metric_regex_reads_the_script_lines():
    line = tr.train_metric_line(12, 0.123456, total=300)
    assert line == "round 12/300 train-logloss=0.123456"
    pattern = re.compile(tr.TRAIN_METRIC_REGEX)
    assert pattern.search(line).group(1) == "0.123456"
    assert pattern.search("2024-03-01 INFO round 3/9 train-logloss=1e-05 elapsed=0.1s").group(1) == "1e-05"
    assert pattern.search("round 7/9 valid-logloss=0.2") is None
    # the line the training script itself prints (its format string, rendered)
    script = (ROOT / "include/mlblueprints/training/script/train.py").read_text()
    assert 'f"round {rounds}/{self.total} train-{self.metric_name}={self.metric:.6f}' in script
    assert regex.fullmatch(SM_MODEL.shape_for("MetricRegex").metadata["pattern"], tr.TRAIN_METRIC_REGEX)
    # every task's metric: what the script prints is what the job's metric definition reads
    for metric in ("logloss", "mlogloss", "rmse", "mae"):
        line = tr.train_metric_line(3, 2.5, total=9, metric=metric)
        assert line == f"round 3/9 train-{metric}=2.500000"
        assert re.compile(tr.train_metric_regex(metric)).search(line).group(1) == "2.500000"
        assert re.compile(tr.train_metric_regex("logloss")).search(line) is None or metric == "logloss"
        assert regex.fullmatch(SM_MODEL.shape_for("MetricRegex").metadata["pattern"], tr.train_metric_regex(metric))


def test_request_without_run_and_with_odd_run_ids():
    uc = make_uc()
    req = job_request(uc, run=None)
    validate(SM_MODEL, "CreateTrainingJob", req)
    assert "mlblueprints:run-id" not in tags(req) and "MLB_RUN_ID" not in req["Environment"]
    odd = {"run_id": "manual run #7 {backfill}, " + "x" * 300, "try_number": 2}
    req = job_request(uc, run=odd)
    validate(SM_MODEL, "CreateTrainingJob", req)  # tag values rewritten to fit, with a hash suffix
    value = tags(req)["mlblueprints:run-id"]
    assert len(value) <= 256 and "..sha256:" in value
    assert req["Environment"]["MLB_RUN_ID"] == odd["run_id"]


# ---------------------------------------------------------------- the source archive


def test_source_archive_key_and_put_request():
    uc = make_uc()
    sha = "ab" * 32
    key = tr.source_archive_key(uc, sha)
    assert key == f"fraud_detection/training/source/{sha[:32]}/sourcedir.tar.gz"
    req = tr.s3_put_source_request(uc, key, COMMIT)
    validate(S3_MODEL, "PutObject", req)
    assert req["ServerSideEncryption"] == "aws:kms" and req["SSEKMSKeyId"] == KMS
    assert parse_qs(req["Tagging"])["git-commit"] == [COMMIT]
    assert tr.source_archive_tags(uc, COMMIT)["git-commit"] == COMMIT
    with pytest.raises(ValueError):
        tr.source_archive_key(uc, "not-a-hash")
    with pytest.raises(ValueError):
        tr.s3_put_source_request(uc, "code/train.py", COMMIT)


def test_source_archive_upload_under_moto():
    with mock_aws():
        kms = boto3.client("kms", region_name=REGION)
        key_arn = kms.create_key(Description="mlb")["KeyMetadata"]["Arn"]
        data = _data()
        data["aws"].update(region=REGION, kms_key_arn=key_arn)
        uc = parse_usecase(data)
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=uc.aws.bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        key = tr.source_archive_key(uc, "cd" * 32)
        s3.put_object(Body=b"\x1f\x8b fake archive", **tr.s3_put_source_request(uc, key, COMMIT + "-dirty"))
        head = s3.head_object(Bucket=uc.aws.bucket, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == key_arn
        assert head["Metadata"]["git-commit"] == COMMIT + "-dirty"
        got = s3.get_object_tagging(Bucket=uc.aws.bucket, Key=key)["TagSet"]
        assert {t["Key"]: t["Value"] for t in got}["git-commit"] == COMMIT + "-dirty"


# ---------------------------------------------------------------- Spot savings


@pytest.mark.parametrize(
    "response, expected",
    [
        (
            {"EnableManagedSpotTraining": True, "TrainingTimeInSeconds": 1000, "BillableTimeInSeconds": 300},
            {"training_seconds": 1000, "billable_seconds": 300, "savings_fraction": 0.7, "managed_spot": True},
        ),
        (
            {"EnableManagedSpotTraining": False, "TrainingTimeInSeconds": 1000, "BillableTimeInSeconds": 1000},
            {"training_seconds": 1000, "billable_seconds": 1000, "savings_fraction": 0.0, "managed_spot": False},
        ),
        (  # on-demand job: no Spot field at all
            {"TrainingTimeInSeconds": 500, "BillableTimeInSeconds": 500},
            {"training_seconds": 500, "billable_seconds": 500, "savings_fraction": 0.0, "managed_spot": False},
        ),
        (  # still running: no times yet
            {"EnableManagedSpotTraining": True, "TrainingJobStatus": "InProgress"},
            {"training_seconds": 0, "billable_seconds": 0, "savings_fraction": 0.0, "managed_spot": True},
        ),
        (  # Spot job without a billable time: billed in full
            {"EnableManagedSpotTraining": True, "TrainingTimeInSeconds": 800},
            {"training_seconds": 800, "billable_seconds": 800, "savings_fraction": 0.0, "managed_spot": True},
        ),
        (  # never a negative saving
            {"EnableManagedSpotTraining": True, "TrainingTimeInSeconds": 100, "BillableTimeInSeconds": 120},
            {"training_seconds": 100, "billable_seconds": 120, "savings_fraction": 0.0, "managed_spot": True},
        ),
        ({}, {"training_seconds": 0, "billable_seconds": 0, "savings_fraction": 0.0, "managed_spot": False}),
    ],
)
def test_spot_savings(response, expected):
    got = tr.spot_savings(response)
    assert got == pytest.approx(expected)
    assert isinstance(got["managed_spot"], bool)


# ---------------------------------------------------------------- model registry


def test_model_package_group_request():
    uc = make_uc()
    req = tr.create_model_package_group_request(uc, git_commit=COMMIT)
    validate(SM_MODEL, "CreateModelPackageGroup", req)
    assert req["ModelPackageGroupName"] == "fraud-detection"
    assert tags(req)["mlblueprints:git-commit"] == COMMIT
    assert (
        tr.create_model_package_group_request(make_uc(model_package_group="fraud-models"))["ModelPackageGroupName"]
        == "fraud-models"
    )
    with pytest.raises(ValueError, match="model_package_group"):
        tr.create_model_package_group_request(make_uc(model_package_group="fraud_models"))
    long = tr.create_model_package_group_request(make_uc(name="m" + "_odel" * 30))
    validate(SM_MODEL, "CreateModelPackageGroup", long)
    assert len(long["ModelPackageGroupName"]) == 63
    data = _data()
    data["description"] = "Fraud model\n\twith a\x07 multi-line\ndescription"
    req = tr.create_model_package_group_request(parse_usecase(data))
    validate(SM_MODEL, "CreateModelPackageGroup", req)
    assert req["ModelPackageGroupDescription"] == "Fraud model with a multi-line description"


def _lineage(**extra):
    return {
        "git_commit": COMMIT,
        "run_id": RUN["run_id"],
        "training_job_name": "fraud-detection-0123456789ab",
        "snapshot": {"fraud_training": 4711081512345678901, "transaction_features": 123},
        "run_ids": ["scheduled__2024-03-01T00:00:00+00:00", "mlflow:9f8e7d"],
        **extra,
    }


@pytest.mark.parametrize("metrics", [True, False])
def test_model_package_request(metrics):
    uc = make_uc()
    image = tr.framework_image_uri(uc, "inference")
    req = tr.create_model_package_request(
        uc,
        model_data_url="s3://mlb-fraud-lakehouse/fraud_detection/training/output/job/output/model.tar.gz",
        image_uri=image,
        metrics_s3_uri="s3://mlb-fraud-lakehouse/fraud_detection/evaluation/run/metrics.json" if metrics else None,
        approval_status="PendingManualApproval",
        description="candidate of run scheduled__2024-03-01",
        customer_metadata=_lineage(),
    )
    validate(SM_MODEL, "CreateModelPackage", req)
    container = req["InferenceSpecification"]["Containers"][0]
    assert container == {
        "Image": image,
        "ModelDataUrl": "s3://mlb-fraud-lakehouse/fraud_detection/training/output/job/output/model.tar.gz",
        "Framework": "XGBOOST",
        "FrameworkVersion": "1.7-1",
    }
    assert req["InferenceSpecification"]["SupportedContentTypes"] == ["text/csv"]
    assert req["InferenceSpecification"]["SupportedResponseMIMETypes"] == ["text/csv"]
    assert ("ModelMetrics" in req) is metrics
    if metrics:
        stats = req["ModelMetrics"]["ModelQuality"]["Statistics"]
        assert stats["ContentType"] == "application/json"
    meta = req["CustomerMetadataProperties"]
    assert meta["git_commit"] == COMMIT and meta["config_hash"] == uc.config_hash()
    assert meta["snapshot.fraud_training"] == "4711081512345678901"
    assert meta["run_ids.1"] == "mlflow:9f8e7d"
    assert meta["feature_view.card_activity"] == "v1"
    assert meta["training_job_name"] == "fraud-detection-0123456789ab"
    assert re.fullmatch(r"[0-9a-f]{64}", meta["lineage_sha256"])
    assert req["MetadataProperties"] == {"CommitId": COMMIT, "GeneratedBy": "fraud-detection-0123456789ab"}
    with pytest.raises(ValueError, match="approval_status"):
        tr.create_model_package_request(
            uc,
            model_data_url="s3://b/k/model.tar.gz",
            image_uri=image,
            metrics_s3_uri=None,
            approval_status="Yes",
            description="",
            customer_metadata={},
        )


def test_customer_metadata_fits_the_api_limits():
    uc = make_uc()
    lineage = _lineage(
        note='a value with {braces}, commas; and quotes"',
        long_value="v" * 400,
        **{"k" * 200: "long key", "empty": "", "none": None, "flag": False},
        **{f"snapshot_extra_{i:02d}": i for i in range(60)},
    )
    meta = tr.model_lineage_metadata(uc, lineage)
    validate(
        SM_MODEL,
        "CreateModelPackage",
        {"ModelPackageGroupName": "g", "CustomerMetadataProperties": meta},
    )
    assert len(meta) == 50
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert all(1 <= len(k) <= 128 and 1 <= len(v) <= 256 for k, v in meta.items())
    assert int(meta["lineage_omitted"]) > 0 and "lineage_sha256" in meta
    small = tr.model_lineage_metadata(uc, {k: lineage[k] for k in ("note", "long_value", "k" * 200, "empty", "flag")})
    assert small["note"].startswith("a value with _braces__ commas_ and quotes_..sha256:")
    assert len(small["long_value"]) == 256 and small["long_value"].startswith("v" * 200)
    assert "empty" not in small and small["flag"] == "false"
    long_key = next(k for k in small if k.startswith("kkkk"))
    assert len(long_key) == 128 and small[long_key] == "long key"
    # the digest covers the original values: different originals, different digests
    other = tr.model_lineage_metadata(uc, {**lineage, "long_value": "v" * 401})
    assert other["lineage_sha256"] != meta["lineage_sha256"]


def test_model_package_client_token_is_idempotent_per_input():
    uc = make_uc()
    kw = dict(
        model_data_url="s3://b/k/model.tar.gz",
        image_uri=tr.framework_image_uri(uc, "inference"),
        metrics_s3_uri=None,
        approval_status="PendingManualApproval",
        description="d",
        customer_metadata=_lineage(),
    )
    a = tr.create_model_package_request(uc, **kw)
    assert a == tr.create_model_package_request(uc, **kw)
    b = tr.create_model_package_request(uc, **{**kw, "model_data_url": "s3://b/k2/model.tar.gz"})
    assert a["ClientToken"] != b["ClientToken"]
    assert re.fullmatch(r"[0-9a-f]{36}", a["ClientToken"])


# ---------------------------------------------------------------- moto round trips


def test_training_job_and_registry_under_moto():
    uc = make_uc(subnets=["subnet-0a1b2c3d"], security_group_ids=["sg-0123abcd"])
    spot_job = job_request(uc)
    on_demand = job_request(
        make_uc(spot={"enabled": False}, network_isolation=False),
        job_name=tr.training_job_name(uc, RUN["run_id"], 2),
    )
    with mock_aws():
        sm = boto3.client("sagemaker", region_name=REGION)
        for req in (spot_job, on_demand):
            arn = sm.create_training_job(**req)["TrainingJobArn"]
            assert arn.endswith(f":training-job/{req['TrainingJobName']}")
            got = sm.describe_training_job(TrainingJobName=req["TrainingJobName"])
            for key in (
                "HyperParameters",
                "RoleArn",
                "InputDataConfig",
                "OutputDataConfig",
                "ResourceConfig",
                "StoppingCondition",
                "CheckpointConfig",
                "EnableManagedSpotTraining",
                "EnableNetworkIsolation",
            ):
                assert got[key] == req[key], key
            assert got.get("VpcConfig") == req.get("VpcConfig")
            assert got["AlgorithmSpecification"]["TrainingImage"] == req["AlgorithmSpecification"]["TrainingImage"]
            assert got["ModelArtifacts"]["S3ModelArtifacts"] == (
                f"{tr.output_s3_uri(uc)}/{req['TrainingJobName']}/output/model.tar.gz"
            )
            savings = tr.spot_savings(got)  # moto reports no times: robust zeros
            assert savings["managed_spot"] is req["EnableManagedSpotTraining"]
            assert savings["savings_fraction"] == 0.0
            job_tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]}
            assert job_tags["mlblueprints:git-commit"] == COMMIT

        group = tr.create_model_package_group_request(uc, git_commit=COMMIT)
        group_arn = sm.create_model_package_group(**group)["ModelPackageGroupArn"]
        assert group_arn.endswith(":model-package-group/fraud-detection")
        got_job = sm.describe_training_job(TrainingJobName=spot_job["TrainingJobName"])
        pkg = tr.create_model_package_request(
            uc,
            model_data_url=got_job["ModelArtifacts"]["S3ModelArtifacts"],
            image_uri=tr.framework_image_uri(uc, "inference"),
            metrics_s3_uri="s3://mlb-fraud-lakehouse/fraud_detection/evaluation/metrics.json",
            approval_status=uc.training.sagemaker.approval_status,
            description="candidate",
            customer_metadata=_lineage(training_job_name=spot_job["TrainingJobName"]),
        )
        pkg_arn = sm.create_model_package(**pkg)["ModelPackageArn"]
        desc = sm.describe_model_package(ModelPackageName=pkg_arn)
        assert desc["ModelPackageGroupName"] == "fraud-detection"
        assert desc["ModelApprovalStatus"] == "PendingManualApproval"
        assert desc["CustomerMetadataProperties"] == pkg["CustomerMetadataProperties"]
        assert desc["ModelMetrics"] == pkg["ModelMetrics"]
        assert (
            desc["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
            == got_job["ModelArtifacts"]["S3ModelArtifacts"]
        )
        listed = sm.list_model_packages(ModelPackageGroupName="fraud-detection")["ModelPackageSummaryList"]
        assert [p["ModelPackageArn"] for p in listed] == [pkg_arn]


def test_the_pattern_check_catches_what_botocore_lets_through():
    req = job_request(make_uc())
    bad = {**req, "TrainingJobName": "fraud_detection-1", "Tags": [{"Key": "k", "Value": "a{b}"}]}
    validate_parameters(bad, SM_MODEL.operation_model("CreateTrainingJob").input_shape)  # botocore: fine
    with pytest.raises(AssertionError, match="TrainingJobName") as err:
        check_patterns(bad, SM_MODEL.operation_model("CreateTrainingJob").input_shape)
    assert "Tags[0].Value" in str(err.value)


# ---------------------------------------------------------------- task types and frameworks


def _claims_uc(label: str | None = None, **training):
    data = yaml.safe_load((ROOT / "dags/usecases/claim_cost.yaml").read_text())
    data["gold"]["claim_features"]["sql"] = str(ROOT / "dags/usecases/sql/claim_cost/claim_features.sql")
    data["training"].update(training)
    for k, v in list(data["training"].items()):
        if v is None:
            data["training"].pop(k)
    if label:
        data["training_sets"]["claim_cost_training"]["labels"]["label"] = label
    return parse_usecase(data, str(ROOT / "dags/usecases/claim_cost.yaml"))


@pytest.mark.parametrize(
    ("training", "objective", "metric"),
    [
        ({}, "reg:squarederror", "rmse"),
        ({"objective": "reg:tweedie"}, "reg:tweedie", "rmse"),
        ({"objective": "reg:absoluteerror"}, "reg:absoluteerror", "mae"),
        ({"task": "multiclass", "objective": None, "gate": {}}, "multi:softprob", "mlogloss"),
    ],
)
def test_training_job_request_for_each_task(training, objective, metric):
    """The job trains what the use case declares: the task, its objective (and num_class), and the
    metric definition reads the line the script prints for that objective."""
    from mlblueprints.training.core import hyperparameters

    uc = _claims_uc(label="severity" if training.get("task") == "multiclass" else None, **training)
    req = job_request(uc, hyperparameters=hyperparameters(uc))
    validate(SM_MODEL, "CreateTrainingJob", req)
    hps = tr.decode_hyperparameters(req["HyperParameters"])
    assert hps["task"] == uc.training.task and hps["objective"] == objective
    assert hps.get("num_class") == (3 if uc.training.task == "multiclass" else None)
    assert req["AlgorithmSpecification"]["MetricDefinitions"] == [
        {"Name": f"train:{metric}", "Regex": tr.train_metric_regex(metric)}
    ]
    assert req["AlgorithmSpecification"]["TrainingImage"] == tr.xgboost_image_uri(REGION, "1.7-1")


def test_a_teams_own_sklearn_script_runs_on_the_sklearn_image():
    from mlblueprints.training.core import hyperparameters

    uc = _claims_uc(
        entry_point="scripts/sklearn_gbm/train.py", model_format="sklearn", framework="sklearn", objective=None
    )
    req = job_request(uc, hyperparameters=hyperparameters(uc))
    validate(SM_MODEL, "CreateTrainingJob", req)
    assert req["AlgorithmSpecification"]["TrainingImage"] == tr.sklearn_image_uri(REGION, "1.2-1")
    assert req["AlgorithmSpecification"]["MetricDefinitions"] == []  # the team's script prints what it likes
    assert tr.decode_hyperparameters(req["HyperParameters"])["sagemaker_program"] == "train.py"
    image_uris = pytest.importorskip("sagemaker.core.image_uris")
    for region in ("eu-west-1", "us-east-1"):
        for version in ("1.2-1", "1.4-2"):
            expected = image_uris.retrieve(
                "sklearn", region=region, version=version, image_scope="training", instance_type="ml.m5.xlarge"
            )
            assert tr.sklearn_image_uri(region, version) == expected
    # an image URI of the team's own
    custom = _claims_uc(framework="123456789012.dkr.ecr.eu-west-1.amazonaws.com/our-trainer:2.1")
    assert tr.framework_image_uri(custom) == "123456789012.dkr.ecr.eu-west-1.amazonaws.com/our-trainer:2.1"
    pkg = tr.create_model_package_request(
        uc,
        model_data_url="s3://b/model.tar.gz",
        image_uri=tr.framework_image_uri(uc, "inference"),
        metrics_s3_uri=None,
        approval_status="PendingManualApproval",
        description="d",
        customer_metadata={"git_commit": "abc", "training_job_name": "j"},
    )
    validate(SM_MODEL, "CreateModelPackage", pkg)
    [container] = pkg["InferenceSpecification"]["Containers"]
    assert container["Framework"] == "SKLEARN" and container["FrameworkVersion"] == "1.2-1"
