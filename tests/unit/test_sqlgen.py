"""The Silver SQL: typing, reason codes, duplicate resolution; and its Trino translation."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import duckdb
import pytest
import sqlglot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlblueprints.config import load_usecase
from mlblueprints.lakehouse import sqlgen

ROOT = Path(__file__).resolve().parents[2]
UC = load_usecase(ROOT / "dags" / "usecases" / "fraud_detection.yaml")
TX = UC.datasets["transactions"]
GOOD = {
    "transaction_id": "tx_1",
    "event_time": "2024-03-01T10:00:00Z",
    "card_id": "card_1",
    "customer_id": "c1",
    "merchant_id": "m1",
    "amount": "10.50",
    "currency": "USD",
    "channel": "pos",
    "merchant_category": "grocery",
    "country": "US",
    "is_fraud": "0",
}


def bronze(con: duckdb.DuckDBPyConnection, rows: list[dict]) -> None:
    cols = [c.name for c in TX.columns]
    con.execute(
        "CREATE OR REPLACE TABLE b ("
        + ", ".join(f'"{c}" VARCHAR' for c in cols)
        + ", _extra VARCHAR, _raw_record VARCHAR, _parse_error VARCHAR, _source_file VARCHAR, _file_checksum VARCHAR,"
        " _line_number BIGINT, _ingest_run_id VARCHAR, _ingest_time TIMESTAMP, _landing_date DATE)"
    )
    for i, r in enumerate(rows):
        vals = [r.get(c) for c in cols] + [
            None,
            r.get("_raw_record"),
            None,
            "f.csv",
            "chk",
            i + 2,
            "run",
            datetime(2024, 3, 1, 12),
            date(2024, 3, 1),
        ]
        con.execute(f"INSERT INTO b VALUES ({', '.join('?' for _ in vals)})", vals)


def verdicts(rows: list[dict]) -> list[tuple]:
    con = duckdb.connect()
    bronze(con, rows)
    sql = sqlgen.silver_validate_sql(TX, "b")
    return con.execute(
        f"SELECT _reason_code, _reason_column, _reason_detail FROM ({sql}) ORDER BY _line_number"
    ).fetchall()


@pytest.mark.parametrize(
    ("change", "code", "column"),
    [
        ({}, None, None),
        ({"amount": "abc"}, "invalid_type", "amount"),
        ({"amount": "12,50"}, "invalid_type", "amount"),
        ({"event_time": "31/02/2024 25:61"}, "invalid_type", "event_time"),
        ({"is_fraud": "yes"}, "invalid_type", "is_fraud"),
        ({"card_id": ""}, "missing_required", "card_id"),
        ({"card_id": "   "}, "missing_required", "card_id"),
        ({"transaction_id": None}, "missing_required", "transaction_id"),
        ({"amount": "-5"}, "out_of_range", "amount"),
        ({"amount": "0"}, "out_of_range", "amount"),
        ({"amount": "50000.01"}, "out_of_range", "amount"),
        ({"is_fraud": "2"}, "out_of_range", "is_fraud"),
        ({"currency": "XYZ"}, "unknown_category", "currency"),
        ({"channel": "telepathy"}, "unknown_category", "channel"),
        ({"_raw_record": "a,b"}, "malformed_record", None),
        # exact casts: a value the type cannot hold exactly is invalid, never rounded
        ({"amount": "12.505"}, "invalid_type", "amount"),
        ({"amount": "0.005"}, "invalid_type", "amount"),
        ({"amount": "1e1"}, "invalid_type", "amount"),
        ({"amount": "1_000"}, "invalid_type", "amount"),
        ({"amount": "12.500"}, None, None),
        ({"is_fraud": "0.6"}, "invalid_type", "is_fraud"),
        ({"is_fraud": "1.4"}, "invalid_type", "is_fraud"),
        ({"is_fraud": "0x1"}, "invalid_type", "is_fraud"),
        ({"is_fraud": "1e0"}, "invalid_type", "is_fraud"),
        ({"is_fraud": "1.5"}, "invalid_type", "is_fraud"),
        ({"is_fraud": "1.0"}, None, None),  # exactly 1: how pandas writes an int column with gaps
        ({"is_fraud": "1.00001"}, "invalid_type", "is_fraud"),
        ({"is_fraud": "+1"}, None, None),
        ({"currency": "usd"}, "unknown_category", "currency"),
        # event time against the landing date (2024-03-01) of the record's file
        ({"event_time": "2030-01-01T00:00:00Z"}, "implausible_event_time", "event_time"),
        ({"event_time": "9999-12-31T23:59:59Z"}, "implausible_event_time", "event_time"),
        ({"event_time": "2024-03-03T00:00:00Z"}, "implausible_event_time", "event_time"),
        ({"event_time": "2024-03-02T23:59:59Z"}, None, None),
        ({"event_time": "1970-01-01T00:00:00Z"}, "implausible_event_time", "event_time"),
        ({"event_time": "2020-01-01T00:00:00Z"}, None, None),
        # the first failing check names the reason; the detail lists all of them
        ({"card_id": "", "amount": "abc", "currency": "XYZ"}, "missing_required", "card_id"),
        ({"amount": "abc", "currency": "XYZ"}, "invalid_type", "amount"),
    ],
)
def test_reason_codes(change, code, column):
    row = {**GOOD, **change}
    if change.get("_raw_record"):
        row = {"_raw_record": change["_raw_record"]}
    (got,) = verdicts([row])
    assert got[0] == code and got[1] == column, got
    if code and code != "malformed_record":
        assert f"{code}:{column}" in got[2]
    if change == {"card_id": "", "amount": "abc", "currency": "XYZ"}:
        assert got[2] == "missing_required:card_id; invalid_type:amount; unknown_category:currency"


def test_event_time_window_is_configurable():
    window = {"earliest": date(2024, 2, 1), "max_days_after_landing": 0}
    ds = TX.model_copy(update={"event_time_window": TX.event_time_window.model_copy(update=window)})
    con = duckdb.connect()
    times = ["2024-01-31T23:59:59Z", "2024-02-01T00:00:00Z", "2024-03-01T23:59:59Z", "2024-03-02T00:00:00Z"]
    bronze(con, [{**GOOD, "event_time": t} for t in times])
    got = con.execute(
        f"SELECT _reason_code FROM ({sqlgen.silver_validate_sql(ds, 'b')}) ORDER BY _line_number"
    ).fetchall()
    assert [g[0] for g in got] == ["implausible_event_time", None, None, "implausible_event_time"]


def test_exact_decimals_keep_their_digits():
    """A decimal within its scale is stored exactly; trailing zeros beyond it are not rounding."""
    con = duckdb.connect()
    bronze(con, [{**GOOD, "amount": a} for a in ("12.5", "12.500", "0.01", "+7", "00012.30")])
    sql = f"SELECT amount, _reason_code FROM (SELECT {sqlgen.typed_projection(TX)}, _reason_code, _line_number FROM ({sqlgen.silver_validate_sql(TX, 'b')})) ORDER BY _line_number"
    assert [(str(a), r) for a, r in con.execute(sql).fetchall()] == [
        ("12.50", None),
        ("12.50", None),
        ("0.01", None),
        ("7.00", None),
        ("12.30", None),
    ]


def test_typed_values_and_event_date():
    con = duckdb.connect()
    bronze(con, [{**GOOD, "amount": " 12.3 ", "event_time": "2024-02-29T23:59:59Z"}])
    sql = f"SELECT {sqlgen.typed_projection(TX)} FROM ({sqlgen.silver_validate_sql(TX, 'b')})"
    row = con.execute(sql).fetchone()
    names = [d[0] for d in con.execute(sql).description]
    got = dict(zip(names, row))
    assert str(got["amount"]) == "12.30"
    assert got["event_time"] == datetime(2024, 2, 29, 23, 59, 59)
    assert got["event_date"] == date(2024, 2, 29)
    assert got["is_fraud"] == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from([c.name for c in TX.columns]), st.one_of(st.none(), st.text(max_size=12)), max_size=11
    )
)
def test_any_text_gets_exactly_one_verdict(values):
    """Untrusted landed values never crash typing, and a row is valid or has one reason code."""
    (got,) = verdicts([{**GOOD, **values}])
    code, column, detail = got
    assert code in (None, *sqlgen.REASON_CODES)
    assert (code is None) == (detail is None)
    if code:
        assert detail.split("; ")[0] == f"{code}:{column}"


def test_resolve_latest_ingest_wins_and_kinds():
    con = duckdb.connect()
    cols = sqlgen.silver_columns(TX)
    con.execute(
        "CREATE TABLE c AS SELECT * FROM (VALUES "
        "('tx_1', 10.0, DATE '2024-03-01', 'a.csv', 'k1', 2, DATE '2024-03-01', TIMESTAMP '2024-03-02 00:00:00'),"
        "('tx_1', 12.0, DATE '2024-03-01', 'b.csv', 'k2', 5, DATE '2024-03-03', TIMESTAMP '2024-03-04 00:00:00'),"
        "('tx_2', 5.0, DATE '2024-03-01', 'a.csv', 'k1', 3, DATE '2024-03-01', TIMESTAMP '2024-03-02 00:00:00'),"
        "('tx_2', 5.0, DATE '2024-03-01', 'a.csv', 'k1', 4, DATE '2024-03-01', TIMESTAMP '2024-03-02 00:00:00')"
        ") AS t(transaction_id, amount, event_date, _source_file, _file_checksum, _line_number, _landing_date, _ingest_time)"
    )
    others = [
        c
        for c in cols
        if c
        not in (
            "transaction_id",
            "amount",
            "event_date",
            "_source_file",
            "_file_checksum",
            "_line_number",
            "_landing_date",
            "_ingest_time",
        )
    ]
    con.execute("CREATE VIEW cand AS SELECT *, " + ", ".join(f'NULL AS "{c}"' for c in others) + " FROM c")
    rows = con.execute(
        f"SELECT transaction_id, amount, _line_number, _version_rank, _duplicate_kind, _kept_line_number "
        f"FROM ({sqlgen.silver_resolve_sql(TX, 'cand')}) ORDER BY 1, 4"
    ).fetchall()
    assert rows == [
        ("tx_1", 12.0, 5, 1, None, 5),
        ("tx_1", 10.0, 2, 2, "key", 5),
        ("tx_2", 5.0, 4, 1, None, 4),  # same landing: the later line wins
        ("tx_2", 5.0, 3, 2, "exact", 4),
    ]


@pytest.mark.parametrize("which", ["validate", "resolve", "gold"])
def test_transforms_transpile_to_valid_trino(which):
    if which == "validate":
        sql = sqlgen.silver_validate_sql(TX, "db.b")
    elif which == "resolve":
        sql = sqlgen.silver_resolve_sql(TX, "db.c")
    else:
        sql = sqlgen.gold_with_inputs(
            UC.gold_sql_path("transaction_features").read_text(), {"transactions": "SELECT * FROM db.s"}
        )
    trino = sqlgen.to_trino(sql)
    sqlgen.validate_trino(trino)
    assert "TRY_STRPTIME" not in trino.upper() and "QUALIFY" not in trino.upper()
    # DuckDB-only functions must not survive the translation
    assert sqlglot.parse_one(trino, read="trino").find(sqlglot.exp.Anonymous) is None or which != "validate"


def test_gold_output_columns_and_cte_binding():
    sql = UC.gold_sql_path("transaction_features").read_text()
    cols = sqlgen.output_columns(sql)
    assert cols[0] == "transaction_id" and "card_txn_count_24h" in cols and "event_date" in cols
    bound = sqlgen.gold_with_inputs(
        "WITH x AS (SELECT 1 AS a) SELECT a FROM x JOIN transactions USING (a)", {"transactions": "SELECT 1 AS a"}
    )
    assert bound.index("transactions AS") < bound.index("x AS")
    with pytest.raises(ValueError, match="CTEs named like its inputs"):
        sqlgen.gold_with_inputs(
            "WITH transactions AS (SELECT 1 AS a) SELECT a FROM transactions", {"transactions": "SELECT 1 AS a"}
        )
