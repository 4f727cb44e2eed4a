"""Request builders for spot training and the model registry on the aws target (SageMaker).

Pure functions: no boto3 client, no network. The one file read is the SageMaker Python SDK's
table of framework images (``sagemaker_images.json``, the SDK's ``image_uri_config`` tables kept by
:mod:`mlblueprints.aws.image_table`), so that a worker needs no SageMaker SDK at all.

What the caller (the Airflow operator or a state machine) does around these requests:

1. pack the training code (``train.py`` at the archive root plus whatever it imports) as a
   ``.tar.gz``, upload it once under :func:`source_archive_key` with the PutObject arguments of
   :func:`s3_put_source_request` (SSE-KMS with the use case's key, object tag ``git-commit``);
2. export the training set as Parquet under one S3 prefix (the ``train`` channel);
3. name the job with :func:`training_job_name` (unique per run *and* try), and call
   CreateTrainingJob with :func:`create_training_job_request`;
4. wait, then DescribeTrainingJob: ``ModelArtifacts.S3ModelArtifacts`` is
   ``<output_s3_uri>/<job name>/output/model.tar.gz``; :func:`spot_savings` reads the Spot
   numbers from the same answer;
5. register: :func:`create_model_package_group_request` once (DescribeModelPackageGroup first:
   creating an existing group is an error), then :func:`create_model_package_request`.

Script-mode contract (SageMaker XGBoost framework container)
------------------------------------------------------------
The container runs the training script when the hyperparameter ``sagemaker_program`` is set
(else it runs the built-in algorithm). It fetches the code archive from
``sagemaker_submit_directory``: an ``s3://`` URI, downloaded by the container itself, or - with
network isolation, where the container cannot reach S3 - a local path: the archive is then fed
as an extra input channel ``code`` and the hyperparameter is
``/opt/ml/input/data/code/<archive file name>`` (what the SageMaker Python SDK v2 did).

Hyperparameter encoding: every value is JSON-encoded (:func:`encode_hyperparameters`), strings
included (``"train.py"`` is sent as ``"\\"train.py\\""``). The containers' toolkits
(``sagemaker_containers`` in the XGBoost image, ``sagemaker_training`` in the newer ones) read
``/opt/ml/input/config/hyperparameters.json`` and ``json.loads`` each value - falling back to the
raw string per value in recent versions, but *for all values at once* in older
``sagemaker_containers`` releases, where one raw string leaves every number a string. Encoding
everything (the SDK v2 ``Framework`` behaviour) decodes to the same typed values in both: the
script sees ints, floats, booleans and strings, via ``SM_HPS`` (one JSON object), ``SM_HP_<NAME>``
or ``--name value`` arguments. :func:`decode_hyperparameters` is the inverse, for the local
runner. Limits (CreateTrainingJob): at most 100 entries, values at most 2,500 characters after
encoding - a long feature list belongs in a file of the train channel, not in a hyperparameter.

The script reports its training loss on stdout as ``[round 12] train-logloss=0.123456``
(:func:`train_metric_line`); :data:`METRIC_DEFINITIONS` turns those lines into the CloudWatch
metric ``train:logloss``. It checkpoints to ``SM_CHECKPOINT_DIR`` (``/opt/ml/checkpoints``, synced
by SageMaker to ``CheckpointConfig.S3Uri``) and resumes from it after a Spot interruption. For the
model package to be served by the same image without an inference script (algorithm-mode
serving, ``text/csv`` rows without a header, columns in ``UseCase.model_features()`` order),
``/opt/ml/model`` must hold the booster file only (e.g. ``xgboost-model``): the container loads
the files it finds there as models; reports go to ``/opt/ml/output/data``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlencode

from mlblueprints.aws.requests import s3_put_kms, split_s3_uri
from mlblueprints.config import UseCase
from mlblueprints.training.core import (  # the one codec, shared with the local runner
    decode_hyperparameters,  # noqa: F401 - part of this module's contract (tests decode requests)
    encode_hyperparameters,
)

# ---------------------------------------------------------------- constants and limits

# TrainingJobName, ModelPackageGroupName (EntityName): 1-63 characters
SAGEMAKER_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
SAGEMAKER_NAME_MAX = 63
JOB_NAME_HASH_LEN = 12  # hex digits of sha256(usecase, run id, try): 48 bits

ENTRY_POINT = "train.py"
CHECKPOINT_DIR = "/opt/ml/checkpoints"
CODE_CHANNEL = "code"
CODE_CHANNEL_DIR = "/opt/ml/input/data/code"
TRAIN_CHANNEL = "train"
TRAIN_CONTENT_TYPE = "application/x-parquet"

# the training script's stdout lines and the metric SageMaker extracts from them
TRAIN_METRIC_LINE = "round {round}/{total} train-{metric}={value:.6f}"
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
# the train metric the built-in script reports per objective (train.py's EVAL_METRIC)
EVAL_METRIC = {"binary:logistic": "logloss", "multi:softprob": "mlogloss", "reg:absoluteerror": "mae"}


def train_metric_regex(metric: str = "logloss") -> str:
    return rf"round \d+/\d+ train-{re.escape(metric)}={_NUMBER}"


TRAIN_METRIC_NAME = "train:logloss"
TRAIN_METRIC_REGEX = train_metric_regex("logloss")
METRIC_DEFINITIONS = ({"Name": TRAIN_METRIC_NAME, "Regex": TRAIN_METRIC_REGEX},)
DEFAULT_FRAMEWORK_VERSION = {"xgboost": "1.7-1", "sklearn": "1.2-1"}
MODEL_FRAMEWORKS = {"xgboost": "XGBOOST", "sklearn": "SKLEARN"}

HYPERPARAMETERS_MAX = 100
RESERVED_HYPERPARAMETER_PREFIX = "sagemaker_"
ENVIRONMENT_VALUE_MAX = 512

TAGS_MAX = 50
TAG_KEY_MAX = 128
TAG_VALUE_MAX = 256
# Tag keys/values, customer metadata: [\p{L}\p{Z}\p{N}_.:/=+\-@]* (Python's \w is letters,
# digits and '_'; a space stands for \p{Z})
_METADATA_CHAR_RE = re.compile(r"[\w .:/=+\-@]")

CUSTOMER_METADATA_MAX = 50
CUSTOMER_METADATA_KEY_MAX = 128
CUSTOMER_METADATA_VALUE_MAX = 256
LINEAGE_DIGEST_KEY = "lineage_sha256"
LINEAGE_OMITTED_KEY = "lineage_omitted"
DESCRIPTION_MAX = 1024  # EntityDescription

APPROVAL_STATUSES = ("Approved", "Rejected", "PendingManualApproval")
INFERENCE_CONTENT_TYPES = ("text/csv",)
INFERENCE_RESPONSE_TYPES = ("text/csv",)
_FRAMEWORK_VERSION_RE = re.compile(r"^[0-9]\.[A-Za-z0-9.-]+$")  # ModelPackageFrameworkVersion, 3-10

# SageMaker instance families whose storage is local NVMe (encrypted by the instance's
# hardware): CreateTrainingJob rejects a VolumeKmsKeyId for them.
_LOCAL_STORAGE_FAMILIES = frozenset(
    {"g5", "g5g", "g6", "g6e", "gr6", "p5", "p5e", "p5en", "p6", "trn1", "trn1n", "trn2", "inf2"}
)
_LOCAL_STORAGE_FAMILY_RE = re.compile(r"^[a-z]+\d+[a-z]*d[a-z]*$")  # m5d, c5d, r5d, g4dn, p3dn, p4d, p4de, m6id

# regions whose ECR hosts are not under amazonaws.com (as sagemaker.core.common_utils lists them)
_ALTERNATE_DOMAINS = {
    "cn-north-1": "amazonaws.com.cn",
    "cn-northwest-1": "amazonaws.com.cn",
    "us-iso-east-1": "c2s.ic.gov",
    "us-iso-west-1": "c2s.ic.gov",
    "us-isob-east-1": "sc2s.sgov.gov",
    "us-isob-west-1": "sc2s.sgov.gov",
    "us-isof-south-1": "csp.hci.ic.gov",
    "us-isof-east-1": "csp.hci.ic.gov",
    "eu-isoe-west-1": "cloud.adc-e.uk",
    "eusc-de-east-1": "amazonaws.eu",
}


# ---------------------------------------------------------------- small helpers


def _digest(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()


def _name_part(text: str, max_len: int) -> str:
    """``text`` as a run of [a-zA-Z0-9-], no leading/trailing/double '-', at most ``max_len``."""
    out = re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-")[:max_len]
    return out.rstrip("-")


def _metadata_text(value: object, max_len: int) -> str:
    """A tag / customer-metadata string: characters the API refuses become ``_``; a value that
    had to change (other characters, or too long) ends in ``..sha256:<16 hex of the original>``
    so that two different originals never collapse into one stored value."""
    text = str(value)
    clean = "".join(ch if _METADATA_CHAR_RE.fullmatch(ch) else "_" for ch in text)
    if clean == text and len(text) <= max_len:
        return text
    suffix = "..sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]
    return clean[: max_len - len(suffix)] + suffix


def _tags(pairs: list[tuple[str, object]]) -> list[dict[str, str]]:
    out = []
    for k, v in pairs:
        if v is None or v == "":
            continue
        out.append({"Key": _metadata_text(k, TAG_KEY_MAX), "Value": _metadata_text(v, TAG_VALUE_MAX)})
    return out[:TAGS_MAX]


def _description(text: str) -> str:
    """EntityDescription allows letters, marks, separators, symbols, digits and punctuation:
    no control characters, so newlines and tabs of a YAML description become spaces."""
    return re.sub(r"\s+", " ", "".join(ch if ch.isprintable() else " " for ch in text)).strip()[:DESCRIPTION_MAX]


def _aws(uc: UseCase):
    if uc.aws is None:
        raise ValueError(f"{uc.name}: the aws section is required to train on SageMaker")
    return uc.aws


def _sagemaker(uc: UseCase):
    if uc.training is None:
        raise ValueError(f"{uc.name}: the training section is required")
    return uc.training.sagemaker


def _s3(uri: str, what: str) -> str:
    if not isinstance(uri, str) or not uri.startswith("s3://") or not split_s3_uri(uri)[0]:
        raise ValueError(f"{what} must be an s3:// URI, got {uri!r}")
    return uri


# ---------------------------------------------------------------- names


def job_name(uc: UseCase, kind: str, run_id: str, try_number: int) -> str:
    """``<use-case-name>-<kind>-<12 hex>``: a sha256 of (kind, use case, run id, try number), the
    use case name made SageMaker-safe and cut so the whole fits 63 characters (unique per try,
    as :func:`training_job_name`)."""
    if int(try_number) < 0:
        raise ValueError(f"try_number must be >= 0, got {try_number!r}")
    digest = _digest(f"{kind}-job", uc.name, run_id, int(try_number))[:JOB_NAME_HASH_LEN]
    prefix = _name_part(uc.name, SAGEMAKER_NAME_MAX - len(kind) - 2 - JOB_NAME_HASH_LEN) or "mlb"
    name = f"{prefix}-{kind}-{digest}"
    if not SAGEMAKER_NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a valid SageMaker name")
    return name


def training_job_name(uc: UseCase, run_id: str, try_number: int) -> str:
    """``<use-case-name>-<12 hex>``: the use case name made SageMaker-safe (``_`` -> ``-``,
    cut so the whole fits 63 characters) and a sha256 of (use case, run id, try number).

    Deterministic (a rerun of the same try finds its job) and unique per try (an Airflow retry
    never collides with the job of the try before: SageMaker names are unique per account and
    region, forever).
    """
    if int(try_number) < 0:
        raise ValueError(f"try_number must be >= 0, got {try_number!r}")
    digest = _digest("training-job", uc.name, run_id, int(try_number))[:JOB_NAME_HASH_LEN]
    prefix = _name_part(uc.name, SAGEMAKER_NAME_MAX - 1 - JOB_NAME_HASH_LEN) or "mlb"
    name = f"{prefix}-{digest}"
    if not SAGEMAKER_NAME_RE.match(name):  # cannot happen with the prefix made safe above
        raise ValueError(f"{name!r} is not a valid SageMaker name")
    return name


def model_package_group_name(uc: UseCase) -> str:
    """``training.sagemaker.model_package_group``, else the use case name with ``_`` -> ``-``.

    An explicit name must already be valid (it names a resource someone looks for); a derived
    name longer than 63 characters is cut and given a hash suffix.
    """
    explicit = _sagemaker(uc).model_package_group
    if explicit is not None:
        if not SAGEMAKER_NAME_RE.match(explicit):
            raise ValueError(
                f"{uc.name}: training.sagemaker.model_package_group {explicit!r} is not a valid SageMaker name "
                "(letters, digits and '-', at most 63, starting and ending with a letter or digit)"
            )
        return explicit
    name = _name_part(uc.name, 10_000)
    if len(name) > SAGEMAKER_NAME_MAX:
        name = _name_part(name, SAGEMAKER_NAME_MAX - 9) + "-" + _digest(uc.name)[:8]
    return name


# ---------------------------------------------------------------- framework image


def image_domain(region: str) -> str:
    """The domain of a region's ECR registries (China and the isolated partitions have their own)."""
    return _ALTERNATE_DOMAINS.get(region, "amazonaws.com")


def _image_config(framework: str) -> dict[str, Any]:
    from mlblueprints.aws import image_table

    return image_table.config(framework)


def _xgboost_image_config() -> dict[str, Any]:
    return _image_config("xgboost")


def sklearn_image_uri(region: str, version: str, scope: str = "training") -> str:
    """The SageMaker scikit-learn framework image (CPU, Python 3) of a region and version, as
    ``sagemaker.core.image_uris.retrieve("sklearn", ...)`` builds it, from the project's table."""
    config = _image_config("sklearn")
    if scope not in config:
        raise ValueError(f"unknown image scope {scope!r}; use one of {sorted(config)}")
    versions = config[scope]["versions"]
    resolved = config[scope].get("version_aliases", {}).get(version, version)
    if resolved not in versions:
        raise ValueError(f"unknown SageMaker scikit-learn framework version {version!r}; known: {', '.join(versions)}")
    entry = versions[resolved]
    registries = entry["registries"]
    if region not in registries:
        raise ValueError(f"SageMaker scikit-learn {version} has no image in region {region!r}")
    domain = image_domain(region)
    tag = f"{resolved}-cpu-{(entry.get('py_versions') or ['py3'])[0]}"
    return f"{registries[region]}.dkr.ecr.{region}.{domain}/{entry['repository']}:{tag}"


def xgboost_image_uri(region: str, version: str, scope: str = "training") -> str:
    """The SageMaker XGBoost framework image of a region and version, as
    ``sagemaker.core.image_uris.retrieve("xgboost", ...)`` builds it for CPU instances, read from
    the project's copy of the SDK's table (no network, no SDK needed)."""
    config = _xgboost_image_config()
    if scope not in config:
        raise ValueError(f"unknown image scope {scope!r}; use one of {sorted(config)}")
    scoped = config[scope]
    resolved = scoped.get("version_aliases", {}).get(version, version)
    versions = scoped["versions"]
    if resolved not in versions:
        raise ValueError(f"unknown SageMaker XGBoost framework version {version!r}; known: {', '.join(versions)}")
    entry = versions[resolved]
    if "processors" in entry or "py_versions" in entry:
        raise ValueError(
            f"SageMaker XGBoost {version} images are tagged per processor and Python version; "
            "use 1.2-1 or newer, or set training.sagemaker.image_uri"
        )
    registries = entry["registries"]
    if region not in registries:
        raise ValueError(f"SageMaker XGBoost {version} has no image in region {region!r}")
    domain = image_domain(region)
    return f"{registries[region]}.dkr.ecr.{region}.{domain}/{entry['repository']}:{resolved}"


def framework_version(uc: UseCase) -> str | None:
    """The framework container's version (``training.sagemaker.framework_version``, else the
    default of ``training.framework``); None for an image URI."""
    t = uc.training
    if t is None:
        raise ValueError(f"{uc.name}: the training section is required")
    return t.sagemaker.framework_version or DEFAULT_FRAMEWORK_VERSION.get(t.framework)


def framework_image_uri(uc: UseCase, scope: str = "training") -> str:
    """The training (or serving) image: ``training.sagemaker.image_uri`` when set; else
    ``training.framework`` when it is an image URI; else the framework image (xgboost or sklearn)
    of ``aws.region`` and :func:`framework_version` (``scope`` "training" or "inference"; the
    framework containers serve with the image they train with)."""
    t = uc.training
    sm = _sagemaker(uc)
    if sm.image_uri:
        return sm.image_uri
    if t is not None and t.framework not in DEFAULT_FRAMEWORK_VERSION:
        return t.framework
    version = framework_version(uc) or ""
    if t is not None and t.framework == "sklearn":
        return sklearn_image_uri(_aws(uc).region, version, scope)
    return xgboost_image_uri(_aws(uc).region, version, scope)


def metric_definitions(uc: UseCase) -> list[dict[str, str]]:
    """CloudWatch metrics from the job's log: the built-in script's per-round train metric (a
    team's own script prints what it likes: none are defined for it)."""
    t = uc.training
    if t is None or t.entry_point is not None:
        return []
    metric = EVAL_METRIC.get(t.xgboost_objective, "rmse")
    return [{"Name": f"train:{metric}", "Regex": train_metric_regex(metric)}]


# ---------------------------------------------------------------- hyperparameters


def train_metric_line(round_: int, value: float, total: int | None = None, metric: str = "logloss") -> str:
    """The stdout line the training script prints per boosting round (matched by
    :func:`train_metric_regex`), e.g. ``round 12/300 train-logloss=0.123456``."""
    return TRAIN_METRIC_LINE.format(round=int(round_), total=int(total or round_), metric=metric, value=float(value))


def submit_directory(source_s3_uri: str, network_isolation: bool) -> str:
    """``sagemaker_submit_directory``: the archive's S3 URI, or its path in the ``code``
    channel when the container has no network."""
    if not network_isolation:
        return source_s3_uri
    return f"{CODE_CHANNEL_DIR}/{PurePosixPath(split_s3_uri(source_s3_uri)[1]).name}"


# ---------------------------------------------------------------- S3 layout and the source archive


def source_archive_key(uc: UseCase, archive_sha256: str) -> str:
    """Content-addressed key of the code archive: ``<prefix>/training/source/<sha256[:32]>/
    sourcedir.tar.gz``. Uploading twice writes the same bytes to the same key (idempotent);
    the key is the only object under its folder, so it is safe as the ``code`` channel prefix."""
    if not re.fullmatch(r"[0-9a-f]{32,64}", archive_sha256):
        raise ValueError(f"archive_sha256 must be a hex sha256, got {archive_sha256!r}")
    aws = _aws(uc)
    return split_s3_uri(aws.s3_uri("training", "source", archive_sha256[:32], "sourcedir.tar.gz"))[1]


def checkpoint_s3_uri(uc: UseCase, run_id: str) -> str:
    """Checkpoints of one Airflow run, shared by its tries: a retry resumes where the failed try
    stopped (same data, same seed, same rounds: the same model)."""
    return _aws(uc).s3_uri("training", "checkpoints", _digest("checkpoints", uc.name, run_id)[:24]) + "/"


def output_s3_uri(uc: UseCase) -> str:
    """``OutputDataConfig.S3OutputPath``; SageMaker writes ``<it>/<job name>/output/model.tar.gz``."""
    return _aws(uc).s3_uri("training", "output")


def source_archive_tags(uc: UseCase, git_commit: str) -> dict[str, str]:
    """Object tags of the uploaded code archive (S3 tag rules: 128/256 characters)."""
    return {
        "git-commit": _metadata_text(git_commit, TAG_VALUE_MAX),
        "mlblueprints:usecase": _metadata_text(uc.name, TAG_VALUE_MAX),
        "managed-by": "mlblueprints",
    }


def s3_put_source_request(uc: UseCase, key: str, git_commit: str) -> dict[str, Any]:
    """PutObject arguments of the code archive, without ``Body``: SSE-KMS with the use case's key,
    the git commit as object tag (``Tagging``, URL-encoded) and as user metadata. For
    ``upload_file``, pass everything but Bucket and Key as ``ExtraArgs``."""
    aws = _aws(uc)
    if not key.endswith(".tar.gz"):
        raise ValueError(f"the code archive key must end in .tar.gz, got {key!r}")
    return {
        "Bucket": aws.bucket,
        "Key": key,
        "ContentType": "application/gzip",
        "Tagging": urlencode(source_archive_tags(uc, git_commit)),
        "Metadata": {"git-commit": _metadata_text(git_commit, TAG_VALUE_MAX)},
        **s3_put_kms(aws),
    }


# ---------------------------------------------------------------- CreateTrainingJob


def has_local_storage(instance_type: str) -> bool:
    """Instance types whose volumes are local NVMe (no VolumeKmsKeyId allowed)."""
    parts = instance_type.split(".")
    family = parts[1] if len(parts) >= 3 else ""
    return family in _LOCAL_STORAGE_FAMILIES or bool(_LOCAL_STORAGE_FAMILY_RE.match(family))


def create_training_job_request(
    uc: UseCase,
    *,
    job_name: str,
    train_s3_uri: str,
    source_s3_uri: str,
    output_s3_uri: str,
    checkpoint_s3_uri: str,
    hyperparameters: Mapping[str, Any],
    git_commit: str,
    run: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """CreateTrainingJob parameters: script mode on the XGBoost framework image, managed Spot
    with checkpoints, KMS on the output and the volume, network isolation, optional VPC.

    ``hyperparameters`` are the script's own (typed values; see the module doc for the encoding);
    names starting with ``sagemaker_`` are reserved for the container's. ``run`` is the Airflow
    run (``RunInfo.as_dict()``: ``run_id``, ``try_number``, ``dag_id``, ``task_id``); it is
    recorded as tags and in ``MLB_RUN_ID``.
    """
    aws = _aws(uc)
    sm = _sagemaker(uc)
    if not SAGEMAKER_NAME_RE.match(job_name):
        raise ValueError(f"{job_name!r} is not a valid training job name (see training_job_name)")
    for what, uri in (
        ("train_s3_uri", train_s3_uri),
        ("source_s3_uri", source_s3_uri),
        ("output_s3_uri", output_s3_uri),
        ("checkpoint_s3_uri", checkpoint_s3_uri),
    ):
        _s3(uri, what)
    if not source_s3_uri.endswith(".tar.gz"):
        raise ValueError(f"source_s3_uri must name a .tar.gz archive, got {source_s3_uri!r}")
    reserved = sorted(k for k in hyperparameters if str(k).startswith(RESERVED_HYPERPARAMETER_PREFIX))
    if reserved:
        raise ValueError(f"hyperparameters {reserved} use the prefix reserved for the container's own")

    spot = sm.spot
    isolation = sm.network_isolation
    hps = encode_hyperparameters(
        {
            **hyperparameters,
            "sagemaker_program": uc.entry_point_path().name,
            "sagemaker_submit_directory": submit_directory(source_s3_uri, isolation),
            "sagemaker_region": aws.region,
            "sagemaker_container_log_level": 20,
            "sagemaker_job_name": job_name,
        }
    )
    if len(hps) > HYPERPARAMETERS_MAX:
        raise ValueError(f"{len(hps)} hyperparameters; SageMaker accepts at most {HYPERPARAMETERS_MAX}")

    channels: list[dict[str, Any]] = [
        {
            "ChannelName": TRAIN_CHANNEL,
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": train_s3_uri,
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
            "ContentType": TRAIN_CONTENT_TYPE,
            "CompressionType": "None",
        }
    ]
    if isolation:
        channels.append(
            {
                "ChannelName": CODE_CHANNEL,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": source_s3_uri,
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "CompressionType": "None",
            }
        )

    resources: dict[str, Any] = {
        "InstanceType": sm.instance_type,
        "InstanceCount": sm.instance_count,
        "VolumeSizeInGB": sm.volume_size_gb,
    }
    if not has_local_storage(sm.instance_type):
        resources["VolumeKmsKeyId"] = aws.kms_key_arn

    stopping: dict[str, int] = {"MaxRuntimeInSeconds": spot.max_runtime_seconds}
    if spot.enabled:
        stopping["MaxWaitTimeInSeconds"] = max(spot.max_wait_seconds, spot.max_runtime_seconds)

    run = dict(run or {})
    env = {
        "SM_CHECKPOINT_DIR": CHECKPOINT_DIR,
        "MLB_GIT_COMMIT": git_commit,
        "MLB_CONFIG_HASH": uc.config_hash(),
        "MLB_USECASE": uc.name,
    }
    if run.get("run_id"):
        env["MLB_RUN_ID"] = str(run["run_id"])
    for k, v in env.items():
        if len(v) > ENVIRONMENT_VALUE_MAX:
            raise ValueError(f"environment variable {k} is longer than {ENVIRONMENT_VALUE_MAX} characters")

    request: dict[str, Any] = {
        "TrainingJobName": job_name,
        "AlgorithmSpecification": {
            "TrainingImage": framework_image_uri(uc),
            "TrainingInputMode": "File",
            "MetricDefinitions": metric_definitions(uc),
        },
        "HyperParameters": hps,
        "RoleArn": aws.iam_role_arn,
        "InputDataConfig": channels,
        "OutputDataConfig": {"S3OutputPath": output_s3_uri, "KmsKeyId": aws.kms_key_arn},
        "ResourceConfig": resources,
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": spot.enabled,
        "CheckpointConfig": {"S3Uri": checkpoint_s3_uri, "LocalPath": CHECKPOINT_DIR},
        "EnableNetworkIsolation": isolation,
        "Environment": env,
        "Tags": _tags(
            [
                ("managed-by", "mlblueprints"),
                ("mlblueprints:usecase", uc.name),
                ("mlblueprints:model", uc.model_name),
                ("mlblueprints:git-commit", git_commit),
                ("mlblueprints:config-hash", uc.config_hash()),
                ("mlblueprints:run-id", run.get("run_id")),
                ("mlblueprints:try-number", run.get("try_number")),
                ("mlblueprints:dag-id", run.get("dag_id")),
                ("mlblueprints:task-id", run.get("task_id")),
            ]
        ),
    }
    if sm.subnets:
        request["VpcConfig"] = {"Subnets": list(sm.subnets), "SecurityGroupIds": list(sm.security_group_ids)}
    if sm.instance_count > 1:
        request["EnableInterContainerTrafficEncryption"] = True
    return request


def request_for_try(request: Mapping[str, Any], job_name: str, try_number: int) -> dict[str, Any]:
    """The CreateTrainingJob request of one try of the training step's service task: the same
    job with its per-try name (also in ``sagemaker_job_name``) and try-number tag."""
    if not SAGEMAKER_NAME_RE.match(job_name):
        raise ValueError(f"{job_name!r} is not a valid training job name (see training_job_name)")
    out = copy.deepcopy(dict(request))
    out["TrainingJobName"] = job_name
    hps = dict(out.get("HyperParameters") or {})
    if "sagemaker_job_name" in hps:
        hps["sagemaker_job_name"] = json.dumps(job_name)
    out["HyperParameters"] = hps
    tags = [t for t in out.get("Tags", []) if t["Key"] != "mlblueprints:try-number"]
    out["Tags"] = [*tags, {"Key": "mlblueprints:try-number", "Value": str(int(try_number))}][:TAGS_MAX]
    return out


def wait_attempts(request: Mapping[str, Any], check_interval: int) -> int:
    """How many polls a task waits for the job of ``request``: as long as Spot may wait
    (``MaxWaitTimeInSeconds``) or the job may run, plus a margin."""
    stop = request.get("StoppingCondition", {})
    longest = max(int(stop.get("MaxWaitTimeInSeconds", 0)), int(stop.get("MaxRuntimeInSeconds", 3600)))
    return max(60, longest // max(1, check_interval) + 60)


# what makes two jobs the same training: data, code, image, hyperparameters, resources, checkpoints
_SAME_JOB_HP_IGNORED = ("sagemaker_job_name",)


def job_differences(request: Mapping[str, Any], described: Mapping[str, Any]) -> list[str]:
    """Why the job ``described`` (a DescribeTrainingJob answer) is not the job ``request`` would
    create, apart from its name: every input channel's data, the image, the hyperparameters
    (``sagemaker_job_name`` aside), the instance type and count, and the checkpoint location.
    An empty list: adopting that job gives the model this request would train."""

    def channels(x: Mapping[str, Any]) -> dict[str, Any]:
        return {
            c["ChannelName"]: c.get("DataSource", {}).get("S3DataSource", {}).get("S3Uri")
            for c in x.get("InputDataConfig", [])
        }

    def hps(x: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in (x.get("HyperParameters") or {}).items() if k not in _SAME_JOB_HP_IGNORED}

    out = []
    if channels(request) != channels(described):
        out.append(f"input data {channels(described)} != {channels(request)}")
    want_image = request.get("AlgorithmSpecification", {}).get("TrainingImage")
    got_image = described.get("AlgorithmSpecification", {}).get("TrainingImage")
    if want_image != got_image:
        out.append(f"image {got_image} != {want_image}")
    want, got = hps(request), hps(described)
    if want != got:
        keys = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        out.append(f"hyperparameters differ: {', '.join(keys)}")
    for key in ("InstanceType", "InstanceCount"):
        a, b = request.get("ResourceConfig", {}).get(key), described.get("ResourceConfig", {}).get(key)
        if a != b:
            out.append(f"{key} {b} != {a}")
    a = request.get("CheckpointConfig", {}).get("S3Uri")
    b = (described.get("CheckpointConfig") or {}).get("S3Uri")
    if a != b:
        out.append(f"checkpoints {b} != {a}")
    return out


def model_quality_statistics(ev: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    """The evaluation as a model package's ModelQuality statistics, in Model Monitor's layout for
    the task (what SageMaker Studio shows): ``binary_classification_metrics``,
    ``multiclass_classification_metrics`` or ``regression_metrics`` for the metrics it names, and
    the whole evaluation (the gate, the reference model, the details) under ``mlblueprints``."""
    c = ev["candidate"]
    task = ev.get("task", "binary")
    details = ev.get("candidate_details") or {}

    def m(v: float) -> dict[str, Any]:
        return {"value": float(v), "standard_deviation": "NaN"}

    out: dict[str, Any] = {
        "version": 0.0,
        "dataset": {"item_count": int(c.get("rows", 0)), "evaluation_time": ev.get("holdout")},
    }
    if task == "binary":
        rows, pos = int(c.get("rows", 0)), int(c.get("positives", 0))
        neg = rows - pos
        tp = round(c["recall"] * pos)
        fp = round(c["fpr"] * neg)
        out["binary_classification_metrics"] = {
            "confusion_matrix": {"0": {"0": neg - fp, "1": fp}, "1": {"0": pos - tp, "1": tp}},
            "recall": m(c["recall"]),
            "precision": m(c["precision"]),
            "false_positive_rate": m(c["fpr"]),
            "auc": m(c["roc_auc"]),
        }
    elif task == "multiclass":
        classes = details.get("classes") or []
        cm = details.get("confusion_matrix") or []
        out["multiclass_classification_metrics"] = {
            "confusion_matrix": {a: {p: int(cm[i][j]) for j, p in enumerate(classes)} for i, a in enumerate(classes)},
            "accuracy": m(c["accuracy"]),
            "weighted_f1": m(c["weighted_f1"]),
        }
    else:
        out["regression_metrics"] = {
            "mae": m(c["mae"]),
            "mse": m(c["rmse"] ** 2),
            "rmse": m(c["rmse"]),
            "r2": m(c["r2"]),
        }
    out["mlblueprints"] = {
        "task": task,
        "candidate": c,
        "candidate_details": details,
        "champion": ev.get("champion"),
        "champion_version": ev.get("champion_version"),
        "decision": ev.get("decision"),
        "holdout": ev.get("holdout"),
        "training_job_name": trained.get("job_name"),
    }
    return out


# ---------------------------------------------------------------- DescribeTrainingJob


def spot_savings(describe_training_job_response: Mapping[str, Any]) -> dict[str, Any]:
    """What managed Spot saved, from a DescribeTrainingJob answer.

    ``savings_fraction = 1 - billable / training seconds`` (what the console shows as "managed
    spot training savings"), 0 for an on-demand job, a missing or zero training time, and never
    below 0 or above 1. A missing ``BillableTimeInSeconds`` counts as billed in full.
    """
    r = describe_training_job_response or {}
    managed_spot = bool(r.get("EnableManagedSpotTraining", False))
    training = r.get("TrainingTimeInSeconds")
    training_s = int(training) if isinstance(training, (int, float)) and training > 0 else 0
    billable = r.get("BillableTimeInSeconds")
    billable_s = int(billable) if isinstance(billable, (int, float)) and billable >= 0 else training_s
    savings = 0.0
    if managed_spot and training_s > 0:
        savings = min(1.0, max(0.0, 1.0 - billable_s / training_s))
    return {
        "training_seconds": training_s,
        "billable_seconds": billable_s,
        "savings_fraction": savings,
        "managed_spot": managed_spot,
    }


# ---------------------------------------------------------------- model registry


def create_model_package_group_request(uc: UseCase, git_commit: str | None = None) -> dict[str, Any]:
    """CreateModelPackageGroup parameters: one group per use case (every registered version of
    its model)."""
    description = uc.description or f"{uc.name}: versions of {uc.model_name}"
    return {
        "ModelPackageGroupName": model_package_group_name(uc),
        "ModelPackageGroupDescription": _description(description),
        "Tags": _tags(
            [
                ("managed-by", "mlblueprints"),
                ("mlblueprints:usecase", uc.name),
                ("mlblueprints:model", uc.model_name),
                ("mlblueprints:git-commit", git_commit),
            ]
        ),
    }


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(f"{prefix}.{i}", v, out)
    elif value is None or value == "":
        return  # the API has no empty value; absent means unknown
    elif isinstance(value, bool):
        out[prefix] = "true" if value else "false"
    else:
        out[prefix] = str(value)


def model_lineage_metadata(uc: UseCase, customer_metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
    """``CustomerMetadataProperties`` of a model package: what the configuration knows (use case,
    model, config hash, training set, the version of each of its feature views) plus the
    caller's lineage (git commit, run ids, training job, snapshot ids, ...), the caller winning.

    The map must fit the API: string values, at most 50 entries, keys of 1-128 and values of
    1-256 characters from ``[\\p{L}\\p{Z}\\p{N}_.:/=+-@]``. So: nested mappings and lists are
    flattened into dotted keys (``snapshot.fraud_training``, ``run_ids.0``); booleans are
    ``true``/``false``; ``None`` and empty values are left out; a key or value that has to
    change to fit (another character, or too long) is cut and ends in
    ``..sha256:<16 hex of the original>``. ``lineage_sha256`` is always there: the sha256 of the
    whole lineage before any rewriting (canonical JSON of the flattened map), so a full lineage
    document kept elsewhere can be matched. Beyond 50 entries the last ones are dropped and
    ``lineage_omitted`` counts them (their values are still covered by ``lineage_sha256``).
    """
    t = uc.training
    auto: dict[str, Any] = {"usecase": uc.name, "model_name": uc.model_name, "config_hash": uc.config_hash()}
    if t is not None:
        auto["training_set"] = t.training_set
        auto["feature_view"] = {v: f"v{uc.features[v].version}" for v in uc.training_sets[t.training_set].features}
    flat: dict[str, str] = {}
    _flatten("", auto, flat)
    _flatten("", dict(customer_metadata or {}), flat)
    digest = hashlib.sha256(json.dumps(flat, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    out: dict[str, str] = {}
    for k, v in flat.items():
        out[_metadata_text(k, CUSTOMER_METADATA_KEY_MAX)] = _metadata_text(v, CUSTOMER_METADATA_VALUE_MAX)
    out.pop(LINEAGE_DIGEST_KEY, None)
    out.pop(LINEAGE_OMITTED_KEY, None)
    room = CUSTOMER_METADATA_MAX - 1
    if len(out) > room:
        room -= 1
        omitted = len(out) - room
        out = dict(list(out.items())[:room])
        out[LINEAGE_OMITTED_KEY] = str(omitted)
    out[LINEAGE_DIGEST_KEY] = digest
    return out


def create_model_package_request(
    uc: UseCase,
    *,
    model_data_url: str,
    image_uri: str,
    metrics_s3_uri: str | None,
    approval_status: str,
    description: str,
    customer_metadata: Mapping[str, Any],
) -> dict[str, Any]:
    """CreateModelPackage parameters: a new version in the use case's model package group.

    ``customer_metadata`` is the model's lineage (see :func:`model_lineage_metadata`); its
    conventional keys ``git_commit`` and ``training_job_name`` also fill ``MetadataProperties``
    (CommitId, GeneratedBy). ``metrics_s3_uri`` names the evaluation's JSON report
    (``ModelMetrics.ModelQuality.Statistics``). ``ClientToken`` is a hash of the request: a
    retried registration of the same model with the same lineage returns the package it made
    instead of adding a version.
    """
    if approval_status not in APPROVAL_STATUSES:
        raise ValueError(f"approval_status must be one of {APPROVAL_STATUSES}, got {approval_status!r}")
    _s3(model_data_url, "model_data_url")
    container: dict[str, Any] = {"Image": image_uri, "ModelDataUrl": model_data_url}
    framework = MODEL_FRAMEWORKS.get(uc.training.framework if uc.training else "xgboost")
    if framework:
        container["Framework"] = framework
        version = framework_version(uc) or ""
        if 3 <= len(version) <= 10 and _FRAMEWORK_VERSION_RE.match(version):
            container["FrameworkVersion"] = version
    metadata = model_lineage_metadata(uc, customer_metadata)
    request: dict[str, Any] = {
        "ModelPackageGroupName": model_package_group_name(uc),
        "ModelPackageDescription": _description(description),
        "InferenceSpecification": {
            "Containers": [container],
            "SupportedContentTypes": list(INFERENCE_CONTENT_TYPES),
            "SupportedResponseMIMETypes": list(INFERENCE_RESPONSE_TYPES),
        },
        "ModelApprovalStatus": approval_status,
        "CustomerMetadataProperties": metadata,
        "Tags": _tags(
            [
                ("managed-by", "mlblueprints"),
                ("mlblueprints:usecase", uc.name),
                ("mlblueprints:model", uc.model_name),
                ("mlblueprints:git-commit", customer_metadata.get("git_commit")),
                ("mlblueprints:config-hash", uc.config_hash()),
            ]
        ),
    }
    if metrics_s3_uri:
        request["ModelMetrics"] = {
            "ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": _s3(metrics_s3_uri, "metrics")}}
        }
    props = {
        "CommitId": customer_metadata.get("git_commit"),
        "GeneratedBy": customer_metadata.get("training_job_name"),
    }
    props = {k: str(v)[:1024] for k, v in props.items() if v}
    if props:
        request["MetadataProperties"] = props
    request["ClientToken"] = _digest(json.dumps(request, sort_keys=True, default=str))[:36]
    return request


def try_of_job(uc: UseCase, described: Mapping[str, Any], max_tries: int = 100) -> int:
    """The try number a training job of this project was started by: its ``try-number`` tag where
    the answer has tags, else the try whose :func:`training_job_name` it carries (1 if none)."""
    for t in described.get("Tags") or []:
        if t.get("Key") == "mlblueprints:try-number" and str(t.get("Value", "")).isdigit():
            return int(t["Value"])
    env = described.get("Environment") or {}
    run_id = env.get("MLB_RUN_ID")
    if run_id:
        for k in range(1, max_tries + 1):
            if training_job_name(uc, run_id, k) == described.get("TrainingJobName"):
                return k
    return 1
