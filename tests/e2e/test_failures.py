"""Bad data stops where it should, says what is wrong, and loses nothing."""

from __future__ import annotations

import json
import shutil
from datetime import date

import pytest

from helpers import ROOT, fraud_usecase, read_table, run_days, runtime_home
from mlblueprints.datagen import DefectConfig, generate_fraud
from mlblueprints.lakehouse import local
from mlblueprints.lineage import RunInfo

DAY = date(2024, 3, 1)
HEADER = "transaction_id,event_time,card_id,customer_id,merchant_id,amount,currency,channel,merchant_category,country,is_fraud"


@pytest.mark.slow
def test_failing_error_expectation_stops_downstream(tmp_path, monkeypatch, airflow_db):
    """A critical expectation that fails fails its gate with a readable summary; nothing
    downstream runs (no Gold, no Asset event), and the run report says which tasks did not run."""
    from mlblueprints.airflow import localrun

    expectations = tmp_path / "expectations"
    shutil.copytree(ROOT / "expectations", expectations)
    suite_file = expectations / "fraud_detection" / "transactions.silver.json"
    suite = json.loads(suite_file.read_text())
    suite["expectations"].append(
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "amount", "max_value": 100},
            "severity": "critical",
        }
    )
    suite_file.write_text(json.dumps(suite))
    monkeypatch.setenv("MLB_EXPECTATIONS_DIR", str(expectations))
    home = tmp_path / "home"
    generate_fraud(home / "landing", start=DAY, days=1, rows=3000, seed=3, defects=DefectConfig.none())
    with runtime_home(home):
        uc = fraud_usecase()
        dag = localrun.get_dag("fraud_detection__lakehouse")
        (dr,) = run_days(dag, [DAY])
        states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
        assert dr.state == "failed"
        assert states["gate_silver__transactions"] == "failed"
        assert states["gold__transaction_features"] == "upstream_failed"
        assert states["compact"] == "upstream_failed"
        assert states["gate_silver__customers"] == "success"  # the other data sets are not affected
        report = json.loads(next((home / "runs" / uc.name / "lakehouse").glob("manual__*.json")).read_text())
        assert "gate_silver__transactions" in report["missing"]
        # the gate's summary names the expectation, the column and how many rows failed
        run = RunInfo.for_usecase(uc, run_id="check")
        gate = local.gate(uc, "transactions", "silver", {"event_dates": [DAY.isoformat()]}, run)
        assert not gate.success
        text = gate.summary()
        assert "FAILED" in text and "error: expect_column_values_to_be_between(amount)" in text
        assert "unexpected" in text and "max_value=100" in text


def test_rejected_file_is_named_and_the_others_load(tmp_path):
    uc = fraud_usecase()
    day_dir = tmp_path / "landing" / "transactions" / DAY.isoformat()
    day_dir.mkdir(parents=True)
    (day_dir / "part-000.csv").write_text(
        HEADER + "\ntx_1,2024-03-01T10:00:00Z,card_1,c1,m1,10.00,USD,pos,grocery,US,0\n"
    )
    (day_dir / "part-001.csv").write_text("transaction_id,event_time,amount\ntx_2,2024-03-01T10:00:00Z,5.00\n")
    (day_dir / "part-002.csv").write_bytes(HEADER.encode() + b"\ntx_3,\xff\xfe,card,c,m,1,USD,pos,grocery,US,0\n")
    (day_dir / "notes.txt").write_text("not data")
    with runtime_home(tmp_path):
        run = RunInfo.for_usecase(uc, run_id="r")
        ing = local.ingest_bronze(uc, "transactions", [DAY], run)
        status = {f["source_file"]: (f["status"], f["reason"]) for f in ing["files"]}
        assert status["transactions/2024-03-01/part-000.csv"][0] == "ingested"
        rejected = status["transactions/2024-03-01/part-001.csv"]
        assert rejected[0] == "rejected" and "lacks required column(s)" in rejected[1] and "card_id" in rejected[1]
        assert status["transactions/2024-03-01/notes.txt"][0] == "rejected"
        assert status["transactions/2024-03-01/part-002.csv"] == (
            "rejected",
            "not UTF-8 text: invalid byte sequence at byte 122 (line 2); save the file as UTF-8",
        )
        sil = local.build_silver(uc, "transactions", [DAY], run)
        rec = local.reconcile(uc, [sil], [ing])
        assert not rec["ok"]
        assert any("part-001.csv rejected" in p for p in rec["problems"])
        assert read_table(uc, "transactions_silver")["transaction_id"].tolist()[:1] == ["tx_1"]
        # with on_rejected_file: warn the same run passes and still lists the file
        lenient = uc.model_copy(update={"lakehouse": uc.lakehouse.model_copy(update={"on_rejected_file": "warn"})})
        rec = local.reconcile(lenient, [sil], [ing])
        assert rec["ok"] and any("part-001.csv" in m for m in rec["rejected_files"])
