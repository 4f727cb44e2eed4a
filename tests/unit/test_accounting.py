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
    rejected = {"source_file": "transactions/2024-03-01/x.csv", "reason": "no header", "landing_date": "2024-03-01"}
    ingest = [{"dataset": "transactions", "rejected_files": [rejected]}]
    # the failure names the file, the reason, and what to do on the target (the local backend's
    # advice names the command that retries and the one that sets it aside)
    assert reconcile_counts(UC, {}, ingest)["problems"] == [
        "transactions: file transactions/2024-03-01/x.csv rejected: no header. Fix the file and rerun landing "
        "date 2024-03-01, or set it aside by renaming it with a leading '_' (files named _* are not read), then rerun"
    ]
    from mlblueprints.lakehouse.local import rejected_file_advice

    assert reconcile_counts(UC, {}, ingest, advice=rejected_file_advice(UC))["problems"] == [
        "transactions: file transactions/2024-03-01/x.csv rejected: no header. Fix the file and rerun: "
        "mlblueprints lakehouse fraud_detection 2024-03-01; or set it aside: "
        "mlblueprints set-aside fraud_detection transactions/2024-03-01/x.csv (then rerun)"
    ]
    warn = UC.model_copy(update={"lakehouse": UC.lakehouse.model_copy(update={"on_rejected_file": "warn"})})
    report = reconcile_counts(warn, {}, ingest)
    assert report["ok"] and report["rejected_files"] == [
        "transactions: file transactions/2024-03-01/x.csv rejected: no header"
    ]


def test_a_file_whose_records_and_bronze_rows_differ_fails():
    """Balanced layers are not enough: a file's physical records must all be in Bronze."""
    counts = {"transactions": {"2024-03-01": {"bronze": 2, "silver": 2}}}
    files = {
        "transactions": [
            ("2024-03-01", "transactions/2024-03-01/a.csv", 3, 2),
            ("2024-03-01", "transactions/2024-03-01/b.csv", 0, 0),
        ]
    }
    report = reconcile_counts(UC, counts, [], files)
    assert not report["ok"] and report["files_checked"] == 2
    assert report["problems"] == [
        "transactions 2024-03-01: file transactions/2024-03-01/a.csv holds 3 record(s) but Bronze has 2 row(s) "
        "of it (missing 1)"
    ]
    files["transactions"][0] = ("2024-03-01", "transactions/2024-03-01/a.csv", 2, 2)
    assert reconcile_counts(UC, counts, [], files)["ok"]
