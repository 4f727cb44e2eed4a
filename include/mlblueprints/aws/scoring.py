"""Request builders of batch scoring on the aws target: a SageMaker Batch Transform job.

Pure functions: no boto3 client, no network. What the caller does around them:

1. the scoring rows are written to S3 as headerless, gzip-compressed CSV under a prefix unique
   per run and try, one record per line: the prediction keys hex-encoded (a key may hold any
   character; hex holds no delimiter, quote or line end), the event time as text, then the
   model's features in model order, a null as an empty field (the XGBoost container reads an
   empty field as missing). Athena writes them itself (:func:`unload_csv_statement`) when the
   features are columns of the Gold rows; a point-in-time join is made in the worker with the
   builder training sets use and uploaded the same way;
2. :func:`transform_request` gives the provider operator's config: ``Model`` - CreateModel from
   the registered model package (``PrimaryContainer.ModelPackageName``: the image and the model
   archive exactly as registered), the transform role (``scoring.sagemaker.role_arn``, else the
   use case's execution role), network isolation and VPC as
   configured - and ``Transform`` - CreateTransformJob with ``SplitType`` Line,
   ``BatchStrategy`` MultiRecord and ``MaxPayloadInMB``, ``DataProcessing`` that hands the model
   only the features (``InputFilter``) and joins each prediction to its input record
   (``JoinSource`` Input), keeping the keys, the event time and the prediction
   (``OutputFilter``), KMS on the output and on the instance volume, ``ModelClientConfig``
   timeouts and retries, lineage tags;
3. :func:`request_for_try` names the model, the job and the output prefix for one try (SageMaker
   names are unique per account and region forever: a retry never collides);
   :func:`transform_job_differences` says whether an earlier try's job did the same work (then
   a retry adopts it instead of scoring again);
4. the output (``<input file>.out``, one CSV line per record: keys, event time, prediction) is
   read by Athena through an external table and MERGEd by key into the predictions table.

The container's output per record: a binary model's probability; a regression's prediction; for
a multiclass model, with ``SAGEMAKER_INFERENCE_OUTPUT=predicted_label,probability``, the index of
the most probable class and its probability (the container's own argmax).
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from mlblueprints.aws.training import SAGEMAKER_NAME_MAX, SAGEMAKER_NAME_RE, has_local_storage
from mlblueprints.config import UseCase
from mlblueprints.core.service import Statement
from mlblueprints.lakehouse.sqlgen import literal

JOB_NAME_HASH_LEN = 12
CONTENT_TYPE = "text/csv"
MULTICLASS_OUTPUT = "predicted_label,probability"
_TAG_CHARS = re.compile(r"[^\w .:/=+\-@]")


def _aws(uc: UseCase) -> Any:
    if uc.aws is None:
        raise ValueError(f"{uc.name}: the aws section is required to score with Batch Transform")
    return uc.aws


def _sm(uc: UseCase) -> Any:
    if uc.scoring is None:
        raise ValueError(f"{uc.name}: the scoring section is required")
    return uc.scoring.sagemaker


def transform_job_name(uc: UseCase, run_id: str, try_number: int) -> str:
    """``<use-case-name>-score-<12 hex>``: a sha256 of (use case, run id, try number); the use
    case name made SageMaker-safe and cut so the whole fits 63 characters. The model of the try
    has the same name."""
    digest = hashlib.sha256(f"transform-job\x1f{uc.name}\x1f{run_id}\x1f{int(try_number)}".encode()).hexdigest()
    prefix = re.sub(r"[^a-zA-Z0-9]+", "-", uc.name).strip("-")
    prefix = prefix[: SAGEMAKER_NAME_MAX - len("-score-") - JOB_NAME_HASH_LEN].rstrip("-") or "mlb"
    name = f"{prefix}-score-{digest[:JOB_NAME_HASH_LEN]}"
    if not SAGEMAKER_NAME_RE.match(name):  # cannot happen with the prefix made safe above
        raise ValueError(f"{name!r} is not a valid SageMaker name")
    return name


def _tags(pairs: list[tuple[str, Any]]) -> list[dict[str, str]]:
    return [
        {"Key": _TAG_CHARS.sub("_", str(k))[:128], "Value": _TAG_CHARS.sub("_", str(v))[:256]}
        for k, v in pairs
        if v is not None and v != ""
    ][:50]


def lineage_tags(
    uc: UseCase, model: Mapping[str, Any], run: Mapping[str, Any], git_commit: str
) -> list[dict[str, str]]:
    return _tags(
        [
            ("managed-by", "mlblueprints"),
            ("mlblueprints:usecase", uc.name),
            ("mlblueprints:model", model.get("name")),
            ("mlblueprints:model-version", model.get("version")),
            ("mlblueprints:git-commit", git_commit),
            ("mlblueprints:config-hash", uc.config_hash()),
            ("mlblueprints:run-id", run.get("run_id")),
            ("mlblueprints:try-number", run.get("try_number")),
            ("mlblueprints:dag-id", run.get("dag_id")),
        ]
    )


def tagged_for_try(tags: list[dict[str, str]], try_number: int) -> list[dict[str, str]]:
    """A job's tags with the try-number tag of ``try_number``."""
    out = [t for t in tags if t["Key"] != "mlblueprints:try-number"]
    out.append({"Key": "mlblueprints:try-number", "Value": str(int(try_number))})
    return out[:50]


def output_filter(key_count: int, outputs: int) -> str:
    """``OutputFilter`` of the joined record (input columns, then the container's ``outputs``
    values): the keys, the event time and the prediction."""
    keep = [str(i) for i in range(key_count + 1)] + [str(-i) for i in range(outputs, 0, -1)]
    return f"$[{','.join(keep)}]"


def model_from_package(
    *,
    model_name: str,
    model_package_arn: str,
    role_arn: str,
    network_isolation: bool,
    subnets: list[str],
    security_group_ids: list[str],
    tags: list[dict[str, str]],
) -> dict[str, Any]:
    """CreateModel from a registered model package: the image and the archive as registered
    (the transform job's model, and the model Clarify serves on its shadow endpoint)."""
    request: dict[str, Any] = {
        "ModelName": model_name,
        "ExecutionRoleArn": role_arn,
        "PrimaryContainer": {"ModelPackageName": model_package_arn},
        "EnableNetworkIsolation": network_isolation,
        "Tags": tags,
    }
    if subnets:
        request["VpcConfig"] = {"Subnets": list(subnets), "SecurityGroupIds": list(security_group_ids)}
    return request


def create_model_request(
    uc: UseCase, *, model_name: str, model_package_arn: str, tags: list[dict[str, str]]
) -> dict[str, Any]:
    """CreateModel of the transform job: the transform role, isolation and VPC of ``scoring.sagemaker``."""
    aws, sm = _aws(uc), _sm(uc)
    return model_from_package(
        model_name=model_name,
        model_package_arn=model_package_arn,
        role_arn=sm.role_arn or aws.iam_role_arn,
        network_isolation=sm.network_isolation,
        subnets=sm.subnets,
        security_group_ids=sm.security_group_ids,
        tags=tags,
    )


def create_transform_job_request(
    uc: UseCase,
    *,
    job_name: str,
    model_name: str,
    input_s3_uri: str,
    output_s3_uri: str,
    key_count: int,
    task: str,
    tags: list[dict[str, str]],
) -> dict[str, Any]:
    """CreateTransformJob over the CSV input (module docstring)."""
    aws, sm = _aws(uc), _sm(uc)
    for what, uri in (("input_s3_uri", input_s3_uri), ("output_s3_uri", output_s3_uri)):
        if not uri.startswith("s3://"):
            raise ValueError(f"{what} must be an s3:// URI, got {uri!r}")
    outputs = 2 if task == "multiclass" else 1
    resources: dict[str, Any] = {"InstanceType": sm.instance_type, "InstanceCount": sm.instance_count}
    if not has_local_storage(sm.instance_type):  # NVMe instance storage is encrypted by the hardware
        resources["VolumeKmsKeyId"] = aws.kms_key_arn
    request: dict[str, Any] = {
        "TransformJobName": job_name,
        "ModelName": model_name,
        "ModelClientConfig": {
            "InvocationsTimeoutInSeconds": sm.invocation_timeout_seconds,
            "InvocationsMaxRetries": sm.invocation_max_retries,
        },
        "MaxPayloadInMB": sm.max_payload_mb,
        "BatchStrategy": "MultiRecord",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_s3_uri}},
            "ContentType": CONTENT_TYPE,
            "CompressionType": "Gzip",
            "SplitType": "Line",
        },
        "TransformOutput": {
            "S3OutputPath": output_s3_uri,
            "Accept": CONTENT_TYPE,
            "AssembleWith": "Line",
            "KmsKeyId": aws.kms_key_arn,
        },
        "TransformResources": resources,
        "DataProcessing": {
            "InputFilter": f"$[{key_count + 1}:]",  # the model sees the features only
            "JoinSource": "Input",
            "OutputFilter": output_filter(key_count, outputs),
        },
        "Tags": tags,
    }
    if sm.max_concurrent_transforms:
        request["MaxConcurrentTransforms"] = sm.max_concurrent_transforms
    if task == "multiclass":
        request["Environment"] = {"SAGEMAKER_INFERENCE_OUTPUT": MULTICLASS_OUTPUT}
    return request


def transform_request(
    uc: UseCase,
    *,
    job_name: str,
    model_package_arn: str,
    input_s3_uri: str,
    output_base_uri: str,
    key_count: int,
    model: Mapping[str, Any],
    run: Mapping[str, Any],
    git_commit: str,
) -> dict[str, Any]:
    """The provider operator's config: ``{"Model": CreateModel, "Transform": CreateTransformJob}``,
    named for ``job_name`` (the first try's; :func:`request_for_try` renames per try). The job's
    output goes to ``<output_base_uri>/<job name>/``."""
    tags = lineage_tags(uc, model, run, git_commit)
    return {
        "Model": create_model_request(uc, model_name=job_name, model_package_arn=model_package_arn, tags=tags),
        "Transform": create_transform_job_request(
            uc,
            job_name=job_name,
            model_name=job_name,
            input_s3_uri=input_s3_uri,
            output_s3_uri=f"{output_base_uri.rstrip('/')}/{job_name}/",
            key_count=key_count,
            task=str(model["task"]),
            tags=tags,
        ),
    }


def output_base(config: Mapping[str, Any]) -> str:
    """The prefix every try's output goes under (``<output_base_uri>`` of :func:`transform_request`)."""
    return str(config["Transform"]["TransformOutput"]["S3OutputPath"]).rstrip("/").rsplit("/", 1)[0]


def request_for_try(config: Mapping[str, Any], job_name: str, try_number: int) -> dict[str, Any]:
    """The config of one try: model, job and output prefix named for the try, try-number tag."""
    if not SAGEMAKER_NAME_RE.match(job_name):
        raise ValueError(f"{job_name!r} is not a valid SageMaker name")
    out = copy.deepcopy(dict(config))
    transform = out["Transform"]
    transform["TransformOutput"]["S3OutputPath"] = f"{output_base(config)}/{job_name}/"
    transform["TransformJobName"] = transform["ModelName"] = job_name
    transform["Tags"] = tagged_for_try(transform.get("Tags", []), try_number)
    if "Model" in out:
        out["Model"]["ModelName"] = job_name
        out["Model"]["Tags"] = transform["Tags"]
    return out


def transform_job_differences(
    config: Mapping[str, Any], described: Mapping[str, Any], describe_model: Callable[[], Mapping[str, Any]]
) -> list[str]:
    """Why the job ``described`` (DescribeTransformJob) is not the job ``config`` would run,
    apart from its name and output prefix: the input, the model package behind its model, the
    data processing, the instances, the payload and batching, the environment. Empty: adopting
    it gives the predictions this config would."""
    want = config["Transform"]
    out = []

    def uri(x: Mapping[str, Any]) -> Any:
        return x.get("TransformInput", {}).get("DataSource", {}).get("S3DataSource", {}).get("S3Uri")

    if uri(want) != uri(described):
        out.append(f"input {uri(described)} != {uri(want)}")
    for key in ("DataProcessing", "BatchStrategy", "MaxPayloadInMB", "Environment"):
        if (want.get(key) or None) != (described.get(key) or None):
            out.append(f"{key} {described.get(key)} != {want.get(key)}")
    for key in ("InstanceType", "InstanceCount"):
        a, b = want.get("TransformResources", {}).get(key), described.get("TransformResources", {}).get(key)
        if a != b:
            out.append(f"{key} {b} != {a}")
    package = (config.get("Model") or {}).get("PrimaryContainer", {}).get("ModelPackageName")
    if package is not None:
        try:
            model = describe_model()
        except Exception as exc:  # noqa: BLE001 - a job whose model is gone is not adopted
            return [*out, f"its model {described.get('ModelName')} cannot be described: {exc}"]
        got = (model.get("PrimaryContainer") or {}).get("ModelPackageName")
        if got != package:
            out.append(f"model package {got} != {package}")
    return out


def unload_csv_statement(name: str, body: str, target: str) -> Statement:
    """UNLOAD a SELECT (Trino) to an S3 prefix as headerless, gzip-compressed CSV (the input of a
    transform job)."""
    return Statement(
        name,
        f"UNLOAD ({body}) TO {literal(target)} WITH (format = 'TEXTFILE', field_delimiter = ',', compression = 'GZIP')",
        "unload",
        body,
    )
