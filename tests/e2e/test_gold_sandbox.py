"""build_gold runs the use case's SQL on a sandboxed connection: even a SQL the checker let
through cannot read a file or the environment into a Gold table."""

from __future__ import annotations

from datetime import date

import duckdb
import pytest
import sqlglot

from helpers import fraud_usecase, read_table, runtime_home
from mlblueprints.lakehouse import local, sqlgen
from mlblueprints.lineage import RunInfo

DAY = date(2024, 3, 1)
HEADER = "transaction_id,event_time,card_id,customer_id,merchant_id,amount,currency,channel,merchant_category,country,is_fraud"
ROWS = [f"tx_{i},2024-03-01T1{i}:00:00Z,card_{i % 2},c{i},m1,1{i}.00,USD,pos,grocery,US,0" for i in range(5)]


@pytest.fixture
def silver_home(tmp_path):
    day_dir = tmp_path / "landing" / "transactions" / DAY.isoformat()
    day_dir.mkdir(parents=True)
    (day_dir / "part-000.csv").write_text(HEADER + "\n" + "\n".join(ROWS) + "\n")
    with runtime_home(tmp_path):
        uc = fraud_usecase()
        run = RunInfo.for_usecase(uc, run_id="sandbox")
        local.ingest_bronze(uc, "transactions", [DAY], run)
        silver = local.build_silver(uc, "transactions", [DAY], run)
        yield uc, run, {"transactions": silver["touched_event_dates"]}, tmp_path


def _with_sql(uc, tmp_path, sql: str):
    path = tmp_path / "gold.sql"
    path.write_text(sql)
    gold = uc.gold["transaction_features"].model_copy(update={"sql": str(path)})
    return uc.model_copy(update={"gold": {"transaction_features": gold}})


def test_a_gold_sql_ending_in_a_comment_runs(silver_home):
    uc, run, touched, tmp = silver_home
    sql = uc.gold_sql_path("transaction_features").read_text().rstrip() + "\n-- last line: a comment"
    out = local.build_gold(_with_sql(uc, tmp, sql), "transaction_features", touched, run)
    assert out["rows_written"] == 5
    assert sorted(read_table(uc, "transaction_features")["transaction_id"]) == [f"tx_{i}" for i in range(5)]


def test_the_engine_refuses_what_the_checker_missed(silver_home, monkeypatch):
    """Defence in depth: with the SQL checker switched off, reading the process environment or a
    file from a Gold SQL fails in DuckDB, and nothing is committed."""
    uc, run, touched, tmp = silver_home
    (tmp / "secret.txt").write_text("AWS_SECRET_ACCESS_KEY=do-not-leak")

    def no_check(sql, inputs=None):
        return sqlglot.parse_one(sql, read="duckdb"), sql

    monkeypatch.setattr(sqlgen, "parse_gold_sql", no_check)
    for leak in (
        "(SELECT content FROM read_text('/proc/self/environ'))",
        f"(SELECT content FROM read_text('{tmp}/secret.txt'))",
        "(SELECT string_agg(file, ',') FROM glob('/etc/*'))",
    ):
        sql = f"SELECT transaction_id, event_time, {leak} AS leak, event_date FROM transactions"
        with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
            local.build_gold(_with_sql(uc, tmp, sql), "transaction_features", touched, run)
        assert read_table(uc, "transaction_features").empty


def test_a_checked_gold_sql_error_is_permanent_and_names_the_file(silver_home):
    uc, run, touched, tmp = silver_home
    bad = _with_sql(uc, tmp, "SELECT transaction_id, event_time FROM transactions; DROP TABLE transactions")
    with pytest.raises(sqlgen.GoldSqlError, match=r"gold transaction_features: gold.sql holds 2 statements"):
        local.build_gold(bad, "transaction_features", touched, run)
    with runtime_home(tmp):
        assert read_table(uc, "transaction_features").empty
