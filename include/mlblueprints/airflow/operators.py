"""The Amazon provider's operators as the service steps of a pattern on aws.

A declared service step (``Step.service``) becomes, on a backend that delegates its jobs, a task
of one of these operators between the step's ``prepare`` and ``finish`` tasks. They are the
provider's operators with what a lifecycle pattern needs on top:

* :class:`AthenaStatementsOperator` runs a step's Athena statements in order (an
  ``AthenaOperator`` runs one): deferrable between statements, each with a client request
  token unique per run, task, try and statement; a chunked statement once per row of its plan
  query, a statement Athena ends with its ``repeat_on`` error again (``core.service``); killed
  while it runs (worker side: ``on_kill``; while deferred: the trigger's ``on_kill``) it stops
  the running query.
* :class:`TrainingJobOperator`, :class:`TransformJobOperator` (CreateModel from the registered
  package, then the Batch Transform job) and :class:`ProcessingJobOperator` (a SageMaker Clarify
  job) add to the provider's a job name unique per try, a retry
  that adopts an earlier try's job only after checking it does the same work, a deferral as long
  as the job may take, and a kill that stops the job (the provider's leave it running).

The requests come from the pure builders (``mlblueprints.aws``) through the ``prepare`` task's
XCom; the statements and the job's config are template fields, so the Airflow UI shows them.
Which operator runs which kind of service call, with which settings, is the builder's
(:func:`mlblueprints.airflow.builder.service_operator`).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from typing import Any

from airflow.providers.amazon.aws.hooks.athena import AthenaHook
from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook
from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.operators.sagemaker import (
    SageMakerProcessingOperator,
    SageMakerTrainingOperator,
    SageMakerTransformOperator,
    serialize,
)
from airflow.providers.amazon.aws.triggers.athena import AthenaTrigger
from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.sdk.exceptions import AirflowException

from mlblueprints.aws import clarify as cl
from mlblueprints.aws import requests as req
from mlblueprints.aws import scoring as sr
from mlblueprints.aws import training as tr
from mlblueprints.aws.s3io import error_code as _error_code
from mlblueprints.config import UseCase
from mlblueprints.core import service

RUNNING_JOB = ("InProgress", "Stopping")


def _aws_kwargs(op: Any) -> dict[str, Any]:
    """The connection arguments of an operator, as its triggers take them."""
    return {k: getattr(op, k) for k in ("aws_conn_id", "region_name", "verify", "botocore_config")}


# ---------------------------------------------------------------- Athena


class StatementTrigger(AthenaTrigger):
    """AthenaTrigger that remembers which statement of a step it waits for, and how often it ran
    (the task resumes from the event, whatever the triggerer keeps of its kwargs), and stops its
    query when the task is killed while deferred."""

    def __init__(
        self,
        query_execution_id: str,
        waiter_delay: int,
        waiter_max_attempts: int,
        aws_conn_id: str | None,
        name: str = "",
        runs: int = 1,
        done: dict[str, str] | None = None,
        **kwargs: Any,
    ):
        super().__init__(query_execution_id, waiter_delay, waiter_max_attempts, aws_conn_id, **kwargs)
        self.query_execution_id = query_execution_id
        self.name, self.runs, self.done = name, runs, dict(done or {})
        self.serialized_fields.update(name=name, runs=runs, done=self.done)
        self.return_value = {"query_execution_id": query_execution_id, "name": name, "runs": runs, "done": self.done}

    async def on_kill(self) -> None:
        hook = AthenaHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name, verify=self.verify)
        await asyncio.to_thread(hook.stop_query, self.query_execution_id)


class AthenaStatementsOperator(AwsBaseOperator[AthenaHook]):
    """Run a list of Athena statements (``Statement`` dicts) in order; return ``{"queries": {name: id}}``."""

    aws_hook_class = AthenaHook
    template_fields: Sequence[str] = aws_template_fields("statements")
    template_fields_renderers = {"statements": "json"}
    ui_color = "#44b5e2"

    def __init__(
        self,
        *,
        statements: Any,
        database: str,
        workgroup: str,
        result_configuration: dict[str, Any],
        sleep_time: int = 5,
        deferrable: bool = True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.statements, self.database, self.workgroup = statements, database, workgroup
        self.result_configuration, self.sleep_time, self.deferrable = result_configuration, sleep_time, deferrable
        self.query_execution_id: str | None = None
        self._plans: dict[str, list[dict[str, Any]]] = {}

    def _statements(self) -> list[service.Statement]:
        return [s if isinstance(s, service.Statement) else service.Statement(**s) for s in (self.statements or [])]

    def _rows(self, query_execution_id: str) -> list[dict[str, Any]]:
        """The rows of a finished plan query (chunked statements are expanded from them)."""
        from mlblueprints.aws.session import rows_from_results

        if query_execution_id not in self._plans:
            pages = self.hook.get_query_results_paginator(query_execution_id) or []
            self._plans[query_execution_id] = [r for page in pages for r in rows_from_results(page)]
        return self._plans[query_execution_id]

    def _start(self, context: Any, st: service.Statement, runs: int) -> str:
        ti = context["ti"]
        token = req.client_request_token(
            context["run_id"], ti.task_id, ti.try_number, st.name, *([runs] if runs > 1 else [])
        )
        self.log.info("athena %s: %s (%d characters of SQL, run %d)", st.kind, st.name, len(st.sql), runs)
        self.query_execution_id = self.hook.run_query(
            st.sql,
            {"Database": self.database, "Catalog": "AwsDataCatalog"},
            copy.deepcopy(self.result_configuration),
            token,
            self.workgroup,
        )
        return self.query_execution_id

    def execute(self, context: Any) -> dict[str, Any]:
        return self._run_from(context, {})

    def _run_from(
        self, context: Any, done: dict[str, str], again: tuple[service.Statement, int] | None = None
    ) -> dict[str, Any]:
        """Run what is left: statements in order (chunks expanded), each polled in the worker or
        deferred to a trigger; ``again`` is a statement to run once more (``repeat_on``)."""
        stmts = self._statements()
        while True:
            st, runs = again or (service.next_statement(stmts, done, self._rows), 1)
            again = None
            if st is None:
                break
            qid = self._start(context, st, runs)
            if self.deferrable:
                self.defer(
                    trigger=StatementTrigger(
                        query_execution_id=qid,
                        waiter_delay=self.sleep_time,
                        waiter_max_attempts=10**6,
                        **_aws_kwargs(self),
                        name=st.name,
                        runs=runs,
                        done=done,
                    ),
                    method_name="resume_statements",
                )
            state = self.hook.poll_query_status(qid, max_polling_attempts=10**6, sleep_time=self.sleep_time)
            if state != "SUCCEEDED":
                again = self._again(st, qid, state, runs)
                continue
            done = {**done, st.name: qid}
        self.query_execution_id = None
        return {"queries": done}

    def _again(self, st: service.Statement, qid: str, state: str | None, runs: int) -> tuple[service.Statement, int]:
        """A statement that did not succeed: run it again if Athena asks for more runs, else fail."""
        reason = self.hook.get_state_change_reason(qid)
        if not service.repeats(st, reason, runs):
            raise AirflowException(service.failure_message(st, qid, state, reason, runs))
        self.log.info("athena statement %s: %s; running it again", st.name, st.repeat_on)
        return st, runs + 1

    def resume_statements(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        value = (event or {}).get("value")
        if not event or not isinstance(value, dict) or "name" not in value:
            raise AirflowException(f"athena statement failed: {event}")
        done, qid = dict(value["done"]), value["query_execution_id"]
        st = service.find_statement(self._statements(), done, self._rows, value["name"])
        state = self.hook.check_query_status(qid)
        if state != "SUCCEEDED":
            return self._run_from(context, done, self._again(st, qid, state, int(value["runs"])))
        return self._run_from(context, {**done, st.name: qid})

    def on_kill(self) -> None:
        """Stop the statement that is running (the task was killed, cleared or timed out)."""
        if self.query_execution_id:
            self.log.info("stopping athena query %s", self.query_execution_id)
            self.hook.stop_query(self.query_execution_id)


# ---------------------------------------------------------------- SageMaker jobs (training, batch transform)


class StoppingSageMakerTrigger(SageMakerTrigger):
    """SageMakerTrigger that stops its job (training or transform) when the task is killed while deferred."""

    async def on_kill(self) -> None:
        hook = SageMakerHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name, verify=self.verify)
        await asyncio.to_thread(_stop_job, hook, self.job_type, self.job_name)


def _stop_job(hook: SageMakerHook, job_type: str, name: str) -> bool:
    try:
        getattr(hook.conn, f"stop_{job_type.lower()}_job")(**{f"{job_type}JobName": name})
        return True
    except Exception as exc:  # not running any more (ValidationException): nothing to stop
        if _error_code(exc) == "ValidationException":
            return False
        raise


class _OwnJobs:
    """What the SageMaker operators below add to the provider's: a job name unique per try; a retry
    that adopts an earlier try's job only after checking it does the same work (waiting for it when
    it still runs); a deferral on a trigger that stops the job when the task is killed; a kill that
    stops the job this try created; only a Completed job is a success."""

    # subclasses give: job_type, naming (use case, run id, try -> name), for_try (config, name, try ->
    # the config of that try), differences (config, DescribeJob -> why it is not this work)
    job_type, naming, for_try = "Training", staticmethod(tr.training_job_name), staticmethod(tr.request_for_try)
    differences = staticmethod(tr.job_differences)

    def _differences(self, desc: dict[str, Any]) -> list[str]:
        return self.differences(self.config, desc)

    def _to_create(self) -> str:  # the job this try creates (and creates first what it needs)
        return self.config[f"{self.job_type}JobName"]

    def __init__(self, *, usecase: UseCase, max_wait_seconds: int = 86400, **kwargs: Any):
        super().__init__(**kwargs)  # type: ignore[call-arg]
        self.usecase, self._created, self.max_wait_seconds = usecase, None, max_wait_seconds

    def _wait_attempts(self) -> int:  # as long as the job may run
        return max(60, self.max_wait_seconds // max(1, self.check_interval) + 60)

    def _name(self, run_id: str, k: int) -> str:
        return self.naming(self.usecase, run_id, k)

    def _describe(self, name: str) -> dict[str, Any] | None:
        try:
            return getattr(self.hook, f"describe_{self.job_type.lower()}_job")(name)
        except Exception as exc:  # what SageMaker answers for an unknown job
            if _error_code(exc) == "ValidationException":
                return None
            raise

    def _adopt_or_start(self, context: Any) -> dict[str, Any] | None:
        if not self.config:
            return None
        run_id, try_number = context["run_id"], int(context["ti"].try_number)
        self.config = self.for_try(self.config, self._name(run_id, try_number), try_number)
        self.max_attempts = self._wait_attempts()
        kind = self.job_type.lower()
        for k in range(try_number, 0, -1):
            name = self._name(run_id, k)
            desc = self._describe(name)
            if desc is None:
                continue
            diffs = self._differences(desc)
            if diffs:
                self.log.warning("not adopting %s job %s: %s", kind, name, "; ".join(diffs))
                continue
            status = desc[f"{self.job_type}JobStatus"]
            if status == "Completed":
                self.log.info("adopting %s job %s of try %d: completed, doing the same work", kind, name, k)
                return {**self.serialize_result(name), "how": "adopted"}
            if status in RUNNING_JOB:
                self.log.info("%s job %s of try %d still runs the same work: waiting for it", kind, name, k)
                return self._wait_for(context, name)
            self.log.info("%s job %s of try %d ended %s: not adopted", kind, name, k, status)
        self._created = self._to_create()
        return {**self._completed(super().execute(context)), "how": "created"}  # type: ignore[misc]

    def _completed(self, out: dict[str, Any] | None) -> dict[str, Any]:
        """The provider's operators return whatever state the job ended in: only Completed succeeds."""
        t = self.job_type
        desc = (out or {}).get(t) or {}
        if desc.get(f"{t}JobStatus") != "Completed":
            why = desc.get("FailureReason") or "no reason given"
            raise AirflowException(f"{t} job {desc.get(f'{t}JobName')} ended {desc.get(f'{t}JobStatus')}: {why}")
        return dict(out or {})

    def _trigger(self, name: str, delay: int) -> StoppingSageMakerTrigger:
        kw = {"job_name": name, "job_type": self.job_type, "waiter_delay": delay, **_aws_kwargs(self)}
        return StoppingSageMakerTrigger(waiter_max_attempts=self._wait_attempts(), **kw)

    def _wait_for(self, context: Any, name: str) -> dict[str, Any]:
        if self.deferrable:
            self.defer(trigger=self._trigger(name, self.check_interval), method_name="execute_complete")
        describe = getattr(self.hook, f"describe_{self.job_type.lower()}_job")
        self.hook.check_status(name, f"{self.job_type}JobStatus", describe, self.check_interval)
        return {**self._completed(self.serialize_result(name)), "how": "adopted"}

    def defer(self, *, trigger: Any, method_name: str, **kwargs: Any) -> None:
        # the provider's own deferral (after creating the job) uses a trigger that does not stop
        # the job when the task is killed; swap in ours
        if type(trigger) is SageMakerTrigger:
            trigger = self._trigger(trigger.job_name, trigger.waiter_delay)
        super().defer(trigger=trigger, method_name=method_name, **kwargs)  # type: ignore[misc]

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, dict]:
        out = self._completed(super().execute_complete(context, event))  # type: ignore[misc]
        mine = self._name(context["run_id"], int(context["ti"].try_number))
        return {**out, "how": "created" if out[self.job_type].get(f"{self.job_type}JobName") == mine else "adopted"}

    def on_kill(self) -> None:
        """Stop the job this try created (the provider's operators would leave it running)."""
        if getattr(self, "_created", None):
            self.log.info("stopping %s job %s", self.job_type.lower(), self._created)
            _stop_job(self.hook, self.job_type, self._created)


class TrainingJobOperator(_OwnJobs, SageMakerTrainingOperator):
    """Start (or adopt) the training job of one try; output ``{"Training": Describe..., "how": ...}``
    (``how``: ``created``, or ``adopted`` - an earlier try's job of this run on the same input data,
    image and hyperparameters; see :func:`mlblueprints.aws.training.job_differences`)."""

    execute = _OwnJobs._adopt_or_start  # declared here: Airflow guards each operator's own execute

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("check_if_job_exists", False)  # the name is ours, unique per try
        super().__init__(**kwargs)

    def _wait_attempts(self) -> int:  # as long as Spot may wait and the job may run
        return tr.wait_attempts(self.config or {}, self.check_interval)


class TransformJobOperator(_OwnJobs, SageMakerTransformOperator):
    """CreateModel (from the registered model package) and CreateTransformJob of one try, or adopt
    an earlier try's job that transformed the same input with the same package (see
    :func:`mlblueprints.aws.scoring.transform_job_differences`); output ``{"Model": ...,
    "Transform": Describe..., "how": ...}``."""

    job_type = "Transform"
    naming, for_try = staticmethod(sr.transform_job_name), staticmethod(sr.request_for_try)
    execute = _OwnJobs._adopt_or_start

    def __init__(self, **kwargs: Any):
        kwargs.update(check_if_job_exists=False, check_if_model_exists=False)  # names are ours, per try
        super().__init__(**kwargs)

    def _differences(self, desc: dict[str, Any]) -> list[str]:
        return sr.transform_job_differences(self.config, desc, lambda: self.hook.describe_model(desc["ModelName"]))

    def _to_create(self) -> str:
        try:  # this try's model exists already (the task died between the two calls): reuse it
            self.hook.describe_model(self.config["Model"]["ModelName"])
            self.config.pop("Model")
        except Exception as exc:
            if _error_code(exc) != "ValidationException":
                raise
        return self.config["Transform"]["TransformJobName"]


class ProcessingJobOperator(_OwnJobs, SageMakerProcessingOperator):
    """CreateProcessingJob (a SageMaker Clarify job) of one try, or adopt an earlier try's job on the
    same dataset, config and container (:func:`mlblueprints.aws.clarify.processing_job_differences`);
    output ``{"Processing": Describe..., "how": ...}``."""

    job_type = "Processing"
    naming, for_try = staticmethod(cl.processing_job_name), staticmethod(cl.request_for_try)
    differences, execute = staticmethod(cl.processing_job_differences), _OwnJobs._adopt_or_start

    def __init__(self, **kwargs: Any):
        super().__init__(action_if_job_exists="fail", **kwargs)  # the name is ours, unique per try

    def serialize_result(self, job_name: str) -> dict[str, dict]:
        return {"Processing": serialize(self.hook.describe_processing_job(job_name))}
