"""Service calls: how a step hands a job to a managed AWS service and gets its result back.

On the local target a step does all its work in the worker and returns its result. On the aws
target the heavy part of some steps is a job of a managed service (Athena statements, a
SageMaker training job). Such a backend method does not run the job itself: it returns a
:class:`ServiceCall` - the request, what to resume with, and the state to resume from - and the
orchestrator runs the job with the tool made for it (the Amazon provider's operators in a DAG,
an optimized service integration in a state machine, :mod:`mlblueprints.aws.direct` in a test),
then calls :func:`finish` with the job's output. Nothing here does I/O.

A step function handles both shapes with :meth:`StepContext.then
<mlblueprints.core.context.StepContext.then>`: what it does after the backend call runs at once
on a local result, and after the job on a service call.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlblueprints.core.context import StepContext

ATHENA = "athena"  # request: a list of Statement dicts, run in order; output: {"queries": {name: id}}
SAGEMAKER_TRAINING = "sagemaker_training"  # request: CreateTrainingJob; output: {"Training": Describe...}
# request: {"Model": CreateModel, "Transform": CreateTransformJob}; output: {"Model": DescribeModel,
# "Transform": DescribeTransformJob, "how": "created" | "adopted"}
SAGEMAKER_TRANSFORM = "sagemaker_transform"
# request: CreateProcessingJob; output: {"Processing": DescribeProcessingJob, "how": "created" | "adopted"}
SAGEMAKER_PROCESSING = "sagemaker_processing"
# request: {"Model": CreateModel | None, "EndpointConfig": CreateEndpointConfig | None, "Update":
# UpdateEndpoint | None, "EndpointName", "StartedAt" (the deployment's start, ISO), "PollSeconds",
# "MaxPolls"} (None: made by an earlier try, or its update under way or ended); output: {"Endpoint": DescribeEndpoint once it left Updating, "During": what
# the call's ``during`` method returned}
SAGEMAKER_ENDPOINT = "sagemaker_endpoint"
KINDS = (ATHENA, SAGEMAKER_TRAINING, SAGEMAKER_TRANSFORM, SAGEMAKER_PROCESSING, SAGEMAKER_ENDPOINT)
MARK = "__service_call__"


@dataclass
class Statement:
    """One Athena statement of a step. ``body`` is the SELECT inside it (for validation);
    ``fetch`` says that the step reads the statement's result rows afterwards.

    Two things only the service can decide are said here, and whoever runs the statements (the
    Airflow operator, :mod:`mlblueprints.aws.direct`, a state machine) does them the same way:

    * ``each``: the statement is a template run once per row of an earlier ``fetch`` statement's
      result (``{"plan": <its name>, "kind": <value of its kind column>}``), the row's values
      replacing the placeholders (:func:`placeholder`); see :func:`expand`. How many partitions
      a write touches is known only from the data, so the chunks are planned by a query.
    * ``repeat_on``: an Athena error (``ICEBERG_OPTIMIZE_MORE_RUNS_NEEDED``) on which the statement
      is run again, at most ``max_runs`` times in all (:func:`repeats`).
    """

    name: str
    sql: str
    kind: str  # merge | insert | delete | select | unload | optimize | vacuum | alter
    body: str | None = None
    fetch: bool = False
    each: dict[str, Any] | None = None
    repeat_on: str | None = None
    max_runs: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# what a chunk plan may put into a statement: a list of DATE literals, nothing else
CHUNK_VALUE = re.compile(r"^DATE '\d{4}-\d{2}-\d{2}'(, DATE '\d{4}-\d{2}-\d{2}')*$")


def placeholder(column: str) -> str:
    """The token a chunked statement carries where a plan row's ``column`` goes. It is a quoted
    string literal, so the template is valid SQL (sqlglot transpiles it untouched)."""
    return "'{{" + column + "}}'"


def expand(st: Statement, rows: list[dict[str, Any]]) -> list[Statement]:
    """The statements a chunked statement stands for: one per row of its plan (of its ``kind``),
    in the order of the rows' ``chunk``, named ``<name>__<nnn>``. A plan value must be a list of
    DATE literals (:data:`CHUNK_VALUE`): nothing else is ever spliced into SQL."""
    if not st.each:
        return [st]
    kind = st.each.get("kind")
    chosen = [r for r in rows if kind is None or r.get("kind") == kind]
    chosen.sort(key=lambda r: int(r.get("chunk") or 0))
    out = []
    for i, row in enumerate(chosen):
        sql, body = st.sql, st.body
        for column, value in row.items():
            token = placeholder(column)
            if token not in sql:
                continue
            if not CHUNK_VALUE.match(str(value or "")):
                raise ValueError(f"statement {st.name}: plan value {column}={str(value)[:80]!r} is not a list of dates")
            sql = sql.replace(token, value)
            body = body.replace(token, value) if body else body
        if "'{{" in sql:
            raise ValueError(f"statement {st.name}: a placeholder is left unfilled by its plan row {row}")
        out.append(replace(st, name=f"{st.name}__{i:03d}", sql=sql, body=body, each=None))
    return out


def next_statement(
    statements: list[Statement], done: dict[str, str], rows_of: Callable[[str], list[dict[str, Any]]]
) -> Statement | None:
    """The first statement (chunks expanded) not yet in ``done`` ({name: query id}); None when
    all ran. ``rows_of(query id)`` gives a finished plan query's rows. Decided from ``done``
    alone, so a runner that resumes (a deferred task, a retried state) continues where it was."""
    for st in statements:
        if not st.each:
            if st.name not in done:
                return st
            continue
        plan = st.each["plan"]
        if plan not in done:
            raise RuntimeError(f"statement {st.name} is planned by {plan}, which has not run before it")
        for child in expand(st, rows_of(done[plan])):
            if child.name not in done:
                return child
    return None


def find_statement(
    statements: list[Statement], done: dict[str, str], rows_of: Callable[[str], list[dict[str, Any]]], name: str
) -> Statement:
    """The statement (or chunk) called ``name``."""
    for st in statements:
        for child in expand(st, rows_of(done[st.each["plan"]])) if st.each else [st]:
            if child.name == name:
                return child
    raise KeyError(name)


def repeats(st: Statement, reason: str | None, runs: int) -> bool:
    """Whether a statement that failed with ``reason`` after ``runs`` runs is to run again."""
    return bool(st.repeat_on) and st.repeat_on in (reason or "") and runs < st.max_runs


def failure_message(st: Statement, query_id: str, state: str | None, reason: str | None, runs: int) -> str:
    msg = f"athena statement {st.name} ({query_id}) ended {state}: {reason or 'no reason given'}"
    if st.repeat_on and st.repeat_on in (reason or ""):
        msg += f" (still after {runs} run(s); at most {st.max_runs})"
    return msg


@dataclass
class ServiceCall:
    """A job a backend asks the orchestrator to run, and how to resume after it."""

    kind: str
    request: Any
    capability: str  # the backend that resumes (``backend_for(uc, capability, **backend_key)``)
    resume: str  # its method: ``resume(state, output) -> result``
    state: dict[str, Any] = field(default_factory=dict)
    backend_key: dict[str, Any] = field(default_factory=dict)
    then: str | None = None  # "module:function" called as fn(ctx, result, **then_kwargs)
    then_kwargs: dict[str, Any] = field(default_factory=dict)
    # a method of the same backend the orchestrator runs while the job runs, ``during(state,
    # ready) -> dict`` (an endpoint update's traffic; ``ready()`` once it can start); what it
    # returns is the output's "During"
    during: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown service kind {self.kind!r}; known: {', '.join(KINDS)}")

    def as_dict(self) -> dict[str, Any]:
        return {MARK: True, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServiceCall:
        return cls(**{k: v for k, v in data.items() if k != MARK})

    @property
    def statements(self) -> list[Statement]:
        """The Athena statements of an ``athena`` call, in order."""
        return [s if isinstance(s, Statement) else Statement(**s) for s in self.request]


def is_call(value: Any) -> bool:
    return isinstance(value, ServiceCall) or (isinstance(value, dict) and value.get(MARK) is True)


def athena(
    statements: list[Statement], capability: str, resume: str, state: dict[str, Any] | None = None, **key: Any
) -> ServiceCall:
    """A call that runs ``statements`` in order on Athena, then ``resume(state, {"queries": {name: id}})``."""
    return ServiceCall(ATHENA, [s.as_dict() for s in statements], capability, resume, dict(state or {}), key)


def qualified_name(fn: Callable[..., Any]) -> str:
    """``module:function`` of a module-level function (what a service call can carry)."""
    name = f"{fn.__module__}:{fn.__qualname__}"
    if "<" in fn.__qualname__ or "." in fn.__qualname__:
        raise ValueError(f"{name}: only module-level functions can resume a step after a service job")
    return name


def resolve(name: str) -> Callable[..., Any]:
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def finish(ctx: StepContext, call: ServiceCall | dict[str, Any], output: Any) -> Any:
    """Resume a step after its service job: the backend turns the job's output into the step's
    result, then the step's own continuation (if any) runs."""
    if not isinstance(call, ServiceCall):
        call = ServiceCall.from_dict(call)
    backend = ctx.backend(call.capability, **call.backend_key)
    result = getattr(backend, call.resume)(call.state, output)
    if is_call(result):
        raise RuntimeError(f"{call.capability}.{call.resume} returned another service call; one job per step")
    if call.then:
        result = resolve(call.then)(ctx, result, **call.then_kwargs)
    return result


def during(ctx: StepContext, call: ServiceCall | dict[str, Any], ready: Callable[[], None] | None = None) -> Any:
    """Run the work a call asks for while its job runs (``ServiceCall.during``); None when none.
    ``ready()`` is called once the work is ready for the job to start (a state machine starts the
    job only then; an orchestrator that started it already passes nothing)."""
    if not isinstance(call, ServiceCall):
        call = ServiceCall.from_dict(call)
    if call.during is None:
        return None
    return getattr(ctx.backend(call.capability, **call.backend_key), call.during)(call.state, ready or (lambda: None))


def complete(ctx: StepContext, value: Any, run_job: Callable[[ServiceCall], Any]) -> Any:
    """Run a step's result to completion outside an orchestrator: ``run_job`` executes the
    service call synchronously (see :mod:`mlblueprints.aws.direct`)."""
    if isinstance(value, dict) and value.get(MARK) is True:
        value = ServiceCall.from_dict(value)
    if isinstance(value, ServiceCall):
        return finish(ctx, value, run_job(value))
    return value
