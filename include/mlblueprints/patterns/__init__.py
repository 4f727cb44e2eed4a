"""Pattern declarations: each lifecycle pattern as data, rendered by orchestrators.

A pattern module (``patterns/<name>.py``) has one function ``declare(uc) -> PatternSpec | None``
(None when the pattern does not apply to the use case). The spec says what the pattern *is* -
its steps and the edges between them, its Params, its schedule, the Assets it consumes and
emits, and which steps are a managed-service job on aws - and nothing about how an orchestrator
runs it. ``mlblueprints.airflow.builder`` renders a spec to an Airflow DAG; the Step Functions
renderer renders the same spec to Amazon States Language. Pure: no Airflow import, no I/O.

A step names its function as ``"module:function"``; the function is called as
``fn(ctx, **kwargs, **inputs)`` with a :class:`~mlblueprints.core.context.StepContext`, the
step's static ``kwargs`` and the results of the steps named in ``inputs``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from mlblueprints.config import UseCase
from mlblueprints.core.naming import AssetSpec

ALL_SUCCESS, ALL_DONE = "all_success", "all_done"
PATTERNS = (
    "lakehouse",
    "features",
    "training",
    "explainability",
    "scoring",
    "monitoring",
    "promotion",
)  # in lifecycle order; each is patterns/<name>.py


@dataclass(frozen=True)
class ParamSpec:
    """A run Param (JSON-schema typed, as Airflow's Param and a state machine's input take it)."""

    name: str
    default: Any
    type: str  # JSON schema type: array | boolean | object | string | integer | number
    description: str
    items: Mapping[str, Any] | None = None  # for arrays: the items' schema


@dataclass(frozen=True)
class Step:
    """One step of a pattern: a function of the step context, its static arguments and the
    results of other steps."""

    id: str
    fn: str  # "module:function"
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    # argument name -> id of the step whose result it gets; a tuple of ids gives a dict {id: result}
    inputs: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)
    after: tuple[str, ...] = ()  # ordering edges that carry no data
    emits: tuple[str, ...] = ()  # Asset names, emitted when the step succeeds
    # the backend capability whose service jobs this step may run (see ``service``)
    capability: str | None = None
    backend_key: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"view": ...}
    # on a target whose backend delegates jobs, the managed-service job this step runs
    # (``mlblueprints.core.service`` kinds), as its own orchestrator task
    service: str | None = None
    trigger_rule: Literal["all_success", "all_done"] = ALL_SUCCESS
    retries: int | None = None  # None: the use case's retries
    collect: bool = False  # the step gets every other step's result as ``results`` (run reports)
    # the type of the step's result, "module:Type" (``mlblueprints.core.results``): both
    # orchestrators check the value against it before handing it on
    result: str | None = None
    doc: str = ""

    def upstream(self) -> list[str]:
        ids: list[str] = []
        for src in self.inputs.values():
            ids += [src] if isinstance(src, str) else list(src)
        return list(dict.fromkeys([*ids, *self.after]))


@dataclass(frozen=True)
class Schedule:
    """When a pattern runs: on a cron interval (each run covers one data interval), when Assets
    are updated (``assets`` is a name, or ``("all" | "any", *members)`` nested), or only on demand."""

    cron: str | None = None
    assets: str | tuple[Any, ...] | None = None

    def asset_names(self) -> list[str]:
        def walk(x: Any) -> list[str]:
            if x is None:
                return []
            if isinstance(x, str):
                return [x]
            return [n for member in x[1:] for n in walk(member)]

        return list(dict.fromkeys(walk(self.assets)))


@dataclass(frozen=True)
class PatternSpec:
    pattern: str
    usecase: str
    description: str
    doc: str
    schedule: Schedule
    steps: tuple[Step, ...]
    params: tuple[ParamSpec, ...] = ()
    assets: tuple[AssetSpec, ...] = ()  # every Asset the spec names (consumed or emitted)
    start_date: date | None = None
    end_date: date | None = None
    catchup: bool = False
    max_active_runs: int = 1
    tags: tuple[str, ...] = ()

    @property
    def dag_id(self) -> str:
        return f"{self.usecase}__{self.pattern}"

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def asset(self, name: str) -> AssetSpec:
        for a in self.assets:
            if a.name == name:
                return a
        raise KeyError(name)

    @property
    def emitted(self) -> list[str]:
        return list(dict.fromkeys(a for s in self.steps for a in s.emits))

    @property
    def consumed(self) -> list[str]:
        return self.schedule.asset_names()

    def validate(self) -> PatternSpec:
        """Every edge names a step, every Asset is declared, ids are unique, no cycle."""
        ids = [s.id for s in self.steps]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"{self.dag_id}: step ids used twice: {dupes}")
        known = set(ids)
        declared = {a.name for a in self.assets}
        for s in self.steps:
            for up in s.upstream():
                if up not in known:
                    raise ValueError(f"{self.dag_id}: step {s.id} depends on unknown step {up!r}")
            for a in s.emits:
                if a not in declared:
                    raise ValueError(f"{self.dag_id}: step {s.id} emits undeclared Asset {a!r}")
            if s.service is not None and s.capability is None:
                raise ValueError(f"{self.dag_id}: step {s.id} runs a service job but names no capability")
        for a in self.consumed:
            if a not in declared:
                raise ValueError(f"{self.dag_id}: schedule names undeclared Asset {a!r}")
        order = self.topological_order()
        if len(order) != len(ids):
            raise ValueError(f"{self.dag_id}: the steps have a cycle")
        return self

    def topological_order(self) -> list[str]:
        ups = {s.id: set(s.upstream()) for s in self.steps}
        done: list[str] = []
        while True:
            ready = [i for i in ups if i not in done and ups[i] <= set(done)]
            if not ready:
                return done
            done += ready


def report_step(steps: str, after: tuple[str, ...]) -> Step:
    """The run report every pattern ends with: ``<steps module>:report`` after the last steps,
    whatever became of them (all_done), once (no retries), with every other step's result."""
    return Step(
        "report",
        f"{steps}:report",
        after=after,
        trigger_rule=ALL_DONE,
        retries=0,
        collect=True,
        result="mlblueprints.core.results:ReportResult",
    )


def declare(pattern: str, uc: UseCase) -> PatternSpec | None:
    """The spec of ``pattern`` for ``uc`` (None when the use case does not use the pattern)."""
    if pattern not in PATTERNS:
        raise KeyError(f"unknown pattern {pattern!r}; known: {', '.join(PATTERNS)}")
    module = importlib.import_module(f"mlblueprints.patterns.{pattern}")
    spec = module.declare(uc)
    return spec.validate() if spec is not None else None


def base_tags(pattern: str, uc: UseCase) -> tuple[str, ...]:
    return tuple(sorted({"mlblueprints", pattern, uc.name, uc.target, *uc.tags}))
