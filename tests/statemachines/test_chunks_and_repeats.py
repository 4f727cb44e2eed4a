"""Chunked and repeated Athena statements in the state machines, executed by moto's ASL
interpreter: the statements each query ran, in order, are what ``AthenaStatementsOperator`` runs
for the same statements and the same answers of Athena (a plan's rows, failures and their
reasons). One :class:`AthenaScript` answers both: the state machine's stubbed
``startQueryExecution.sync`` Tasks (the statements function is the real handler, see
``sfn_harness``) and the operator's hook."""

from __future__ import annotations

import json
import re
import uuid
from datetime import date
from typing import Any
from unittest import mock

import pytest
from sfn_harness import Call, fraud_usecase_for_tests, results_page, seed_rows
from test_executions import _athena_prepare, _service_answers

from mlblueprints.aws import requests as req
from mlblueprints.core.service import Statement
from mlblueprints.lakehouse import aws as lh
from mlblueprints.lakehouse import naming
from mlblueprints.stepfunctions import names, statements

pytestmark = [pytest.mark.aws, pytest.mark.slow]

# a backfill's plan: several chunks of each kind, not in chunk order (a plan's rows are ordered by
# kind and chunk; the expansion must not rely on it)
PLAN_ROWS = [
    {"kind": "silver", "chunk": "2", "dates": "DATE '2024-06-20'"},
    {"kind": "dups", "chunk": "1", "dates": "DATE '2024-05-02'"},
    {"kind": "silver", "chunk": "0", "dates": ", ".join(f"DATE '2024-03-{d:02d}'" for d in range(1, 32))},
    {"kind": "movers", "chunk": "0", "dates": "DATE '2024-02-28', DATE '2024-02-29'"},
    {"kind": "dups", "chunk": "0", "dates": "DATE '2024-03-01', DATE '2024-03-02'"},
    {"kind": "silver", "chunk": "1", "dates": ", ".join(f"DATE '2024-04-{d:02d}'" for d in range(1, 31))},
]


class AthenaScript:
    """What Athena answers, by a statement's SQL: the rows of a plan query, and for a statement
    that fails, the reason of each run in turn (then it succeeds)."""

    def __init__(self, plans: dict[str, list[dict[str, Any]]] | None = None, fails: dict[str, list[str]] | None = None):
        self.plans, self.fails = dict(plans or {}), dict(fails or {})
        self.runs: dict[str, list[tuple[str, str, str | None]]] = {}  # who -> [(sql, id, reason)]
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.reason: dict[str, str | None] = {}

    def run(self, who: str, sql: str) -> tuple[str, str | None]:
        ran = self.runs.setdefault(who, [])
        n = sum(1 for s, _, _ in ran if s == sql)
        reasons = self.fails.get(sql, [])
        reason = reasons[n] if n < len(reasons) else None
        qid = str(uuid.uuid4())
        ran.append((sql, qid, reason))
        self.reason[qid] = reason
        if reason is None and sql in self.plans:
            self.rows[qid] = self.plans[sql]
        return qid, reason

    def sql(self, who: str) -> list[str]:
        return [s for s, _, _ in self.runs.get(who, [])]

    def state_machine_answer(self, tokens: list[str]):
        """The answer of the stubbed startQueryExecution.sync Tasks: a query that fails ends the Task
        with GetQueryExecution as its cause (as Step Functions' .sync does; moto refuses an error
        name in States.*, and the statements function does not read it)."""

        def answer(call: Call, n: int) -> Any:
            p = call.parameters
            tokens.append(p["ClientRequestToken"])
            qid, reason = self.run(call.state, p["QueryString"])
            if reason is not None:
                execution = {
                    "QueryExecutionId": qid,
                    "Query": p["QueryString"],
                    "Status": {"State": "FAILED", "StateChangeReason": reason},
                }
                return ("fail", "Athena.QueryFailed", json.dumps({"QueryExecution": execution}))
            if qid in self.rows:
                seed_rows(qid, self.rows[qid])
            return {"QueryExecution": {"QueryExecutionId": qid, "Status": {"State": "SUCCEEDED"}}}

        return answer


def operator_run(uc, step: str, stmts: list[Statement], script: AthenaScript) -> tuple[dict[str, Any] | None, str]:
    """AthenaStatementsOperator over ``stmts`` (polling in the worker), its hook answering from the
    script: (its output, or None and the message it failed with)."""
    from airflow.sdk.exceptions import AirflowException

    from mlblueprints.airflow.builder import service_operator

    op = service_operator("athena", uc.model_copy(update={"target": "aws"}), task_id=f"{step}.athena", request=[])
    op.statements, op.deferrable = [s.as_dict() for s in stmts], False
    hook = mock.Mock()
    hook.run_query.side_effect = lambda sql, *args: script.run("operator", sql)[0]
    hook.poll_query_status.side_effect = lambda qid, **kw: "FAILED" if script.reason[qid] else "SUCCEEDED"
    hook.get_state_change_reason.side_effect = lambda qid: script.reason[qid]
    hook.get_query_results_paginator.side_effect = lambda qid: [results_page(script.rows[qid])]
    op.__dict__["hook"] = hook
    try:
        return op.execute({"ti": mock.Mock(task_id=f"{step}.athena", try_number=1), "run_id": "r"}), ""
    except AirflowException as exc:
        return None, str(exc)


def _output(sfn_world, uc, ex, step: str) -> dict[str, Any]:
    """The service job's output the state machine wrote for the finish phase."""
    bucket, prefix = req.split_s3_uri(names.run_prefix(uc.aws_settings, "lakehouse", ex.services.execution))
    body = sfn_world.s3.get_object(Bucket=bucket, Key=f"{prefix}/{names.step_key(step, 'output')}")["Body"].read()
    return json.loads(body)


def _ids(text: str) -> str:
    return re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<query>", text)


def test_a_planned_backfill_runs_each_chunk_with_the_sql_the_airflow_operator_runs(sfn_world):
    uc = fraud_usecase_for_tests()
    step = "silver__transactions"
    stmts = lh.silver_statements(uc, "transactions", [date(2024, 3, 1), date(2024, 3, 2)])
    plan = next(s for s in stmts if s.name == "silver_plan")
    script, tokens = AthenaScript(plans={plan.sql: PLAN_ROWS}), []
    answers = _service_answers(uc, "lakehouse", lambda: None)
    answers[(step, "prepare")] = lambda call, n: _athena_prepare(stmts)
    answers["athena"] = script.state_machine_answer(tokens)
    ex = sfn_world.execute(uc, "lakehouse", answers)
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)

    out, failed = operator_run(uc, step, stmts, script)
    assert not failed
    ran = script.sql(f"{step}.statement")
    assert ran == script.sql("operator")  # the same statements, the same SQL, in the same order
    got = _output(sfn_world, uc, ex, step)
    assert list(got["queries"]) == list(out["queries"])  # the finish phase sees the operator's output's names
    assert list(got["queries"].values()) == [qid for _, qid, _ in script.runs[f"{step}.statement"]]
    chunked = [n for n in got["queries"] if "__" in n and not n.startswith("silver_quarantine")]
    assert chunked == [
        "silver_duplicates__000",
        "silver_duplicates__001",
        "silver_movers__000",
        "silver_merge__000",
        "silver_merge__001",
        "silver_merge__002",
    ]
    by_name = dict(zip(got["queries"], ran, strict=True))
    assert all("'{{" not in sql for sql in ran)
    assert (
        "DATE '2024-04-30'" in by_name["silver_merge__001"] and "DATE '2024-03-31'" not in by_name["silver_merge__001"]
    )
    assert "DATE '2024-06-20'" in by_name["silver_merge__002"]
    assert "DATE '2024-02-29'" in by_name["silver_movers__000"]
    assert len(set(tokens)) == len(tokens)  # a token per query, every step's
    # the statements function read the call once per statement and the plan's rows from Athena
    nexts = [c for c in ex.services.calls if c.kind == "statements" and c.state == f"{step}.next"]
    assert len(nexts) == len(ran) + 1


OPTIMIZE, VACUUM = lh.OPTIMIZE_MORE_RUNS, lh.VACUUM_MORE_RUNS


def _compact(max_runs: int):
    uc = fraud_usecase_for_tests()
    uc = uc.model_copy(update={"aws": uc.aws.model_copy(update={"athena_max_maintenance_runs": max_runs})})
    table = naming.table_name("transactions", naming.SILVER)
    stmts = lh.compact_statements(uc, {table: ["2024-03-01", "2024-03-02"]})
    assert [s.kind for s in stmts] == ["optimize", "alter", "vacuum"] and stmts[0].max_runs == max_runs
    return uc, stmts


def _run_compact(sfn_world, uc, stmts, script, tokens):
    answers = _service_answers(uc, "lakehouse", lambda: None)
    answers[("compact", "prepare")] = lambda call, n: _athena_prepare(stmts)
    answers["athena"] = script.state_machine_answer(tokens)
    return sfn_world.execute(uc, "lakehouse", answers, timeout=150)


def test_a_statement_athena_asks_to_run_again_runs_again_with_a_new_token_until_it_succeeds(sfn_world):
    uc, stmts = _compact(max_runs=5)
    optimize, _, vacuum = stmts
    more = f"{OPTIMIZE}: Optimize needs more runs to complete"
    script, tokens = AthenaScript(fails={optimize.sql: [more, more], vacuum.sql: [f"{VACUUM}: more"]}), []
    ex = _run_compact(sfn_world, uc, stmts, script, tokens)
    assert ex.status == "SUCCEEDED", (ex.error, ex.cause)
    out, failed = operator_run(uc, "compact", stmts, script)
    assert not failed
    ran = script.runs["compact.statement"]
    assert [s for s, _, _ in ran] == script.sql("operator") == [optimize.sql] * 3 + [stmts[1].sql] + [vacuum.sql] * 2
    assert [r for _, _, r in ran] == [more, more, None, None, f"{VACUUM}: more", None]
    compact_calls = [c for c in ex.services.calls if c.state == "compact.statement"]
    assert len({c.parameters["ClientRequestToken"] for c in compact_calls}) == 6  # a token per run
    # each failed run was judged with its run count; the finish phase gets the last run's query
    judged = [c.parameters["Payload"]["statement"] for c in ex.services.calls if c.state == "compact.statement.failed"]
    assert [(j["name"], j["runs"]) for j in judged] == [(optimize.name, 1), (optimize.name, 2), (vacuum.name, 1)]
    got = _output(sfn_world, uc, ex, "compact")
    assert list(got["queries"]) == list(out["queries"]) == [s.name for s in stmts]
    assert got["queries"][optimize.name] == ran[2][1] and got["queries"][vacuum.name] == ran[5][1]
    assert ("compact", "finish") in ex.worker_calls()


def test_a_statement_still_needing_runs_after_max_runs_fails_the_step_as_the_operator_does(sfn_world):
    uc, stmts = _compact(max_runs=3)
    optimize = stmts[0]
    script, tokens = AthenaScript(fails={optimize.sql: [f"{OPTIMIZE}: more runs"] * 100}), []
    ex = _run_compact(sfn_world, uc, stmts, script, tokens)
    assert ex.status == "FAILED" and "Failed: compact" in ex.entered()
    _, failed = operator_run(uc, "compact", stmts, script)
    assert ex.error == statements.FAILED
    assert _ids(ex.cause) == _ids(failed) and "still after 3 run(s); at most 3" in ex.cause
    ran = script.sql("compact.statement")
    # max_runs runs per try of the statement: the first and the step's retries
    assert ran == [optimize.sql] * (3 * (1 + uc.retries))
    assert ("compact", "finish") not in ex.worker_calls() and ("report", "run") in ex.worker_calls()


def test_any_other_failure_is_retried_as_the_steps_retries_say_then_fails_the_step(sfn_world):
    uc, stmts = _compact(max_runs=5)
    optimize = stmts[0]
    script, tokens = AthenaScript(fails={optimize.sql: ["ICEBERG_COMMIT_ERROR: conflict"] * 100}), []
    ex = _run_compact(sfn_world, uc, stmts, script, tokens)
    assert ex.status == "FAILED" and ex.error == statements.FAILED
    assert ex.cause.endswith("ICEBERG_COMMIT_ERROR: conflict")  # not "still after ...": never repeated
    assert script.sql("compact.statement") == [optimize.sql] * (1 + uc.retries)
    assert len(set(tokens[-(1 + uc.retries) :])) == 1 + uc.retries
