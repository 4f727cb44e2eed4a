"""Run a service call to completion from Python, without an orchestrator.

What the Amazon provider's operators do in a DAG task (and an optimized integration in a state
machine), done synchronously with the runtime's clients: Athena statements in order, each
polled until it ends; a SageMaker training or processing job created and polled. Tests and scripts use it to
drive an aws backend directly (:func:`mlblueprints.core.service.complete`). The outputs have the
operators' shapes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mlblueprints.aws import requests as req
from mlblueprints.aws import serving as sv
from mlblueprints.aws.session import AwsRuntime
from mlblueprints.config import UseCase
from mlblueprints.core import service
from mlblueprints.errors import PermanentError
from mlblueprints.lineage import RunInfo

log = logging.getLogger(__name__)

ATHENA_DONE = ("SUCCEEDED", "FAILED", "CANCELLED")
JOB_DONE = ("Completed", "Failed", "Stopped")


class ServiceJobFailed(RuntimeError):
    """An Athena statement or a training job ended in another state than success."""


def run_athena(rt: AwsRuntime, uc: UseCase, statements: list[service.Statement], run: RunInfo) -> dict[str, Any]:
    """Run the statements in order, as the Airflow operator does: chunked statements expanded
    from their plan's rows, a statement that ends with its ``repeat_on`` error run again."""
    aws = uc.aws
    if aws is None:
        raise ValueError(f"{uc.name}: the aws section is required")
    athena = rt.client("athena")
    done: dict[str, str] = {}
    plans: dict[str, list[dict[str, Any]]] = {}

    def rows_of(qid: str) -> list[dict[str, Any]]:
        if qid not in plans:
            plans[qid] = rt.fetch_rows(qid)
        return plans[qid]

    while (st := service.next_statement(statements, done, rows_of)) is not None:
        runs = 1
        while True:
            token = req.client_request_token(
                run.run_id, run.task_id, run.try_number, st.name, *([runs] if runs > 1 else [])
            )
            qid = athena.start_query_execution(**req.athena_start_query(aws, st.sql, token))["QueryExecutionId"]
            while True:
                status = athena.get_query_execution(QueryExecutionId=qid)["QueryExecution"]["Status"]
                if status["State"] in ATHENA_DONE:
                    break
                time.sleep(rt.athena_poll_seconds)
            if status["State"] == "SUCCEEDED":
                break
            reason = status.get("StateChangeReason", "")
            if not service.repeats(st, reason, runs):
                raise ServiceJobFailed(service.failure_message(st, qid, status["State"], reason, runs))
            log.info("athena statement %s: %s; running it again (run %d)", st.name, st.repeat_on, runs + 1)
            runs += 1
        done[st.name] = qid
    return {"queries": done}


def run_sagemaker_job(rt: AwsRuntime, job_type: str, request: dict[str, Any]) -> dict[str, Any]:
    """Create a SageMaker job (``job_type`` Training or Processing) and poll it until it ends."""
    sm = rt.client("sagemaker")
    kind = job_type.lower()
    getattr(sm, f"create_{kind}_job")(**request)
    name = request[f"{job_type}JobName"]
    while True:
        desc = getattr(sm, f"describe_{kind}_job")(**{f"{job_type}JobName": name})
        if desc[f"{job_type}JobStatus"] in JOB_DONE:
            break
        time.sleep(rt.sagemaker_poll_seconds)
    if desc[f"{job_type}JobStatus"] != "Completed":
        raise ServiceJobFailed(f"{kind} job {name} ended {desc[f'{job_type}JobStatus']}: {desc.get('FailureReason')}")
    return {job_type: desc}


def run_training(rt: AwsRuntime, request: dict[str, Any]) -> dict[str, Any]:
    return run_sagemaker_job(rt, "Training", request)


def run_endpoint_update(sm: Any, request: dict[str, Any], during: Any, sleep: Any = time.sleep) -> dict[str, Any]:
    """An endpoint update (service kind ``sagemaker_endpoint``) as the state machine runs it:
    CreateModel and CreateEndpointConfig (unless made already: the names are hashes of the
    requests), UpdateEndpoint (unless this deployment's update runs or ended already: a retried
    task's), then ``during()`` (the work done while the update runs; it may
    return before the update ends) and DescribeEndpoint every ``PollSeconds`` until the endpoint
    leaves Updating, at most ``MaxPolls`` times. Returns ``{"Endpoint": DescribeEndpoint,
    "During": what during() returned}``."""
    name = request["EndpointName"]
    if request.get("Model") and not sv.exists(sm.describe_model, ModelName=request["Model"]["ModelName"]):
        sm.create_model(**request["Model"])
        log.info("created model %s", request["Model"]["ModelName"])
    cfg = request.get("EndpointConfig")
    if cfg and not sv.exists(sm.describe_endpoint_config, EndpointConfigName=cfg["EndpointConfigName"]):
        sm.create_endpoint_config(**cfg)
        log.info("created endpoint config %s", cfg["EndpointConfigName"])
    update = request.get("Update")
    if update:
        green = update["EndpointConfigName"]
        where = sv.update_state(sm.describe_endpoint(EndpointName=name), green, request["StartedAt"])
        if where == "not started":
            sm.update_endpoint(**update)
            log.info("updating endpoint %s to %s", name, green)
        else:  # a retried task: its update runs, or ended (promoted or rolled back) - not sent again
            log.info("the update of endpoint %s to %s %s already: not sent again", name, green, where)
    got = during()
    for _ in range(int(request["MaxPolls"]) + 1):
        desc = sm.describe_endpoint(EndpointName=name)
        if desc["EndpointStatus"] not in sv.UPDATING:
            return {"Endpoint": desc, "During": got}
        sleep(float(request["PollSeconds"]))
    raise PermanentError(
        f"endpoint {name} still {desc['EndpointStatus']} after {request['MaxPolls']} polls {request['PollSeconds']}s apart"
    )


def runner(rt: AwsRuntime, uc: UseCase, run: RunInfo, during: Any = None):
    """A ``run_job`` for :func:`mlblueprints.core.service.complete`; ``during(call)`` runs a
    call's work while its job runs (``lambda call: service.during(ctx, call)``)."""

    def run_job(call: service.ServiceCall) -> Any:
        if call.kind == service.ATHENA:
            return run_athena(rt, uc, call.statements, run)
        if call.kind == service.SAGEMAKER_TRAINING:
            return run_training(rt, call.request)
        if call.kind == service.SAGEMAKER_PROCESSING:
            return {**run_sagemaker_job(rt, "Processing", call.request), "how": "created"}
        if call.kind == service.SAGEMAKER_ENDPOINT:
            return run_endpoint_update(
                rt.client("sagemaker"), call.request, lambda: during(call) if during else None, time.sleep
            )
        raise ValueError(f"no direct runner for service kind {call.kind!r}")

    return run_job
