"""Deploy a use case's state machines and start executions, with boto3.

``deploy`` creates or updates one state machine per pattern (``mlb-<usecase>-<pattern>``) from the
committed definition under ``statemachines/<usecase>/`` - refusing one that is not what the
declarations render today - with the ``${...}`` substitutions filled from the use case
(:func:`~mlblueprints.stepfunctions.names.substitutions`). The CloudFormation templates under
``infra/`` deploy the same definitions through ``DefinitionSubstitutions``; this is the way
without a stack (a development account, a test under moto).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.config import UseCase
from mlblueprints.stepfunctions import asl, names

DONE = ("SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED")


def statemachines_dir() -> Path:
    return runtime.project_root() / "statemachines"


def state_machine_role_arn(uc: UseCase) -> str:
    """The role the templates create for the state machines (``<prefix>-states``)."""
    aws = names.aws_section(uc)
    return f"arn:aws:iam::{aws.account_id}:role/{names.resource_prefix(uc)}-states"


def definitions(uc: UseCase, root: Path | None = None) -> dict[str, str]:
    """The committed definitions of ``uc`` (pattern -> text); each must be what the declarations
    render now (a stale file is refused: render, review, commit, then deploy)."""
    root = root or statemachines_dir()
    out = {}
    for pattern, definition in asl.render_usecase(uc).items():
        fresh = asl.text(definition)
        path = asl.definition_path(root, uc.name, pattern)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `mlblueprints statemachines render {uc.name}`")
        if path.read_text() != fresh:
            raise ValueError(f"{path} is not what the declarations render: run `mlblueprints statemachines render`")
        out[pattern] = fresh
    return out


def deploy(
    uc: UseCase, sfn: Any, *, image_tag: str, role_arn: str | None = None, root: Path | None = None
) -> dict[str, str]:
    """Create or update the state machines of ``uc``; returns pattern -> state machine ARN."""
    values = names.substitutions(uc, image_tag)
    role = role_arn or state_machine_role_arn(uc)
    existing = {}
    for page in sfn.get_paginator("list_state_machines").paginate():
        existing.update({m["name"]: m["stateMachineArn"] for m in page["stateMachines"]})
    out = {}
    for pattern, text in definitions(uc, root).items():
        name = names.state_machine_name(uc, pattern)
        definition = names.substitute(text, values)
        if name in existing:
            sfn.update_state_machine(stateMachineArn=existing[name], definition=definition, roleArn=role)
            out[pattern] = existing[name]
        else:
            out[pattern] = sfn.create_state_machine(
                name=name,
                definition=definition,
                roleArn=role,
                type="STANDARD",
                tags=[
                    {"key": "managed-by", "value": "mlblueprints"},
                    {"key": "mlblueprints:usecase", "value": uc.name},
                    {"key": "mlblueprints:pattern", "value": pattern},
                ],
            )["stateMachineArn"]
    return out


def start(uc: UseCase, sfn: Any, pattern: str, params: dict[str, Any] | None = None, name: str | None = None) -> str:
    """Start an execution of the pattern's state machine with ``{"params": ...}``; returns its ARN."""
    arn = _state_machine_arn(uc, sfn, pattern)
    name = name or f"manual-{uuid.uuid4()}"
    if not names.EXECUTION_NAME_RE.match(name):
        raise ValueError(f"execution name {name!r}: letters, digits, '-' and '_' only (the S3 layout uses it)")
    return sfn.start_execution(stateMachineArn=arn, name=name, input=json.dumps({"params": params or {}}))[
        "executionArn"
    ]


def wait(sfn: Any, execution_arn: str, timeout: float = 3600, poll: float = 5) -> dict[str, Any]:
    """Poll until the execution ends (or ``timeout``); returns DescribeExecution."""
    deadline = time.monotonic() + timeout
    while True:
        d = sfn.describe_execution(executionArn=execution_arn)
        if d["status"] in DONE or time.monotonic() > deadline:
            return d
        time.sleep(poll)


def _state_machine_arn(uc: UseCase, sfn: Any, pattern: str) -> str:
    name = names.state_machine_name(uc, pattern)
    for page in sfn.get_paginator("list_state_machines").paginate():
        for m in page["stateMachines"]:
            if m["name"] == name:
                return m["stateMachineArn"]
    raise LookupError(f"no state machine {name}: run `mlblueprints statemachines deploy {uc.name}` first")
