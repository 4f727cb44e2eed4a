"""Use-case YAML: valid files load; every mistake is one line naming file, field, reason, and
every mistake of a file is reported (not only the first)."""

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
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
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
            "datasets.transactions.primary_key[0]",
            "primary_key column 'nope' is not in the schema",
        ),
        (
            lambda d: d["datasets"]["transactions"].update(event_time="amount"),
            "datasets.transactions.event_time",
            "must have type timestamp",
        ),
        (lambda d: d.update(retries=0), "retries", "greater than or equal to 2"),
        (lambda d: d.update(tragte="aws"), "<root>", "unknown field 'tragte' (did you mean 'target'?)"),
        (lambda d: d.update(target="aws", aws=None), "aws", "target is aws but the aws section is missing"),
        (lambda d: d["aws"].update(kms_key_arn="my-key"), "aws.kms_key_arn", "should match pattern"),
        (
            lambda d: d["gold"]["transaction_features"].update(inputs=["payments"]),
            "gold.transaction_features.inputs[0]",
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


# ------------------------------------------------------------------ every problem, readable


def text_with(tmp_path: Path, *replacements: tuple[str, str]) -> Path:
    """The shipped YAML with text replaced (as a person edits it: YAML's own reading applies)."""
    text = FRAUD.read_text()
    for old, new in replacements:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return write(tmp_path, "fraud_detection", text)


def problems(p: Path) -> list[str]:
    with pytest.raises(UseCaseError) as exc:
        load_usecase(p)
    assert str(exc.value).splitlines() == exc.value.lines
    return exc.value.lines


def test_misspelt_key_is_named_with_the_key_it_resembles(tmp_path):
    p = text_with(
        tmp_path,
        (
            "    primary_key: [transaction_id]\n    event_time: event_time\n\n  customers:",
            "    primary_keys: [transaction_id]\n    event_time: event_time\n\n  customers:",
        ),
    )
    # one line: the unknown key, not the "required" error of the key it was meant to be
    assert problems(p) == [f"{p}: datasets.transactions: unknown field 'primary_keys' (did you mean 'primary_key'?)"]


def test_unknown_key_without_a_near_miss_lists_the_fields(tmp_path):
    p = text_with(tmp_path, ("  holdout_days: 2\n", "  holdout_days: 2\n  colour: red\n"))
    (line,) = problems(p)
    assert line.startswith(f"{p}: training: unknown field 'colour' (fields here: training_set, algorithm, ")


def test_unquoted_yes_no_in_a_string_list_gets_one_hint(tmp_path):
    p = text_with(tmp_path, ("allowed: [USD, EUR, GBP]", "allowed: [yes, no]"))
    assert problems(p) == [
        f"{p}: datasets.transactions.schema[6].allowed: YAML read the unquoted yes, no as booleans (true, false), "
        "but strings are expected here; quote them: ['yes', 'no']"
    ]


def test_unquoted_boolean_in_a_string_field(tmp_path):
    p = text_with(tmp_path, ("owner: ml-platform", "owner: off"))
    assert problems(p) == [
        f"{p}: owner: YAML read the unquoted off as the boolean false, but a string is expected here; quote it: 'off'"
    ]


def test_quoting_hint_only_where_quoting_helps(tmp_path):
    p = text_with(tmp_path, ("partition_by: none       # small", "partition_by: no       # small"))
    assert problems(p) == [
        f"{p}: datasets.customers.partition_by: Input should be 'event_date' or 'none' "
        "(YAML read the unquoted no as a boolean)"
    ]


def test_every_problem_is_reported_one_line_each(tmp_path):
    p = text_with(
        tmp_path,
        (
            "    primary_key: [transaction_id]\n    event_time: event_time\n\n  customers:",
            "    primary_keys: [transaction_id]\n    event_time: event_time\n\n  customers:",
        ),
        ("allowed: [USD, EUR, GBP]", "allowed: [yes, no]"),
        ("retries: 2", "retries: 1"),
        ("  holdout_days: 2\n", "  holdout_dayz: 2\n"),
    )
    assert problems(p) == [
        f"{p}: retries: Input should be greater than or equal to 2",
        f"{p}: datasets.transactions.schema[6].allowed: YAML read the unquoted yes, no as booleans (true, false), "
        "but strings are expected here; quote them: ['yes', 'no']",
        f"{p}: datasets.transactions: unknown field 'primary_keys' (did you mean 'primary_key'?)",
        f"{p}: training: unknown field 'holdout_dayz' (did you mean 'holdout_days'?)",
    ]


def test_every_reference_problem_is_reported(tmp_path):
    data = fraud()
    data["gold"]["transaction_features"]["inputs"] = ["transaction"]
    data["features"]["card_activity"]["source"] = "transaction_feature"
    data["training"]["extra_features"] = ["amount", "hour"]
    p = write(tmp_path, "fraud_detection", data)
    assert problems(p) == [
        f"{p}: gold.transaction_features.inputs[0]: unknown data set 'transaction' (did you mean 'transactions'?) "
        "(data sets: transactions, customers, merchants)",
        f"{p}: features.card_activity.source: unknown Gold table 'transaction_feature' "
        "(did you mean 'transaction_features'?)",
        f"{p}: training.extra_features[1]: 'hour' is not in training_sets.fraud_training.labels.columns",
    ]


# ------------------------------------------------------------------ no fraud-shaped defaults


def test_shipped_usecase_states_its_threshold_and_baseline():
    t = load_usecase(FRAUD).training
    assert t.threshold.max_fpr == 0.01 and t.threshold.min_precision is None
    assert t.gate.primary_metric == "pr_auc"
    assert t.gate.baseline == {"pr_auc": 0.05, "roc_auc": 0.6}


def test_min_precision_alone_just_works(tmp_path):
    p = text_with(tmp_path, ("threshold: {max_fpr: 0.01}", "threshold: {min_precision: 0.8}"))
    t = load_usecase(p).training.threshold
    assert t.min_precision == 0.8 and t.max_fpr is None


def test_threshold_rule_is_required(tmp_path):
    data = fraud()
    del data["training"]["threshold"]
    p = write(tmp_path, "fraud_detection", data)
    assert problems(p) == [
        f"{p}: training.threshold: required: the operating point on the holdout, {{max_fpr: F}} (flag at most "
        "this share of the negatives) or {min_precision: P} (at least this share of the flagged rows are positives)"
    ]


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ({"max_fpr": 0.01, "min_precision": 0.8}, "set only one of max_fpr and min_precision"),
        ({}, "set one of max_fpr (e.g. {max_fpr: 0.01}) or min_precision (e.g. {min_precision: 0.8})"),
        ({"max_fpr": None}, "set one of max_fpr (e.g. {max_fpr: 0.01}) or min_precision (e.g. {min_precision: 0.8})"),
    ],
)
def test_threshold_rule_needs_exactly_one(tmp_path, rule, reason):
    data = fraud()
    data["training"]["threshold"] = rule
    p = write(tmp_path, "fraud_detection", data)
    assert problems(p) == [f"{p}: training.threshold: {reason}"]


def test_baseline_is_optional_for_ranking_metrics(tmp_path):
    data = fraud()
    del data["training"]["gate"]["baseline"]
    uc = load_usecase(write(tmp_path, "fraud_detection", data))
    assert uc.training.gate.baseline == {}  # derived from the holdout at evaluation time


def test_precision_or_recall_as_primary_metric_needs_its_baseline(tmp_path):
    data = fraud()
    data["training"]["gate"] = {"primary_metric": "recall", "baseline": {"pr_auc": 0.3}}
    p = write(tmp_path, "fraud_detection", data)
    assert problems(p) == [
        f"{p}: training.gate.baseline: give a baseline value for the primary metric recall "
        "(e.g. baseline: {recall: 0.5}); only roc_auc and pr_auc have a floor derived from the data"
    ]


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
