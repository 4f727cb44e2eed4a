"""Render a pattern declaration (``mlblueprints.patterns``) to an Amazon States Language definition.

One renderer for every pattern, as ``mlblueprints.airflow.builder`` is for DAGs. The steps are
grouped by dependency level (a step's level is one more than its deepest upstream's); each level
is a Parallel state with one branch per step, so a step starts when every step of the level before
has ended - ASL has no general DAG, and levels keep every declared edge. Each branch ends in the
step's status, which the Parallel puts at ``$.levels.L<k>.<step>``::

    {"status": "succeeded" | "skipped" | "failed" | "upstream_failed", "error": {"Error", "Cause"}}

A step branch, on the aws target (``backends.delegates``) for a step declared with ``service``::

    <step>.ready?  -> <step>.prepare (worker) -> .outcome -> .route
                   -> <service states of the kind, see integrations.SERVICES> -> <step>.output
                   -> <step>.finish (worker) -> .outcome -> .route -> <step>.events -> succeeded

and for any other step ``<step>.run`` (worker) -> ``.outcome`` -> ``.route`` -> events -> succeeded.
``ready?`` gives the trigger rule ``all_success`` Airflow's meaning (an upstream failure or skip
is passed on); ``all_done`` steps (the run reports) have none and always run. A worker phase's
outcome is a JSON document it writes under the execution's S3 prefix (``names.run_prefix``); a
permanent failure (a failed gate, a configuration error: ``PermanentError``) is a ``failed``
outcome, not retried; any other exception fails the Processing job, which the Task retries as
the use case's ``retries`` say. After the last level, the first failed step (in dependency order)
ends the execution in its own Fail state (``Failed: <step>``, with the step's error and cause);
otherwise it succeeds.

Pure: no Airflow, no boto3. ``${...}`` in the output are definition substitutions
(:func:`mlblueprints.stepfunctions.names.substitutions`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlblueprints import backends, patterns
from mlblueprints.config import UseCase
from mlblueprints.patterns import ALL_SUCCESS, PatternSpec, Step
from mlblueprints.stepfunctions import integrations as integ
from mlblueprints.stepfunctions import names

SUCCEEDED, SKIPPED, FAILED, UPSTREAM_FAILED = "succeeded", "skipped", "failed", "upstream_failed"
EVENT_SOURCE = "mlblueprints"
EVENT_DETAIL_TYPE = "mlblueprints asset updated"


def levels(spec: PatternSpec) -> list[list[Step]]:
    """The steps by dependency level, in declaration order within a level."""
    level: dict[str, int] = {}
    for sid in spec.topological_order():
        ups = spec.step(sid).upstream()
        level[sid] = 1 + max((level[u] for u in ups), default=-1)
    out: list[list[Step]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for s in spec.steps:
        out[level[s.id]].append(s)
    return out


def delegated(uc: UseCase, step: Step) -> bool:
    """Whether ``step`` runs a service job between its prepare and finish phases (as in a DAG)."""
    return bool(step.service and step.capability) and backends.delegates(
        uc, step.capability or "", **dict(step.backend_key)
    )


def _status_path(where: dict[str, int], step_id: str) -> str:
    return f"$.levels.L{where[step_id]}.{step_id}"


def _check_name(name: str) -> str:
    if len(name) > names.STATE_NAME_MAX:
        raise ValueError(f"state name {name!r} is longer than {names.STATE_NAME_MAX} characters: use shorter ids")
    return name


def _pass(status: str, **fields: str) -> dict[str, Any]:
    return {"Type": "Pass", "Parameters": {"status": status, **fields}, "End": True}


def _outcome_states(r: integ.Render, step: Step, phase: str, on_service: str | None, done: str) -> dict[str, Any]:
    """Read a worker phase's outcome document; route on its status."""
    sid = step.id
    choices: list[dict[str, Any]] = [
        {"Variable": "$.step.outcome.status", "StringEquals": FAILED, "Next": f"{sid}: refused"},
        {"Variable": "$.step.outcome.status", "StringEquals": SKIPPED, "Next": f"{sid}: skipped"},
    ]
    if on_service:
        choices.append({"Variable": "$.step.outcome.status", "StringEquals": "service", "Next": on_service})
    return {
        f"{sid}.{phase}.outcome": {
            "Type": "Task",
            "Comment": f"the {phase} phase's outcome document",
            "Resource": "arn:aws:states:::aws-sdk:s3:getObject",
            "Parameters": {"Bucket": r.bucket, "Key.$": integ.run_key(r, sid, phase)},
            "ResultSelector": {"outcome.$": "States.StringToJson($.Body)"},
            "ResultPath": "$.step",
            "Retry": [{"ErrorEquals": ["States.ALL"], "IntervalSeconds": 2, "BackoffRate": 2.0, "MaxAttempts": 3}],
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": f"{sid}: failed"}],
            "Next": f"{sid}.{phase}.route",
        },
        f"{sid}.{phase}.route": {"Type": "Choice", "Choices": choices, "Default": done},
    }


def _branch(r: integ.Render, uc: UseCase, step: Step, where: dict[str, int]) -> dict[str, Any]:
    sid = step.id
    states: dict[str, Any] = {}
    service = delegated(uc, step)
    first = f"{sid}.prepare" if service else f"{sid}.run"
    start = first
    ups = step.upstream()
    if ups and step.trigger_rule == ALL_SUCCESS:
        start = f"{sid}.ready?"

        def any_of(values: tuple[str, ...]) -> dict[str, Any]:
            conds = [{"Variable": f"{_status_path(where, u)}.status", "StringEquals": v} for u in ups for v in values]
            return conds[0] if len(conds) == 1 else {"Or": conds}

        states[start] = {
            "Type": "Choice",
            "Comment": f"all_success: runs when {', '.join(ups)} succeeded",
            "Choices": [
                {**any_of((FAILED, UPSTREAM_FAILED)), "Next": f"{sid}: upstream failed"},
                {**any_of((SKIPPED,)), "Next": f"{sid}: skipped"},
            ],
            "Default": first,
        }
    done = f"{sid}.events" if step.emits else f"{sid}: succeeded"
    if service:
        kind = integ.service_kind(step.service or "")
        job = kind.states(r, step, "$.step.outcome.request", f"{sid}.output", f"{sid}: failed")
        states[first] = integ.worker_task(r, step, "prepare", f"{sid}.prepare.outcome", f"{sid}: failed")
        states.update(_outcome_states(r, step, "prepare", next(iter(job)), done))
        states.update(job)
        states[f"{sid}.output"] = {
            "Type": "Task",
            "Comment": "the service job's output, for the finish phase",
            "Resource": "arn:aws:states:::aws-sdk:s3:putObject",
            "Parameters": {
                "Bucket": r.bucket,
                "Key.$": integ.run_key(r, sid, "output"),
                "Body.$": "States.JsonToString($.step.output)",
                "ServerSideEncryption": "aws:kms",
                "SSEKMSKeyId": names.placeholder("KmsKeyArn"),
                "BucketKeyEnabled": True,
            },
            "ResultPath": None,
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": f"{sid}: failed"}],
            "Next": f"{sid}.finish",
        }
        states[f"{sid}.finish"] = integ.worker_task(r, step, "finish", f"{sid}.finish.outcome", f"{sid}: failed")
        states.update(_outcome_states(r, step, "finish", None, done))
    else:
        states[first] = integ.worker_task(r, step, "run", f"{sid}.run.outcome", f"{sid}: failed")
        states.update(_outcome_states(r, step, "run", None, done))
    if step.emits:
        states[f"{sid}.events"] = {
            "Type": "Task",
            "Comment": f"the Asset events of {', '.join(step.emits)} (EventBridge rules start the patterns scheduled on them)",
            "Resource": "arn:aws:states:::events:putEvents",
            "Parameters": {"Entries.$": "$.step.outcome.events"},
            "ResultPath": None,
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": f"{sid}: failed"}],
            "Next": f"{sid}: succeeded",
        }
    states[f"{sid}: succeeded"] = _pass(SUCCEEDED)
    states[f"{sid}: skipped"] = _pass(SKIPPED)
    states[f"{sid}: refused"] = _pass(FAILED, **{"error.$": "$.step.outcome.error"})
    states[f"{sid}: failed"] = _pass(FAILED, **{"error.$": "$.error"})
    if start != first:
        states[f"{sid}: upstream failed"] = _pass(UPSTREAM_FAILED)
    for name in state_names({"States": states}):
        _check_name(name)
    return {"StartAt": start, "States": states}


def render(spec: PatternSpec, uc: UseCase) -> dict[str, Any]:
    """The ASL definition of ``spec`` (declared for ``uc``)."""
    aws_uc = names.on_aws(uc)
    r = integ.Render(uc=names.with_placeholders(uc), aws_real=names.aws_section(uc), spec=spec)
    lv = levels(spec)
    where = {s.id: k for k, level in enumerate(lv) for s in level}
    states: dict[str, Any] = {
        "Start": {
            "Type": "Pass",
            "Comment": "the run document: what every worker phase of this execution reads",
            "Parameters": {
                "run": {
                    "execution.$": "$$.Execution.Name",
                    "execution_arn.$": "$$.Execution.Id",
                    "state_machine.$": "$$.StateMachine.Name",
                    "input.$": "$$.Execution.Input",
                }
            },
            "Next": "Start.record",
        },
        "Start.record": {
            "Type": "Task",
            "Resource": "arn:aws:states:::aws-sdk:s3:putObject",
            "Parameters": {
                "Bucket": r.bucket,
                "Key.$": integ.doc_key(r, names.RUN_DOCUMENT),
                "Body.$": "States.JsonToString($.run)",
                "ServerSideEncryption": "aws:kms",
                "SSEKMSKeyId": names.placeholder("KmsKeyArn"),
                "BucketKeyEnabled": True,
            },
            "ResultPath": None,
            "Next": "L0",
        },
    }
    for k, level in enumerate(lv):
        states[f"L{k}"] = {
            "Type": "Parallel",
            "Comment": "level {}: {}".format(k, ", ".join(s.id for s in level)),
            "Branches": [_branch(r, aws_uc, s, where) for s in level],
            "ResultSelector": {f"{s.id}.$": f"$[{i}]" for i, s in enumerate(level)},
            "ResultPath": f"$.levels.L{k}",
            "Next": f"L{k + 1}" if k + 1 < len(lv) else "Outcome",
        }
    order = spec.topological_order()
    states["Outcome"] = {
        "Type": "Choice",
        "Comment": "the first failed step, in dependency order, ends the execution in its Fail state",
        "Choices": [
            {"Variable": f"{_status_path(where, sid)}.status", "StringEquals": FAILED, "Next": f"Failed: {sid}"}
            for sid in order
        ],
        "Default": "Succeeded",
    }
    for sid in order:
        states[_check_name(f"Failed: {sid}")] = {
            "Type": "Fail",
            "Comment": f"{sid} failed (its error and cause; the run report has the others)",
            "ErrorPath": f"{_status_path(where, sid)}.error.Error",
            "CausePath": f"{_status_path(where, sid)}.error.Cause",
        }
    states["Succeeded"] = {"Type": "Succeed"}
    return {
        "Comment": (
            f"{spec.description}. Rendered by mlblueprints from the {spec.pattern} pattern's declaration "
            f"(`mlblueprints statemachines render {uc.name}`); do not edit."
        ),
        "StartAt": "Start",
        "States": states,
    }


# patterns that run on Airflow only, and why (docs/stepfunctions.md): no definition is rendered
# or deployed for them
NOT_RENDERED: dict[str, str] = {}


def render_usecase(uc: UseCase) -> dict[str, dict[str, Any]]:
    """Every pattern's definition for ``uc`` (the patterns that apply to it, except
    :data:`NOT_RENDERED`), by pattern."""
    out = {}
    aws_uc = names.on_aws(uc)
    for pattern in patterns.PATTERNS:
        if pattern in NOT_RENDERED:
            continue
        spec = patterns.declare(pattern, aws_uc)
        if spec is not None:
            out[pattern] = render(spec, uc)
    return out


def text(definition: dict[str, Any]) -> str:
    """A definition as the file it is committed as (stable: two renders give the same bytes)."""
    return json.dumps(definition, indent=2, ensure_ascii=False) + "\n"


def definition_path(root: Path, usecase: str, pattern: str) -> Path:
    return root / usecase / f"{pattern}.asl.json"


def write(uc: UseCase, root: Path) -> list[Path]:
    """Render every definition of ``uc`` under ``root/<usecase>/``; remove ones of patterns that no
    longer apply. Returns the files written."""
    out = []
    rendered = render_usecase(uc)
    folder = root / uc.name
    folder.mkdir(parents=True, exist_ok=True)
    for pattern, definition in rendered.items():
        p = definition_path(root, uc.name, pattern)
        p.write_text(text(definition))
        out.append(p)
    for stale in folder.glob("*.asl.json"):
        if stale.name.removesuffix(".asl.json") not in rendered:
            stale.unlink()
    return out


def state_names(definition: dict[str, Any]) -> list[str]:
    """Every state name of a definition, nested ones included."""
    out: list[str] = []

    def walk(states: dict[str, Any]) -> None:
        for name, st in states.items():
            out.append(name)
            for b in st.get("Branches", []):
                walk(b["States"])
            if "ItemProcessor" in st:
                walk(st["ItemProcessor"]["States"])

    walk(definition["States"])
    return out
