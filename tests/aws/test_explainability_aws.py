"""The explainability DAG on the aws target through dag.test() under moto (in process), botocore
validating: the ``analyse`` step is a SageMaker Clarify processing job.

The version is the one the training DAG on aws registers (``test_training_dag_aws``'s world: the
real training script's archive at the job's ``ModelArtifacts``, registered as a model package).
Then ``<usecase>__explainability`` runs as Airflow runs it:

* ``analyse.prepare`` uploads the holdout the version was judged on as the job's dataset (Parquet,
  SSE-KMS) and ``analysis_config.json`` beside it, and creates the run's shadow model from the
  version's model package;
* ``analyse.sagemaker_processing`` is the provider's ``SageMakerProcessingOperator``: moto accepts
  CreateProcessingJob (kept as sent, validated against botocore's service model) and marks the job
  Completed without running anything, so the job's output is made here as the Clarify container
  makes it - from what the job was given only: the analysis config it reads from its config input,
  the dataset from its data input, predictions of the booster in the archive of the model package
  behind the shadow model the config names (the XGBoost container's probability, cut at the
  config's ``probability_threshold``), the bias metrics of the config's facets and metrics and
  SHAP values of every record computed with the project's explain core (exact TreeSHAP standing in
  for the container's Kernel SHAP: values that can be checked), written as ``analysis.json``
  (Clarify's layout, no project keys) and ``explanations_shap/out.csv`` under the job's output;
* ``analyse.finish`` reads them back, logs them with the version; ``gate`` and ``report`` run the
  code the local target runs.

The same version is then explained on the local target (the same MLflow store) and the two
verdicts, reasons, tags and metric values are compared; a gate bound that must break blocks the
version on aws as it does locally.
"""

from __future__ import annotations

import copy
import io
import json
import os
import tarfile
from pathlib import Path

import boto3
import botocore.session
import pandas as pd
import pytest
import yaml
from botocore.validate import validate_parameters
from moto_world import REGION
from test_training_dag_aws import BUCKET, NAME, PREFIX, dag_world, lake  # noqa: F401 (fixtures)

from helpers import clarify_analysis
from mlblueprints.aws import clarify as cl
from mlblueprints.aws import requests as req
from mlblueprints.core.naming import safe

pytestmark = [pytest.mark.aws, pytest.mark.slow]

moto = pytest.importorskip("moto")

# CI (class imbalance) lies in [-1, 1] by definition: a minimum of 2 must break, [-1, 1] must pass
BREAKS = {"CI": {"min": 2.0}}
PASSES = {"CI": {"min": -1.0, "max": 1.0}, "DI": {"min": 0.0}}


class ClarifyTwin:
    """What the Clarify container would write for the CreateProcessingJob requests moto accepted
    (module docstring)."""

    def __init__(self):
        self.sent: dict[str, list[dict]] = {"CreateModel": [], "CreateProcessingJob": []}
        self.configs: dict[str, dict] = {}  # job -> the analysis config it read
        self.datasets: dict[str, pd.DataFrame] = {}  # job -> the dataset it read

    def install(self, monkeypatch) -> ClarifyTwin:
        from moto.sagemaker.responses import SageMakerResponse

        twin = self
        create_model = SageMakerResponse.create_model
        create_job = SageMakerResponse.create_processing_job

        def keep_model(self):
            twin.sent["CreateModel"].append(json.loads(self.body))
            return create_model(self)

        def run_job(self):
            twin.sent["CreateProcessingJob"].append(json.loads(self.body))
            out = create_job(self)
            twin.run(twin.sent["CreateProcessingJob"][-1])
            return out

        monkeypatch.setattr(SageMakerResponse, "create_model", keep_model)
        monkeypatch.setattr(SageMakerResponse, "create_processing_job", run_job)
        return self

    @staticmethod
    def _read(uri: str) -> bytes:
        bucket, key = req.split_s3_uri(uri)
        return boto3.client("s3", region_name=REGION).get_object(Bucket=bucket, Key=key)["Body"].read()

    def _booster(self, model_name: str):
        import xgboost as xgb

        sm = boto3.client("sagemaker", region_name=REGION)
        model = sm.describe_model(ModelName=model_name)
        package = sm.describe_model_package(ModelPackageName=model["PrimaryContainer"]["ModelPackageName"])
        [container] = package["InferenceSpecification"]["Containers"]
        with tarfile.open(fileobj=io.BytesIO(self._read(container["ModelDataUrl"]))) as tar:
            [member] = [m for m in tar.getmembers() if m.isfile()]
            raw = tar.extractfile(member).read()
        booster = xgb.Booster()
        booster.load_model(bytearray(raw))
        return booster

    def run(self, job: dict) -> None:
        from mlblueprints.explain import core

        s3 = boto3.client("s3", region_name=REGION)
        inputs = {i["InputName"]: i["S3Input"] for i in job["ProcessingInputs"]}
        assert inputs["analysis_config"]["LocalPath"] == "/opt/ml/processing/input/config"
        assert inputs["dataset"]["LocalPath"] == "/opt/ml/processing/input/data"
        config = json.loads(self._read(inputs["analysis_config"]["S3Uri"]))
        bucket, prefix = req.split_s3_uri(inputs["dataset"]["S3Uri"])
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
        assert config["dataset_type"] == "application/x-parquet"
        data = pd.concat([pd.read_parquet(io.BytesIO(self._read(f"s3://{bucket}/{k}"))) for k in keys])
        assert list(data.columns) == config["headers"]
        name = job["ProcessingJobName"]
        self.configs[name], self.datasets[name] = config, data

        # the model sees every column but the label and the excluded ones, in the dataset's order
        doc, shap = clarify_analysis(config, data, self._booster(config["predictor"]["model_name"]))
        out = Path(os.environ["MLB_HOME"]) / "clarify-twin" / name
        core.write_analysis(doc, out, shap)
        [output] = job["ProcessingOutputConfig"]["Outputs"]
        assert output["S3Output"]["LocalPath"] == "/opt/ml/processing/output"
        obucket, oprefix = req.split_s3_uri(output["S3Output"]["S3Uri"])
        for rel in ("analysis.json", "explanations_shap/out.csv"):
            s3.put_object(
                Bucket=obucket,
                Key=f"{oprefix.rstrip('/')}/{rel}",
                Body=(out / rel).read_bytes(),
                ServerSideEncryption="aws:kms",
                SSEKMSKeyId=job["ProcessingOutputConfig"]["KmsKeyId"],
            )


@pytest.fixture
def clarify_world(dag_world, monkeypatch):  # noqa: F811 (the training test's fixture)
    twin = ClarifyTwin().install(monkeypatch)
    return {**dag_world, "clarify": twin, "path": Path(os.environ["MLB_USECASES_DIR"]) / f"{NAME}.yaml"}


def _set(path: Path, *, target: str, gate: dict) -> None:
    from mlblueprints.config import load_usecase

    data = yaml.safe_load(path.read_text())
    data["target"] = target
    # every holdout row explained on both targets (a Clarify job explains its whole dataset)
    data["explainability"].update(gate=gate, sample_size=1_000_000)
    data["explainability"]["facets"] = [{"name": "channel", "value_or_threshold": ["online"]}]
    path.write_text(yaml.safe_dump(data))
    return load_usecase(path)


def _run(dag_id: str, conf: dict | None = None):
    from mlblueprints.airflow import localrun

    dr = localrun.get_dag(dag_id).test(run_conf=conf or {})
    return dr, {ti.task_id: ti for ti in dr.get_task_instances()}


def _validate(operation: str, params: dict) -> None:
    model = botocore.session.get_session().get_service_model("sagemaker")
    validate_parameters(params, model.operation_model(operation).input_shape)


def _tag(uc, version: int) -> str | None:
    from mlblueprints.registry import local as registry

    return registry.client(uc).get_model_version(uc.model_name, str(version)).tags.get(registry.FAIRNESS_FAILED_TAG)


def _values(metrics: list[dict]) -> dict:
    return {(m["facet"], m["stage"], m["name"]): m["value"] for m in metrics}


def test_explainability_dag_on_aws_runs_a_clarify_job_and_gates_as_the_local_target(clarify_world, lake):  # noqa: F811
    from sagemaker.core.clarify import ANALYSIS_CONFIG_SCHEMA_V1_0

    twin, kms, path = clarify_world["clarify"], clarify_world["kms"], clarify_world["path"]
    s3 = boto3.client("s3", region_name=REGION)
    dr, tis = _run(f"{NAME}__training")
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    registered = tis["register"].xcom_pull(task_ids="register")
    version, package_arn = registered["version"], registered["model_package"]["arn"]

    # ---- aws, a bound that must break: the Clarify job's analysis blocks the version
    uc = _set(path, target="aws", gate=BREAKS)
    dr, tis = _run(f"{NAME}__explainability", {"version": version})
    states = {t: ti.state for t, ti in tis.items()}
    assert dr.state == "success", states
    services = ["analyse.prepare", "analyse.sagemaker_processing", "analyse.finish"]
    assert states == dict.fromkeys(["target", *services, "gate", "report"], "success")
    res = {t.removesuffix(".finish"): ti.xcom_pull(task_ids=t) for t, ti in tis.items()}
    aws_blocked = res["gate"]
    assert aws_blocked["passed"] is False
    assert aws_blocked["reasons"] and all(
        r.startswith("CI of channel=online (pre_training) = ") for r in aws_blocked["reasons"]
    )
    blocked_tag = _tag(uc, version)
    assert blocked_tag and "outside [2, inf]" in blocked_tag

    # the shadow model: from the version's package, isolated as training.sagemaker says, one per run
    [model] = twin.sent["CreateModel"]
    _validate("CreateModel", model)
    assert model["ModelName"] == cl.shadow_model_name(uc, dr.run_id)
    assert model["PrimaryContainer"] == {"ModelPackageName": package_arn}
    assert model["EnableNetworkIsolation"] is True

    # the job: valid, named for the try, Clarify's image, KMS on output and volume
    [job] = twin.sent["CreateProcessingJob"]
    _validate("CreateProcessingJob", job)
    name = cl.processing_job_name(uc, dr.run_id, 1)
    assert job["ProcessingJobName"] == name != cl.processing_job_name(uc, dr.run_id, 2) and len(name) <= 63
    assert job["AppSpecification"] == {"ImageUri": cl.image_uri(REGION)}
    assert job["ProcessingOutputConfig"]["KmsKeyId"] == kms
    assert job["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] == kms
    base = f"s3://{BUCKET}/{PREFIX}/explainability/{safe(dr.run_id)}/v{version}"
    assert job["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] == f"{base}/output/{name}/"
    tags = {t["Key"]: t["Value"] for t in job["Tags"]}
    assert tags["mlblueprints:try-number"] == "1" and tags["mlblueprints:model-version"] == str(version)

    # the config the job read is the SDK-valid one, naming the shadow model and the version's threshold
    config = twin.configs[name]
    ANALYSIS_CONFIG_SCHEMA_V1_0.validate(copy.deepcopy(config))
    assert config["predictor"]["model_name"] == model["ModelName"]
    assert config["probability_threshold"] == res["target"]["threshold"]
    # the dataset: the holdout, SSE-KMS, every row
    for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/explainability/{safe(dr.run_id)}/")["Contents"]:
        head = s3.head_object(Bucket=BUCKET, Key=o["Key"])
        if not o["Key"].rsplit("/", 1)[-1].startswith(("analysis.json", "out.csv")):
            assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == kms, o["Key"]
    holdout_rows = res["analyse"]["holdout_rows"]
    assert len(twin.datasets[name]) == holdout_rows > 100
    assert res["analyse"]["explained_rows"] == holdout_rows

    # ---- the same version on the local target: the same verdict, reasons, tag and metric values
    aws_metrics = _values(res["analyse"]["metrics"])
    aws_top = res["analyse"]["top_features"]
    _set(path, target="local", gate=BREAKS)
    dr, tis = _run(f"{NAME}__explainability", {"version": version})
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    assert "analyse.sagemaker_processing" not in tis  # in the worker
    local = {t: ti.xcom_pull(task_ids=t) for t, ti in tis.items()}
    assert local["gate"]["passed"] is False and local["gate"]["reasons"] == aws_blocked["reasons"]
    assert _tag(uc, version) == blocked_tag
    local_metrics = _values(local["analyse"]["metrics"])
    assert local_metrics.keys() == aws_metrics.keys() and len(aws_metrics) > 5
    for k, v in local_metrics.items():
        assert (v is None and aws_metrics[k] is None) or v == pytest.approx(aws_metrics[k], abs=1e-9), k
    assert local["analyse"]["top_features"] == aws_top

    # ---- aws without Airflow (a script): the same job through aws.direct, the same analysis
    from moto_world import run_direct

    from mlblueprints.backends import backend_for
    from mlblueprints.lineage import RunInfo

    uc = _set(path, target="aws", gate=PASSES)
    run = RunInfo.for_usecase(uc, run_id="direct-run")
    explainer = backend_for(uc, "explainer")
    direct = run_direct(uc, explainer.rt, explainer.analyse(res["target"], run), run)
    assert twin.sent["CreateProcessingJob"][-1]["ProcessingJobName"] == cl.processing_job_name(uc, "direct-run", 1)
    assert _values(direct["metrics"]) == aws_metrics and direct["top_features"] == aws_top

    # ---- aws again, bounds that hold: the version passes and its tag is removed
    dr, tis = _run(f"{NAME}__explainability", {"version": version})
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    passed = tis["gate"].xcom_pull(task_ids="gate")
    assert passed["passed"] is True and passed["reasons"] == [] and _tag(uc, version) is None
    assert len(twin.sent["CreateProcessingJob"]) == 3


def _operator_context(run_id: str, try_number: int) -> dict:
    """What ProcessingJobOperator.execute reads of the Airflow context."""
    from types import SimpleNamespace

    return {"run_id": run_id, "ti": SimpleNamespace(try_number=try_number, task_id="analyse.sagemaker_processing")}


def test_a_retry_adopts_an_earlier_tries_clarify_job_only_when_it_ran_the_same_analysis(clarify_world, monkeypatch):
    """A retry of the processing task whose earlier try's Clarify job completed on the same dataset,
    config, image and instances takes that job's output (nothing analysed twice); a job on another
    dataset is not adopted and the retry starts its own, named for its try."""
    from moto.sagemaker import models as sm_models

    from mlblueprints.airflow.builder import service_operator

    uc, twin = clarify_world["uc"], clarify_world["clarify"]
    # moto's DescribeProcessingJob leaves out ProcessingResources; SageMaker returns what was sent
    response_object = sm_models.FakeProcessingJob.response_object

    def with_resources(self):
        out = response_object.fget(self)
        sent = [j for j in twin.sent["CreateProcessingJob"] if j["ProcessingJobName"] == self.processing_job_name]
        if sent:
            out["ProcessingResources"] = sent[-1]["ProcessingResources"]
        return out

    monkeypatch.setattr(sm_models.FakeProcessingJob, "response_object", property(with_resources))
    monkeypatch.setattr(twin, "run", lambda job: None)  # the job's output is not read here
    run_id = "manual__2024-03-04T00:00:00+00:00"
    base = uc.aws.s3_uri("explainability", safe(run_id), "v1")
    request = cl.processing_request(
        uc,
        job_name=cl.processing_job_name(uc, run_id, 1),
        model_name=cl.shadow_model_name(uc, run_id),
        model_package_arn="arn:aws:sagemaker:eu-west-1:123456789012:model-package/fraud/1",
        dataset_uri=f"{base}/dataset/",
        config_uri=f"{base}/config/analysis_config.json",
        output_base_uri=f"{base}/output",
        model={"name": uc.model_name, "version": 1},
        run={"run_id": run_id, "try_number": 1},
        git_commit="abc",
    )["Processing"]
    sm = boto3.client("sagemaker", region_name=REGION)
    sm.create_processing_job(**copy.deepcopy(request))
    sent = twin.sent["CreateProcessingJob"]
    first = list(sent)

    def operator(config: dict):
        op = service_operator("sagemaker_processing", uc, task_id="sagemaker_processing", request=copy.deepcopy(config))
        op.deferrable, op.check_interval = False, 0
        return op

    out = operator(request).execute(_operator_context(run_id, 3))
    assert out["how"] == "adopted" and out["Processing"]["ProcessingJobName"] == request["ProcessingJobName"]
    assert sent == first, "adopted: nothing created"
    moved = copy.deepcopy(request)
    moved["ProcessingInputs"][0]["S3Input"]["S3Uri"] = f"{base}/other-dataset/"
    assert cl.processing_job_differences(
        moved, sm.describe_processing_job(ProcessingJobName=request["ProcessingJobName"])
    )
    created = operator(moved).execute(_operator_context(run_id, 3))
    assert created["how"] == "created"
    assert created["Processing"]["ProcessingJobName"] == cl.processing_job_name(uc, run_id, 3)
    job = sent[-1]
    _validate("CreateProcessingJob", job)
    assert job["ProcessingJobName"] == cl.processing_job_name(uc, run_id, 3)
    assert (
        job["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] == f"{base}/output/{job['ProcessingJobName']}/"
    )
    assert {t["Key"]: t["Value"] for t in job["Tags"]}["mlblueprints:try-number"] == "3"
