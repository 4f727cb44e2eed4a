"""The statements function of the state machines (``mlblueprints.stepfunctions.statements``): the
next statement and whether a failed one runs again, decided by the functions the Airflow operator
uses; its handler on moto's S3 and Athena."""

from __future__ import annotations

import json
from datetime import date

import pytest
from sfn_harness import LambdaContext, fraud_usecase_for_tests, seed_rows

from mlblueprints.core import service
from mlblueprints.core.service import Statement
from mlblueprints.lakehouse import aws as lh
from mlblueprints.stepfunctions import names, statements

PLAN_ROWS = [
    {"kind": "silver", "chunk": "1", "dates": "DATE '2024-03-05'"},
    {"kind": "dups", "chunk": "0", "dates": "DATE '2024-03-01', DATE '2024-03-02'"},
    {"kind": "silver", "chunk": "0", "dates": "DATE '2024-03-01', DATE '2024-03-02', DATE '2024-03-03'"},
]


def _silver():
    uc = fraud_usecase_for_tests()
    return lh.silver_statements(uc, "transactions", [date(2024, 3, 1), date(2024, 3, 2)])


def _all(stmts, rows_of):
    """Every statement ``advance`` hands out, each then reported done, as the state machine does."""
    done, last, out = {}, None, []
    while True:
        got = statements.advance(stmts, done, last, rows_of)
        assert got["error"] is None, got["error"]
        if got["statement"] is None:
            return out, got["done"]
        out.append((got["statement"]["name"], got["sql"]))
        done, last = got["done"], {"name": got["statement"]["name"], "id": f"q-{got['statement']['name']}"}


def test_advance_hands_out_what_next_statement_gives_chunks_expanded_in_order():
    stmts = _silver()
    assert any(s.each for s in stmts) and any(s.fetch and s.name == "silver_plan" for s in stmts)
    ran, done = _all(stmts, lambda qid: PLAN_ROWS if qid == "q-silver_plan" else [])
    # the operator's own loop over the same functions
    want, seen = [], {}
    while (st := service.next_statement(stmts, seen, lambda qid: PLAN_ROWS)) is not None:
        want.append((st.name, st.sql))
        seen[st.name] = f"q-{st.name}"
    assert ran == want and done == seen
    names_ = [n for n, _ in ran]
    assert names_[-4:] == ["silver_duplicates__000", "silver_merge__000", "silver_merge__001", "silver_stats"]
    assert "silver_movers__000" not in names_  # no plan row of that kind: no chunk
    assert all("'{{" not in sql for _, sql in ran)
    assert "DATE '2024-03-05'" in dict(ran)["silver_merge__001"]


def test_advance_refuses_a_plan_value_that_is_not_a_list_of_dates_and_a_statement_too_large():
    stmts = _silver()
    bad = [{"kind": "silver", "chunk": "0", "dates": "DATE '2024-03-01') OR (1=1"}]
    done = {s.name: "q" for s in stmts if not s.each and s.name != "silver_stats"}
    got = statements.advance(stmts, done, None, lambda qid: bad)
    assert got["statement"] is None and got["error"]["Error"] == statements.REFUSED
    assert "not a list of dates" in got["error"]["Cause"]
    # a template whose plan has not run: refused too (the same call gives the same answer)
    got = statements.advance([Statement("m", "X IN ('{{dates}}')", "merge", each={"plan": "p"})], {}, None, dict)
    assert got["error"]["Error"] == statements.REFUSED and "has not run" in got["error"]["Cause"]
    huge = Statement("big", "SELECT '" + "x" * statements.SQL_IN_STATE_MAX + "'", "select")
    got = statements.advance([huge], {}, None, dict)
    assert got["error"]["Error"] == statements.REFUSED and "aws.athena_max_statement_bytes" in got["error"]["Cause"]


def test_advance_lets_a_failed_read_of_the_plan_raise_for_the_retries():
    stmts = _silver()
    done = {s.name: "q" for s in stmts if not s.each and s.name != "silver_stats"}

    def unavailable(qid):
        raise ConnectionError("throttled")

    with pytest.raises(ConnectionError):
        statements.advance(stmts, done, None, unavailable)


def _cause(reason, query_id="q-1", sql="OPTIMIZE t REWRITE DATA USING BIN_PACK"):
    """What a failed athena:startQueryExecution.sync Task gives as its cause: GetQueryExecution."""
    return json.dumps(
        {
            "QueryExecution": {
                "QueryExecutionId": query_id,
                "Query": sql,
                "Status": {"State": "FAILED", "StateChangeReason": reason},
            }
        }
    )


OPTIMIZE = {"name": "optimize_t", "runs": 1, "repeat_on": lh.OPTIMIZE_MORE_RUNS, "max_runs": 3}


def test_judge_repeats_on_the_named_reason_up_to_max_runs_then_fails_with_the_operators_message():
    error = {"Error": "States.TaskFailed", "Cause": _cause(f"{lh.OPTIMIZE_MORE_RUNS}: more runs needed")}
    first = statements.judge(OPTIMIZE, error)
    assert first == {"repeat": True, "statement": {**OPTIMIZE, "runs": 2}, "error": None}
    second = statements.judge(first["statement"], error)
    assert second["repeat"] and second["statement"]["runs"] == 3
    third = statements.judge(second["statement"], error)
    st = Statement("optimize_t", "", "", repeat_on=lh.OPTIMIZE_MORE_RUNS, max_runs=3)
    want = service.failure_message(st, "q-1", "FAILED", f"{lh.OPTIMIZE_MORE_RUNS}: more runs needed", 3)
    assert third == {
        "repeat": False,
        "statement": second["statement"],
        "error": {"Error": statements.FAILED, "Cause": want},
    }
    assert "still after 3 run(s); at most 3" in want
    # another reason: not repeated, whatever the statement's repeat_on
    other = statements.judge(OPTIMIZE, {"Error": "States.TaskFailed", "Cause": _cause("ICEBERG_COMMIT_ERROR")})
    assert not other["repeat"] and other["error"]["Cause"].endswith("ICEBERG_COMMIT_ERROR")
    # a statement without repeat_on is never repeated
    plain = {**OPTIMIZE, "repeat_on": None, "max_runs": 1}
    assert not statements.judge(plain, error)["repeat"]


def test_judge_asks_athena_when_the_cause_was_cut_short_and_reads_an_api_error():
    cut = _cause("x", sql="SELECT '" + "y" * 40000 + "'")[:32768]
    seen = []

    def status_of(qid):
        seen.append(qid)
        return "FAILED", f"{lh.OPTIMIZE_MORE_RUNS}: more runs needed"

    got = statements.judge(OPTIMIZE, {"Error": "States.TaskFailed", "Cause": cut}, status_of)
    assert seen == ["q-1"] and got["repeat"]
    api = statements.judge(OPTIMIZE, {"Error": "Athena.TooManyRequestsException", "Cause": "Rate exceeded"})
    assert not api["repeat"] and api["error"]["Error"] == statements.FAILED
    assert "no query" in api["error"]["Cause"] and "Rate exceeded" in api["error"]["Cause"]


@pytest.mark.aws
def test_the_handler_reads_the_call_and_the_plan_rows_from_s3_and_athena(sfn_world):
    uc = fraud_usecase_for_tests()
    sfn_world.bucket(uc.aws_settings.bucket)
    stmts = _silver()
    key = "fraud_detection/stepfunctions/lakehouse/e1/steps/silver__transactions/call.json"
    call = service.athena(stmts, "lakehouse", "resume_silver")
    sfn_world.s3.put_object(Bucket=uc.aws_settings.bucket, Key=key, Body=json.dumps(call.as_dict()))
    seed_rows("plan-query", PLAN_ROWS)
    ctx = LambdaContext(uc)
    assert ctx.invoked_function_arn.endswith(f":function:{names.statements_function_name(uc)}")
    done = {s.name: f"q-{s.name}" for s in stmts if not s.each and s.name not in ("silver_stats", "silver_plan")}
    event = {
        "op": "next",
        "call": {"Bucket": uc.aws_settings.bucket, "Key": key},
        "done": done,
        "last": {"name": "silver_plan", "id": "plan-query"},
    }
    got = statements.handler(event, ctx)
    want = service.next_statement(stmts, {**done, "silver_plan": "plan-query"}, lambda qid: PLAN_ROWS)
    assert got["statement"]["name"] == want.name == "silver_duplicates__000" and got["sql"] == want.sql
    assert got["done"]["silver_plan"] == "plan-query"
    verdict = statements.handler(
        {"op": "failed", "statement": OPTIMIZE, "error": {"Error": "x", "Cause": _cause(lh.OPTIMIZE_MORE_RUNS)}}, ctx
    )
    assert verdict["repeat"]
    with pytest.raises(ValueError, match="unknown op"):
        statements.handler({"op": "other"}, ctx)
