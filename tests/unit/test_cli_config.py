"""The command line on a broken use case: the problems once, one line each, no traceback, before
Airflow parses anything; check-config lists every problem of every file."""

from __future__ import annotations

import shutil

import pytest

from helpers import ROOT
from mlblueprints import cli

BROKEN = [
    ("    primary_key: [transaction_id]\n    event_time: event_time\n\n  customers:",
     "    primary_keys: [transaction_id]\n    event_time: event_time\n\n  customers:"),
    ("allowed: [USD, EUR, GBP]", "allowed: [yes, no]"),
]  # fmt: skip


@pytest.fixture
def broken(tmp_path, monkeypatch):
    d = tmp_path / "usecases"
    shutil.copytree(ROOT / "dags" / "usecases", d)
    p = d / "fraud_detection.yaml"
    text = p.read_text()
    for old, new in BROKEN:
        assert text.count(old) == 1
        text = text.replace(old, new)
    p.write_text(text)
    monkeypatch.setenv("MLB_USECASES_DIR", str(d))
    return [
        f"{p}: datasets.transactions.schema[6].allowed: YAML read the unquoted yes, no as booleans (true, false), "
        "but strings are expected here; quote them: ['yes', 'no']",
        f"{p}: datasets.transactions: unknown field 'primary_keys' (did you mean 'primary_key'?)",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["lakehouse", "fraud_detection", "2024-03-01"],
        ["lakehouse", "fraud_detection", "--from", "2024-03-01", "--to", "2024-03-03"],
        ["features", "run", "fraud_detection"],
        ["training", "run", "fraud_detection"],
        ["suites", "init", "fraud_detection"],
        ["tables", "fraud_detection"],
    ],
)
def test_a_broken_usecase_is_reported_once_without_traceback(broken, capsys, monkeypatch, argv):
    from mlblueprints.airflow import localrun

    def no_airflow(*a, **k):
        raise AssertionError("Airflow was set up for a use case that does not load")

    monkeypatch.setattr(localrun, "setup", no_airflow)
    monkeypatch.setattr(localrun, "get_dag", no_airflow)
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == broken
    assert out == ""


def test_check_config_lists_every_problem(broken, capsys):
    assert cli.main(["check-config"]) == 1
    _, err = capsys.readouterr()
    assert err.splitlines() == broken


def test_lakehouse_needs_dates_or_a_range(capsys):
    with pytest.raises(SystemExit, match="give one or more landing dates"):
        cli.main(["lakehouse", "fraud_detection"])
    with pytest.raises(SystemExit, match="not both"):
        cli.main(["lakehouse", "fraud_detection", "2024-03-01", "--from", "2024-03-01"])
    with pytest.raises(SystemExit, match="--to 2024-03-01 is before --from 2024-03-02"):
        cli.main(["lakehouse", "fraud_detection", "--from", "2024-03-02", "--to", "2024-03-01"])


def test_backfill_summary_table():
    rows = [
        {"date": "2024-03-01", "state": "success", "seconds": 12.4, "landed": 1000, "silver": 990, "quarantined": 6,
         "duplicates": 4, "gold": 990, "gold_range": "2024-03-01..2024-03-01", "failed": []},
        {"date": "2024-03-02", "state": "failed", "seconds": 3.0, "landed": 500, "silver": None, "quarantined": None,
         "duplicates": None, "gold": None, "gold_range": "-", "failed": ["gate_silver__transactions", "report"]},
    ]  # fmt: skip
    assert cli._summary_table(rows).splitlines() == [
        "landing date  state    seconds  landed  silver  quarantined  duplicates  gold rows  gold event dates        failed tasks",
        "2024-03-01    success       12   1,000     990            6           4        990  2024-03-01..2024-03-01  -",
        "2024-03-02    failed         3     500       -            -           -          -  -                       gate_silver__transactions, report",
        "total         1/2 ok        15   1,500     990            6           4        990",
    ]  # fmt: skip


def test_serve_on_the_aws_target_names_the_sagemaker_endpoint_and_starts_nothing(tmp_path, monkeypatch, capsys):
    """On aws the endpoint is SageMaker's: `serve` says which and how to call it, and does not
    start the local server."""
    from mlblueprints.aws import serving as sv
    from mlblueprints.config import load_usecase
    from mlblueprints.serving import server

    d = tmp_path / "usecases"
    shutil.copytree(ROOT / "dags" / "usecases", d)
    p = d / "fraud_detection.yaml"
    text = p.read_text()
    assert text.count("\ntarget: local") == 1
    p.write_text(text.replace("\ntarget: local", "\ntarget: aws"))
    monkeypatch.setenv("MLB_USECASES_DIR", str(d))
    monkeypatch.setattr(server, "serve", lambda *a, **k: pytest.fail("the local endpoint was started"))
    monkeypatch.setattr(server, "start", lambda *a, **k: pytest.fail("the local endpoint was started"))
    for argv in (["serve", "fraud_detection"], ["serve", "fraud_detection", "--background"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        name = sv.endpoint_name(load_usecase(p))
        assert f"the endpoint is SageMaker's {name}" in err and f"--endpoint-name {name}" in err
