"""Request builders of the explainability pattern on the aws target: a SageMaker Clarify job.

Pure functions: no boto3 client, no network, no SageMaker SDK (an Airflow worker on Python 3.12
cannot install it). What the caller does around them:

1. the holdout the version was judged on is written to S3 as Parquet (SSE-KMS) under a prefix
   unique per run: the model's features in model order, the label, then the facets that are not
   features (``excluded_columns``: Clarify sends the model every other column but the label);
2. :func:`analysis_config` is Clarify's ``analysis_config.json`` from the ``explainability:``
   section - the label and its positive value, the facets, the pre- and post-training bias
   metrics, Kernel SHAP with the baseline as Clarify takes it (``explainability.shap``), and the
   predictor: the shadow endpoint Clarify creates from ``model_name`` and deletes after the job,
   its predicted labels cut at the version's operating threshold (``probability_threshold``).
   The keys are those of the schema the SageMaker SDK validates the config with
   (``sagemaker.core.clarify.ANALYSIS_CONFIG_SCHEMA_V1_0``; a test holds the two together);
3. :func:`processing_request` gives ``Model`` - CreateModel from the
   registered model package (:func:`mlblueprints.aws.scoring.model_from_package`: the image and
   archive as registered, network isolation and VPC of ``training.sagemaker``) - and
   ``Processing`` - CreateProcessingJob with the Clarify image of the region, the dataset and the
   config as inputs at the paths the Clarify container reads, the output under a prefix per job
   (KMS), the volume's KMS key, the VPC of ``training.sagemaker``, the stopping condition, lineage
   tags; the latter is the operator's config. The job itself runs without network isolation: Clarify calls SageMaker to create and
   invoke the shadow endpoint, which an isolated container cannot (the model keeps its isolation);
4. :func:`request_for_try` names the job and the output prefix for one try (the shadow model is
   one per run, :func:`shadow_model_name`: the config names it before a try starts);
   :func:`processing_job_differences` says whether an earlier try's job did the same work;
5. the job writes ``analysis.json`` and ``explanations_shap/out.csv`` under its output prefix,
   read back by :func:`mlblueprints.explain.core.read_analysis` as the local target's are.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from mlblueprints.aws import scoring as sr
from mlblueprints.aws import training as tr
from mlblueprints.config import UseCase

KIND = "clarify"
DATASET_TYPE = "application/x-parquet"
CONTENT_TYPE = "text/csv"  # what the XGBoost container takes and answers
IMAGE_REPOSITORY = "sagemaker-clarify-processing"
# where the Clarify container reads its inputs and leaves its output (the SDK's SageMakerClarifyProcessor)
DATA_INPUT = "/opt/ml/processing/input/data"
CONFIG_INPUT = "/opt/ml/processing/input/config"
OUTPUT = "/opt/ml/processing/output"
CONFIG_FILE = "analysis_config.json"


def _aws(uc: UseCase) -> Any:
    if uc.aws is None or uc.training is None or uc.explainability is None:
        raise ValueError(f"{uc.name}: a Clarify job needs the aws, training and explainability sections")
    return uc.aws


def image_uri(region: str, version: str = "1.0") -> str:
    """The Clarify processing image of a region, as ``sagemaker.core.image_uris.retrieve("clarify",
    region, version)`` builds it, from the project's copy of the SDK's table."""
    from mlblueprints.aws import image_table

    versions = image_table.config(KIND)["processing"]["versions"]
    if version not in versions:
        raise ValueError(f"unknown SageMaker Clarify version {version!r}; known: {', '.join(versions)}")
    registries = versions[version]["registries"]
    if region not in registries:
        raise ValueError(f"SageMaker Clarify {version} has no image in region {region!r}")
    domain = tr.image_domain(region)
    return f"{registries[region]}.dkr.ecr.{region}.{domain}/{versions[version]['repository']}:{version}"


def processing_job_name(uc: UseCase, run_id: str, try_number: int) -> str:
    """``<use-case-name>-clarify-<12 hex>``, unique per try."""
    return tr.job_name(uc, KIND, run_id, try_number)


def shadow_model_name(uc: UseCase, run_id: str) -> str:
    """``<use-case-name>-shadow-<12 hex>``: the model Clarify serves, one per run (the analysis
    config names it before any try runs; every try of the run serves the same package)."""
    return tr.job_name(uc, "shadow", run_id, 0)


def dataset_columns(uc: UseCase) -> tuple[list[str], str, list[str]]:
    """The dataset's columns in order (features in model order, the label, the facets that are
    not features), the label, and the columns the model must not see."""
    t, e = uc.training, uc.explainability
    if t is None or e is None:
        raise ValueError(f"{uc.name}: the training and explainability sections are required")
    feats = uc.model_features()
    label = uc.training_sets[t.training_set].labels.label
    extra = [f.name for f in e.facets if f.name not in feats and f.name != label]
    return [*feats, label, *dict.fromkeys(extra)], label, list(dict.fromkeys(extra))


def shap_baseline(uc: UseCase, means: Sequence[float] | None) -> dict[str, Any]:
    """The ``shap`` method's baseline fields: the features' ``means`` as one row (``mean``), the
    k-means centroids Clarify computes (``kmeans``), or the rows given."""
    e = uc.explainability
    assert e is not None
    b, n = e.shap.baseline, len(uc.model_features())
    if b == "kmeans":
        return {"num_clusters": e.shap.num_clusters}
    rows = [list(means or [])] if b == "mean" else [list(r) for r in b]
    bad = [i for i, r in enumerate(rows) if len(r) != n]
    if bad:
        raise ValueError(f"explainability.shap.baseline: row(s) {bad} do not have one value per model feature ({n})")
    return {"baseline": rows}


def analysis_config(
    uc: UseCase, *, model_name: str, threshold: float, means: Sequence[float] | None = None
) -> dict[str, Any]:
    """Clarify's ``analysis_config.json`` of the use case (module docstring)."""
    _aws(uc)
    e = uc.explainability
    assert e is not None
    headers, label, excluded = dataset_columns(uc)
    shap: dict[str, Any] = {
        **shap_baseline(uc, means),
        "agg_method": "mean_abs",
        "use_logit": True,  # the attributions in log-odds, as the local target's TreeSHAP
        "save_local_shap_values": True,
        "seed": int(e.shap.seed),
    }
    if e.shap.num_samples:
        shap["num_samples"] = int(e.shap.num_samples)
    methods: dict[str, Any] = {"shap": shap}
    if e.facets and e.pre_training_metrics:
        methods["pre_training_bias"] = {"methods": list(e.pre_training_metrics)}
    if e.facets and e.post_training_metrics:
        methods["post_training_bias"] = {"methods": list(e.post_training_metrics)}
    config: dict[str, Any] = {
        "version": "1.0",
        "dataset_type": DATASET_TYPE,
        "headers": headers,
        "label": label,
        "label_values_or_threshold": [e.label_value],
        "probability_threshold": float(threshold),
        "methods": methods,
        "predictor": {
            "model_name": model_name,
            "instance_type": e.sagemaker.endpoint_instance_type,
            "initial_instance_count": e.sagemaker.endpoint_instance_count,
            "content_type": CONTENT_TYPE,
            "accept_type": CONTENT_TYPE,
        },
    }
    if e.facets:
        config["facet"] = [
            {"name_or_index": f.name, "value_or_threshold": list(f.value_or_threshold)} for f in e.facets
        ]
    if excluded:
        config["excluded_columns"] = excluded
    return config


def create_processing_job_request(
    uc: UseCase,
    *,
    job_name: str,
    dataset_uri: str,
    config_uri: str,
    output_uri: str,
    tags: list[dict[str, str]],
) -> dict[str, Any]:
    """CreateProcessingJob of the Clarify container over the dataset and the config (module docstring)."""
    aws = _aws(uc)
    e, t = uc.explainability, uc.training
    assert e is not None and t is not None
    c, net = e.sagemaker, t.sagemaker
    for what, uri in (("dataset_uri", dataset_uri), ("config_uri", config_uri), ("output_uri", output_uri)):
        if not uri.startswith("s3://"):
            raise ValueError(f"{what} must be an s3:// URI, got {uri!r}")

    def s3_input(name: str, uri: str, local: str) -> dict[str, Any]:
        return {
            "InputName": name,
            "S3Input": {
                "S3Uri": uri,
                "LocalPath": local,
                "S3DataType": "S3Prefix",
                "S3InputMode": "File",
                "S3DataDistributionType": "FullyReplicated",
                "S3CompressionType": "None",
            },
        }

    cluster: dict[str, Any] = {
        "InstanceCount": c.instance_count,
        "InstanceType": c.instance_type,
        "VolumeSizeInGB": c.volume_size_gb,
    }
    if not tr.has_local_storage(c.instance_type):  # NVMe instance storage is encrypted by the hardware
        cluster["VolumeKmsKeyId"] = aws.kms_key_arn
    network: dict[str, Any] = {"EnableInterContainerTrafficEncryption": True, "EnableNetworkIsolation": False}
    if net.subnets:
        network["VpcConfig"] = {"Subnets": list(net.subnets), "SecurityGroupIds": list(net.security_group_ids)}
    return {
        "ProcessingJobName": job_name,
        "ProcessingInputs": [
            s3_input("dataset", dataset_uri, DATA_INPUT),
            s3_input("analysis_config", config_uri, CONFIG_INPUT),
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": "analysis_result",
                    "S3Output": {"S3Uri": output_uri, "LocalPath": OUTPUT, "S3UploadMode": "EndOfJob"},
                }
            ],
            "KmsKeyId": aws.kms_key_arn,
        },
        "ProcessingResources": {"ClusterConfig": cluster},
        "StoppingCondition": {"MaxRuntimeInSeconds": c.max_runtime_seconds},
        "AppSpecification": {"ImageUri": image_uri(aws.region, c.version)},
        "NetworkConfig": network,
        "RoleArn": c.role_arn or aws.iam_role_arn,
        "Tags": tags,
    }


def processing_request(
    uc: UseCase,
    *,
    job_name: str,
    model_name: str,
    model_package_arn: str,
    dataset_uri: str,
    config_uri: str,
    output_base_uri: str,
    model: Mapping[str, Any],
    run: Mapping[str, Any],
    git_commit: str,
) -> dict[str, Any]:
    """``{"Model": CreateModel, "Processing": CreateProcessingJob}``, the
    job named ``job_name`` (the first try's; :func:`request_for_try` renames per try), the model
    ``model_name`` (the one the analysis config at ``config_uri`` names). The job's output goes to
    ``<output_base_uri>/<job name>/``."""
    aws = _aws(uc)
    t, e = uc.training, uc.explainability
    assert t is not None and e is not None
    tags = sr.lineage_tags(uc, model, run, git_commit)
    return {
        "Model": sr.model_from_package(
            model_name=model_name,
            model_package_arn=model_package_arn,
            role_arn=e.sagemaker.role_arn or aws.iam_role_arn,
            network_isolation=t.sagemaker.network_isolation,
            subnets=t.sagemaker.subnets,
            security_group_ids=t.sagemaker.security_group_ids,
            tags=tags,
        ),
        "Processing": create_processing_job_request(
            uc,
            job_name=job_name,
            dataset_uri=dataset_uri,
            config_uri=config_uri,
            output_uri=f"{output_base_uri.rstrip('/')}/{job_name}/",
            tags=tags,
        ),
    }


def output_base(job: Mapping[str, Any]) -> str:
    """The prefix every try's output goes under (``<output_base_uri>`` of :func:`processing_request`)."""
    [out] = job["ProcessingOutputConfig"]["Outputs"]
    return str(out["S3Output"]["S3Uri"]).rstrip("/").rsplit("/", 1)[0]


def request_for_try(job: Mapping[str, Any], job_name: str, try_number: int) -> dict[str, Any]:
    """The CreateProcessingJob of one try: job and output prefix named for the try, try-number
    tag. The shadow model is the run's (:func:`shadow_model_name`), the one the analysis config names."""
    if not tr.SAGEMAKER_NAME_RE.match(job_name):
        raise ValueError(f"{job_name!r} is not a valid SageMaker name")
    out = copy.deepcopy(dict(job))
    out["ProcessingJobName"] = job_name
    [o] = out["ProcessingOutputConfig"]["Outputs"]
    o["S3Output"]["S3Uri"] = f"{output_base(job)}/{job_name}/"
    out["Tags"] = sr.tagged_for_try(out.get("Tags", []), try_number)
    return out


def _input(job: Mapping[str, Any], name: str) -> str | None:
    return next((i["S3Input"]["S3Uri"] for i in job.get("ProcessingInputs", []) if i["InputName"] == name), None)


def processing_job_differences(want: Mapping[str, Any], described: Mapping[str, Any]) -> list[str]:
    """Why the job ``described`` (DescribeProcessingJob) is not the job ``want`` would run,
    apart from its name and output prefix: the dataset, the config, the image, the
    instances. Empty: adopting it gives the analysis this config would."""
    out = []

    for name in ("dataset", "analysis_config"):
        a, b = _input(want, name), _input(described, name)
        if a != b:
            out.append(f"{name} {b} != {a}")
    for key in ("AppSpecification", "ProcessingResources"):
        if want.get(key) != described.get(key):
            out.append(f"{key} {described.get(key)} != {want.get(key)}")
    return out
