"""A step's Athena statements in a state machine, one at a time, decided as the Airflow operator
decides them.

Between two queries, ``AthenaStatementsOperator`` asks :func:`mlblueprints.core.service.next_statement`
which statement runs next (a chunked statement expanded from its plan query's rows, by
:func:`~mlblueprints.core.service.expand`) and, when Athena failed one,
:func:`~mlblueprints.core.service.repeats` whether it runs again. A state machine cannot call
Python between two Task states, and ASL's intrinsic functions cannot fill a template safely (they
have no replace, and no way to check that a plan value is a list of dates), so the state machine
asks a Lambda function made from the worker image, whose handler is :func:`handler`:

``{"op": "next", "call": {"Bucket", "Key"}, "done": {name: query id}, "last": {"name", "id"} | null}``
    reads the step's service call (``steps/<step>/call.json``, written by its prepare phase),
    adds ``last`` to ``done`` and answers :func:`advance`: the next statement (its name, run
    count, ``repeat_on`` and ``max_runs``) and its SQL, or none left, or an error that no retry
    mends (a plan value that is not a list of dates).
``{"op": "failed", "statement": {...}, "error": {"Error", "Cause"}}``
    a statement's query failed: :func:`judge` answers whether it runs again (with the next run
    count) or what the step fails with.

One statement's SQL is in the state at a time (at most :data:`SQL_IN_STATE_MAX` bytes of the
256 KiB Step Functions passes between states), so a step may have many more statements than
would fit in one state. The function does the same reads as the operator (the call from S3, a
plan's rows with GetQueryResults) and nothing else; the queries themselves are the state
machine's ``athena:startQueryExecution.sync`` Tasks.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from mlblueprints.core import service

log = logging.getLogger("mlblueprints.stepfunctions.statements")

# Step Functions passes at most 256 KiB between states: the statement's SQL and the rest of the
# state (the run's bookkeeping, a failed query's cause of at most 32 KiB) must fit
SQL_IN_STATE_MAX = 200 * 1024
CAUSE_MAX = 8000
FAILED = "AthenaStatementFailed"  # a statement that failed and is not run again (the step's retries apply)
REFUSED = "AthenaStatementRefused"  # nothing to retry: a plan value that is not a list of dates, an oversized statement
QUERY_ID = re.compile(r'"QueryExecutionId"\s*:\s*"([^"]+)"')


class _RowsUnavailable(Exception):
    """Reading a plan's rows failed (S3, Athena): the Task's retries, not a refusal."""


def statement_state(st: service.Statement, runs: int = 1) -> dict[str, Any]:
    """What the state machine keeps of a statement besides its SQL."""
    return {"name": st.name, "runs": runs, "repeat_on": st.repeat_on, "max_runs": st.max_runs}


def advance(
    statements: list[service.Statement],
    done: dict[str, str] | None,
    last: dict[str, str] | None,
    rows_of: Callable[[str], list[dict[str, Any]]],
) -> dict[str, Any]:
    """``last`` (the statement that just succeeded) added to ``done``, then the next statement as
    :func:`~mlblueprints.core.service.next_statement` gives it: ``{"done", "statement", "sql",
    "error"}`` (``statement`` None when all ran; ``error`` set when the step cannot go on)."""
    done = dict(done or {})
    if last:
        done[str(last["name"])] = str(last["id"])

    def rows(query_id: str) -> list[dict[str, Any]]:
        try:
            return rows_of(query_id)
        except Exception as exc:
            raise _RowsUnavailable(query_id) from exc

    out: dict[str, Any] = {"done": done, "statement": None, "sql": None, "error": None}
    try:
        st = service.next_statement(statements, done, rows)
    except _RowsUnavailable as exc:
        raise exc.__cause__ or exc from None
    except (ValueError, RuntimeError) as exc:  # the same plan gives the same answer: not retried
        out["error"] = {"Error": REFUSED, "Cause": str(exc)[:CAUSE_MAX]}
        return out
    if st is None:
        return out
    size = len(st.sql.encode())
    if size > SQL_IN_STATE_MAX:
        out["error"] = {
            "Error": REFUSED,
            "Cause": (
                f"athena statement {st.name} is {size} bytes; a state machine passes at most {SQL_IN_STATE_MAX} "
                "bytes of SQL between states (lower aws.athena_max_statement_bytes)"
            ),
        }
        return out
    out.update(statement=statement_state(st), sql=st.sql)
    return out


def query_failure(error: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(query id, state, reason) of a failed ``startQueryExecution.sync`` Task: its cause is the
    query's GetQueryExecution. A cause cut short (Step Functions keeps 32 KiB of it, and the
    query's SQL comes before its status) still names the query first."""
    cause = str(error.get("Cause") or "")
    try:
        data = json.loads(cause)
    except ValueError:
        data = None
    qe = data.get("QueryExecution") if isinstance(data, dict) else None
    if isinstance(qe, dict):
        status = qe.get("Status") or {}
        return qe.get("QueryExecutionId"), status.get("State"), status.get("StateChangeReason")
    m = QUERY_ID.search(cause)
    return (m[1] if m else None), None, None


def judge(
    statement: dict[str, Any],
    error: dict[str, Any],
    status_of: Callable[[str], tuple[str | None, str | None]] | None = None,
) -> dict[str, Any]:
    """Whether a statement whose query failed with ``error`` runs again
    (:func:`~mlblueprints.core.service.repeats`): ``{"repeat": True, "statement": <run count + 1>}``,
    or ``{"repeat": False, "error": {"Error", "Cause"}}`` with the operator's failure message.
    ``status_of(query id)`` gives (state, reason) when the cause does not."""
    st = service.Statement(
        str(statement["name"]),
        "",
        "",
        repeat_on=statement.get("repeat_on"),
        max_runs=int(statement.get("max_runs") or 1),
    )
    runs = int(statement.get("runs") or 1)
    query_id, state, reason = query_failure(error)
    if reason is None and query_id and status_of is not None:
        state, reason = status_of(query_id)
    if reason is None:  # no query (the call was refused) or no status: what the Task said
        reason = f"{error.get('Error')}: {error.get('Cause')}"
    if service.repeats(st, reason, runs):
        log.info("athena statement %s: %s; running it again (run %d)", st.name, st.repeat_on, runs + 1)
        return {"repeat": True, "statement": {**statement, "runs": runs + 1}, "error": None}
    message = service.failure_message(st, query_id or "no query", state or str(error.get("Error")), reason, runs)
    return {"repeat": False, "statement": statement, "error": {"Error": FAILED, "Cause": message[:CAUSE_MAX]}}


# ---------------------------------------------------------------- the Lambda function

_ROWS: dict[str, list[dict[str, Any]]] = {}  # a finished query's rows never change


def _runtime(context: Any) -> Any:
    """Clients of the function's own account and region; S3 requests name the account as the
    bucket's owner, as every S3 request of the project does."""
    import boto3

    from mlblueprints.aws.session import AwsRuntime

    session = boto3.Session()
    arn = str(getattr(context, "invoked_function_arn", "") or "")
    account = arn.split(":")[4] if arn.count(":") >= 6 else None
    return AwsRuntime(
        region=session.region_name or "",
        client_factory=lambda name, config: session.client(name, **({"config": config} if config else {})),
        session=session,
        expected_bucket_owner=account,
    )


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """The Lambda function's entry point (see the module docstring)."""
    op = event.get("op")
    rt = _runtime(context)
    if op == "next":
        where = event["call"]
        body = rt.client("s3").get_object(Bucket=where["Bucket"], Key=where["Key"])["Body"].read()
        statements = service.ServiceCall.from_dict(json.loads(body)).statements

        def rows_of(query_id: str) -> list[dict[str, Any]]:
            if query_id not in _ROWS:
                _ROWS[query_id] = rt.fetch_rows(query_id)
            return _ROWS[query_id]

        out = advance(statements, event.get("done"), event.get("last"), rows_of)
        log.info(
            "%s: %d done, next %s%s",
            where["Key"],
            len(out["done"]),
            (out["statement"] or {}).get("name"),
            f" ({out['error']['Error']})" if out["error"] else "",
        )
        return out
    if op == "failed":

        def status_of(query_id: str) -> tuple[str | None, str | None]:
            status = rt.client("athena").get_query_execution(QueryExecutionId=query_id)["QueryExecution"]["Status"]
            return status.get("State"), status.get("StateChangeReason")

        return judge(event["statement"], event["error"], status_of)
    raise ValueError(f"unknown op {op!r}: 'next' or 'failed'")
