"""Suites are checked before anything runs: present, real expectation types with valid arguments,
columns the checked table has; each problem one line naming the file and the expectation.
Starter suites are written from the schema and never overwrite a suite by accident."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import ROOT, fraud_usecase
from mlblueprints.errors import PermanentError
from mlblueprints.quality.check import check_usecase_suites
from mlblueprints.quality.suites import SuiteError


@pytest.fixture
def suites(tmp_path, monkeypatch) -> Path:
    """A copy of the shipped suites the test may break (MLB_EXPECTATIONS_DIR points at it)."""
    d = tmp_path / "expectations"
    shutil.copytree(ROOT / "expectations", d)
    monkeypatch.setenv("MLB_EXPECTATIONS_DIR", str(d))
    return d


def _edit(path: Path, fn) -> None:
    spec = json.loads(path.read_text())
    fn(spec["expectations"])
    path.write_text(json.dumps(spec))


def test_shipped_suites_check_out(suites):
    assert check_usecase_suites(fraud_usecase()) == []


def test_missing_suite_names_the_gate_and_the_fix(suites):
    uc = fraud_usecase()
    (suites / "fraud_detection" / "merchants.silver.json").unlink()
    assert check_usecase_suites(uc) == [
        f"{suites / 'fraud_detection' / 'merchants.silver.json'}: missing: the silver gate of merchants needs suite "
        f"'fraud_detection/merchants.silver' ({uc.source_path}: datasets.merchants.quality.silver); "
        "write starter suites with: mlblueprints suites init fraud_detection"
    ]


def test_a_gate_switched_off_needs_no_suite(suites):
    import yaml

    from mlblueprints.config import parse_usecase

    (suites / "fraud_detection" / "merchants.silver.json").unlink()
    doc = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    doc["datasets"]["merchants"]["quality"] = {"silver": ""}
    uc = parse_usecase(doc, ROOT / "dags/usecases/fraud_detection.yaml")
    assert check_usecase_suites(uc) == []


def test_each_suite_problem_is_one_line(suites):
    silver = suites / "fraud_detection" / "transactions.silver.json"
    gold = suites / "fraud_detection" / "transaction_features.gold.json"

    def break_silver(ex):
        ex[1]["type"] = "expect_column_values_to_be_uniqe"  # typo in the type
        ex[13]["kwargs"]["colum"] = ex[13]["kwargs"].pop("column")  # typo in an argument
        ex[14]["kwargs"].pop("value_set")  # a required argument missing
        ex.append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "amount_eur"}})
        ex.append(
            {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "country", "regex": "^[A-Z]{2}$"}}
        )

    def break_gold(ex):
        ex.append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "card_txn_count_30d"}})
        ex.append(
            {"type": "expect_column_pair_values_to_be_equal", "kwargs": {"column_A": "amount", "column_B": "amt"}}
        )

    _edit(silver, break_silver)
    _edit(gold, break_gold)
    lines = check_usecase_suites(fraud_usecase())
    assert lines[:5] == [
        f"{silver}: expectations[1] expect_column_values_to_be_uniqe(transaction_id): unknown expectation type "
        "(did you mean 'expect_column_values_to_be_unique'?)",
        f"{silver}: expectations[13] expect_column_values_to_be_between: unknown argument 'colum' "
        "(did you mean 'column'?)",
        f"{silver}: expectations[14] expect_column_values_to_be_in_set(currency): missing argument 'value_set'",
        f"{silver}: expectations[25] expect_column_values_to_not_be_null(amount_eur): column 'amount_eur' is not a "
        "column of the table (did you mean 'amount'?) (columns: transaction_id, event_time, card_id, customer_id, "
        "merchant_id, amount, currency, channel, merchant_category, country, is_fraud, age_band, region, event_date, "
        "_source_file, _file_checksum, _line_number, _ingest_run_id, _ingest_time, _landing_date)",
        f"{silver}: expectations[26] expect_column_values_to_match_regex(country): not available on DuckDB "
        "(Great Expectations has no regular expressions for it)",
    ]
    assert len(lines) == 7
    assert lines[5].startswith(
        f"{gold}: expectations[31] expect_column_values_to_not_be_null(card_txn_count_30d): column "
        "'card_txn_count_30d' is not a column of the table (did you mean 'card_txn_count_7d'?) (columns: transaction_id,"
    )
    assert lines[6].startswith(
        f"{gold}: expectations[32] expect_column_pair_values_to_be_equal(amount): column_B 'amt' is not a column"
    )
    assert all("\n" not in line for line in lines)


def test_numeric_checks_of_a_boolean_column_are_refused(tmp_path, monkeypatch):
    import yaml

    from mlblueprints.config import parse_usecase

    doc = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    doc["datasets"]["transactions"]["schema"][10] = {"name": "is_fraud", "type": "boolean", "required": True}
    uc = parse_usecase(doc, ROOT / "dags/usecases/fraud_detection.yaml")
    d = tmp_path / "expectations"
    shutil.copytree(ROOT / "expectations", d)
    monkeypatch.setenv("MLB_EXPECTATIONS_DIR", str(d))
    silver = d / "fraud_detection" / "transactions.silver.json"

    def bool_label(ex):
        for e in ex:
            if e["kwargs"].get("column") == "is_fraud" and e["type"] == "expect_column_values_to_be_in_set":
                e["kwargs"]["value_set"] = [True, False]

    _edit(silver, bool_label)
    assert check_usecase_suites(uc) == [
        f"{silver}: expectations[20] expect_column_mean_to_be_between(is_fraud): column 'is_fraud' is boolean and "
        "expect_column_mean_to_be_between compares numbers; use expect_column_values_to_be_in_set, or check the "
        "rate on CAST(is_fraud AS INTEGER) in the Gold SQL"
    ]


def test_the_gate_refuses_a_broken_suite_before_running_it(tmp_path):
    """At run time the same checks run against the table the gate sees, and fail as a
    PermanentError (no retry) naming file and expectation - not a raw Great Expectations error."""
    import duckdb

    from mlblueprints.quality.gx import run_gate

    d = tmp_path / "expectations" / "uc"
    d.mkdir(parents=True)
    (d / "t.silver.json").write_text(
        json.dumps(
            {
                "expectations": [
                    {"type": "expect_column_values_to_not_be_nul", "kwargs": {"column": "a"}},
                    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "b"}},
                    {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "flag", "min_value": 0}},
                ]
            }
        )
    )
    con = duckdb.connect(str(tmp_path / "db.duckdb"))
    con.execute("CREATE VIEW v AS SELECT 1 AS a, true AS flag")
    with pytest.raises(SuiteError) as exc:
        run_gate(
            con,
            "v",
            suite_name="uc/t.silver",
            table="t",
            layer="silver",
            run_name="r",
            quality_dir=tmp_path / "quality",
            expectations_dir=tmp_path / "expectations",
        )
    assert isinstance(exc.value, PermanentError)
    path = d / "t.silver.json"
    assert str(exc.value).splitlines() == [
        f"{path}: expectations[0] expect_column_values_to_not_be_nul(a): unknown expectation type "
        "(did you mean 'expect_column_values_to_not_be_null'?)",
        f"{path}: expectations[1] expect_column_values_to_not_be_null(b): column 'b' is not a column of the table "
        "(columns: a, flag)",
        f"{path}: expectations[2] expect_column_mean_to_be_between(flag): column 'flag' is boolean and "
        "expect_column_mean_to_be_between compares numbers; use expect_column_values_to_be_in_set, or check the "
        "rate on CAST(flag AS INTEGER) in the Gold SQL",
    ]
    assert not (tmp_path / "quality" / "results").exists()  # nothing was validated


def test_missing_suite_at_run_time_is_permanent(tmp_path):
    from mlblueprints.quality.suites import load_suite

    with pytest.raises(
        SuiteError, match=r"suite 'uc/none.silver' not found \(starter suites: mlblueprints suites init"
    ):
        load_suite("uc/none.silver", tmp_path)


# ------------------------------------------------------------------ starter suites


def test_starter_suites_follow_the_schema_and_check_out(tmp_path):
    from mlblueprints.quality.starter import starter_suites, write_starter_suites

    uc = fraud_usecase()
    got = starter_suites(uc)
    assert sorted(got) == sorted(
        f"fraud_detection/{t}"
        for t in [
            "transactions.bronze",
            "transactions.silver",
            "customers.bronze",
            "customers.silver",
            "merchants.bronze",
            "merchants.silver",
            "transaction_features.gold",
            "predictions.scoring",
        ]
    )
    scoring = [(e["type"], e["kwargs"]) for e in got["fraud_detection/predictions.scoring"]["expectations"]]
    assert ("expect_column_values_to_be_in_set", {"column": "decision", "value_set": [0, 1]}) in scoring
    silver = [(e["type"], e["kwargs"]) for e in got["fraud_detection/transactions.silver"]["expectations"]]
    assert ("expect_column_values_to_be_unique", {"column": "transaction_id"}) in silver
    assert ("expect_column_values_to_not_be_null", {"column": "is_fraud"}) in silver
    assert ("expect_column_values_to_be_between", {"column": "amount", "min_value": 0.01, "max_value": 50000}) in silver
    assert ("expect_column_values_to_be_in_set", {"column": "currency", "value_set": ["USD", "EUR", "GBP"]}) in silver
    assert ("expect_column_values_to_not_be_null", {"column": "birth_year"}) not in [
        (e["type"], e["kwargs"]) for e in got["fraud_detection/customers.silver"]["expectations"]
    ]  # not required
    gold = [(e["type"], e["kwargs"]) for e in got["fraud_detection/transaction_features.gold"]["expectations"]]
    assert ("expect_column_to_exist", {"column": "amount_to_card_avg_7d"}) in gold  # read from the Gold SQL
    written = write_starter_suites(uc, tmp_path)
    assert {status for _, status in written} == {"written"}
    assert check_usecase_suites(uc, tmp_path) == []
