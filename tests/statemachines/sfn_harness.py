"""Running the rendered state machines under moto's Step Functions interpreter.

moto interprets ASL (``mock_aws(config={"stepfunctions": {"execute_state_machine": True}})``) and
runs the ``aws-sdk`` S3 and the EventBridge tasks against its own services, but it cannot run a
SageMaker Processing or Training job nor an Athena query, and it has no ``.sync`` for them; it
runs a Lambda function only in Docker. So :func:`with_stubs` swaps every
``sagemaker``/``athena``/``lambda`` Task for an SQS ``.waitForTaskToken`` Task whose message
carries the original resource and its Parameters *as the interpreter evaluated them* (intrinsic
functions, paths, context object), and :class:`Services` answers those messages the way the jobs
would: a worker job writes its phase's outcome document (and a prepare phase's service call) to
S3 (what the real worker writes) and succeeds, or fails; an Athena statement, a training job, a
transform job or a Clarify processing job succeeds with the ``.sync`` output's shape (CreateModel,
CreateEndpointConfig, UpdateEndpoint and DescribeEndpoint with their own), or fails; the statements function is the real handler
(:mod:`mlblueprints.stepfunctions.statements`) called in this process on moto's S3 and Athena,
answering with ``lambda:invoke``'s output shape. Everything else (Choice, Parallel, Map, Retry,
Catch, Fail, the S3 reads and writes, PutEvents) is moto's interpreter running the committed logic.

moto 5.2.5 returns an ``aws-sdk:s3:getObject`` Body as botocore's stream object, where Step
Functions returns the text; :func:`read_s3_bodies` makes moto return the text. Its SendTaskFailure
drops the cause (a failed query's GetQueryExecution, which the statements function reads);
:func:`keep_failure_causes` passes it on.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from mlblueprints.config import UseCase, parse_usecase
from mlblueprints.stepfunctions import asl, names

ROOT = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's
STUBBED = (
    "arn:aws:states:::sagemaker:",
    "arn:aws:states:::aws-sdk:sagemaker:",
    "arn:aws:states:::athena:",
    "arn:aws:states:::lambda:",
)


def fraud_usecase_for_tests(**overrides: Any) -> UseCase:
    """fraud_detection with one-second retry delays (moto waits the real intervals)."""
    data = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    data["gold"]["transaction_features"]["sql"] = str(
        ROOT / "dags/usecases/sql/fraud_detection/transaction_features.sql"
    )
    data["retry_delay_seconds"] = 1
    data.update(overrides)
    return parse_usecase(data, ROOT / "dags/usecases/fraud_detection.yaml")


def with_stubs(definition: dict[str, Any], queue_url: str) -> dict[str, Any]:
    """The definition with each SageMaker/Athena Task sending its evaluated Parameters to the
    stub queue and waiting for the stub's answer (see the module docstring)."""
    out = copy.deepcopy(definition)

    def walk(states: dict[str, Any]) -> None:
        for st in states.values():
            if st.get("Type") == "Task" and st["Resource"].startswith(STUBBED):
                st["Parameters"] = {
                    "QueueUrl": queue_url,
                    "MessageBody": {
                        "resource": st["Resource"],
                        "state.$": "$$.State.Name",
                        "retry.$": "$$.State.RetryCount",
                        "token.$": "$$.Task.Token",
                        "parameters": st["Parameters"],
                    },
                }
                st["Resource"] = "arn:aws:states:::sqs:sendMessage.waitForTaskToken"
            for b in st.get("Branches", []):
                walk(b["States"])
            if "ItemProcessor" in st:
                walk(st["ItemProcessor"]["States"])

    walk(out["States"])
    return out


@dataclass
class Call:
    resource: str
    state: str
    retry: int
    parameters: dict[str, Any]

    @property
    def is_worker(self) -> bool:
        """A worker job (the project's code in the worker image), not a Clarify processing job."""
        return "createProcessingJob" in self.resource and "ContainerEntrypoint" in self.parameters["AppSpecification"]

    @property
    def kind(self) -> str:
        """The key an answer is found under: "athena", "training", "model", "transform",
        "processing" (a Clarify job), "statements", "endpoint_config", "update_endpoint",
        "describe_endpoint" or (step, phase)."""
        if "createProcessingJob" in self.resource:
            return "worker" if self.is_worker else "processing"
        if "athena" in self.resource:
            return "athena"
        if "lambda" in self.resource:
            return "statements"
        if "createModel" in self.resource:
            return "model"
        if "createTransformJob" in self.resource:
            return "transform"
        for api, kind in (
            ("createEndpointConfig", "endpoint_config"),
            ("updateEndpoint", "update_endpoint"),
            ("describeEndpoint", "describe_endpoint"),
        ):
            if self.resource.endswith(api):
                return kind
        return "training"

    @property
    def worker(self) -> tuple[str, str] | None:
        """(step, phase) of a worker job."""
        if not self.is_worker:
            return None
        args = self.parameters["AppSpecification"]["ContainerArguments"]
        return args[2], args[3]


Answer = Callable[[Call], Any]  # -> an outcome dict (worker), a result dict, or ("fail", error, cause)


class LambdaContext:
    """What the statements function reads of its Lambda context."""

    def __init__(self, uc: UseCase):
        self.invoked_function_arn = names.substitutions(uc)[names.STATEMENTS_FUNCTION]


def results_page(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """GetQueryResults of ``rows``: a header row first, as Athena answers."""
    cols = list(rows[0]) if rows else []
    data = [{"Data": [{"VarCharValue": c} for c in cols]}]
    data += [{"Data": [{"VarCharValue": str(r[c])} for c in cols]} for r in rows]
    return {
        "ResultSet": {"Rows": data, "ResultSetMetadata": {"ColumnInfo": [{"Name": c, "Type": "varchar"} for c in cols]}}
    }


def seed_rows(query_id: str, rows: list[dict[str, Any]]) -> None:
    """Make moto's Athena answer GetQueryResults of ``query_id`` with ``rows``."""
    from moto.athena.models import QueryResults, athena_backends

    rs = results_page(rows)["ResultSet"]
    athena_backends[ACCOUNT][REGION].query_results[query_id] = QueryResults(
        rs["Rows"], rs["ResultSetMetadata"]["ColumnInfo"]
    )


@dataclass
class Services:
    """Answers the stubbed Tasks (see the module docstring); ``answers`` maps a (step, phase) of
    the worker, or "athena" / "training", to a function of the call and the number of calls of
    that key so far."""

    uc: UseCase
    pattern: str
    execution: str
    queue_url: str
    answers: dict[Any, Callable[[Call, int], Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def key_prefix(self) -> tuple[str, str]:
        from mlblueprints.aws import requests as req

        return req.split_s3_uri(names.run_prefix(self.uc.aws_settings, self.pattern, self.execution))

    def answer(self, sfn: Any, s3: Any, call: Call) -> None:
        self.calls.append(call)
        key: Any = call.worker if call.worker is not None else call.kind
        n = sum(1 for c in self.calls if (c.worker or c.kind) == key)
        fn = self.answers.get(key) or self.answers.get(("*", key[1]) if isinstance(key, tuple) else key)
        got = fn(call, n) if fn else None
        token = call.parameters_token
        if isinstance(got, tuple) and got and got[0] == "fail":
            sfn.send_task_failure(taskToken=token, error=got[1], cause=got[2])
            return
        if call.worker is not None:
            step, phase = call.worker
            outcome = dict(got) if got is not None else {"status": "succeeded", "events": []}
            bucket, prefix = self.key_prefix()
            called = outcome.pop("call", None)  # a prepare phase's service call, as the worker writes it
            if called is not None:
                s3.put_object(Bucket=bucket, Key=f"{prefix}/{names.step_key(step, 'call')}", Body=json.dumps(called))
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{names.step_key(step, phase)}", Body=json.dumps(outcome))
            sfn.send_task_success(taskToken=token, output=json.dumps({"ProcessingJobStatus": "Completed"}))
        elif key == "statements":
            from mlblueprints.stepfunctions import statements

            if got is None:
                got = statements.handler(call.parameters["Payload"], LambdaContext(self.uc))
            sfn.send_task_success(taskToken=token, output=json.dumps({"StatusCode": 200, "Payload": got}))
        elif key == "athena":
            out = got or {"QueryExecution": {"QueryExecutionId": str(uuid.uuid4()), "Status": {"State": "SUCCEEDED"}}}
            sfn.send_task_success(taskToken=token, output=json.dumps(out))
        elif key == "model":  # CreateModel's answer
            name = call.parameters["ModelName"]
            out = got or {"ModelArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model/{name.lower()}"}
            sfn.send_task_success(taskToken=token, output=json.dumps(out))
        elif key in ("endpoint_config", "update_endpoint", "describe_endpoint"):
            p = call.parameters
            default = {
                "endpoint_config": {
                    "EndpointConfigArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint-config/{p.get('EndpointConfigName', '').lower()}"
                },
                "update_endpoint": {
                    "EndpointArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/{p.get('EndpointName', '').lower()}"
                },
                "describe_endpoint": {"EndpointName": p.get("EndpointName"), "EndpointStatus": "InService"},
            }[key]
            sfn.send_task_success(taskToken=token, output=json.dumps(got or default))
        elif key == "transform":  # what .sync returns: DescribeTransformJob of the completed job
            p = call.parameters
            out = got or {
                "TransformJobName": p["TransformJobName"],
                "TransformJobArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:transform-job/{p['TransformJobName'].lower()}",
                "TransformJobStatus": "Completed",
                "ModelName": p["ModelName"],
                "TransformInput": p["TransformInput"],
                "TransformOutput": p["TransformOutput"],
                "TransformResources": p["TransformResources"],
                "DataProcessing": p["DataProcessing"],
            }
            sfn.send_task_success(taskToken=token, output=json.dumps(out))
        elif key == "processing":  # what .sync returns: DescribeProcessingJob of the completed job
            p = call.parameters
            name = p["ProcessingJobName"]
            out = got or {
                "ProcessingJobName": name,
                "ProcessingJobArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:processing-job/{name.lower()}",
                "ProcessingJobStatus": "Completed",
                **{
                    k: p[k]
                    for k in (
                        "ProcessingInputs",
                        "ProcessingOutputConfig",
                        "ProcessingResources",
                        "StoppingCondition",
                        "AppSpecification",
                        "NetworkConfig",
                        "RoleArn",
                    )
                    if k in p
                },
            }
            sfn.send_task_success(taskToken=token, output=json.dumps(out))
        else:
            name = call.parameters["TrainingJobName"]
            out = got or {
                "TrainingJobName": name,
                "TrainingJobStatus": "Completed",
                "ModelArtifacts": {"S3ModelArtifacts": f"s3://b/{name}/output/model.tar.gz"},
            }
            sfn.send_task_success(taskToken=token, output=json.dumps(out))


@dataclass
class Execution:
    status: str
    error: str | None
    cause: str | None
    output: Any
    services: Services
    history: list[dict[str, Any]]

    def entered(self) -> list[str]:
        return [e[k]["name"] for e in self.history for k in e if k.endswith("EventDetails") and "name" in e[k]]

    def worker_calls(self) -> list[tuple[str, str]]:
        return [c.worker for c in self.services.calls if c.worker is not None]


def read_s3_bodies(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_aws_sdk as sdk,
    )

    original = sdk.StateTaskServiceAwsSdk._eval_service_task

    def eval_service_task(self, env, *args, **kwargs):
        original(self, env, *args, **kwargs)
        out = env.stack[-1]
        if isinstance(out, dict):
            for k, v in list(out.items()):
                if hasattr(v, "read"):
                    out[k] = v.read().decode()

    monkeypatch.setattr(sdk.StateTaskServiceAwsSdk, "_eval_service_task", eval_service_task)


def keep_failure_causes(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.core.responses import EmptyResult
    from moto.stepfunctions import responses

    def send_task_failure(self):
        self.stepfunction_backend.send_task_failure(
            self._get_param("taskToken"), error=self._get_param("error"), cause=self._get_param("cause")
        )
        return EmptyResult()

    monkeypatch.setattr(responses.StepFunctionResponse, "send_task_failure", send_task_failure)


@pytest.fixture
def sfn_world(monkeypatch):
    """moto with its ASL interpreter on, the use case's bucket, and the stub queue."""
    import logging

    from moto import mock_aws

    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(k, v)
    read_s3_bodies(monkeypatch)
    keep_failure_causes(monkeypatch)
    logging.getLogger("moto").setLevel(logging.ERROR)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        yield World()


class World:
    def __init__(self):
        self.s3 = boto3.client("s3", region_name=REGION)
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.sfn = boto3.client("stepfunctions", region_name=REGION)
        self.queue_url = self.sqs.create_queue(QueueName=f"stub-{uuid.uuid4().hex[:8]}")["QueueUrl"]
        self.buckets: set[str] = set()

    def bucket(self, name: str) -> None:
        if name not in self.buckets:
            self.s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
            self.buckets.add(name)

    def execute(
        self,
        uc: UseCase,
        pattern: str,
        answers: dict[Any, Callable[[Call, int], Any]] | None = None,
        params: dict[str, Any] | None = None,
        timeout: float = 90,
        execution_input: dict[str, Any] | None = None,
    ) -> Execution:
        """Run ``pattern``'s definition with the stubs; its input is ``{"params": params}``, or
        ``execution_input`` (an EventBridge event, as a rule starts it)."""
        from mlblueprints import patterns

        self.bucket(uc.aws_settings.bucket)
        spec = patterns.declare(pattern, names.on_aws(uc))
        text = asl.text(with_stubs(asl.render(spec, uc), self.queue_url))
        definition = names.substitute(text, names.substitutions(uc, "test"))
        arn = self.sfn.create_state_machine(
            name=f"{names.state_machine_name(uc, pattern)}-{uuid.uuid4().hex[:6]}",
            definition=definition,
            roleArn="arn:aws:iam::123456789012:role/mlb-states",
        )["stateMachineArn"]
        execution = f"exec-{uuid.uuid4().hex[:12]}"
        services = Services(uc, pattern, execution, self.queue_url, dict(answers or {}))
        ex = self.sfn.start_execution(
            stateMachineArn=arn,
            name=execution,
            input=json.dumps(execution_input if execution_input is not None else {"params": params or {}}),
        )["executionArn"]
        deadline = time.monotonic() + timeout
        while True:
            d = self.sfn.describe_execution(executionArn=ex)
            if d["status"] != "RUNNING":
                break
            assert time.monotonic() < deadline, f"execution still running after {timeout}s"
            msgs = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
            for m in msgs:
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])
                body = json.loads(m["Body"])
                call = Call(body["resource"], body["state"], int(body["retry"]), body["parameters"])
                call.parameters_token = body["token"]  # type: ignore[attr-defined]
                services.answer(self.sfn, self.s3, call)
            if not msgs:
                time.sleep(0.02)
        history = self.sfn.get_execution_history(executionArn=ex, maxResults=1000)["events"]
        return Execution(
            d["status"], d.get("error"), d.get("cause"), json.loads(d.get("output") or "null"), services, history
        )
