"""The worker: one phase of one step of a pattern, as a state machine's Processing job runs it.

    python -m mlblueprints.stepfunctions.worker <usecase> <pattern> <step> <phase> --execution <name> [--try <n>]

``phase`` is ``run`` (a step that is no service job on this target), ``prepare`` (a service step up
to its job: the step function returns a :class:`~mlblueprints.core.service.ServiceCall`),
``during`` (the work a call asks for while its job runs, ``ServiceCall.during``: a canary's traffic)
or ``finish`` (resume the backend with the job's output, :func:`mlblueprints.core.service.finish`).
It is what the Airflow builder's tasks do, with S3 in place of XCom: everything lives under the
execution's prefix (:func:`~mlblueprints.stepfunctions.names.run_prefix`)::

    run.json                        the execution: name, input (Params, interval, triggering event)
    steps/<step>/<phase>.json       the phase's outcome, which the state machine reads and routes on
    steps/<step>/call.json          the service call of a prepare phase (its request, resume state)
    steps/<step>/output.json        the service job's output (written by the state machine)
    steps/<step>/result.json        the step's result (what other steps take as inputs)
    home/runs/...                   the run reports a step wrote
    home/monitoring/...             the Evidently report of a monitored window

An outcome is ``{"status": "succeeded" | "service" | "skipped" | "failed" | "error", ...}``: a
:class:`~mlblueprints.errors.PermanentError` (a failed gate, a configuration error) is ``failed``
and the process exits 0 - the state machine fails the step without retrying; any other exception
is ``error`` and the process exits 1, which fails the Processing job, which the state machine
retries. ``--local DIR`` keeps the documents in a directory and runs the use case on the target its
YAML names (a step tried on a laptop, and the tests).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from mlblueprints import patterns, runtime
from mlblueprints.config import UseCase, load_usecase
from mlblueprints.core import results, service
from mlblueprints.core.context import StepContext
from mlblueprints.errors import PermanentError, StepSkipped
from mlblueprints.lineage import RunInfo
from mlblueprints.stepfunctions import asl, integrations, names

log = logging.getLogger("mlblueprints.stepfunctions.worker")

PHASES = ("run", "prepare", "during", "finish")
# Step Functions passes at most 256 KiB between states; an outcome carries a service request
STATE_PAYLOAD_MAX = 256 * 1024
REQUEST_BUDGET = STATE_PAYLOAD_MAX - 16 * 1024
CAUSE_MAX = 8000


class DeploymentMismatch(PermanentError):
    """The state machine was deployed with other resources than the worker's use case names."""


class Store(Protocol):
    def get(self, rel: str) -> Any: ...
    def put(self, rel: str, value: Any) -> None: ...
    def put_file(self, rel: str, path: Path) -> None: ...
    def where(self, rel: str) -> str: ...
    def execution(self, pattern: str, execution: str) -> Store: ...


class DirStore:
    """The execution's documents in a local directory."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def get(self, rel: str) -> Any:
        p = self.root / rel
        return json.loads(p.read_text()) if p.is_file() else None

    def put(self, rel: str, value: Any) -> None:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".partial")
        tmp.write_text(json.dumps(value, indent=1, default=str))
        tmp.replace(p)

    def put_file(self, rel: str, path: Path) -> None:
        dest = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(Path(path).read_bytes())

    def where(self, rel: str) -> str:
        return str(self.root / rel)

    def execution(self, pattern: str, execution: str) -> DirStore:
        """Another execution's documents: on a laptop, executions are directories side by side."""
        return DirStore(self.root.parent / execution)


class S3Store:
    """The execution's documents under its S3 prefix, written with SSE-KMS (the use case's key)."""

    def __init__(self, s3: Any, uc: UseCase, pattern: str, execution: str):
        from mlblueprints.aws import requests as req

        self.s3, self.uc, self.aws = s3, uc, names.aws_section(uc)
        self.bucket, self.prefix = req.split_s3_uri(names.run_prefix(self.aws, pattern, execution))
        self._kms = req.s3_put_kms(self.aws)

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}"

    def get(self, rel: str) -> Any:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self._key(rel))["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        return json.loads(body)

    def put(self, rel: str, value: Any) -> None:
        body = json.dumps(value, default=str).encode()
        self.s3.put_object(
            Bucket=self.bucket, Key=self._key(rel), Body=body, ContentType="application/json", **self._kms
        )

    def put_file(self, rel: str, path: Path) -> None:
        """A report file, as every other object (SSE-KMS, bucket keys): boto3's ``upload_file``
        refuses ``BucketKeyEnabled`` in its ExtraArgs, so not through it."""
        import mimetypes

        from mlblueprints.aws import s3io

        ctype = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
        s3io.put_file(self.s3, Path(path), self.where(rel), self.aws, ctype)

    def where(self, rel: str) -> str:
        return f"s3://{self.bucket}/{self._key(rel)}"

    def execution(self, pattern: str, execution: str) -> S3Store:
        """Another execution's documents (of this use case, under its own prefix)."""
        return S3Store(self.s3, self.uc, pattern, execution)


# ---------------------------------------------------------------- the run


def check_deployment(uc: UseCase, env: dict[str, str]) -> None:
    """The substitutions the state machine was deployed with (``MLB_EXPECT_<NAME>`` of the job)
    must be the use case's own: otherwise the worker would read and write other resources than
    the state machine."""
    values = names.substitutions(uc)
    wrong = [
        f"{n}: deployed {env[k]!r}, the use case says {values[n]!r}"
        for n in names.AWS_FIELDS
        if (k := f"MLB_EXPECT_{n.upper()}") in env and env[k] != values[n]
    ]
    if wrong:
        raise DeploymentMismatch("the state machine was deployed for other resources: " + "; ".join(wrong))


def _interval(cron: str | None, run_input: dict[str, Any]) -> tuple[Any, Any]:
    """The data interval of a run: ``{"interval": {"start", "end"}}`` in the input, or the one
    that ends at a schedule's ``scheduled_time`` (the pattern's ``cron``: its previous tick to it)."""
    given = run_input.get("interval") or {}
    if given.get("start"):
        return datetime.fromisoformat(given["start"]), datetime.fromisoformat(given.get("end") or given["start"])
    scheduled = run_input.get("scheduled_time")
    if scheduled and cron:
        from croniter import croniter

        end = datetime.fromisoformat(scheduled.replace("Z", "+00:00")).astimezone(UTC)
        expr = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *"}
        cron = expr.get(cron, cron)
        start = croniter(cron, end + timedelta(seconds=1)).get_prev(datetime)
        start = croniter(cron, start).get_prev(datetime) if start >= end else start
        return start, end
    return None, None


# what EventBridge sends when an execution of a state machine changes status
STATUS_DETAIL_TYPE = "Step Functions Execution Status Change"


def _triggering(uc: UseCase, run_input: dict[str, Any], store: Store) -> dict[str, list[dict[str, Any]]]:
    """The Asset events that started the execution: an EventBridge event of an emitted Asset (what
    a rule passes as the input); the Asset events a succeeded execution of another pattern emitted,
    when its status event is the input (``<prefix>-<pattern>`` of this use case: read from that
    execution's step outcomes, as an Airflow run scheduled on all of them gets them); or
    ``{"triggering": {asset: [extra, ...]}}``."""
    if run_input.get("detail-type") == asl.EVENT_DETAIL_TYPE:
        detail = run_input.get("detail") or {}
        return {detail["asset"]: [dict(detail.get("extra") or {})]}
    if run_input.get("detail-type") == STATUS_DETAIL_TYPE:
        return upstream_events(uc, run_input.get("detail") or {}, store)
    return {k: [dict(e or {}) for e in v] for k, v in (run_input.get("triggering") or {}).items()}


def upstream_events(uc: UseCase, detail: dict[str, Any], store: Store) -> dict[str, list[dict[str, Any]]]:
    """``{asset: [extra, ...]}`` of what the execution named by a status event's ``detail``
    (``stateMachineArn``, ``name``, ``status``) emitted: every succeeded ``run`` or ``finish``
    outcome's events, in the order of its pattern's steps. Refused (a configuration error) for a
    machine of another use case or an execution that did not succeed."""
    machine = str(detail.get("stateMachineArn") or "").rsplit(":", 1)[-1]
    head = names.resource_prefix(uc) + "-"
    pattern = machine[len(head) :] if machine.startswith(head) else ""
    if pattern not in patterns.PATTERNS:
        raise PermanentError(
            f"{uc.name}: started by the status of state machine {machine or '?'}, which is no pattern of this use "
            f"case ({head}<pattern>)"
        )
    if detail.get("status") != "SUCCEEDED":
        raise PermanentError(
            f"{uc.name}: started by execution {detail.get('name')} of {machine}, which {detail.get('status')}"
        )
    spec = patterns.declare(pattern, uc)
    other = store.execution(pattern, str(detail.get("name") or ""))
    out: dict[str, list[dict[str, Any]]] = {}
    for step in spec.steps if spec is not None else ():
        for phase in ("run", "finish"):
            outcome = other.get(names.step_key(step.id, phase)) or {}
            if outcome.get("status") != asl.SUCCEEDED:
                continue
            for event in outcome.get("events") or []:
                d = json.loads(event.get("Detail") or "{}")
                if d.get("asset"):  # what the worker put (_events); nothing else is an Asset event
                    out.setdefault(d["asset"], []).append(dict(d.get("extra") or {}))
    return out


def step_context(
    uc: UseCase,
    spec: patterns.PatternSpec,
    step: str,
    phase: str,
    run_doc: dict[str, Any],
    try_number: int,
    store: Store,
) -> StepContext:
    """The step's view of the execution; ``store`` reads what another execution emitted (a run
    started by its status event)."""
    run_input = run_doc.get("input") or {}
    if isinstance(run_input, str):
        run_input = json.loads(run_input or "{}")
    params = {p.name: p.default for p in spec.params}
    params.update(run_input.get("params") or {})
    start, end = _interval(spec.schedule.cron, run_input)
    run = RunInfo.for_usecase(
        uc, run_id=run_doc["execution"], dag_id=spec.dag_id, task_id=f"{step}.{phase}", try_number=try_number
    )
    return StepContext(
        uc=uc,
        run=run,
        params=params,
        interval_start=start,
        interval_end=end,
        triggering=_triggering(uc, run_input, store),
    )


def _events(uc: UseCase, spec: patterns.PatternSpec, step: patterns.Step, ctx: StepContext) -> list[dict[str, Any]]:
    """PutEvents entries of the Assets a succeeded step emits (EventBridge: at most 256 KiB)."""
    out = []
    for name in step.emits:
        detail = {
            "asset": name,
            "uri": spec.asset(name).uri,
            "usecase": uc.name,
            "pattern": spec.pattern,
            "execution": ctx.run.run_id,
            "extra": ctx.emitted.get(name, {}),
        }
        out.append(
            {
                "Source": asl.EVENT_SOURCE,
                "DetailType": asl.EVENT_DETAIL_TYPE,
                "Detail": json.dumps(detail, default=str),
                "Resources": [],
            }
        )
    return out


def _inputs(spec: patterns.PatternSpec, step: patterns.Step, store: Store, ctx: StepContext) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(step.kwargs)
    for arg, src in step.inputs.items():
        if isinstance(src, str):
            kwargs[arg] = store.get(names.step_key(src, "result"))
        else:
            kwargs[arg] = {s: store.get(names.step_key(s, "result")) for s in src}
    if step.collect:
        others = [s for s in spec.steps if s.id != step.id]
        kwargs["results"] = {s.id: store.get(names.step_key(s.id, "result")) for s in others}
        for s in others:
            if kwargs["results"][s.id] is not None:
                continue
            for ph in PHASES:
                outcome = store.get(names.step_key(s.id, ph)) or {}
                if outcome.get("status") in ("failed", "error"):
                    ctx.failures[s.id] = str((outcome.get("error") or {}).get("Cause") or "")
    return kwargs


def _state_request(call: service.ServiceCall) -> Any:
    """The request as the state machine gets it. Athena: the statements' names only - the
    statements function reads the SQL from ``call.json`` one statement at a time
    (:mod:`~mlblueprints.stepfunctions.statements`), so a step's statements may add up to more
    than a state holds. Other kinds: what their ``ServiceKind.handover`` makes of the request (a
    transform adds the prefix of every try's output)."""
    if call.kind == service.ATHENA:
        return [s.name for s in call.statements]
    return integrations.service_kind(call.kind).handover(call.request)


def service_outcome(call: service.ServiceCall) -> dict[str, Any]:
    """The outcome of a prepare phase that hands a service call to the state machine."""
    return {"status": "service", "kind": call.kind, "request": _state_request(call)}


def run_phase(
    uc: UseCase, pattern: str, step_id: str, phase: str, store: Store, try_number: int = 1, runtime_factory: Any = None
) -> dict[str, Any]:
    """Run one phase; write and return its outcome. Raises after writing an ``error`` outcome."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    spec = patterns.declare(pattern, uc)
    if spec is None:
        raise PermanentError(f"{uc.name}: the {pattern} pattern does not apply to this use case")
    step = spec.step(step_id)
    run_doc = store.get(names.RUN_DOCUMENT) or {}
    outcome: dict[str, Any]
    try:
        # in the try: a refused trigger (another use case's machine, a failed upstream run) is a
        # failed outcome, not an error the state machine retries
        ctx = step_context(uc, spec, step_id, phase, run_doc, try_number, store)
        ctx.runtime_factory = runtime_factory
        if phase in ("during", "finish"):
            called = store.get(names.step_key(step_id, "call"))
            if called is None:
                raise RuntimeError(f"{step_id}: no service call at {store.where(names.step_key(step_id, 'call'))}")
        if phase == "during":  # the work a call asks for while its job runs
            got = service.during(ctx, called, lambda: store.put(names.step_key(step_id, "ready"), {"ready": True}))
            store.put(names.step_key(step_id, phase), {"status": asl.SUCCEEDED, "result": got})
            _keep_reports(store)
            return {"status": asl.SUCCEEDED}
        if phase == "finish":
            raw = integrations.service_kind(called["kind"]).output(store.get(names.step_key(step_id, "output")))
            if called.get("during"):
                raw["During"] = _during_result(store, step_id)
            out = service.finish(ctx, called, raw)
        else:
            kwargs = _inputs(spec, step, store, ctx)
            out = service.resolve(step.fn)(ctx, **kwargs)
        if service.is_call(out):
            if phase != "prepare":
                raise RuntimeError(f"step {step_id} returned a service call in its {phase} phase")
            call = out if isinstance(out, service.ServiceCall) else service.ServiceCall.from_dict(out)
            outcome = service_outcome(call)
            size = len(json.dumps(outcome["request"], default=str).encode())
            if size > REQUEST_BUDGET:
                raise PermanentError(
                    f"{step_id}: the {call.kind} request is {size} bytes; Step Functions passes at most "
                    f"{STATE_PAYLOAD_MAX} bytes between states"
                )
            store.put(names.step_key(step_id, "call"), call.as_dict())
        else:
            results.check(step_id, step.result, out)
            store.put(names.step_key(step_id, "result"), out)
            outcome = {"status": asl.SUCCEEDED, "events": _events(uc, spec, step, ctx)}
    except StepSkipped as exc:
        outcome = {"status": asl.SKIPPED, "reason": str(exc)}
    except PermanentError as exc:
        outcome = {"status": asl.FAILED, "error": _error(exc)}
    except Exception as exc:
        store.put(names.step_key(step_id, phase), {"status": "error", "error": _error(exc)})
        _keep_reports(store)
        raise
    store.put(names.step_key(step_id, phase), outcome)
    _keep_reports(store)
    return outcome


def _during_result(store: Store, step_id: str) -> Any:
    """What the ``during`` phase returned; its failure fails the step (a permanent one is not retried)."""
    outcome = store.get(names.step_key(step_id, "during")) or {}
    if outcome.get("status") == asl.FAILED:
        err = outcome.get("error") or {}
        raise PermanentError(f"{step_id}: while the service job ran: {err.get('Error')}: {err.get('Cause')}")
    if outcome.get("status") != asl.SUCCEEDED:
        raise RuntimeError(
            f"{step_id}: the during phase left no result at {store.where(names.step_key(step_id, 'during'))}"
        )
    return outcome.get("result")


def _error(exc: BaseException) -> dict[str, str]:
    cause = f"{exc}".strip() or "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return {"Error": type(exc).__name__, "Cause": cause[:CAUSE_MAX]}


# what a phase writes under MLB_HOME for people to read: the run reports, and the monitoring
# pattern's Evidently report of a window (HTML and JSON snapshot); the job's disk goes with the job
KEPT_DIRS = ("runs", "monitoring")


def _keep_reports(store: Store) -> None:
    """The reports the phase wrote (:data:`KEPT_DIRS` of ``MLB_HOME``), kept with the execution."""
    home = runtime.home()
    for kept in KEPT_DIRS:
        for p in sorted((home / kept).rglob("*")) if (home / kept).is_dir() else []:
            if p.is_file():
                store.put_file("home/" + p.relative_to(home).as_posix(), p)


# ---------------------------------------------------------------- the entry point


def main(argv: list[str] | None = None) -> int:
    import os

    p = argparse.ArgumentParser(prog="python -m mlblueprints.stepfunctions.worker", description=__doc__.split("\n")[0])
    p.add_argument("usecase")
    p.add_argument("pattern", choices=patterns.PATTERNS)
    p.add_argument("step")
    p.add_argument("phase", choices=PHASES)
    p.add_argument("--execution", required=True, help="the execution's name ($$.Execution.Name)")
    p.add_argument("--try", dest="try_number", type=int, default=1, help="1 + the Task's retry count")
    p.add_argument("--local", type=Path, help="keep the documents in this directory; run the YAML's own target")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uc = load_usecase(runtime.usecases_dir() / f"{args.usecase}.yaml")
    if args.local is not None:
        store: Store = DirStore(args.local)
    else:
        import boto3

        check_deployment(uc, dict(os.environ))
        uc = names.on_aws(uc)
        store = S3Store(boto3.client("s3", region_name=names.aws_section(uc).region), uc, args.pattern, args.execution)
    log.info(
        "%s %s %s %s (execution %s, try %d)",
        uc.name,
        args.pattern,
        args.step,
        args.phase,
        args.execution,
        args.try_number,
    )
    try:
        outcome = run_phase(uc, args.pattern, args.step, args.phase, store, args.try_number)
    except Exception:
        log.exception("%s %s failed; the state machine retries it", args.step, args.phase)
        return 1
    log.info("outcome: %s", {k: v for k, v in outcome.items() if k not in ("request", "events")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
