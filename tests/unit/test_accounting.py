"""Row accounting is pure arithmetic over counts; a mismatch says where, by how much, which way."""

from helpers import fraud_usecase
from mlblueprints.lakehouse.accounting import reconcile_counts

UC = fraud_usecase()


def test_balanced_counts_pass():
    counts = {"transactions": {"2024-03-01": {"bronze": 10, "silver": 7, "quarantine": 2, "duplicates": 1}}}
    report = reconcile_counts(UC, counts, [])
    assert report["ok"] and report["problems"] == []
    assert report["datasets"]["transactions"][0]["difference"] == 0


def test_missing_and_extra_rows_are_named():
    counts = {
        "transactions": {
            "2024-03-01": {"bronze": 10, "silver": 7, "quarantine": 2},
            "2024-03-02": {"bronze": 5, "silver": 5, "duplicates": 1},
        }
    }
    report = reconcile_counts(UC, counts, [])
    assert not report["ok"]
    assert report["problems"] == [
        "transactions 2024-03-01: landed 10 != silver 7 + quarantined 2 + duplicates 0 (missing 1 row(s))",
        "transactions 2024-03-02: landed 5 != silver 5 + quarantined 0 + duplicates 1 (extra 1 row(s))",
    ]


def test_rejected_file_fails_or_warns_by_config():
    ingest = [{"dataset": "transactions", "rejected_files": [{"source_file": "t/x.csv", "reason": "no header"}]}]
    assert reconcile_counts(UC, {}, ingest)["problems"] == ["transactions: file t/x.csv rejected: no header"]
    warn = UC.model_copy(update={"lakehouse": UC.lakehouse.model_copy(update={"on_rejected_file": "warn"})})
    report = reconcile_counts(warn, {}, ingest)
    assert report["ok"] and report["rejected_files"] == ["transactions: file t/x.csv rejected: no header"]
