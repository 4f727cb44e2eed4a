"""The parameters of ``infra/mlblueprints.yaml`` (the CloudFormation template of the aws target),
from a use case's YAML: the same values the DAGs and the state machines use, so that the stack
creates the resources the configuration names. Pure: no boto3.
"""

from __future__ import annotations

import re
from typing import Any

from mlblueprints import patterns
from mlblueprints.config import UseCase
from mlblueprints.core.naming import (
    drift_alert_asset,
    explained_model_asset,
    predictions_asset,
    registered_model_asset,
    table_asset,
)
from mlblueprints.deploy.requirements import AIRFLOW_TARGET
from mlblueprints.lakehouse import naming
from mlblueprints.stepfunctions import names

TEMPLATE = "infra/mlblueprints.yaml"
BRONZE_SLOTS = 3  # lifecycle rules the template has for Bronze tables
_PRESETS = {
    "@hourly": "cron(0 * * * ? *)",
    "@daily": "cron(0 0 * * ? *)",
    "@weekly": "cron(0 0 ? * SUN *)",
    "@monthly": "cron(0 0 1 * ? *)",
    "@yearly": "cron(0 0 1 1 ? *)",
}


def schedule_expression(schedule: str | None) -> str:
    """An Airflow schedule (a preset or a five-field cron) as an EventBridge Scheduler expression
    (six fields, ``?`` in one of day-of-month and day-of-week; days of week 1-7 from Sunday)."""
    if not schedule:
        return ""
    if schedule in _PRESETS:
        return _PRESETS[schedule]
    parts = schedule.split()
    if len(parts) != 5:
        raise ValueError(f"schedule {schedule!r}: use a preset or a five-field cron expression")
    minute, hour, dom, month, dow = parts
    if dow != "*" and dom != "*":
        raise ValueError(f"schedule {schedule!r}: EventBridge cannot have both a day of month and a day of week")
    if dow == "*":
        dow = "?"
    else:
        dom = "?"
        dow = re.sub(r"\d", lambda m: str(int(m[0]) % 7 + 1), dow)
    return f"cron({minute} {hour} {dom} {month} {dow} *)"


def _role_name(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def _transform_role_name(uc: UseCase) -> str:
    """The transform role the stack makes: a role of its own (one role per kind of job)."""
    name = _role_name(names.transform_role_arn(uc))
    if name == _role_name(names.aws_section(uc).iam_role_arn):
        raise ValueError(
            f"{uc.name}: scoring.sagemaker.role_arn: name the transform jobs' own role (the stack makes one role "
            f"per kind of job; {name} is the training jobs' role, aws.iam_role_arn)"
        )
    return name


def _kms(uc: UseCase) -> tuple[str, str]:
    """(CreateKmsKey, KmsAliasName): the stack creates the key when the YAML names it by the alias
    ``alias/mlb-<use case>``; any other ARN is a key that exists already."""
    aws = names.aws_section(uc)
    alias = f"alias/{names.resource_prefix(uc)}"
    return ("true" if aws.kms_key_arn.endswith(":" + alias) else "false"), alias


def parameters(uc: UseCase, *, image_tag: str, mwaa: bool = False, image_pushed: bool = False) -> dict[str, str]:
    """Parameter name -> value for ``infra/mlblueprints.yaml``. ``image_pushed``: the worker image
    of ``image_tag`` is in the repository, so the statements function (which runs from it) can be
    created."""
    from mlblueprints.aws import serving
    from mlblueprints.aws import training as tr

    aws = names.aws_section(uc)
    create_key, alias = _kms(uc)
    aws_uc = names.on_aws(uc)
    has = {p: patterns.declare(p, aws_uc) is not None for p in patterns.PATTERNS}
    bronze = [
        aws.s3_uri("warehouse", naming.table_name(ds, naming.BRONZE)).split("/", 3)[3] + "/" for ds in uc.datasets
    ]
    bronze += [""] * max(0, BRONZE_SLOTS - len(bronze))
    out = {
        "UseCase": uc.name,
        "ResourcePrefix": names.resource_prefix(uc),
        "BucketName": aws.bucket,
        "DataPrefix": aws.prefix,
        "KmsKeyArn": aws.kms_key_arn,
        "CreateKmsKey": create_key,
        "KmsAliasName": alias,
        "GlueDatabaseName": aws.glue_database,
        "AthenaWorkgroupName": aws.athena_workgroup,
        "SageMakerRoleName": _role_name(aws.iam_role_arn),
        "ModelPackageGroupName": tr.model_package_group_name(uc) if uc.training else names.resource_prefix(uc),
        "WorkerImageTag": image_tag,
        "WorkerImagePushed": str(image_pushed).lower(),
        "DefinitionsBucket": aws.bucket,
        "DefinitionsPrefix": aws.s3_uri("stepfunctions", "definitions").split("/", 3)[3],
        "HasFeatures": str(has["features"]).lower(),
        "HasTraining": str(has["training"]).lower(),
        "HasScoring": str(has["scoring"]).lower(),
        "HasExplainability": str(has["explainability"]).lower(),
        "HasMonitoring": str(has["monitoring"]).lower(),
        "HasPromotion": str(has["promotion"]).lower(),
        "EndpointName": serving.endpoint_name(aws_uc) if has["promotion"] else "",
        "TransformRoleName": _transform_role_name(uc) if has["scoring"] else "",
        "LakehouseScheduleExpression": schedule_expression(uc.schedule),
        **_scoring_trigger(aws_uc, has["scoring"]),
        "GoldAssetNames": ",".join(
            table_asset(aws_uc, g).name for g in sorted({v.source for v in uc.features.values()})
        )
        or "none",
        "DriftAssetName": drift_alert_asset(uc).name,
        "PredictionsAssetName": predictions_asset(uc).name if has["monitoring"] else "",
        "ChallengerAssetName": registered_model_asset(uc).name if has["explainability"] else "",
        "PromotionAssetName": (
            (explained_model_asset(uc) if uc.explainability is not None else registered_model_asset(uc)).name
            if has["promotion"]
            else ""
        ),
        "CreateMwaa": str(mwaa).lower(),
        # the version the bundle's requirements are locked for (deploy mwaa refuses any other)
        "MwaaAirflowVersion": AIRFLOW_TARGET,
        "MwaaSubnetIds": ",".join(uc.training.sagemaker.subnets) if (mwaa and uc.training) else "",
        "MwaaSecurityGroupIds": ",".join(uc.training.sagemaker.security_group_ids) if (mwaa and uc.training) else "",
        "MwaaSourceBucketName": aws.bucket,
    }
    for i, prefix in enumerate(bronze[:BRONZE_SLOTS], start=1):
        out[f"BronzePrefix{i}"] = prefix
    return out


def _scoring_trigger(uc: UseCase, has_scoring: bool) -> dict[str, str]:
    """ScoringTrigger, ScoringGoldAssetName, ScoringScheduleExpression: what starts the scoring
    machine, as ``scoring.schedule`` schedules the scoring DAG."""
    out = {"ScoringTrigger": "", "ScoringGoldAssetName": "", "ScoringScheduleExpression": ""}
    if not has_scoring:
        return out
    when = uc.scoring_schedule
    if when == "features":
        out["ScoringTrigger"] = "features"
    elif when == "gold":
        out["ScoringTrigger"] = "gold"
        out["ScoringGoldAssetName"] = table_asset(uc, uc.scoring_rows()["source"]).name
    else:
        out["ScoringTrigger"] = "schedule"
        out["ScoringScheduleExpression"] = schedule_expression(when)
    return out


def warnings(uc: UseCase, *, image_pushed: bool) -> list[str]:
    """What the stack will not do as the YAML might expect (``image_pushed`` as for
    :func:`parameters`)."""
    out = []
    if not image_pushed:
        out.append(
            f"the statements function ({names.statements_function_name(uc)}) is not created: it runs from the worker "
            "image, so push the image, render again with --image-pushed and update the stack; until then a state "
            "machine's Athena steps fail (Lambda.ResourceNotFoundException)"
        )
    create_key, alias = _kms(uc)
    if create_key == "false":
        aws = names.aws_section(uc)
        out.append(
            f"aws.kms_key_arn names an existing key: the stack uses it and creates none (to let the stack create "
            f"the key, set aws.kms_key_arn to arn:aws:kms:{aws.region}:{aws.account_id}:{alias})"
        )
    own = _role_name(names.aws_section(uc).iam_role_arn)
    for field, role, what in (
        (
            "explainability.sagemaker.role_arn",
            uc.explainability.sagemaker.role_arn if uc.explainability is not None else None,
            "gives the Clarify job's rights (its prefix, the shadow endpoint) to the training jobs' role and lets "
            "the state machines and the steps pass only the roles it makes",
        ),
        (
            "promotion.sagemaker.role_arn",
            uc.promotion.sagemaker.role_arn if uc.promotion is not None else None,
            "lets the steps and the state machines pass only the roles it makes to the endpoint's models",
        ),
    ):
        if role and _role_name(role) != own:
            out.append(
                f"{field} names {_role_name(role)}: the stack {what}; create that role and its PassRole yourself, "
                "or leave the field out"
            )
    if len(uc.datasets) > BRONZE_SLOTS:
        out.append(f"only the first {BRONZE_SLOTS} data sets' Bronze tables get the lifecycle rule")
    if uc.aws is not None and uc.aws.athena_workgroup == "primary":
        out.append("athena_workgroup is 'primary': the stack cannot create it; name a workgroup of the use case")
    return out


def as_cli_parameters(params: dict[str, Any]) -> list[dict[str, str]]:
    """The parameters as ``aws cloudformation deploy --parameter-overrides file://...`` and
    ``create-stack --parameters file://...`` read them."""
    return [{"ParameterKey": k, "ParameterValue": str(v)} for k, v in params.items()]
