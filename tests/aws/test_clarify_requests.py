"""The SageMaker Clarify job of the explainability pattern on aws (``mlblueprints.aws.clarify``).

``analysis_config.json`` is checked against the schema the SageMaker SDK validates a Clarify
config with before it starts a job (``sagemaker.core.clarify.ANALYSIS_CONFIG_SCHEMA_V1_0``,
sagemaker 3.x); CreateModel and CreateProcessingJob against botocore's service model (types,
required members, lengths, enums, and the ``pattern`` of every string SageMaker checks server
side); the image against ``sagemaker.core.image_uris.retrieve("clarify", ...)``.
"""

from __future__ import annotations

import copy

import botocore.session
import pytest
import yaml
from test_training_requests import COMMIT, RUN, validate

from helpers import ROOT
from mlblueprints.aws import clarify as cl
from mlblueprints.aws.training import SAGEMAKER_NAME_MAX, SAGEMAKER_NAME_RE
from mlblueprints.config import UseCase

pytestmark = [pytest.mark.aws]

PACKAGE = "arn:aws:sagemaker:eu-west-1:123456789012:model-package/fraud-detection/3"
MODEL = {"name": "fraud_model", "version": 3, "task": "binary"}


def _uc(**explain) -> UseCase:
    data = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    data["explainability"].update(explain)
    return UseCase.model_validate(data)


def _config(uc: UseCase) -> dict:
    n = len(uc.model_features())
    return cl.analysis_config(uc, model_name="fraud-shadow-0123", threshold=0.37, means=[0.5] * n)


def _request(uc: UseCase, try_number: int = 1) -> dict:
    base = uc.aws.s3_uri("explain", "run")
    config = cl.processing_request(
        uc,
        job_name=cl.processing_job_name(uc, RUN["run_id"], 1),
        model_name=cl.shadow_model_name(uc, RUN["run_id"]),
        model_package_arn=PACKAGE,
        dataset_uri=f"{base}/dataset/",
        config_uri=f"{base}/config/",
        output_base_uri=f"{base}/output",
        model=MODEL,
        run=RUN,
        git_commit=COMMIT,
    )
    name = cl.processing_job_name(uc, RUN["run_id"], try_number)
    return {**config, "Processing": cl.request_for_try(config["Processing"], name, try_number)}


def test_the_analysis_config_validates_against_the_sdks_schema_and_a_broken_one_does_not():
    from sagemaker.core.clarify import ANALYSIS_CONFIG_SCHEMA_V1_0
    from schema import SchemaError

    uc = _uc()
    config = _config(uc)
    ANALYSIS_CONFIG_SCHEMA_V1_0.validate(copy.deepcopy(config))
    feats = uc.model_features()
    assert config["headers"] == [*feats, "is_fraud", "age_band"]  # the facet is not a feature: excluded
    assert config["excluded_columns"] == ["age_band"] and config["label"] == "is_fraud"
    assert config["label_values_or_threshold"] == [1] and config["probability_threshold"] == 0.37
    assert config["facet"] == [{"name_or_index": "age_band", "value_or_threshold": ["60+"]}]
    e = uc.explainability
    assert config["methods"]["pre_training_bias"] == {"methods": list(e.pre_training_metrics)}
    assert config["methods"]["post_training_bias"] == {"methods": list(e.post_training_metrics)}
    assert config["methods"]["shap"]["baseline"] == [[0.5] * len(feats)]
    assert config["predictor"]["model_name"] == "fraud-shadow-0123"

    for broken in (
        {**config, "dataset_type": "text/tsv"},
        {**config, "facet": [{"value_or_threshold": ["60+"]}]},
        {**config, "methods": {**config["methods"], "shap": {**config["methods"]["shap"], "agg_method": "max"}}},
        {k: v for k, v in config.items() if k != "methods"},
    ):
        with pytest.raises(SchemaError):
            ANALYSIS_CONFIG_SCHEMA_V1_0.validate(copy.deepcopy(broken))


def test_shap_baselines_as_clarify_takes_them():
    from sagemaker.core.clarify import ANALYSIS_CONFIG_SCHEMA_V1_0

    n = len(_uc().model_features())
    kmeans = _config(_uc(shap={"baseline": "kmeans", "num_clusters": 5, "num_samples": 200}))["methods"]["shap"]
    assert "baseline" not in kmeans and kmeans["num_clusters"] == 5 and kmeans["num_samples"] == 200
    given = _config(_uc(shap={"baseline": [[1.0] * n, [2.0] * n]}))
    assert given["methods"]["shap"]["baseline"] == [[1.0] * n, [2.0] * n]
    ANALYSIS_CONFIG_SCHEMA_V1_0.validate(copy.deepcopy(given))
    with pytest.raises(ValueError, match="one value per model feature"):
        _config(_uc(shap={"baseline": [[1.0] * (n - 1)]}))


def test_create_processing_job_and_model_are_valid_with_kms_vpc_and_isolation():
    model = botocore.session.get_session().get_service_model("sagemaker")
    uc = _uc()
    kms = uc.aws.kms_key_arn
    req = _request(uc)
    validate(model, "CreateModel", req["Model"])
    validate(model, "CreateProcessingJob", req["Processing"])
    job = req["Processing"]
    assert job["ProcessingOutputConfig"]["KmsKeyId"] == kms
    assert job["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] == kms
    assert job["AppSpecification"] == {"ImageUri": cl.image_uri(uc.aws.region)}
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": uc.explainability.sagemaker.max_runtime_seconds}
    # Clarify calls SageMaker for its shadow endpoint: the job cannot be isolated, the model is
    assert job["NetworkConfig"]["EnableNetworkIsolation"] is False
    assert req["Model"]["EnableNetworkIsolation"] is uc.training.sagemaker.network_isolation is True
    assert req["Model"]["PrimaryContainer"] == {"ModelPackageName": PACKAGE}
    assert {i["InputName"]: i["S3Input"]["LocalPath"] for i in job["ProcessingInputs"]} == {
        "dataset": "/opt/ml/processing/input/data",
        "analysis_config": "/opt/ml/processing/input/config",
    }
    [out] = job["ProcessingOutputConfig"]["Outputs"]
    assert out["S3Output"]["S3Uri"].endswith(f"/output/{job['ProcessingJobName']}/")

    # a VPC as training.sagemaker configures it, on the job and on the shadow model
    data = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    data["training"]["sagemaker"].update(
        subnets=["subnet-0123456789abcdef0"], security_group_ids=["sg-0123456789abcdef0"]
    )
    vpc_uc = UseCase.model_validate(data)
    vreq = _request(vpc_uc)
    validate(model, "CreateProcessingJob", vreq["Processing"])
    validate(model, "CreateModel", vreq["Model"])
    want = {"Subnets": ["subnet-0123456789abcdef0"], "SecurityGroupIds": ["sg-0123456789abcdef0"]}
    assert vreq["Processing"]["NetworkConfig"]["VpcConfig"] == want == vreq["Model"]["VpcConfig"]


def test_job_names_are_unique_per_try_and_fit_sagemakers_limits():
    data = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    data["name"] = "a_very_long_use_case_name_" * 4
    long_uc = UseCase.model_validate(data)
    for uc in (_uc(), long_uc):
        names = {cl.processing_job_name(uc, RUN["run_id"], k) for k in (1, 2, 3)}
        assert len(names) == 3
        shadow = cl.shadow_model_name(uc, RUN["run_id"])
        for n in [*names, shadow]:
            assert len(n) <= SAGEMAKER_NAME_MAX and SAGEMAKER_NAME_RE.match(n), n
        assert shadow not in names and shadow == cl.shadow_model_name(uc, RUN["run_id"])
        first, second = _request(uc, 1), _request(uc, 2)
        assert first["Processing"]["ProcessingJobName"] != second["Processing"]["ProcessingJobName"]
        assert first["Model"] == second["Model"]  # one shadow model per run, named in the config
        tags = {t["Key"]: t["Value"] for t in second["Processing"]["Tags"]}
        assert tags["mlblueprints:try-number"] == "2"
        assert cl.processing_job_differences(first["Processing"], second["Processing"]) == []
        moved = copy.deepcopy(second["Processing"])
        moved["ProcessingInputs"][0]["S3Input"]["S3Uri"] = "s3://elsewhere/dataset/"
        assert cl.processing_job_differences(first["Processing"], moved) == [
            f"dataset s3://elsewhere/dataset/ != {first['Processing']['ProcessingInputs'][0]['S3Input']['S3Uri']}"
        ]


@pytest.mark.parametrize("region", ["eu-west-1", "us-east-1", "ap-southeast-2", "cn-north-1", "us-gov-west-1"])
def test_the_clarify_image_of_a_region_is_the_sdks(region):
    from sagemaker.core import image_uris

    assert cl.image_uri(region) == image_uris.retrieve("clarify", region, "1.0")


def test_a_region_without_clarify_is_refused():
    with pytest.raises(ValueError, match="no image in region"):
        cl.image_uri("xx-nowhere-1")
