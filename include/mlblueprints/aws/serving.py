"""The requests of the promotion pattern on the aws target, pure: a SageMaker real-time endpoint
updated by a blue/green deployment with SageMaker's deployment guardrails.

* CreateModel from the version's registered model package (:func:`create_model_request`, the
  builder scoring and Clarify use), one model per version and settings;
* CreateEndpointConfig (:func:`create_endpoint_config_request`): one production variant, always
  the same variant name (a blue/green update requires it), data capture of requests and answers
  encrypted with the use case's KMS key under a prefix of its own per config - so the captures of
  the blue (champion) and the green (challenger) fleet of one update are told apart - and the
  volume key;
* the CloudWatch alarms the update rolls back on (:func:`alarm_requests`): the 5xx error rate
  (metric math over ``Invocation5XXErrors`` and ``Invocations``), the model latency p99, and the
  challenger's score shift the bake publishes (:func:`score_shift_metric_request`);
* UpdateEndpoint (:func:`update_endpoint_request`) with ``BlueGreenUpdatePolicy``: CANARY (one
  canary share) or LINEAR (equal steps), ``WaitIntervalInSeconds`` the bake, and
  ``AutoRollbackConfiguration`` naming the alarms.

Names are hashes of what they name: a rerun builds the same names and adopts what its killed try
created.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mlblueprints.aws.scoring import lineage_tags, model_from_package
from mlblueprints.aws.training import SAGEMAKER_NAME_MAX, has_local_storage
from mlblueprints.config import UseCase

METRIC_NAMESPACE = "mlblueprints/Serving"
SAGEMAKER_NAMESPACE = "AWS/SageMaker"
CONTENT_TYPE = "text/csv"
HASH_LEN = 10


# DescribeEndpoint's EndpointStatus while SageMaker creates, updates or rolls back an endpoint
UPDATING = ("Creating", "Updating", "SystemUpdating", "RollingBack")


def exists(describe: Any, **kw: Any) -> bool:
    """Whether the SageMaker resource a Describe call names exists (``describe`` a client's
    bound method: the only I/O, done by the caller's client)."""
    from mlblueprints.aws.s3io import error_code

    try:
        describe(**kw)
        return True
    except Exception as exc:
        if error_code(exc) in ("ValidationException", "ResourceNotFound"):
            return False
        raise


def update_state(described: Mapping[str, Any], green: str, since: str) -> str:
    """Where a deployment's update to the config ``green`` is, from DescribeEndpoint:
    ``running`` (the endpoint is updating), ``ended`` (it serves ``green``, or was changed after the
    deployment started at ``since``, ISO time: an update of this deployment rolled back), or
    ``not started``."""
    from datetime import UTC, datetime

    if described.get("EndpointStatus") in UPDATING:
        return "running"
    if described.get("EndpointConfigName") == green:
        return "ended"

    def aware(t: datetime) -> datetime:
        return t if t.tzinfo else t.replace(tzinfo=UTC)

    changed = described.get("LastModifiedTime")
    if isinstance(changed, str):
        changed = datetime.fromisoformat(changed)
    if isinstance(changed, datetime) and aware(changed) > aware(datetime.fromisoformat(since)):
        return "ended"
    return "not started"


def _promotion(uc: UseCase) -> Any:
    if uc.promotion is None or uc.aws is None:
        raise ValueError(f"{uc.name}: the promotion and aws sections are required for a SageMaker endpoint")
    return uc.promotion


def _prefix(uc: UseCase, room: int) -> str:
    prefix = re.sub(r"[^a-zA-Z0-9]+", "-", uc.name).strip("-")
    return prefix[:room].rstrip("-") or "mlb"


def endpoint_name(uc: UseCase) -> str:
    p = _promotion(uc)
    return p.sagemaker.endpoint_name or _prefix(uc, SAGEMAKER_NAME_MAX)


def _digest(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:HASH_LEN]


def _named(uc: UseCase, version: int, body: Mapping[str, Any]) -> str:
    tail = f"-v{int(version)}-{_digest(body)}"
    return _prefix(uc, SAGEMAKER_NAME_MAX - len(tail)) + tail


def create_model_request(
    uc: UseCase, *, version: int, model_package_arn: str, git_commit: str, run_id: str
) -> dict[str, Any]:
    """CreateModel of ``version`` from its model package, with the endpoint's role, isolation and
    VPC; named ``<usecase>-v<version>-<hash of the request>``."""
    aws, sm = uc.aws, _promotion(uc).sagemaker
    assert aws is not None
    request = model_from_package(
        model_name="",
        model_package_arn=model_package_arn,
        role_arn=sm.role_arn or aws.iam_role_arn,
        network_isolation=sm.network_isolation,
        subnets=sm.subnets,
        security_group_ids=sm.security_group_ids,
        tags=[],
    )
    request["ModelName"] = _named(uc, version, {k: v for k, v in request.items() if k != "ModelName"})
    request["Tags"] = lineage_tags(
        uc,
        {"name": uc.model_name, "version": version},
        {"run_id": run_id, "dag_id": f"{uc.name}__promotion"},
        git_commit,
    )
    return request


def capture_prefix(uc: UseCase, config_name: str) -> str:
    """Where the data capture of the fleet serving ``config_name`` goes (SageMaker appends
    ``/<endpoint>/<variant>/yyyy/mm/dd/hh/``)."""
    aws = uc.aws
    assert aws is not None
    return aws.s3_uri("serving", "capture", config_name)


def create_endpoint_config_request(
    uc: UseCase, *, version: int, model_name: str, variants: Sequence[tuple[str, str, float]] = ()
) -> dict[str, Any]:
    """CreateEndpointConfig serving ``model_name`` alone as the use case's variant (the
    blue/green form), or ``variants`` - (variant name, model name, initial weight) each, the
    variant-weights form - with data capture (SSE-KMS) under a prefix named by the config. The
    name hashes everything but the weights: UpdateEndpointWeightsAndCapacities moves those."""
    p = _promotion(uc)
    aws, sm = uc.aws, p.sagemaker
    assert aws is not None
    pairs = list(variants) or [(sm.variant_name, model_name, 1.0)]
    body: dict[str, Any] = {
        "ProductionVariants": [
            {
                "VariantName": name,
                "ModelName": model,
                "InstanceType": sm.instance_type,
                "InitialInstanceCount": sm.instance_count,
            }
            for name, model, _ in pairs
        ],
        "capture": {"sample": p.endpoint.capture_sample, "kms": aws.kms_key_arn, "base": aws.s3_uri("serving")},
    }
    name = _named(uc, version, body)
    del body["capture"]
    for v, (_, _, weight) in zip(body["ProductionVariants"], pairs):
        v["InitialVariantWeight"] = float(weight)
    body["EndpointConfigName"] = name
    body["DataCaptureConfig"] = {
        "EnableCapture": True,
        "InitialSamplingPercentage": max(0, min(100, round(100 * p.endpoint.capture_sample))),
        "DestinationS3Uri": capture_prefix(uc, name),
        "KmsKeyId": aws.kms_key_arn,
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"CsvContentTypes": [CONTENT_TYPE]},
    }
    if not has_local_storage(sm.instance_type):  # NVMe instance storage takes no volume key
        body["KmsKeyId"] = aws.kms_key_arn
    body["Tags"] = [{"Key": "managed-by", "Value": "mlblueprints"}, {"Key": "mlblueprints:usecase", "Value": uc.name}]
    return body


def weights_request(uc: UseCase, weights: Mapping[str, float]) -> dict[str, Any]:
    """UpdateEndpointWeightsAndCapacities: each variant's share of the traffic (the variant-weights
    canary; instance counts unchanged)."""
    return {
        "EndpointName": endpoint_name(uc),
        "DesiredWeightsAndCapacities": [{"VariantName": v, "DesiredWeight": float(w)} for v, w in weights.items()],
    }


def alarm_names(uc: UseCase) -> dict[str, str]:
    """The guardrail -> the name of its CloudWatch alarm."""
    ep = endpoint_name(uc)
    g = _promotion(uc).guardrails
    out = {"error_rate": f"{ep}-mlb-5xx-rate", "p99_latency_ms": f"{ep}-mlb-p99-latency"}
    if g.score_shift is not None:
        out[f"score_shift_{g.score_shift.method}"] = f"{ep}-mlb-score-shift"
    return out


def _dims(uc: UseCase) -> list[dict[str, str]]:
    return [
        {"Name": "EndpointName", "Value": endpoint_name(uc)},
        {"Name": "VariantName", "Value": _promotion(uc).sagemaker.variant_name},
    ]


def score_shift_dimensions(uc: UseCase) -> list[dict[str, str]]:
    return [{"Name": "EndpointName", "Value": endpoint_name(uc)}, {"Name": "UseCase", "Value": uc.name}]


def score_shift_metric_name(uc: UseCase) -> str:
    g = _promotion(uc).guardrails
    assert g.score_shift is not None
    return "ScoreShiftPSI" if g.score_shift.method == "psi" else "ScoreShiftKS"


def alarm_requests(uc: UseCase) -> list[dict[str, Any]]:
    """PutMetricAlarm of each guardrail SageMaker rolls back on (one evaluation period: a canary
    bakes minutes, not hours; missing data is not breaching - no traffic is judged by the bake's
    ``min_requests`` instead)."""
    p = _promotion(uc)
    g, period = p.guardrails, p.sagemaker.alarm_period_seconds
    names = alarm_names(uc)
    ep = endpoint_name(uc)
    common = {
        "ActionsEnabled": False,  # the alarms roll the update back; they notify nobody
        "EvaluationPeriods": 1,
        "DatapointsToAlarm": 1,
        "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "notBreaching",
        "Tags": [{"Key": "managed-by", "Value": "mlblueprints"}, {"Key": "mlblueprints:usecase", "Value": uc.name}],
    }

    def metric(i: str, name: str) -> dict[str, Any]:
        return {
            "Id": i,
            "MetricStat": {
                "Metric": {"Namespace": SAGEMAKER_NAMESPACE, "MetricName": name, "Dimensions": _dims(uc)},
                "Period": period,
                "Stat": "Sum",
            },
            "ReturnData": False,
        }

    out = [
        {
            "AlarmName": names["error_rate"],
            "AlarmDescription": f"{uc.name}: the share of 5xx answers of endpoint {ep} above {g.max_error_rate} "
            "(promotion.guardrails.max_error_rate); rolls a blue/green update back",
            "Metrics": [
                metric("errors", "Invocation5XXErrors"),
                metric("invocations", "Invocations"),
                {
                    "Id": "rate",
                    "Expression": "IF(invocations > 0, errors / invocations, 0)",
                    "Label": "5xx rate",
                    "ReturnData": True,
                },
            ],
            "Threshold": g.max_error_rate,
            **common,
        },
        {
            "AlarmName": names["p99_latency_ms"],
            "AlarmDescription": f"{uc.name}: the model latency p99 of endpoint {ep} above {g.max_p99_latency_ms} ms "
            "(promotion.guardrails.max_p99_latency_ms); rolls a blue/green update back",
            "Namespace": SAGEMAKER_NAMESPACE,
            "MetricName": "ModelLatency",  # microseconds
            "Dimensions": _dims(uc),
            "ExtendedStatistic": "p99",
            "Period": period,
            "Unit": "Microseconds",
            "Threshold": g.max_p99_latency_ms * 1000.0,
            **common,
        },
    ]
    if g.score_shift is not None:
        out.append(
            {
                "AlarmName": names[f"score_shift_{g.score_shift.method}"],
                "AlarmDescription": f"{uc.name}: the challenger's {g.score_shift.method.upper()} against the champion's "
                f"scores on endpoint {ep} above {g.score_shift.threshold} (published by the promotion bake); "
                "rolls a blue/green update back",
                "Namespace": METRIC_NAMESPACE,
                "MetricName": score_shift_metric_name(uc),
                "Dimensions": score_shift_dimensions(uc),
                "Statistic": "Maximum",
                "Period": period,
                "Threshold": g.score_shift.threshold,
                **common,
            }
        )
    return out


def score_shift_metric_request(uc: UseCase, value: float, at: Any) -> dict[str, Any]:
    """PutMetricData of the score shift the bake measured at ``at`` (a datetime)."""
    return {
        "Namespace": METRIC_NAMESPACE,
        "MetricData": [
            {
                "MetricName": score_shift_metric_name(uc),
                "Dimensions": score_shift_dimensions(uc),
                "Timestamp": at,
                "Value": float(value),
                "Unit": "None",
            }
        ],
    }


def traffic_routing(uc: UseCase) -> dict[str, Any]:
    """The blue/green update's TrafficRoutingConfiguration: CANARY at the canary weight, or
    LINEAR in the steps' equal increments (config validation checks they are equal);
    ``WaitIntervalInSeconds`` is the bake of each."""
    c = _promotion(uc).canary
    wait = int(c.bake_seconds)
    if c.steps:
        return {
            "Type": "LINEAR",
            "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": round(100 * c.steps[0])},
            "WaitIntervalInSeconds": wait,
        }
    return {
        "Type": "CANARY",
        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": max(1, round(100 * c.weight))},
        "WaitIntervalInSeconds": wait,
    }


def update_endpoint_request(uc: UseCase, *, config_name: str, alarms: Sequence[str]) -> dict[str, Any]:
    """UpdateEndpoint to ``config_name`` by a blue/green deployment with SageMaker's guardrails."""
    sm = _promotion(uc).sagemaker
    return {
        "EndpointName": endpoint_name(uc),
        "EndpointConfigName": config_name,
        "RetainAllVariantProperties": False,
        "DeploymentConfig": {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": traffic_routing(uc),
                "TerminationWaitInSeconds": sm.termination_wait_seconds,
                "MaximumExecutionTimeoutInSeconds": sm.max_execution_timeout_seconds,
            },
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": a} for a in alarms]},
        },
    }


def replace_endpoint_request(uc: UseCase, *, config_name: str) -> dict[str, Any]:
    """UpdateEndpoint to ``config_name`` at once (SageMaker's blue/green with all traffic shifted
    in one step): the rollback a guardrail judged after the canary asks for."""
    return {"EndpointName": endpoint_name(uc), "EndpointConfigName": config_name, "RetainAllVariantProperties": False}


def create_endpoint_request(uc: UseCase, *, config_name: str) -> dict[str, Any]:
    return {
        "EndpointName": endpoint_name(uc),
        "EndpointConfigName": config_name,
        "Tags": [{"Key": "managed-by", "Value": "mlblueprints"}, {"Key": "mlblueprints:usecase", "Value": uc.name}],
    }


def approval_request(model_package_arn: str, approved: bool, reason: str) -> dict[str, Any]:
    """UpdateModelPackage of a promoted (Approved) or rolled-back (Rejected) version."""
    return {
        "ModelPackageArn": model_package_arn,
        "ModelApprovalStatus": "Approved" if approved else "Rejected",
        "ApprovalDescription": reason[:1024],
    }
