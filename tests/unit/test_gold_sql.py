"""Use-case Gold SQL is untrusted: one SELECT over its inputs, checked before it runs, and run on
a DuckDB connection that cannot reach files, the network or the environment anyway."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest
import yaml

from mlblueprints import cli
from mlblueprints.errors import PermanentError
from mlblueprints.lakehouse import local, sqlgen

ROOT = Path(__file__).resolve().parents[2]
FRAUD_SQL = (ROOT / "dags" / "usecases" / "sql" / "fraud_detection" / "transaction_features.sql").read_text()


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("DROP TABLE transactions", "is a DROP statement; the Gold SQL must be one SELECT query"),
        ("DELETE FROM transactions", "is a DELETE statement"),
        ("SELECT 1 AS a; DROP TABLE transactions", "holds 2 statements; write exactly one SELECT"),
        ("SELECT 1 AS a; SELECT 2 AS b", "holds 2 statements"),
        ("", "holds no statement"),
        ("-- nothing but a comment", "holds no statement"),
        ("SELEC transaction_id FROM transactions", "not valid SQL"),
        ("SELECT * FROM read_text('/proc/self/environ')", "calls read_text()"),
        ("SELECT * FROM glob('/etc/*')", "calls glob()"),
        ("SELECT getenv('HOME') AS h FROM transactions", "calls getenv()"),
        ("SELECT * FROM read_csv('/etc/passwd')", "calls read_csv()"),
        ("SELECT * FROM read_parquet('s3://bucket/key.parquet')", "calls read_parquet()"),
        ("SELECT * FROM read_csv_auto('https://example.com/x.csv')", "calls read_csv_auto()"),
        ("SELECT * FROM '/etc/passwd'", "reads '/etc/passwd', which is not one of its inputs"),
        ("SELECT * FROM transactions, query('SELECT 42')", "calls query()"),
        ("SELECT current_setting('temp_directory') AS t FROM transactions", "calls current_setting()"),
        ("SELECT * FROM duckdb_settings()", "calls duckdb_settings()"),
        ("SELECT * FROM main.transactions", "reads main.transactions: name input tables without a schema"),
        ("SELECT * FROM customers_bronze", "reads 'customers_bronze', which is not one of its inputs (transactions)"),
        (
            "SELECT t.* FROM transactions AS t WHERE t.card_id IN (SELECT card_id FROM read_json('/x.json'))",
            "calls read_json()",
        ),
        ("WITH x AS (SELECT * FROM glob('/etc/*')) SELECT * FROM x", "calls glob()"),
    ],
)
def test_gold_sql_that_is_not_one_select_over_its_inputs_is_refused(sql, message):
    with pytest.raises(sqlgen.GoldSqlError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        sqlgen.parse_gold_sql(sql, ["transactions"])
    assert "\n" not in str(err.value)
    assert isinstance(err.value, PermanentError)  # configuration: never retried


def test_trailing_comments_and_semicolons_are_cut_so_the_sql_can_be_wrapped():
    sql = "SELECT transaction_id, event_time FROM transactions -- the last line is a comment"
    _, body = sqlgen.parse_gold_sql(sql, ["transactions"])
    assert body == "SELECT transaction_id, event_time FROM transactions"
    _, body = sqlgen.parse_gold_sql(FRAUD_SQL + ";\n-- end\n", ["transactions"])
    assert body.endswith("FROM transactions")
    # wrapped the way build_gold wraps it, it is still one valid query
    wrapped = f"SELECT transaction_id FROM (\n{body}\n) WHERE event_date IS NOT NULL"
    assert sqlgen.output_columns(wrapped) == ["transaction_id"]
    # without the cut, the comment would swallow the closing parenthesis
    with pytest.raises(sqlgen.GoldSqlError, match="not valid SQL"):
        sqlgen.parse_gold_sql(f"SELECT transaction_id FROM ({FRAUD_SQL}\n-- end) WHERE TRUE")


def test_ctes_and_subqueries_over_the_inputs_are_allowed():
    sql = (
        "WITH recent AS (SELECT * FROM transactions WHERE amount > 0), cards AS (SELECT DISTINCT card_id FROM recent) "
        "SELECT r.transaction_id, r.event_time FROM recent AS r JOIN cards USING (card_id) "
        "UNION ALL SELECT transaction_id, event_time FROM transactions WHERE card_id IN (SELECT card_id FROM cards)"
    )
    tree, _ = sqlgen.parse_gold_sql(sql, ["transactions"])
    assert tree is not None
    sqlgen.parse_gold_sql(FRAUD_SQL, ["transactions"])


@pytest.fixture
def locked(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    duckdb.connect().execute(f"COPY (SELECT 42 AS answer) TO '{allowed / 'ok.parquet'}'")
    (tmp_path / "secret.txt").write_text("secret")
    con = local.connect()
    local.sandbox(con, [allowed])
    return con, allowed, tmp_path


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_text('/proc/self/environ')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('{tmp}/secret.txt')",
        "SELECT * FROM read_text('{allowed}/../secret.txt')",
        "SELECT * FROM read_csv('https://example.com/data.csv')",
        "SELECT * FROM read_parquet('s3://bucket/key.parquet')",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET allowed_directories = ['/']",
        "COPY (SELECT 1) TO '{tmp}/out.parquet'",
    ],
)
def test_the_sandboxed_engine_refuses_files_network_environment_and_settings(locked, sql):
    con, allowed, tmp = locked
    # the allowed folder stays readable: the refusals below are the sandbox, not a broken connection
    assert con.execute(f"SELECT answer FROM read_parquet('{allowed}/ok.parquet')").fetchall() == [(42,)]
    with pytest.raises(duckdb.Error) as err:
        con.execute(sql.format(tmp=tmp, allowed=allowed)).fetchall()
    assert any(
        why in str(err.value)
        for why in ("disabled by configuration", "disabled through configuration", "configuration has been locked")
    ), err.value


def _usecase_dir(tmp_path: Path, gold_sql: str) -> Path:
    data = yaml.safe_load((ROOT / "dags" / "usecases" / "fraud_detection.yaml").read_text())
    target = tmp_path / "usecases"
    shutil.copytree(ROOT / "dags" / "usecases" / "sql", target / "sql")
    (target / "sql" / "fraud_detection" / "transaction_features.sql").write_text(gold_sql)
    (target / "fraud_detection.yaml").write_text(yaml.safe_dump(data))
    return target / "fraud_detection.yaml"


def test_check_config_names_a_bad_gold_sql_in_one_line(tmp_path, capsys):
    path = _usecase_dir(tmp_path, "DROP TABLE transactions;")
    assert cli.main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"{path}: gold.transaction_features.sql: transaction_features.sql is a DROP statement; "
        "the Gold SQL must be one SELECT query"
    ]
    path = _usecase_dir(tmp_path / "b", "SELECT * FROM transactions, read_text('/proc/self/environ')")
    assert cli.main(["check-config", str(path)]) == 1
    assert "calls read_text()" in capsys.readouterr().err


def test_check_config_accepts_a_trailing_comment(tmp_path, capsys):
    path = _usecase_dir(tmp_path, FRAUD_SQL.rstrip() + "\n-- reviewed by the model risk team\n")
    assert cli.main(["check-config", str(path)]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")
