"""The explainer on the aws target: a SageMaker Clarify processing job.

:meth:`AwsExplainer.analyse` prepares the job and returns it as a service call (the orchestrator
runs it: the provider's ``SageMakerProcessingOperator`` in a DAG, ``createProcessingJob.sync`` in a
state machine):

* the holdout the version was judged on (an artifact of its run in the registry) is uploaded as
  the job's dataset, Parquet, SSE-KMS, under a prefix of the run
  (:func:`mlblueprints.aws.clarify.dataset_columns`: features in model order, label, facets);
* the model package the version was registered as (:func:`mlblueprints.registry.aws.find_model_package`,
  the lookup scoring uses) becomes the run's shadow model (CreateModel, the request builder
  scoring uses): Clarify creates a shadow endpoint from it for its predictions and deletes the
  endpoint after the job. Created here, boto3 by hand: the provider's model operator would be a
  task of its own, and this is one short request-response call, made once per run (a retried
  prepare finds the model and keeps it);
* ``analysis_config.json`` (:func:`mlblueprints.aws.clarify.analysis_config`) is uploaded beside it.

:meth:`AwsExplainer.resume_analyse` downloads the job's ``analysis.json`` and
``explanations_shap/out.csv`` from its output prefix and hands them to the code that logs and
reports the local target's (:func:`mlblueprints.explain.steps.log_analysis`); the gate step then
reads the logged ``analysis.json`` back from the registry, on both targets.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from mlblueprints.aws import clarify as cl
from mlblueprints.aws import s3io
from mlblueprints.aws import training as tr
from mlblueprints.aws.session import AwsRuntime
from mlblueprints.backends import backend_for
from mlblueprints.config import UseCase
from mlblueprints.core import service
from mlblueprints.core.naming import safe
from mlblueprints.core.service import ServiceCall
from mlblueprints.errors import PermanentError
from mlblueprints.explain import steps
from mlblueprints.lineage import RunInfo
from mlblueprints.registry.aws import find_model_package

log = logging.getLogger(__name__)

CAPABILITY = "explainer"
OUTPUT_FILES = ("analysis.json", "explanations_shap/out.csv")


class AwsExplainer:
    """The explainer capability on aws (``mlblueprints.backends.Explainer``)."""

    def __init__(self, uc: UseCase, rt: AwsRuntime):
        if uc.aws is None or uc.training is None or uc.explainability is None:
            raise ValueError(f"{uc.name}: a Clarify job needs the aws, training and explainability sections")
        self.uc, self.aws, self.rt = uc, uc.aws, rt

    def _registry(self) -> Any:
        return backend_for(self.uc, "registry", self.rt)

    def _shadow_model(self, request: dict[str, Any]) -> None:
        sm = self.rt.client("sagemaker")
        try:
            sm.describe_model(ModelName=request["ModelName"])
            log.info("shadow model %s exists: kept", request["ModelName"])
            return
        except Exception as exc:  # what SageMaker answers for an unknown model
            if s3io.error_code(exc) != "ValidationException":
                raise
        sm.create_model(**request)

    def analyse(self, target: dict[str, Any], run: RunInfo) -> ServiceCall:
        uc, aws = self.uc, self.aws
        version = int(target["version"])
        registry = self._registry()
        work = steps.workdir(uc, run.run_id, version)
        holdout = steps.holdout(uc, registry, version, work)
        columns, _, _ = cl.dataset_columns(uc)
        missing = [c for c in columns if c not in holdout.columns]
        if missing:
            raise PermanentError(f"{uc.model_name} version {version}: its holdout has no column(s) {missing}")
        package = find_model_package(
            self.rt.client("sagemaker"), tr.model_package_group_name(uc), target["model_name"], version
        )
        if package is None:
            raise PermanentError(
                f"{target['model_name']} version {version}: no model package records it in group "
                f"{tr.model_package_group_name(uc)}; register it on aws (the training pattern does) to explain it there"
            )
        base = aws.s3_uri("explainability", safe(run.run_id), f"v{version}")
        dataset = work / "dataset" / "holdout.parquet"
        dataset.parent.mkdir(parents=True, exist_ok=True)
        holdout[columns].to_parquet(dataset, index=False)
        s3 = self.rt.client("s3")
        s3io.put_file(s3, dataset, f"{base}/dataset/holdout.parquet", aws, "application/x-parquet")
        feats = uc.model_features()
        means = [float(v) for v in holdout[feats].astype("float64").mean().fillna(0.0)]
        model_name = cl.shadow_model_name(uc, run.run_id)
        config = cl.analysis_config(uc, model_name=model_name, threshold=float(target["threshold"]), means=means)
        config_uri = f"{base}/config/{cl.CONFIG_FILE}"
        s3io.put_bytes(s3, json.dumps(config, indent=1).encode(), config_uri, aws, "application/json")
        request = cl.processing_request(
            uc,
            job_name=cl.processing_job_name(uc, run.run_id, 1),  # the service task names each try's job
            model_name=model_name,
            model_package_arn=package["ModelPackageArn"],
            dataset_uri=f"{base}/dataset/",
            config_uri=config_uri,
            output_base_uri=f"{base}/output",
            model={"name": target["model_name"], "version": version},
            run=run.as_dict(),
            git_commit=run.git_commit,
        )
        self._shadow_model(request["Model"])
        state = {"target": target, "run_id": run.run_id, "holdout_rows": len(holdout), "started": time.time()}
        return ServiceCall(service.SAGEMAKER_PROCESSING, request["Processing"], CAPABILITY, "resume_analyse", state)

    def resume_analyse(self, state: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
        """The job's output, read back and logged as the local target's is."""
        desc = output["Processing"]
        [out] = desc["ProcessingOutputConfig"]["Outputs"]
        prefix = str(out["S3Output"]["S3Uri"]).rstrip("/")
        target = state["target"]
        out_dir = steps.workdir(self.uc, state["run_id"], int(target["version"])) / steps.ARTIFACT_DIR
        s3 = self.rt.client("s3")
        for name in OUTPUT_FILES:
            uri = f"{prefix}/{name}"
            if name == "analysis.json" or s3io.exists(s3, uri):
                s3io.download(s3, uri, out_dir / name)
        result = steps.log_analysis(self.uc, self._registry(), target, out_dir, holdout_rows=int(state["holdout_rows"]))
        log.info(
            "Clarify job %s (%s): %s", desc["ProcessingJobName"], output.get("how", "created"), result["artifact_uri"]
        )
        return result
