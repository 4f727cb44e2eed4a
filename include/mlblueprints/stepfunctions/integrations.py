"""The Task states of a step on Step Functions: the worker job that runs a Python phase, and one
entry per service kind (``mlblueprints.core.service``) for the managed-service job between a
step's ``prepare`` and ``finish`` phases.

Every Parameters block of a service job is the dict the pure builders of ``mlblueprints.aws``
return - the same call the Airflow operators' requests come from - built for the use case with its
aws fields as ``${...}`` substitutions (:func:`~mlblueprints.stepfunctions.names.with_placeholders`).
The fields that depend on the run (this execution's data and code, its lineage tags) are taken
from the request the ``prepare`` phase built (``<key>.$`` paths into it), and the fields that name
the job are ``States.Format`` over ``$$.Execution.Name`` and the retry count, so that each retry
makes a new job. ``tests/statemachines`` checks the resolved blocks against the builders and
against what the Airflow tasks send.

A new service kind (processing, endpoint updates) is one :class:`ServiceKind` in
:data:`SERVICES`; :mod:`~mlblueprints.stepfunctions.asl` does not change.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlblueprints.aws import requests as req
from mlblueprints.config import UseCase
from mlblueprints.core import service
from mlblueprints.stepfunctions import names
from mlblueprints.stepfunctions import statements as statements_module

WORKER_MODULE = "mlblueprints.stepfunctions.worker"
WORKER_INSTANCE_TYPE = "ml.m5.xlarge"
WORKER_VOLUME_GB = 30
WORKER_MAX_RUNTIME_SECONDS = 4 * 3600
JOB_NAME_HASH = "MD5"  # 32 hex digits: a job name fits SageMaker's 63 characters for any execution name
JOB_PREFIX_MAX = 63 - 1 - 32
RETRY_BACKOFF = 2.0
MAX_RETRY_DELAY_SECONDS = 1800
# what a failed SageMaker call or job raises in a state machine: a job that ended Failed (a
# capacity error, a Spot MaxWait reached, an error in the container) is States.TaskFailed; an API
# error (a resource limit, throttling) is SageMaker.AmazonSageMakerException
SAGEMAKER_RETRYABLE = ("SageMaker.AmazonSageMakerException", "States.TaskFailed")


# ---------------------------------------------------------------- intrinsic-function text


def lit(text: str) -> str:
    """``text`` as a string literal of an intrinsic function (``'`` ``{`` ``}`` ``\\`` escaped)."""
    return f"'{_esc(text)}'"


def job_name(prefix: str, *parts: str, retry_count: str = "$$.State.RetryCount") -> str:
    """A SageMaker job name unique per execution, state entry and retry:
    ``<prefix>-<md5(execution name / parts / entered time / retry count)>``. The hash keeps the
    name within 63 characters and [a-zA-Z0-9-] whatever the execution is called; the job's tags
    name the execution (``mlblueprints:run-id``). ``retry_count``: where the retry count is (a
    state inside a retried Parallel gets the Parallel's from its input)."""
    if len(prefix) > JOB_PREFIX_MAX:
        raise ValueError(f"job name prefix {prefix!r} is longer than {JOB_PREFIX_MAX} characters")
    fmt = "/".join(["{}"] * (len(parts) + 3))
    args = ", ".join(["$$.Execution.Name", *(lit(p) for p in parts), "$$.State.EnteredTime", retry_count])
    return f"States.Format('{_esc(prefix)}-{{}}', States.Hash(States.Format('{fmt}', {args}), {lit(JOB_NAME_HASH)}))"


def _esc(text: str) -> str:
    return "".join("\\" + ch if ch in "'{}\\" else ch for ch in text)


def doc_key(r: Render, relpath: str) -> str:
    """``States.Format`` of the S3 key of a document of this execution (the layout of
    :func:`~mlblueprints.stepfunctions.names.run_prefix`, under the ``${Bucket}`` substitution)."""
    head = req.split_s3_uri(names.run_prefix(r.aws_real, r.spec.pattern, "x"))[1][: -len("x")]
    return f"States.Format('{_esc(head)}{{}}/{_esc(relpath)}', $$.Execution.Name)"


def run_key(r: Render, step: str, what: str) -> str:
    """The key of a step's document (``steps/<step>/<what>.json``)."""
    return doc_key(r, names.step_key(step, what))


def sagemaker_name_part(text: str) -> str:
    """``text`` as the start of a SageMaker job name: runs of other characters than [a-zA-Z0-9]
    become ``-``, at most :data:`JOB_PREFIX_MAX` characters."""
    out = re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-")[:JOB_PREFIX_MAX].rstrip("-")
    return out or "mlb"


def retry_try_number() -> str:
    return "States.Format('{}', States.MathAdd($$.State.RetryCount, 1))"


# ---------------------------------------------------------------- the render context


@dataclass
class Render:
    """What the Task states of one pattern are rendered from."""

    uc: UseCase  # with placeholders (names.with_placeholders)
    aws_real: Any  # the real aws section: the S3 layout's prefix (not a substitution)
    spec: Any  # PatternSpec

    @property
    def bucket(self) -> str:
        return names.placeholder("Bucket")

    def retry(self, step: Any, errors: tuple[str, ...]) -> list[dict[str, Any]]:
        """The step's retries (the use case's, or the step's own), as Airflow's: exponential
        backoff from ``retry_delay_seconds``, at most 30 minutes apart."""
        n = self.uc.retries if step.retries is None else step.retries
        if n <= 0:
            return []
        return [
            {
                "ErrorEquals": list(errors),
                "IntervalSeconds": max(1, int(self.uc.retry_delay_seconds)),
                "BackoffRate": RETRY_BACKOFF,
                "MaxAttempts": int(n),
                "MaxDelaySeconds": MAX_RETRY_DELAY_SECONDS,
            }
        ]


# ---------------------------------------------------------------- the worker job (Python phases)


def worker_job_request(uc: UseCase, pattern: str, step: str, phase: str) -> dict[str, Any]:
    """CreateProcessingJob parameters of one Python phase in the worker image, without the parts
    that depend on the execution (name, arguments): the step function runs as
    ``python -m mlblueprints.stepfunctions.worker <usecase> <pattern> <step> <phase>`` with the
    worker role, on an encrypted volume, in the training VPC when the use case names one. The
    worker checks that the substitutions it was deployed with are its use case's values."""
    aws = uc.aws_settings
    sm = uc.training.sagemaker if uc.training is not None else None
    request: dict[str, Any] = {
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": 1,
                "InstanceType": WORKER_INSTANCE_TYPE,
                "VolumeSizeInGB": WORKER_VOLUME_GB,
                "VolumeKmsKeyId": aws.kms_key_arn,
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": WORKER_MAX_RUNTIME_SECONDS},
        "AppSpecification": {
            "ImageUri": names.placeholder(names.WORKER_IMAGE),
            "ContainerEntrypoint": ["python", "-m", WORKER_MODULE],
            "ContainerArguments": [uc.name, pattern, step, phase],
        },
        "Environment": {f"MLB_EXPECT_{n.upper()}": names.placeholder(n) for n in names.AWS_FIELDS},
        "RoleArn": names.placeholder(names.WORKER_ROLE),
        "Tags": [
            {"Key": "managed-by", "Value": "mlblueprints"},
            {"Key": "mlblueprints:usecase", "Value": uc.name},
            {"Key": "mlblueprints:pattern", "Value": pattern},
            {"Key": "mlblueprints:step", "Value": step},
            {"Key": "mlblueprints:phase", "Value": phase},
        ],
    }
    if sm is not None and sm.subnets:
        request["NetworkConfig"] = {
            "EnableNetworkIsolation": False,  # the worker calls S3, Athena, Glue, SageMaker
            "VpcConfig": {"Subnets": list(sm.subnets), "SecurityGroupIds": list(sm.security_group_ids)},
        }
    return request


def worker_task(r: Render, step: Any, phase: str, next_state: str, failed_state: str) -> dict[str, Any]:
    """The Task that runs one phase of ``step`` as a SageMaker Processing job (``.sync``): a
    failure of the job (an exception the worker did not classify as permanent) is retried as the
    step's retries say, then caught into the step's failed status."""
    params = worker_job_request(r.uc, r.spec.pattern, step.id, phase)
    app = params["AppSpecification"]
    args = ", ".join(lit(a) for a in app.pop("ContainerArguments"))
    app["ContainerArguments.$"] = (
        f"States.Array({args}, '--execution', $$.Execution.Name, '--try', {retry_try_number()})"
    )
    prefix = sagemaker_name_part(names.resource_prefix(r.uc))
    task: dict[str, Any] = {
        "Type": "Task",
        "Comment": f"{step.id}: {phase} phase, the project's own code in the worker image",
        "Resource": "arn:aws:states:::sagemaker:createProcessingJob.sync",
        "Parameters": {"ProcessingJobName.$": job_name(prefix, step.id, phase), **params},
        "ResultPath": None,
        "Next": next_state,
    }
    retry = r.retry(step, SAGEMAKER_RETRYABLE)
    if retry:
        task["Retry"] = retry
    task["Catch"] = [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": failed_state}]
    return task


# ---------------------------------------------------------------- service kinds


@dataclass(frozen=True)
class ServiceKind:
    """How a service call of one kind runs in a state machine.

    ``states(r, step, request_path, next, failed)`` returns the states (first one first) that run
    the job whose request the prepare phase left at ``request_path`` and put the job's output at
    ``$.step.output``; ``output(raw)`` turns that output into what the backend's ``resume_*``
    method gets (the shape the Airflow operator returns); ``handover(request)`` is what the
    prepare phase hands the state machine of the call's request (what the states read at
    ``request_path``; the request itself unless the states need a part ASL cannot compute)."""

    kind: str
    states: Callable[..., dict[str, dict[str, Any]]]
    output: Callable[[Any], Any]
    doc: str = ""
    resources: tuple[str, ...] = field(default_factory=tuple)
    handover: Callable[[Any], Any] = lambda request: request


def athena_parameters(r: Render, sql_path: str, token: str) -> dict[str, Any]:
    """StartQueryExecution of one statement: :func:`mlblueprints.aws.requests.athena_start_query`
    for the use case, its statement and token filled in by the state machine."""
    params = req.athena_start_query(r.uc.aws_settings, "<statement>", "<token>")
    del params["QueryString"], params["ClientRequestToken"]
    return {"QueryString.$": sql_path, "ClientRequestToken.$": token, **params}


def athena_token(step_id: str) -> str:
    """ClientRequestToken of a statement's run: sha256 of (execution, step, statement, run count,
    state entry, retry) - 64 hex digits, a new query for each run of a repeated statement and for
    each retry (Athena returns the same query for a token it has seen)."""
    return (
        "States.Hash(States.Format('{}/{}/{}/{}/{}/{}', $$.Execution.Name, "
        f"{lit(step_id)}, $.statement.name, $.statement.runs, $$.State.EnteredTime, $$.State.RetryCount), 'SHA-256')"
    )


def statements_invoke(payload: dict[str, Any]) -> dict[str, Any]:
    """lambda:invoke of the statements function (:mod:`mlblueprints.stepfunctions.statements`)."""
    return {"FunctionName": names.placeholder(names.STATEMENTS_FUNCTION), "Payload": payload}


# the Lambda function's own errors and the service's: retried a few times, whatever the step says
LAMBDA_RETRY = {
    "ErrorEquals": [
        "Lambda.ServiceException",
        "Lambda.AWSLambdaException",
        "Lambda.SdkClientException",
        "Lambda.TooManyRequestsException",
        "States.TaskFailed",
    ],
    "IntervalSeconds": 2,
    "BackoffRate": 2.0,
    "MaxAttempts": 3,
}


def _athena_states(r: Render, step: Any, request_path: str, next_state: str, failed: str) -> dict[str, Any]:
    """The step's statements in order, one at a time, as ``AthenaStatementsOperator`` runs them:
    the statements function says which runs next (chunks expanded from their plan's rows) and,
    when a query fails, whether it runs again (``repeat_on``, at most ``max_runs`` runs); a
    statement that fails otherwise is retried as the step's retries say, then fails the step."""
    sid = step.id
    loop, nxt, more, run = f"{sid}.athena", f"{sid}.next", f"{sid}.next?", f"{sid}.run"
    statement = f"{sid}.statement"
    query: dict[str, Any] = {
        "Type": "Task",
        "Comment": "one run of the statement, waited for (.sync); stopping the execution stops the query",
        "Resource": "arn:aws:states:::athena:startQueryExecution.sync",
        "Parameters": athena_parameters(r, "$.sql", athena_token(sid)),
        "ResultSelector": {"id.$": "$.QueryExecution.QueryExecutionId"},
        "ResultPath": "$.query",
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.failure", "Next": f"{statement}.failed"}],
        "Next": f"{statement}.done",
    }
    branch = {
        "StartAt": statement,
        "States": {
            statement: query,
            f"{statement}.done": {
                "Type": "Pass",
                "Parameters": {"name.$": "$.statement.name", "id.$": "$.query.id", "runs.$": "$.statement.runs"},
                "End": True,
            },
            f"{statement}.failed": {
                "Type": "Task",
                "Comment": "the query failed: run it again while Athena asks for more runs (repeat_on), at most max_runs",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": statements_invoke({"op": "failed", "statement.$": "$.statement", "error.$": "$.failure"}),
                "ResultSelector": {
                    "repeat.$": "$.Payload.repeat",
                    "statement.$": "$.Payload.statement",
                    "error.$": "$.Payload.error",
                },
                "ResultPath": "$.verdict",
                "Retry": [LAMBDA_RETRY],
                "Next": f"{statement}.again?",
            },
            f"{statement}.again?": {
                "Type": "Choice",
                "Choices": [{"Variable": "$.verdict.repeat", "BooleanEquals": True, "Next": f"{statement}.again"}],
                "Default": f"{statement}.refused",
            },
            f"{statement}.again": {
                "Type": "Pass",
                "Comment": "the next run (its run count is in the request token)",
                "Parameters": {"statement.$": "$.verdict.statement", "sql.$": "$.sql"},
                "Next": statement,
            },
            f"{statement}.refused": {
                "Type": "Fail",
                "Comment": "not run again: the step's retries apply, then the step fails",
                "ErrorPath": "$.verdict.error.Error",
                "CausePath": "$.verdict.error.Cause",
            },
        },
    }
    parallel: dict[str, Any] = {
        "Type": "Parallel",
        "Comment": "one statement, run again while Athena asks; retried as the step's retries say",
        "Parameters": {"statement.$": "$.athena.statement", "sql.$": "$.athena.sql"},
        "Branches": [branch],
        "ResultPath": "$.athena.last",  # [{name, id, runs}]: the statement that ran
    }
    retry = r.retry(step, (statements_module.FAILED,))
    if retry:
        parallel["Retry"] = retry
    parallel["Catch"] = [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": failed}]
    parallel["Next"] = nxt
    return {
        loop: {
            "Type": "Pass",
            "Comment": "the step's Athena statements, in order, one at a time (none ran yet)",
            "Result": {"done": {}, "last": [None]},
            "ResultPath": "$.athena",
            "Next": nxt,
        },
        nxt: {
            "Type": "Task",
            "Comment": (
                "the next statement, as the Airflow operator decides it: a chunked statement once per row "
                "of its plan query (core.service.next_statement), from the prepare phase's call"
            ),
            "Resource": "arn:aws:states:::lambda:invoke",
            "Parameters": statements_invoke(
                {
                    "op": "next",
                    "call": {"Bucket": r.bucket, "Key.$": run_key(r, sid, "call")},
                    "done.$": "$.athena.done",
                    "last.$": "$.athena.last[0]",
                }
            ),
            "ResultSelector": {
                "done.$": "$.Payload.done",
                "statement.$": "$.Payload.statement",
                "sql.$": "$.Payload.sql",
                "error.$": "$.Payload.error",
            },
            "ResultPath": "$.athena",
            "Retry": [LAMBDA_RETRY],
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": failed}],
            "Next": more,
        },
        more: {
            "Type": "Choice",
            "Choices": [
                {"Variable": "$.athena.error", "IsNull": False, "Next": f"{sid}.refused"},
                {"Variable": "$.athena.statement", "IsNull": False, "Next": run},
            ],
            "Default": f"{sid}.queries",
        },
        run: parallel,
        f"{sid}.refused": {
            "Type": "Pass",
            "Comment": "nothing to retry (a plan value that is not a list of dates, a statement too large)",
            "Parameters": {"Error.$": "$.athena.error.Error", "Cause.$": "$.athena.error.Cause"},
            "ResultPath": "$.error",
            "Next": failed,
        },
        f"{sid}.queries": {
            "Type": "Pass",
            "Comment": "every statement ran: the output the Airflow operator returns",
            "Parameters": {"queries.$": "$.athena.done"},
            "ResultPath": "$.step.output",
            "Next": next_state,
        },
    }


def _athena_output(raw: Any) -> dict[str, Any]:
    """``{"queries": {name: id}}`` (AthenaStatementsOperator's output)."""
    return {"queries": dict((raw or {}).get("queries") or {})}


# the CreateTrainingJob fields the prepare phase computes for this run: its data, its code's
# archive, its checkpoints, its lineage (environment and tags)
TRAINING_FROM_PREPARE = ("InputDataConfig", "CheckpointConfig", "Environment", "Tags")
TRAINING_HP_FROM_PREPARE = ("sagemaker_submit_directory",)


def training_parameters(r: Render, request_path: str, name: str) -> dict[str, Any]:
    """CreateTrainingJob: :func:`mlblueprints.aws.training.create_training_job_request` for the use
    case (image, role, resources, managed Spot and its stopping condition, KMS, isolation, VPC,
    hyperparameters), the run's data, code, checkpoints and lineage from the prepare phase's
    request, and the job's name (also in ``sagemaker_job_name``, as ``request_for_try`` sets it)."""
    from mlblueprints.aws import training as tr
    from mlblueprints.training.core import hyperparameters

    uc = r.uc
    template = tr.create_training_job_request(
        uc,
        job_name="from-the-state-machine",
        train_s3_uri="s3://from-prepare/train/",
        source_s3_uri="s3://from-prepare/sourcedir.tar.gz",
        output_s3_uri=tr.output_s3_uri(uc),
        checkpoint_s3_uri="s3://from-prepare/checkpoints/",
        hyperparameters=hyperparameters(uc),
        git_commit="from-prepare",
    )
    params: dict[str, Any] = {}
    for key, value in template.items():
        if key == "TrainingJobName":
            params["TrainingJobName.$"] = name
        elif key in TRAINING_FROM_PREPARE:
            params[f"{key}.$"] = f"{request_path}.{key}"
        elif key == "HyperParameters":
            hps: dict[str, Any] = {}
            for hp, v in value.items():
                if hp == "sagemaker_job_name":
                    hps["sagemaker_job_name.$"] = f"States.JsonToString({name})"
                elif hp in TRAINING_HP_FROM_PREPARE:
                    hps[f"{hp}.$"] = f"{request_path}.HyperParameters.{hp}"
                else:
                    hps[hp] = v
            params["HyperParameters"] = hps
        else:
            params[key] = value
    return params


def _sync_job_states(
    r: Render, step: Any, request_path: str, next_state: str, failed: str, *, job_type: str, comment: str
) -> dict[str, Any]:
    """One ``sagemaker:create<job_type>Job.sync`` Task (Training or Processing), its parameters from
    the kind's builder (:data:`JOB_PARAMETERS`), named anew for each retry."""
    name = job_name(sagemaker_name_part(r.uc.name), step.id)
    task: dict[str, Any] = {
        "Type": "Task",
        "Comment": comment,
        "Resource": f"arn:aws:states:::sagemaker:create{job_type}Job.sync",
        "Parameters": JOB_PARAMETERS[job_type](r, request_path, name),
        "ResultPath": "$.step.output",
        "Next": next_state,
    }
    retry = r.retry(step, SAGEMAKER_RETRYABLE)
    if retry:
        task["Retry"] = retry
    task["Catch"] = [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": failed}]
    return {f"{step.id}.sagemaker_{job_type.lower()}": task}


def _training_states(r: Render, step: Any, request_path: str, next_state: str, failed: str) -> dict[str, Any]:
    comment = (
        "SageMaker training with managed Spot (.sync); a new job per retry, resuming from the run's "
        "checkpoints; stopping the execution stops the job"
    )
    return _sync_job_states(r, step, request_path, next_state, failed, job_type="Training", comment=comment)


def _job_output(job_type: str) -> Callable[[Any], dict[str, Any]]:
    """Describe<job_type>Job (what ``.sync`` returns) -> ``{job_type: ..., "how": "created"}`` (the
    Airflow operator's output)."""
    return lambda raw: {job_type: raw, "how": "created"}


# the CreateModel / CreateTransformJob fields the prepare phase computes for this run: the model
# package the plan chose, the input it wrote, the columns the model sees and the output keeps (the
# number of keys), the lineage tags
MODEL_FROM_PREPARE = ("PrimaryContainer",)
TRANSFORM_FROM_PREPARE = ("TransformInput", "DataProcessing", "Tags")
OUTPUT_BASE = "OutputBase"  # handed over with the request: the prefix of every try's output


def _transform_template(uc: UseCase) -> dict[str, Any]:
    """:func:`mlblueprints.aws.scoring.transform_request` for the use case (its task and keys:
    a scoring run refuses a model of another task), with the run's parts as markers."""
    from mlblueprints.aws import scoring as sr

    task = uc.training.task if uc.training is not None else "binary"
    return sr.transform_request(
        uc,
        job_name="from-the-state-machine",
        model_package_arn="arn:aws:sagemaker:from-prepare",
        input_s3_uri="s3://from-prepare/input/",
        output_base_uri="s3://from-prepare/output",
        key_count=len(uc.scoring_rows()["keys"]),
        model={"task": task},
        run={},
        git_commit="from-prepare",
    )


def transform_parameters(r: Render, request_path: str, name_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """CreateModel and CreateTransformJob: :func:`mlblueprints.aws.scoring.transform_request` for
    the use case (role, network isolation, VPC, instances, payload and batching, timeouts, KMS,
    the container's environment), the run's model package, input, data processing and lineage tags
    from the prepare phase's request, and the names of this try at ``name_path`` (the model is
    named as the job, and the output goes to ``<output base>/<job name>/``, as
    ``request_for_try`` does)."""
    template = _transform_template(r.uc)
    model: dict[str, Any] = {}
    for key, value in template["Model"].items():
        if key == "ModelName":
            model["ModelName.$"] = name_path
        elif key in MODEL_FROM_PREPARE:
            model[f"{key}.$"] = f"{request_path}.Model.{key}"
        elif key == "Tags":
            model["Tags.$"] = f"{request_path}.Transform.Tags"  # request_for_try: the model's are the job's
        else:
            model[key] = value
    job: dict[str, Any] = {}
    for key, value in template["Transform"].items():
        if key in ("TransformJobName", "ModelName"):
            job[f"{key}.$"] = name_path
        elif key in TRANSFORM_FROM_PREPARE:
            job[f"{key}.$"] = f"{request_path}.Transform.{key}"
        elif key == "TransformOutput":
            out = dict(value)
            del out["S3OutputPath"]
            job[key] = {
                "S3OutputPath.$": f"States.Format('{{}}/{{}}/', {request_path}.{OUTPUT_BASE}, {name_path})",
                **out,
            }
        else:
            job[key] = value
    return model, job


def _transform_states(r: Render, step: Any, request_path: str, next_state: str, failed: str) -> dict[str, Any]:
    """CreateModel from the registered package, then the Batch Transform job (``.sync``), in one
    Parallel whose retries run both again under a new name: a SageMaker name is unique forever, and
    the model is named as its job (as the Airflow operator names them)."""
    sid = step.id
    name_state, model_state, job_state = f"{sid}.transform.name", f"{sid}.sagemaker_model", f"{sid}.sagemaker_transform"
    done = f"{sid}.transform.done"
    model, job = transform_parameters(r, "$.request", "$.name")
    parallel: dict[str, Any] = {
        "Type": "Parallel",
        "Comment": "the model and the Batch Transform job of one try; stopping the execution stops the job",
        "Parameters": {"request.$": request_path, "retry.$": "$$.State.RetryCount"},
        "Branches": [
            {
                "StartAt": name_state,
                "States": {
                    name_state: {
                        "Type": "Pass",
                        "Comment": (
                            "the try's name, for the model and the job: each retry of the Parallel runs the "
                            "branch again, entering this state at another time with the Parallel's retry count"
                        ),
                        "Parameters": {
                            "request.$": "$.request",
                            "name.$": job_name(sagemaker_name_part(r.uc.name), sid, retry_count="$.retry"),
                        },
                        "Next": model_state,
                    },
                    model_state: {
                        "Type": "Task",
                        "Comment": "CreateModel from the model package the plan chose (its image and archive as registered)",
                        "Resource": "arn:aws:states:::sagemaker:createModel",
                        "Parameters": model,
                        "ResultPath": "$.model",
                        "Next": job_state,
                    },
                    job_state: {
                        "Type": "Task",
                        "Comment": "SageMaker Batch Transform (.sync): the job's DescribeTransformJob when it completed",
                        "Resource": "arn:aws:states:::sagemaker:createTransformJob.sync",
                        "Parameters": job,
                        "ResultPath": "$.transform",
                        "Next": done,
                    },
                    done: {
                        "Type": "Pass",
                        "Comment": "what TransformJobOperator returns",
                        "Parameters": {
                            "Model": {"ModelName.$": "$.name", "ModelArn.$": "$.model.ModelArn"},
                            "Transform.$": "$.transform",
                            "how": "created",
                        },
                        "End": True,
                    },
                },
            }
        ],
        "ResultPath": "$.transform",
    }
    retry = r.retry(step, SAGEMAKER_RETRYABLE)
    if retry:
        parallel["Retry"] = retry
    parallel["Catch"] = [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": failed}]
    parallel["Next"] = f"{sid}.transform.output"
    return {
        f"{sid}.transform": parallel,
        f"{sid}.transform.output": {
            "Type": "Pass",
            "InputPath": "$.transform[0]",
            "ResultPath": "$.step.output",
            "Next": next_state,
        },
    }


def _transform_output(raw: Any) -> dict[str, Any]:
    """``{"Model": {ModelName, ModelArn}, "Transform": DescribeTransformJob, "how": "created"}``
    (TransformJobOperator's, whose Model is DescribeModel)."""
    raw = dict(raw or {})
    return {"Model": raw.get("Model"), "Transform": raw["Transform"], "how": raw.get("how", "created")}


def _transform_handover(request: Any) -> dict[str, Any]:
    """The request, and the prefix of every try's output (ASL cannot cut a path)."""
    from mlblueprints.aws import scoring as sr

    return {**request, OUTPUT_BASE: sr.output_base(request)}


# the CreateProcessingJob fields the prepare phase computes for this run: where it put the dataset
# and the analysis config (which names the run's shadow model), the lineage tags
PROCESSING_FROM_PREPARE = ("ProcessingInputs", "Tags")


def processing_parameters(r: Render, request_path: str, name: str) -> dict[str, Any]:
    """CreateProcessingJob: :func:`mlblueprints.aws.clarify.processing_request` for the use case
    (the Clarify image of the region, role, instances, KMS, network, stopping condition), the
    run's inputs and lineage tags from the prepare phase's request, the job's name, and its output
    under ``<output base>/<job name>/`` (as ``request_for_try`` names them; both expressions are
    evaluated in the same state entry, so they give the same name)."""
    from mlblueprints.aws import clarify as cl

    template = cl.processing_request(
        r.uc,
        job_name="from-the-state-machine",
        model_name="from-prepare",
        model_package_arn="arn:aws:sagemaker:from-prepare",
        dataset_uri="s3://from-prepare/dataset/",
        config_uri="s3://from-prepare/config/analysis_config.json",
        output_base_uri="s3://from-prepare/output",
        model={},
        run={},
        git_commit="from-prepare",
    )["Processing"]
    params: dict[str, Any] = {}
    for key, value in template.items():
        if key == "ProcessingJobName":
            params["ProcessingJobName.$"] = name
        elif key in PROCESSING_FROM_PREPARE:
            params[f"{key}.$"] = f"{request_path}.{key}"
        elif key == "ProcessingOutputConfig":
            [out] = value["Outputs"]
            s3 = {k: v for k, v in out["S3Output"].items() if k != "S3Uri"}
            s3["S3Uri.$"] = f"States.Format('{{}}/{{}}/', {request_path}.{OUTPUT_BASE}, {name})"
            params[key] = {**value, "Outputs": [{**out, "S3Output": s3}]}
        else:
            params[key] = value
    return params


def _processing_states(r: Render, step: Any, request_path: str, next_state: str, failed: str) -> dict[str, Any]:
    comment = (
        "a SageMaker Clarify processing job (.sync): the version served from its model package "
        "through a shadow endpoint; a new job per retry; stopping the execution stops the job"
    )
    return _sync_job_states(r, step, request_path, next_state, failed, job_type="Processing", comment=comment)


def _processing_handover(request: Any) -> dict[str, Any]:
    """The request, and the prefix of every try's output (ASL cannot cut a path)."""
    from mlblueprints.aws import clarify as cl

    return {**request, OUTPUT_BASE: cl.output_base(request)}


# the CreateModel / CreateEndpointConfig / UpdateEndpoint fields the prepare phase computes: the
# names (hashes of the requests), the version's model package, the variant naming the model, the
# capture prefix named by the config, the lineage tags
ENDPOINT_MODEL_FROM_PREPARE = ("ModelName", "PrimaryContainer", "Tags")
ENDPOINT_CONFIG_FROM_PREPARE = ("EndpointConfigName", "ProductionVariants", "DataCaptureConfig")
ENDPOINT_UPDATE_FROM_PREPARE = ("EndpointConfigName",)
ALREADY_EXISTS = "*Cannot create already existing*"  # SageMaker's message for a name it has


def endpoint_parameters(r: Render, request_path: str) -> dict[str, dict[str, Any]]:
    """CreateModel, CreateEndpointConfig and UpdateEndpoint of a canary: the builders of
    :mod:`mlblueprints.aws.serving` for the use case (role, isolation, VPC, instances, KMS, the
    blue/green policy and its alarms), the run's names, package, variant and capture prefix from
    the prepare phase's request (``<request_path>.Model`` ...)."""
    from mlblueprints.aws import serving as sv

    uc = r.uc
    model = sv.create_model_request(
        uc, version=0, model_package_arn="arn:aws:sagemaker:from-prepare", git_commit="from-prepare", run_id="x"
    )
    config = sv.create_endpoint_config_request(uc, version=0, model_name="from-prepare")
    update = sv.update_endpoint_request(uc, config_name="from-prepare", alarms=list(sv.alarm_names(uc).values()))
    out = {}
    for part, template, dynamic in (
        ("Model", model, ENDPOINT_MODEL_FROM_PREPARE),
        ("EndpointConfig", config, ENDPOINT_CONFIG_FROM_PREPARE),
        ("Update", update, ENDPOINT_UPDATE_FROM_PREPARE),
    ):
        out[part] = {
            (f"{k}.$" if k in dynamic else k): (f"{request_path}.{part}.{k}" if k in dynamic else v)
            for k, v in template.items()
        }
    return out


def _s3_read(r: Render, step: Any, what: str) -> dict[str, Any]:
    """aws-sdk:s3:getObject of a document of the step (``steps/<step>/<what>.json``)."""
    return {
        "Type": "Task",
        "Resource": "arn:aws:states:::aws-sdk:s3:getObject",
        "Parameters": {"Bucket": r.bucket, "Key.$": run_key(r, step.id, what)},
    }


def _endpoint_states(r: Render, step: Any, request_path: str, next_state: str, failed: str) -> dict[str, Any]:
    """A canary as SageMaker runs it, in a Parallel of two branches:

    * the update: once the traffic is ready (the ``during`` phase's ``ready`` document), createModel
      and createEndpointConfig of the challenger (skipped when the prepare phase found them made by
      an earlier try; "already existing" is success), updateEndpoint with the blue/green policy
      (skipped when this deployment's update runs or ended), then describeEndpoint every
      ``PollSeconds`` until the endpoint leaves Updating (``MaxPolls`` waits at most, for each);
    * the traffic: the worker's ``during`` phase (a Processing job, minutes to start: the update
      waits for it), which sends the replayed requests and publishes the score-shift metric the
      rollback alarm watches; its failure fails the Parallel, and so the step, with its reason."""
    from mlblueprints.aws import serving as sv

    sid = step.id
    params = endpoint_parameters(r, "$.request")
    api_retry = r.retry(step, ("SageMaker.AmazonSageMakerException",))
    refused = f"{sid}.update.failed"

    def counted(name: str, on_more: str, out_of: str) -> dict[str, Any]:
        """``name``: one more poll, then ``on_more``, or ``out_of`` after MaxPolls."""
        return {
            name: {
                "Type": "Pass",
                "Parameters": {"request.$": "$.request", "polls.$": "States.MathAdd($.polls, 1)"},
                "Next": f"{name}.left?",
            },
            f"{name}.left?": {
                "Type": "Choice",
                "Choices": [{"Variable": "$.polls", "NumericGreaterThanPath": "$.request.MaxPolls", "Next": out_of}],
                "Default": on_more,
            },
        }

    ready, describe, updating = f"{sid}.traffic.ready", f"{sid}.describe", f"{sid}.updating?"
    update: dict[str, Any] = {
        ready: {
            **_s3_read(r, step, "ready"),
            "Comment": "the traffic is ready (the during phase's document): the update may start",
            "ResultPath": None,
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": None, "Next": f"{sid}.traffic.polls"}],
            "Next": f"{sid}.traffic.go",
        },
        **counted(f"{sid}.traffic.polls", f"{sid}.traffic.wait", f"{sid}.traffic.never ready"),
        f"{sid}.traffic.wait": {"Type": "Wait", "SecondsPath": "$.request.PollSeconds", "Next": ready},
        f"{sid}.traffic.never ready": {
            "Type": "Fail",
            "Error": "TrafficNotReady",
            "Cause": "the during phase did not get ready within MaxPolls waits; the endpoint was not updated",
        },
        f"{sid}.traffic.go": {
            "Type": "Pass",
            "Parameters": {"request.$": "$.request", "polls": 0},
            "Next": f"{sid}.sagemaker_model?",
        },
    }
    order = [("Model", "model", "createModel"), ("EndpointConfig", "endpoint_config", "createEndpointConfig")]
    order.append(("Update", "update_endpoint", "updateEndpoint"))
    for i, (part, name, api) in enumerate(order):
        after = f"{sid}.sagemaker_{order[i + 1][1]}?" if i + 1 < len(order) else describe
        task = f"{sid}.sagemaker_{name}"
        update[f"{task}?"] = {
            "Type": "Choice",
            "Comment": f"{api}: unless the prepare phase found it done by an earlier try",
            "Choices": [{"Variable": f"$.request.{part}", "IsNull": False, "Next": task}],
            "Default": after,
        }
        update[task] = {
            "Type": "Task",
            "Comment": f"sagemaker:{api}, the request the Airflow task sends",
            "Resource": f"arn:aws:states:::sagemaker:{api}",
            "Parameters": params[part],
            "ResultPath": None,
            **({"Retry": api_retry} if api_retry else {}),
            "Catch": [
                {
                    "ErrorEquals": ["States.ALL"],
                    "ResultPath": "$.error",
                    "Next": f"{task}.exists?" if part != "Update" else refused,
                }
            ],
            "Next": after,
        }
        if part != "Update":
            update[f"{task}.exists?"] = {
                "Type": "Choice",
                "Comment": "made already (a retried call whose first try got through): done",
                "Choices": [{"Variable": "$.error.Cause", "StringMatches": ALREADY_EXISTS, "Next": after}],
                "Default": refused,
            }
    update.update(
        {
            describe: {
                "Type": "Task",
                "Comment": "where the update is",
                "Resource": "arn:aws:states:::aws-sdk:sagemaker:describeEndpoint",
                "Parameters": {"EndpointName.$": "$.request.EndpointName"},
                "ResultPath": "$.described",
                "Retry": [
                    {
                        "ErrorEquals": ["SageMaker.SageMakerException", "States.TaskFailed"],
                        "IntervalSeconds": 5,
                        "BackoffRate": 2.0,
                        "MaxAttempts": 5,
                    }
                ],
                "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": refused}],
                "Next": updating,
            },
            updating: {
                "Type": "Choice",
                "Choices": [
                    {
                        "Or": [{"Variable": "$.described.EndpointStatus", "StringEquals": st} for st in sv.UPDATING],
                        "Next": f"{sid}.polls",
                    }
                ],
                "Default": f"{sid}.updated",
            },
            **counted(f"{sid}.polls", f"{sid}.wait", f"{sid}.too long"),
            f"{sid}.wait": {"Type": "Wait", "SecondsPath": "$.request.PollSeconds", "Next": describe},
            f"{sid}.too long": {
                "Type": "Fail",
                "Error": "EndpointUpdateTimedOut",
                "Cause": (
                    "the endpoint was still updating after MaxPolls waits "
                    "(promotion.sagemaker.max_execution_timeout_seconds + wait_seconds)"
                ),
            },
            f"{sid}.updated": {
                "Type": "Pass",
                "Comment": "the update ended: its last description",
                "OutputPath": "$.described",
                "End": True,
            },
            refused: {"Type": "Fail", "ErrorPath": "$.error.Error", "CausePath": "$.error.Cause"},
        }
    )
    during = worker_task(r, step, "during", f"{sid}.during.outcome", f"{sid}.during.failed")
    during["Comment"] = f"{step.id}: the work done while the update runs (the canary's traffic), in the worker image"
    traffic = {
        f"{sid}.during": during,
        f"{sid}.during.outcome": {
            **_s3_read(r, step, "during"),
            "Comment": "the during phase's outcome: a permanent failure fails the step with its reason",
            "ResultSelector": {"outcome.$": "States.StringToJson($.Body)"},
            "ResultPath": "$.during",
            "Retry": [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 2, "BackoffRate": 2.0, "MaxAttempts": 3}],
            "Next": f"{sid}.during.route",
        },
        f"{sid}.during.route": {
            "Type": "Choice",
            "Choices": [
                {"Variable": "$.during.outcome.status", "StringEquals": "failed", "Next": f"{sid}.during.refused"}
            ],
            "Default": f"{sid}.during.done",
        },
        f"{sid}.during.refused": {
            "Type": "Fail",
            "ErrorPath": "$.during.outcome.error.Error",
            "CausePath": "$.during.outcome.error.Cause",
        },
        f"{sid}.during.done": {"Type": "Pass", "Result": {}, "End": True},
        f"{sid}.during.failed": {"Type": "Fail", "ErrorPath": "$.error.Error", "CausePath": "$.error.Cause"},
    }
    return {
        f"{sid}.update": {
            "Type": "Parallel",
            "Comment": "SageMaker's update, polled until it ends, and the traffic it needs meanwhile",
            "Parameters": {"request.$": request_path, "polls": 0},
            "Branches": [{"StartAt": ready, "States": update}, {"StartAt": f"{sid}.during", "States": traffic}],
            "ResultSelector": {"Endpoint.$": "$[0]"},
            "ResultPath": "$.step.output",
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": failed}],
            "Next": next_state,
        }
    }


def _endpoint_output(raw: Any) -> dict[str, Any]:
    """``{"Endpoint": DescribeEndpoint}`` (the worker adds the ``during`` phase's result)."""
    raw = dict(raw or {})
    return {"Endpoint": raw.get("Endpoint") or {}, "During": raw.get("During")}


JOB_PARAMETERS: dict[str, Callable[[Render, str, str], dict[str, Any]]] = {
    "Training": training_parameters,
    "Processing": processing_parameters,
}

SERVICES: dict[str, ServiceKind] = {
    service.ATHENA: ServiceKind(
        service.ATHENA,
        _athena_states,
        _athena_output,
        (
            "Athena statements in order, one at a time (startQueryExecution.sync), the next one and "
            "whether a failed one runs again said by the statements function (lambda:invoke)"
        ),
        ("arn:aws:states:::athena:startQueryExecution.sync", "arn:aws:states:::lambda:invoke"),
    ),
    service.SAGEMAKER_TRAINING: ServiceKind(
        service.SAGEMAKER_TRAINING,
        _training_states,
        _job_output("Training"),
        "a SageMaker training job: createTrainingJob.sync",
        ("arn:aws:states:::sagemaker:createTrainingJob.sync",),
    ),
    service.SAGEMAKER_TRANSFORM: ServiceKind(
        service.SAGEMAKER_TRANSFORM,
        _transform_states,
        _transform_output,
        "a SageMaker Batch Transform job: createModel, then createTransformJob.sync",
        ("arn:aws:states:::sagemaker:createModel", "arn:aws:states:::sagemaker:createTransformJob.sync"),
        _transform_handover,
    ),
    service.SAGEMAKER_PROCESSING: ServiceKind(
        service.SAGEMAKER_PROCESSING,
        _processing_states,
        _job_output("Processing"),
        "a SageMaker Clarify processing job: createProcessingJob.sync",
        ("arn:aws:states:::sagemaker:createProcessingJob.sync",),
        _processing_handover,
    ),
    service.SAGEMAKER_ENDPOINT: ServiceKind(
        service.SAGEMAKER_ENDPOINT,
        _endpoint_states,
        _endpoint_output,
        (
            "a blue/green endpoint update: createModel, createEndpointConfig, updateEndpoint, then "
            "describeEndpoint until it ends beside the worker's traffic"
        ),
        (
            "arn:aws:states:::sagemaker:createModel",
            "arn:aws:states:::sagemaker:createEndpointConfig",
            "arn:aws:states:::sagemaker:updateEndpoint",
            "arn:aws:states:::aws-sdk:sagemaker:describeEndpoint",
        ),
    ),
}


def service_kind(kind: str) -> ServiceKind:
    if kind not in SERVICES:
        raise ValueError(f"no Step Functions integration for service kind {kind!r}; known: {', '.join(SERVICES)}")
    return SERVICES[kind]
