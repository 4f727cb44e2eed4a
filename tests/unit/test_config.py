"""Use-case YAML: valid files load; every kind of mistake is one line naming file, field, reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlblueprints.config import UseCaseError, load_usecase, load_usecases, parse_usecase

ROOT = Path(__file__).resolve().parents[2]
FRAUD = ROOT / "dags" / "usecases" / "fraud_detection.yaml"


def fraud() -> dict:
    return yaml.safe_load(FRAUD.read_text())


def write(tmp_path: Path, name: str, data: dict | str) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    (tmp_path / "sql" / "fraud_detection").mkdir(parents=True, exist_ok=True)
    (tmp_path / "sql" / "fraud_detection" / "transaction_features.sql").write_text("SELECT 1 AS x")
    return p


def test_shipped_usecase_loads():
    uc = load_usecase(FRAUD)
    assert uc.name == "fraud_detection"
    assert set(uc.datasets) == {"transactions", "customers", "merchants"}
    tx = uc.datasets["transactions"]
    assert tx.primary_key == ["transaction_id"]
    assert tx.column("amount").type == "decimal(12,2)"
    assert uc.suite_name("transactions", "silver") == "fraud_detection/transactions.silver"
    assert uc.suite_name("transaction_features", "gold") == "fraud_detection/transaction_features.gold"
    assert uc.retries >= 2


def test_config_hash_is_stable_and_sensitive():
    a = parse_usecase(fraud(), "x/fraud_detection.yaml")
    b = parse_usecase(fraud(), "y/fraud_detection.yaml")
    assert a.config_hash() == b.config_hash()  # the location is not configuration
    changed = fraud()
    changed["lakehouse"]["target_file_size_mb"] = 64
    assert parse_usecase(changed, "x/fraud_detection.yaml").config_hash() != a.config_hash()


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (
            lambda d: d["datasets"]["transactions"]["schema"][5].update(type="money"),
            "datasets.transactions.schema[5].type",
            "unknown type 'money'",
        ),
        (
            lambda d: d["datasets"]["transactions"].update(primary_key=["nope"]),
            "datasets.transactions",
            "primary_key column 'nope' is not in the schema",
        ),
        (
            lambda d: d["datasets"]["transactions"].update(event_time="amount"),
            "datasets.transactions",
            "must have type timestamp",
        ),
        (lambda d: d.update(retries=0), "retries", "greater than or equal to 2"),
        (lambda d: d.update(tragte="aws"), "tragte", "unknown field"),
        (lambda d: d.update(target="aws", aws=None), "<root>", "target is aws but the aws section is missing"),
        (lambda d: d["aws"].update(kms_key_arn="my-key"), "aws.kms_key_arn", "should match pattern"),
        (
            lambda d: d["gold"]["transaction_features"].update(inputs=["payments"]),
            "<root>",
            "unknown data set 'payments'",
        ),
        (
            lambda d: d["datasets"]["transactions"]["schema"][6].update(min=5),
            "datasets.transactions.schema[6]",
            "min/max apply to numeric columns",
        ),
        (lambda d: d.update(start_date="yesterday"), "start_date", "valid date"),
    ],
)
def test_bad_yaml_is_one_readable_line(tmp_path, mutate, field, reason):
    data = fraud()
    mutate(data)
    p = write(tmp_path, "fraud_detection", data)
    with pytest.raises(UseCaseError) as exc:
        load_usecase(p)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{p}: {field}: "), msg
    assert reason in msg, msg


def test_syntax_error_names_line(tmp_path):
    p = write(tmp_path, "fraud_detection", "name: fraud_detection\ndatasets: [unclosed\n")
    with pytest.raises(UseCaseError, match=r"fraud_detection.yaml: line \d+, column \d+: invalid YAML"):
        load_usecase(p)


def test_name_must_match_file(tmp_path):
    p = write(tmp_path, "other", fraud())
    with pytest.raises(UseCaseError, match="name: must equal the file name 'other'"):
        load_usecase(p)


def test_missing_gold_sql_is_reported(tmp_path):
    data = fraud()
    data["gold"]["transaction_features"]["sql"] = "sql/missing.sql"
    p = write(tmp_path, "fraud_detection", data)
    with pytest.raises(UseCaseError, match="gold.transaction_features.sql: file not found"):
        load_usecase(p)


def test_one_bad_file_leaves_the_others(tmp_path):
    write(tmp_path, "fraud_detection", fraud())
    (tmp_path / "broken.yaml").write_text("name: broken\nstart_date: 2024-01-01\n")
    ok, errors = load_usecases(tmp_path)
    assert [u.name for u in ok] == ["fraud_detection"]
    assert len(errors) == 1 and str(errors[0]).startswith(f"{tmp_path / 'broken.yaml'}: datasets: ")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("name: broken\n".encode("utf-16"), "<file>: not UTF-8 text (UTF-16 text (byte-order mark FF FE)); save"),
        ("name: broken\n".encode("utf-16-be"), "<file>: contains NUL bytes (binary, or UTF-16 text without"),
        (b"name: caf\xe9\n", "<file>: not UTF-8 text (invalid byte 0xe9 at line 1)"),
        (b"name: a\x00b\n", "<file>: contains NUL bytes"),
        (("a: " * 5000 + "1\n").encode(), "invalid YAML"),
        (("[" * 100_000 + "]" * 100_000 + "\n").encode(), "nested too deeply"),
        (b"x" * (2 << 20), "<file>: 2,097,152 bytes; a use-case file is at most 1,048,576"),
        (b"- just\n- a list\n", "<root>: expected a mapping, got list"),
    ],
)
def test_any_unreadable_yaml_is_that_files_one_line_and_the_others_load(tmp_path, content, reason):
    """A UTF-16, binary, deeply nested or oversized YAML used to raise past the loader and remove
    every DAG of every use case."""
    write(tmp_path, "fraud_detection", fraud())
    (tmp_path / "broken.yaml").write_bytes(content)
    ok, errors = load_usecases(tmp_path)
    assert [u.name for u in ok] == ["fraud_detection"]
    (err,) = errors
    assert str(err).startswith(f"{tmp_path / 'broken.yaml'}: ") and "\n" not in str(err)
    assert reason in str(err), str(err)


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (
            lambda d: d["datasets"].update({"t" * 301: d["datasets"]["customers"]}),
            "datasets",
            "table name is 301 characters long; at most 200 are allowed",
        ),
        (
            lambda d: d["datasets"]["transactions"]["schema"][0].update(name="c" * 201),
            "datasets.transactions.schema[0].name",
            "at most 200",
        ),
        (
            lambda d: d["datasets"]["transactions"]["landing"].update(csv_delimiter="\n"),
            "datasets.transactions.landing.csv_delimiter",
            "cannot be a CSV delimiter",
        ),
        (
            lambda d: d["datasets"]["transactions"]["landing"].update(csv_delimiter='"'),
            "datasets.transactions.landing.csv_delimiter",
            "cannot be a CSV delimiter",
        ),
        (
            lambda d: d["datasets"]["transactions"]["landing"].update(csv_delimiter=",,"),
            "datasets.transactions.landing.csv_delimiter",
            "cannot be a CSV delimiter",
        ),
        (
            lambda d: d["datasets"]["transactions"]["landing"].update(csv_delimiter="a"),
            "datasets.transactions.landing.csv_delimiter",
            "cannot be a CSV delimiter",
        ),
        (
            lambda d: d["datasets"]["transactions"].update(quality={"silver": "../../etc/passwd"}),
            "datasets.transactions.quality",
            "inside expectations/ (no '..'",
        ),
        (
            lambda d: d["gold"]["transaction_features"].update(quality="/etc/passwd"),
            "gold.transaction_features.quality",
            "no leading '/'",
        ),
        (
            lambda d: d["datasets"]["transactions"].update(event_time_window={"max_days_after_landing": -1}),
            "datasets.transactions.event_time_window.max_days_after_landing",
            "greater than or equal to 0",
        ),
    ],
)
def test_names_delimiters_and_suites_are_checked_at_load(tmp_path, mutate, field, reason):
    data = fraud()
    mutate(data)
    p = write(tmp_path, "fraud_detection", data)
    with pytest.raises(UseCaseError) as exc:
        load_usecase(p)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{p}: {field}: "), msg
    assert reason in msg, msg


def test_tab_and_semicolon_delimiters_and_the_event_time_window_load(tmp_path):
    data = fraud()
    data["datasets"]["transactions"]["landing"]["csv_delimiter"] = "\t"
    data["datasets"]["customers"]["landing"]["csv_delimiter"] = ";"
    data["datasets"]["transactions"]["event_time_window"] = {"earliest": "2024-01-01", "max_days_after_landing": 0}
    uc = load_usecase(write(tmp_path, "fraud_detection", data))
    assert uc.datasets["transactions"].landing.csv_delimiter == "\t"
    assert uc.datasets["transactions"].event_time_window.earliest.isoformat() == "2024-01-01"
    assert uc.datasets["customers"].event_time_window.max_days_after_landing == 1  # the default


def test_a_suite_name_cannot_read_outside_expectations(tmp_path):
    from mlblueprints.errors import PermanentError
    from mlblueprints.quality.suites import SuiteError, load_suite

    (tmp_path / "expectations").mkdir()
    (tmp_path / "secret.json").write_text('{"expectations": []}')
    for name in ("../secret", "/etc/passwd", "a/../../secret"):
        with pytest.raises(SuiteError, match="inside expectations/") as err:
            load_suite(name, tmp_path / "expectations")
        assert isinstance(err.value, PermanentError)  # configuration: never retried
    (tmp_path / "expectations" / "uc").mkdir()
    (tmp_path / "expectations" / "uc" / "link.json").symlink_to(tmp_path / "secret.json")
    with pytest.raises(SuiteError, match="resolves outside"):
        load_suite("uc/link", tmp_path / "expectations")


def test_check_config_names_an_unreadable_file_in_one_line(tmp_path, capsys):
    from mlblueprints import cli

    bad = tmp_path / "claims.yaml"
    bad.write_bytes("name: claims\n".encode("utf-16"))
    assert cli.main(["check-config", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        f"{bad}: <file>: not UTF-8 text (UTF-16 text (byte-order mark FF FE)); save the file as UTF-8"
    )
    assert "Traceback" not in captured.err + captured.out
