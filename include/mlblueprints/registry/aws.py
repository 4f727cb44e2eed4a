"""The registry on the aws target: MLflow (the use case's SageMaker managed tracking server, or
the local store) plus a SageMaker Model Registry model package per registered version.

:meth:`SageMakerRegistry.register_package` creates the use case's model package group unless it
exists, uploads the evaluation as the package's ModelQuality statistics (Model Monitor's
``binary_classification_metrics`` layout, plus the whole evaluation under ``mlblueprints``;
SSE-KMS) and creates a model package version with the configured approval status and the
lineage as customer metadata. Its ``ClientToken`` is a hash of the request, so a retried
register step gets the package its first try made.

boto3 by hand, not the provider's ``SageMakerRegisterModelVersionOperator``: that operator
creates the group without the tags and description the request builders give it, takes every
field that matters here (customer metadata, model metrics, client token, model card) as
free-form ``extras``, and runs as a task of its own - while a package must be created in the
same step as the MLflow version it records, after the gate, with the MLflow version number in
its metadata. Both calls are short request-response calls (nothing to defer or to stop).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from mlblueprints.aws import s3io
from mlblueprints.aws import training as tr
from mlblueprints.aws.session import AwsRuntime
from mlblueprints.config import UseCase
from mlblueprints.core.naming import safe
from mlblueprints.registry.local import MlflowRegistry

log = logging.getLogger(__name__)


def find_model_package(sm: Any, group: str, model_name: str, version: int | str) -> dict[str, Any] | None:
    """DescribeModelPackage of the newest package in ``group`` whose customer metadata records
    MLflow model ``model_name`` version ``version`` (what :meth:`SageMakerRegistry.register_package`
    writes); None when there is none."""
    found = None
    for page in sm.get_paginator("list_model_packages").paginate(ModelPackageGroupName=group):
        for summary in page.get("ModelPackageSummaryList", []):
            desc = sm.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
            meta = desc.get("CustomerMetadataProperties") or {}
            ours = meta.get("mlflow_model") == model_name and meta.get("mlflow_version") == str(version)
            if ours and (found is None or desc.get("ModelPackageVersion", 0) > found.get("ModelPackageVersion", 0)):
                found = desc
    return found


class SageMakerRegistry(MlflowRegistry):
    """MLflow plus SageMaker model packages (``mlblueprints.backends.Registry``)."""

    def __init__(self, uc: UseCase, rt: AwsRuntime):
        super().__init__(uc)
        if uc.aws is None or uc.training is None:
            raise ValueError(f"{uc.name}: a model registry on aws needs the aws and training sections")
        self.aws = uc.aws
        self.rt = rt

    def _ensure_group(self, sm: Any, git_commit: str) -> str:
        request = tr.create_model_package_group_request(self.uc, git_commit=git_commit)
        name = request["ModelPackageGroupName"]

        def exists() -> bool:
            try:
                sm.describe_model_package_group(ModelPackageGroupName=name)
                return True
            except Exception as exc:  # an unknown group is a ValidationException
                if s3io.error_code(exc) in ("ValidationException", "ResourceNotFound"):
                    return False
                raise

        if not exists():
            try:
                sm.create_model_package_group(**request)
                log.info("created model package group %s", name)
            except Exception:
                if not exists():  # not a concurrent creation: a real error
                    raise
        return name

    def register_package(
        self, ts: dict[str, Any], trained: dict[str, Any], ev: dict[str, Any], registered: dict[str, Any], run: Any
    ) -> dict[str, Any]:
        uc, aws = self.uc, self.aws
        sm, s3 = self.rt.client("sagemaker"), self.rt.client("s3")
        group = self._ensure_group(sm, run.git_commit)
        metrics_uri = aws.s3_uri("training", "evaluation", safe(run.run_id), f"{trained['job_name']}.json")
        body = json.dumps(tr.model_quality_statistics(ev, trained), indent=1, sort_keys=True, default=str)
        s3io.put_bytes(s3, body.encode(), metrics_uri, aws, "application/json")
        lin = registered.get("lineage") or {}
        metadata = {
            "git_commit": lin.get("git_commit", run.git_commit),
            "config_hash": lin.get("config_hash", run.config_hash),
            "dag_id": lin.get("dag_id"),
            "run_id": lin.get("run_id", run.run_id),
            "training_job_name": trained["job_name"],
            "train_try_number": trained["try_number"],
            "training_set_uri": ts["s3_uri"],
            "training_set_sha256": ts["sha256"],
            "source_snapshots": ts["source_snapshots"],
            "gate": lin.get("gate"),
            "compared_with": lin.get("compared_with"),
            "mlflow_model": registered.get("model_name"),
            "mlflow_version": registered.get("version"),
            "mlflow_run_id": registered.get("mlflow_run_id"),
        }
        t = uc.training
        if t is None:  # checked in __init__; the type checker does not know
            raise ValueError(f"{uc.name}: the use case has no training section")
        primary = t.gate.primary_metric
        request = tr.create_model_package_request(
            uc,
            model_data_url=trained["model_data_url"],
            image_uri=tr.framework_image_uri(uc, "inference"),
            metrics_s3_uri=metrics_uri,
            approval_status=t.sagemaker.approval_status,
            description=(
                f"{uc.model_name} from run {run.run_id}: {primary} {ev['candidate'][primary]:.4f}, "
                f"gate passed against {ev['decision'].get('against')}"
            ),
            customer_metadata=metadata,
        )
        arn = sm.create_model_package(**request)["ModelPackageArn"]
        log.info("model package %s (%s) in group %s", arn, request["ModelApprovalStatus"], group)
        return {
            "arn": arn,
            "group": group,
            "approval_status": request["ModelApprovalStatus"],
            "metrics_s3_uri": metrics_uri,
            "client_token": request["ClientToken"],
        }

    def where(self) -> list[str]:
        return [*super().where(), f"SageMaker model package group: {tr.model_package_group_name(self.uc)}"]
