"""Render a pattern declaration (``mlblueprints.patterns``) into an Airflow DAG.

One builder for every pattern: the DAG's schedule, Params, default args (owner, retries with
exponential backoff), tags and doc come from the declaration and the use case; each step becomes
a task that builds a :class:`~mlblueprints.core.context.StepContext` from the Airflow context,
pulls the results of the steps it takes, calls the step function and pushes its result. An
Asset whose spec watches a queue (``AssetSpec.watch``) gets an AssetWatcher on it.

A step the declaration marks as a service job (``Step.service``) becomes, when its capability's
backend delegates jobs (:func:`mlblueprints.backends.delegates`), a task group of three tasks::

    <step>.prepare  ->  <step>.<service> (the Amazon provider's operator)  ->  <step>.finish

``prepare`` runs the step function, which returns the job as a service call (its request goes to
the operator through XCom); the operator runs the job, deferrable, stopping it when killed;
``finish`` resumes the backend with the job's output and carries the step's result and Asset
outlets. Elsewhere the step is one task.

Failures: a :class:`~mlblueprints.errors.PermanentError` (configuration, a failed gate or
reconciliation) fails the task at once, without retries; :class:`~mlblueprints.errors.StepSkipped`
skips it; anything else is retried.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, AssetAll, AssetAny, AssetWatcher, Param, TaskGroup, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from airflow.timetables.interval import CronDataIntervalTimetable

from mlblueprints import backends
from mlblueprints.config import UseCase
from mlblueprints.core import results, service
from mlblueprints.core.context import StepContext
from mlblueprints.core.naming import AssetSpec
from mlblueprints.errors import PermanentError, StepSkipped
from mlblueprints.lineage import RunInfo
from mlblueprints.patterns import ParamSpec, PatternSpec, Schedule, Step

log = logging.getLogger(__name__)

RETRY_BACKOFF = 2.0
MAX_RETRY_DELAY = timedelta(minutes=30)


def _utc(d: Any) -> datetime | None:
    return datetime.combine(d, datetime.min.time(), tzinfo=UTC) if d is not None else None


def _param(p: ParamSpec) -> Param:
    kw: dict[str, Any] = {"type": p.type, "description": p.description}
    if p.items is not None:
        kw["items"] = dict(p.items)
    return Param(p.default, **kw)


def _schedule(s: Schedule, assets: dict[str, Asset]) -> Any:
    if s.assets is not None:

        def expr(x: Any) -> Any:
            if isinstance(x, str):
                return assets[x]
            op, *members = x
            return (AssetAll if op == "all" else AssetAny)(*(expr(m) for m in members))

        return expr(s.assets)
    if s.cron is not None:
        return CronDataIntervalTimetable(s.cron, timezone="UTC")
    return None


def _sqs_trigger(watch: dict[str, Any]) -> Any:
    """The Amazon provider's SQS trigger: up to 10 messages per receive (one Asset event for the
    batch), long polling (20 s), then ``poll_seconds`` before the next receive. It deletes the
    messages it received before it yields their event."""
    from airflow.providers.amazon.aws.triggers.sqs import SqsSensorTrigger

    return SqsSensorTrigger(
        sqs_queue=watch["queue_url"],
        aws_conn_id=watch.get("aws_conn_id"),
        region_name=watch.get("region"),
        max_messages=10,
        wait_time_seconds=20,
        waiter_delay=int(watch.get("poll_seconds", 60)),
    )


# kind of AssetSpec.watch -> the event trigger that reads it (imported only for an Asset that
# has one: the provider's triggers import boto3)
WATCH_TRIGGERS = {"sqs": _sqs_trigger}


def _asset(a: AssetSpec) -> Asset:
    watchers = []
    if a.watch is not None:
        kind = a.watch["kind"]
        if kind not in WATCH_TRIGGERS:
            raise ValueError(f"Asset {a.name}: no trigger for a watch of kind {kind!r}")
        watchers.append(AssetWatcher(name=a.watch["name"], trigger=WATCH_TRIGGERS[kind](a.watch)))
    return Asset(name=a.name, uri=a.uri, group=a.group, extra=dict(a.extra), watchers=watchers)


def build_dag(spec: PatternSpec, uc: UseCase) -> DAG:
    """The DAG ``<usecase>__<pattern>`` of a declaration."""
    assets = {a.name: _asset(a) for a in spec.assets}
    dag = DAG(
        dag_id=spec.dag_id,
        description=spec.description,
        schedule=_schedule(spec.schedule, assets),
        start_date=_utc(spec.start_date),
        end_date=_utc(spec.end_date),
        catchup=spec.catchup,
        max_active_runs=spec.max_active_runs,
        tags=list(spec.tags),
        params={p.name: _param(p) for p in spec.params},
        default_args={
            "owner": uc.owner,
            "retries": uc.retries,
            "retry_delay": timedelta(seconds=uc.retry_delay_seconds),
            "retry_exponential_backoff": RETRY_BACKOFF,
            "max_retry_delay": MAX_RETRY_DELAY,
        },
        doc_md=spec.doc,
    )
    result_task: dict[str, str] = {}  # step id -> the task whose XCom is the step's result
    first: dict[str, Any] = {}
    last: dict[str, Any] = {}
    with dag:
        for sid in spec.topological_order():
            step = spec.step(sid)
            if step.service and step.capability and backends.delegates(uc, step.capability, **dict(step.backend_key)):
                first[sid], last[sid] = _service_step(spec, uc, step, assets, result_task)
            else:
                first[sid] = last[sid] = _plain_step(spec, uc, step, assets, result_task)
            result_task[sid] = last[sid].operator.task_id if hasattr(last[sid], "operator") else last[sid].task_id
            for up in step.upstream():
                last[up] >> first[sid]
    return dag


# ---------------------------------------------------------------- tasks


def _task_kwargs(step: Step, assets: dict[str, Asset], task_id: str) -> dict[str, Any]:
    kw: dict[str, Any] = {"task_id": task_id, "trigger_rule": step.trigger_rule}
    if step.retries is not None:
        kw["retries"] = step.retries
    if step.emits:
        kw["outlets"] = [assets[a] for a in step.emits]
    if step.doc:
        kw["doc_md"] = step.doc
    return kw


def _plain_step(spec: PatternSpec, uc: UseCase, step: Step, assets: dict[str, Asset], result_task: dict) -> Any:
    @task(**_task_kwargs(step, assets, step.id))
    def run_step() -> Any:
        actx = get_current_context()
        ctx = step_context(uc, actx)
        out = _call(spec, step, ctx, actx, result_task)
        if service.is_call(out):
            raise RuntimeError(f"step {step.id} returned a service call but is not declared as a service step")
        _guarded(lambda: results.check(step.id, step.result, out), actx)
        _emit(actx, ctx, assets)
        return out

    return run_step()


def _service_step(
    spec: PatternSpec, uc: UseCase, step: Step, assets: dict[str, Asset], result_task: dict
) -> tuple[Any, Any]:
    if step.service is None:
        raise ValueError(f"step {step.id} has no service")
    kind = step.service
    with TaskGroup(group_id=step.id, tooltip=f"{step.id}: {kind} job between prepare and finish"):

        @task(task_id="prepare", trigger_rule=step.trigger_rule)
        def prepare() -> Any:
            actx = get_current_context()
            ctx = step_context(uc, actx)
            out = _call(spec, step, ctx, actx, result_task)
            ti = actx["ti"]
            if service.is_call(out):
                call = out if isinstance(out, service.ServiceCall) else service.ServiceCall.from_dict(out)
                ti.xcom_push(key="request", value=call.request)
                return call.as_dict()
            ti.xcom_push(key="request", value=None)  # done in the worker: nothing for the service
            return {"result": out, "emitted": ctx.emitted}

        prepared = prepare()
        job = service_operator(kind, uc, task_id=kind, request=prepared["request"], call=prepared)

        finish_kw = _task_kwargs(step, assets, "finish")
        finish_kw["trigger_rule"] = "all_success"

        @task(**finish_kw)
        def finish() -> Any:
            actx = get_current_context()
            ti = actx["ti"]
            called = ti.xcom_pull(task_ids=f"{step.id}.prepare")
            ctx = step_context(uc, actx)
            if service.is_call(called):
                out = _guarded(lambda: service.finish(ctx, called, ti.xcom_pull(task_ids=f"{step.id}.{kind}")), actx)
            else:
                out = called["result"]
                ctx.emitted.update(called.get("emitted") or {})
            _guarded(lambda: results.check(step.id, step.result, out), actx)
            _emit(actx, ctx, assets)
            return out

        done = finish()
        prepared >> job >> done
    return prepared, done


def deferrable() -> bool:
    """Service tasks defer to the triggerer (``MLB_DEFERRABLE=0`` makes them poll in the worker)."""
    return os.environ.get("MLB_DEFERRABLE", "1").lower() not in ("0", "false", "no")


def _poll(name: str, default: float) -> int:
    return max(0, int(float(os.environ.get(name, default))))


def service_operator(kind: str, uc: UseCase, *, task_id: str, request: Any, call: Any = None) -> Any:
    """The operator (:mod:`mlblueprints.airflow.operators`, imported here: it imports the provider)
    that runs a service call of ``kind`` for ``uc``; ``request`` is the XCom of the step's prepare
    task (None: nothing to run), ``call`` the whole call (for a kind whose operator runs the call's
    ``during`` work)."""
    from mlblueprints.airflow import operators as ops
    from mlblueprints.aws import requests as req

    aws = uc.aws
    if aws is None:
        raise ValueError(f"{uc.name}: service steps need the aws section")
    common = {"task_id": task_id, "aws_conn_id": aws.aws_conn_id, "region_name": aws.region}
    if kind == service.ATHENA:
        return ops.AthenaStatementsOperator(
            statements=request,
            database=aws.glue_database,
            workgroup=aws.athena_workgroup,
            result_configuration=req.athena_result_configuration(aws),
            sleep_time=_poll("MLB_ATHENA_POLL_SECONDS", 5),
            deferrable=deferrable(),
            **common,
        )
    jobs = {"usecase": uc, "config": request, "wait_for_completion": True, "deferrable": deferrable(), **common}
    jobs["check_interval"] = _poll("MLB_SAGEMAKER_POLL_SECONDS", 30)
    if kind == service.SAGEMAKER_TRANSFORM:
        wait = uc.scoring.sagemaker.max_wait_seconds if uc.scoring else 86400
        return ops.TransformJobOperator(max_wait_seconds=wait, **jobs)
    if kind == service.SAGEMAKER_PROCESSING:
        wait = uc.explainability.sagemaker.max_runtime_seconds if uc.explainability else 86400
        return ops.ProcessingJobOperator(print_log=False, max_wait_seconds=wait, **jobs)
    if kind == service.SAGEMAKER_TRAINING:
        print_log = os.environ.get("MLB_SAGEMAKER_PRINT_LOG", "1").lower() not in ("0", "false", "no")
        return ops.TrainingJobOperator(print_log=print_log, **jobs)
    if kind == service.SAGEMAKER_ENDPOINT:
        return _endpoint_update(uc, task_id, call)
    raise ValueError(f"no operator for service kind {kind!r}")


def _endpoint_update(uc: UseCase, task_id: str, call: Any) -> Any:
    """An endpoint update (kind ``sagemaker_endpoint``): :func:`mlblueprints.aws.direct.run_endpoint_update`
    with the hook's client and the call's ``during`` work (a canary's traffic) in this task - not
    the provider's ``SageMakerEndpointOperator``, which only waits. Killed, the update goes on; a
    retry finds it running or ended and does not send it again. Returns ``{"Endpoint":
    Describe..., "During": ...}``."""

    @task(task_id=task_id)
    def endpoint_update(called: Any) -> Any:
        from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

        from mlblueprints.aws.direct import run_endpoint_update

        if not service.is_call(called):  # the prepare task did the step's work itself
            return None
        actx = get_current_context()
        c, ctx, aws = service.ServiceCall.from_dict(called), step_context(uc, actx), uc.aws_settings
        sm = SageMakerHook(aws_conn_id=aws.aws_conn_id, region_name=aws.region).conn
        out = _guarded(lambda: run_endpoint_update(sm, c.request, lambda: service.during(ctx, c)), actx)
        return json.loads(json.dumps(out, default=str))  # the describe's datetimes as ISO text

    return endpoint_update(call)


def step_context(uc: UseCase, actx: Any) -> StepContext:
    """A step's view of the running task (lineage, Params, interval, triggering Asset events)."""
    from mlblueprints.airflow.runtime import connection_runtime

    ti = actx["ti"]
    run = RunInfo.for_usecase(
        uc, run_id=actx["run_id"], dag_id=ti.dag_id, task_id=ti.task_id, try_number=int(ti.try_number or 1)
    )
    triggering: dict[str, list[dict[str, Any]]] = {}
    for asset, events in (actx.get("triggering_asset_events") or {}).items():
        key = getattr(asset, "name", None) or str(asset)
        triggering[key] = [dict(e.extra or {}) for e in events]
    return StepContext(
        uc=uc,
        run=run,
        params=dict(actx.get("params") or {}),
        interval_start=actx.get("data_interval_start") or actx.get("logical_date"),
        interval_end=actx.get("data_interval_end"),
        triggering=triggering,
        runtime_factory=lambda: connection_runtime(uc),
    )


def _guarded(fn: Any, actx: Any) -> Any:
    """Run ``fn``; map the project's failure kinds to Airflow's, and leave the reason of a failure
    in XCom (key ``error``) for the run report."""
    try:
        return fn()
    except StepSkipped as exc:
        raise AirflowSkipException(str(exc)) from exc
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}".strip()
        try:
            actx["ti"].xcom_push(key="error", value=reason[:2000])
        except Exception:  # noqa: BLE001 - the report loses a reason, the task still fails as it should
            log.warning("could not record the failure reason in XCom")
        if isinstance(exc, PermanentError):  # the same inputs fail the same way: no retry
            raise AirflowFailException(str(exc)) from exc
        raise


def _call(spec: PatternSpec, step: Step, ctx: StepContext, actx: Any, result_task: dict[str, str]) -> Any:
    ti = actx["ti"]
    kwargs: dict[str, Any] = dict(step.kwargs)
    for arg, src in step.inputs.items():
        if isinstance(src, str):
            kwargs[arg] = ti.xcom_pull(task_ids=result_task[src])
        else:
            kwargs[arg] = {s: ti.xcom_pull(task_ids=result_task[s]) for s in src}
    if step.collect:
        others = [s for s in spec.steps if s.id != step.id]
        kwargs["results"] = {s.id: ti.xcom_pull(task_ids=result_task[s.id]) for s in others}
        for s in others:  # why a step failed, from whichever of its tasks failed
            group = (
                [result_task[s.id]]
                if result_task[s.id] == s.id
                else [f"{s.id}.{t}" for t in ("prepare", s.service, "finish")]
            )
            reasons = [r for r in (ti.xcom_pull(task_ids=t, key="error") for t in group) if r]
            if reasons and kwargs["results"][s.id] is None:
                ctx.failures[s.id] = reasons[-1]
    fn = service.resolve(step.fn)
    out = _guarded(lambda: fn(ctx, **kwargs), actx)
    return out.as_dict() if isinstance(out, service.ServiceCall) else out


def _emit(actx: Any, ctx: StepContext, assets: dict[str, Asset]) -> None:
    """Attach the extras a step emitted to its outlet events."""
    for name, extra in ctx.emitted.items():
        actx["outlet_events"][assets[name]].extra = extra
