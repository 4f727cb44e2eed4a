"""The adversarial corpus: every class of untrusted input found by the hostile-operator review,
each generated here (no checked-in binaries), each with its documented outcome (docs/lakehouse.md,
"Untrusted input"): a Silver row, a quarantined row with its reason code, a counted duplicate,
or a rejected file with its reason - and reconciliation balancing.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from helpers import fraud_usecase, read_table, runtime_home
from mlblueprints.config import UseCase
from mlblueprints.lakehouse import local
from mlblueprints.lineage import RunInfo

DAY = date(2024, 3, 1)
HEADER = "transaction_id,event_time,card_id,customer_id,merchant_id,amount,currency,channel,merchant_category,country,is_fraud"
MB = 1 << 20


def row(i: int | str, **change: str) -> str:
    values = {
        "transaction_id": f"tx_{i}",
        "event_time": "2024-03-01T10:00:00Z",
        "card_id": "card_1",
        "customer_id": "c1",
        "merchant_id": "m1",
        "amount": "10.00",
        "currency": "USD",
        "channel": "pos",
        "merchant_category": "grocery",
        "country": "US",
        "is_fraud": "0",
        **change,
    }
    return ",".join(values[c] for c in HEADER.split(","))


def obj(i: int | str, **change: object) -> dict[str, object]:
    return dict(zip(HEADER.split(","), row(i).split(","), strict=True)) | change


def csv_bytes(*lines: str, end: str = "\n") -> bytes:
    return (end.join([HEADER, *lines]) + end).encode()


def jsonl_bytes(*records: dict[str, object] | str) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()


@dataclass
class Day:
    files: dict[str, dict]  # file name -> its outcome in the ingest summary
    bronze: pd.DataFrame
    silver: pd.DataFrame
    quarantine: pd.DataFrame
    duplicates: pd.DataFrame
    reconcile: dict

    def reasons(self, name: str) -> dict[int, str]:
        q = self.quarantine[self.quarantine["_source_file"].str.endswith("/" + name)]
        return dict(zip(q["_line_number"].astype(int), q["_reason_code"], strict=True))

    def silver_ids(self, name: str) -> list[str]:
        s = self.silver[self.silver["_source_file"].str.endswith("/" + name)]
        return sorted(s["transaction_id"])


def warn_mode(uc: UseCase) -> UseCase:
    """The same use case, rejected files logged instead of failing: the counts must balance."""
    return uc.model_copy(update={"lakehouse": uc.lakehouse.model_copy(update={"on_rejected_file": "warn"})})


def land(tmp: Path, files: dict[str, bytes], setup=None) -> Day:
    day_dir = tmp / "landing" / "transactions" / DAY.isoformat()
    day_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (day_dir / name).write_bytes(data)
    if setup:
        setup(day_dir)
    uc = fraud_usecase()
    with runtime_home(tmp):
        run = RunInfo.for_usecase(uc, run_id="adversarial")
        ing = local.ingest_bronze(uc, "transactions", [DAY], run)
        silver = local.build_silver(uc, "transactions", [DAY], run)
        rec = local.reconcile(warn_mode(uc), [silver], [ing])
        strict = local.reconcile(uc, [silver], [ing])
        day = Day(
            {f["source_file"].rsplit("/", 1)[1]: f for f in ing["files"]},
            read_table(uc, "transactions_bronze"),
            read_table(uc, "transactions_silver"),
            read_table(uc, "transactions_quarantine"),
            read_table(uc, "transactions_duplicates"),
            rec,
        )
    # the counts always balance; only rejected files fail the strict reconciliation
    assert rec["ok"], rec["problems"]
    rejected = [n for n, f in day.files.items() if f["status"] == "rejected"]
    assert strict["ok"] == (not rejected)
    assert len(strict["problems"]) == len(rejected)
    return day


# ------------------------------------------------------------------ 1. huge records


@pytest.mark.parametrize("mb", [3, 35])
def test_a_huge_csv_record_is_quarantined_not_lost(tmp_path, mb):
    big = row(1, merchant_id="m" * (mb * MB))
    day = land(tmp_path, {"big.csv": csv_bytes(row(0), big, row(2))})
    assert day.files["big.csv"]["status"] == "ingested" and day.files["big.csv"]["records"] == 3
    assert day.reasons("big.csv") == {3: "malformed_record"}
    assert day.silver_ids("big.csv") == ["tx_0", "tx_2"]
    raw = day.quarantine["_raw_record"].iloc[0]
    assert raw.startswith("tx_1,") and len(raw) <= 10_000  # the reader keeps the record's start


def test_a_huge_last_line_without_a_line_end_is_a_record_not_an_empty_file(tmp_path):
    day = land(tmp_path, {"big.csv": (HEADER + "\n" + "x" * (50 * MB)).encode()})
    assert day.files["big.csv"]["status"] == "ingested" and day.files["big.csv"]["records"] == 1
    assert day.reasons("big.csv") == {2: "malformed_record"}


def test_a_huge_json_line_is_quarantined_not_lost(tmp_path):
    day = land(tmp_path, {"big.jsonl": jsonl_bytes(obj(0), obj(1, merchant_id="m" * (35 * MB)), obj(2))})
    assert day.files["big.jsonl"]["records"] == 3
    assert day.reasons("big.jsonl") == {2: "malformed_record"}
    assert day.silver_ids("big.jsonl") == ["tx_0", "tx_2"]


# ------------------------------------------------------------------ 2. glob characters


def test_glob_characters_in_file_names_read_only_that_file(tmp_path):
    files = {
        "c1.csv": csv_bytes(row(1)),
        "c[12].csv": csv_bytes(row(2)),
        "*.csv": csv_bytes(row(3)),
        "q?.csv": csv_bytes(row(4)),
        "back\\slash.csv": csv_bytes(row(5)),
    }
    day = land(tmp_path, files)
    for i, name in enumerate(files, start=1):
        assert day.files[name]["status"] == "ingested" and day.files[name]["records"] == 1, name
        assert day.silver_ids(name) == [f"tx_{i}"], name
    assert day.duplicates.empty and len(day.bronze) == 5


# ------------------------------------------------------------------ 4. implausible event times


def test_future_and_ancient_event_times_are_quarantined_with_their_own_code(tmp_path):
    day = land(
        tmp_path,
        {
            "a.csv": csv_bytes(
                row(0),
                row(1, event_time="2030-01-01T00:00:00Z"),
                row(2, event_time="9999-12-31T23:59:59Z"),
                row(3, event_time="1900-01-01T00:00:00Z"),
                row(4, event_time="2024-03-02T23:59:59Z"),  # the day after landing: plausible
                row(5, event_time="2024-02-27T08:00:00Z"),  # late, but plausible
            )
        },
    )
    assert day.reasons("a.csv") == {
        3: "implausible_event_time",
        4: "implausible_event_time",
        5: "implausible_event_time",
    }
    assert day.silver_ids("a.csv") == ["tx_0", "tx_4", "tx_5"]


# ------------------------------------------------------------------ 5. exact casts


def test_values_the_type_cannot_hold_exactly_are_invalid_not_rounded(tmp_path):
    day = land(
        tmp_path,
        {
            "a.csv": csv_bytes(
                row(0, amount="12.50"),
                row(1, is_fraud="0.6"),
                row(2, is_fraud="1.4"),
                row(3, is_fraud="0x1"),
                row(4, is_fraud="1e0"),
                row(5, amount="12.505"),
                row(6, amount="0.005"),
                row(7, currency="usd"),
            ),
            "b.jsonl": jsonl_bytes(obj(10, amount=12.5), obj(11, is_fraud=1.0), obj(12, is_fraud=True)),
        },
    )
    assert day.reasons("a.csv") == {
        3: "invalid_type",
        4: "invalid_type",
        5: "invalid_type",
        6: "invalid_type",
        7: "invalid_type",
        8: "invalid_type",
        9: "unknown_category",
    }
    # 1.0 is exactly 1 (a point followed by zeros only); true is not a number
    assert day.reasons("b.jsonl") == {3: "invalid_type"}
    kept = day.silver.set_index("transaction_id")
    assert str(kept.loc["tx_0", "amount"]) == "12.50" and str(kept.loc["tx_10", "amount"]) == "12.50"


# ------------------------------------------------------------------ 6. line ends


@pytest.mark.parametrize("end", ["\r", "\r\n"])
def test_cr_and_crlf_line_ends_are_line_ends(tmp_path, end):
    day = land(
        tmp_path,
        {
            "a.csv": csv_bytes(row(0), row(1), "tx_2,short", end=end),
            "b.jsonl": end.join(json.dumps(obj(i)) for i in (10, 11)).encode() + end.encode(),
        },
    )
    assert day.files["a.csv"]["records"] == 3 and day.files["b.jsonl"]["records"] == 2
    assert day.reasons("a.csv") == {4: "malformed_record"}
    assert day.silver_ids("a.csv") == ["tx_0", "tx_1"] and day.silver_ids("b.jsonl") == ["tx_10", "tx_11"]


def test_mixed_line_ends_and_a_quoted_line_end_stay_exact(tmp_path):
    data = (HEADER + "\r\n" + row(0) + "\n" + "tx_1,short\r" + row(2, merchant_id='"multi\r\nline"') + "\r\n").encode()
    day = land(tmp_path, {"a.csv": data})
    assert day.files["a.csv"]["records"] == 3
    assert day.reasons("a.csv") == {3: "malformed_record"}
    kept = day.silver.set_index("transaction_id")
    assert kept.loc["tx_2", "merchant_id"] == "multi\r\nline"  # inside quotes: part of the value
    assert int(kept.loc["tx_2", "_line_number"]) == 4


# ------------------------------------------------------------------ issue 10: malformed rows anywhere


@pytest.mark.parametrize("position", [0, 6, 12])
def test_a_short_row_in_a_small_file_is_one_malformed_record(tmp_path, position):
    lines = [row(i) for i in range(13)]
    lines[position] = "tx_short,2024-03-01T10:00:00Z,card_1"
    day = land(tmp_path, {"a.csv": csv_bytes(*lines)})
    assert day.files["a.csv"]["status"] == "ingested"
    assert day.reasons("a.csv") == {position + 2: "malformed_record"}
    assert len(day.silver_ids("a.csv")) == 12


# ------------------------------------------------------------------ 11. unclear messages


def test_column_names_differing_only_in_case_reject_the_file_with_a_reason(tmp_path):
    data = (HEADER + ",Amount\n" + row(0) + ",1\n").encode()
    day = land(tmp_path, {"a.csv": data, "ok.csv": csv_bytes(row(1))})
    assert day.files["a.csv"]["status"] == "rejected"
    assert "names a column twice (column names are compared ignoring case)" in day.files["a.csv"]["reason"]
    assert "['Amount', 'amount']" in day.files["a.csv"]["reason"]
    assert day.silver_ids("ok.csv") == ["tx_1"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (bytes(range(256)) * 4, "not UTF-8 text: a NUL byte at byte 0"),
        (jsonl_bytes(obj(0)).decode().encode("utf-16"), "UTF-16 text (little-endian byte-order mark)"),
        (jsonl_bytes(obj(0)).decode().encode("utf-16-be"), "a NUL byte"),
        (gzip.compress(jsonl_bytes(obj(0))), "gzip-compressed data"),
        (b'{"transaction_id": "tx_\xff"}\n', "invalid byte sequence at byte 23 (line 1)"),
    ],
)
@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_binary_utf16_and_gzip_files_are_rejected_the_same_in_every_format(tmp_path, data, reason, suffix):
    day = land(tmp_path, {"bad" + suffix: data})
    f = day.files["bad" + suffix]
    assert f["status"] == "rejected" and reason in f["reason"] and "not UTF-8 text" in f["reason"]
    assert day.bronze.empty


# ------------------------------------------------------------------ 12. landing edge cases


def test_every_entry_of_a_landing_folder_gets_an_outcome(tmp_path):
    secret = tmp_path / "outside" / "secret.csv"
    secret.parent.mkdir()
    secret.write_text("root:x:0:0:the first line of a file outside the landing folder\n")

    def setup(day_dir: Path) -> None:
        (day_dir / "sub").mkdir()
        (day_dir / "sub" / "hidden.csv").write_bytes(csv_bytes(row(9)))
        (day_dir / "link.csv").symlink_to(secret)
        (day_dir / "_set_aside.csv").write_bytes(csv_bytes(row(8)))
        (day_dir / ".hidden.csv").write_bytes(csv_bytes(row(7)))
        os.mkfifo(day_dir / "pipe.csv")

    day = land(tmp_path, {"ok.csv": csv_bytes(row(1))}, setup)
    assert set(day.files) == {"ok.csv", "sub", "link.csv", "pipe.csv"}
    assert day.files["sub"]["status"] == "rejected" and "a folder" in day.files["sub"]["reason"]
    assert day.files["link.csv"]["status"] == "rejected" and "symbolic link" in day.files["link.csv"]["reason"]
    assert day.files["pipe.csv"]["status"] == "rejected" and "not a regular file" in day.files["pipe.csv"]["reason"]
    # the link was not followed: nothing of its target is read, echoed or stored
    assert all("root:x" not in (f["reason"] or "") for f in day.files.values())
    assert "root:x" not in day.bronze.to_csv()
    assert day.silver_ids("ok.csv") == ["tx_1"] and len(day.bronze) == 1


def test_json_records_that_are_ambiguous_are_malformed(tmp_path):
    dup = json.dumps(obj(1))[:-1] + ', "amount": "99.00"}'
    day = land(
        tmp_path,
        {
            "a.jsonl": jsonl_bytes(
                obj(0),
                dup,  # a key twice: which one is meant?
                obj(2, transaction_id={"id": "tx_2"}),  # an object as the key
                obj(3, card_id=["card_1", "card_2"]),
                obj(4, merchant_id="{not json, just braces}"),  # a string: fine
                "[1, 2, 3]",
                '{"transaction_id": "tx_5", ',
            )
        },
    )
    assert day.reasons("a.jsonl") == {
        2: "malformed_record",
        3: "malformed_record",
        4: "malformed_record",
        6: "malformed_record",
        7: "malformed_record",
    }
    q = day.quarantine.set_index("_line_number")
    assert q.loc[2, "_parse_error"] == "a key appears twice in the object"
    assert "key transaction_id holds a JSON object or array" in q.loc[3, "_parse_error"]
    assert day.silver_ids("a.jsonl") == ["tx_0", "tx_4"]


def test_duplicates_and_quarantine_still_add_up_with_every_defect_in_one_day(tmp_path):
    """Everything at once, across two files: the per-file and per-day counts both balance."""
    day = land(
        tmp_path,
        {
            "a.csv": csv_bytes(row(0), row(0), row(1, amount="7.00"), "tx_x", "", row(2, is_fraud="0.5"), end="\r\n"),
            "b.jsonl": jsonl_bytes(obj(1, amount="8.00"), "  ", obj(3, event_time="2031-01-01T00:00:00Z")),
        },
    )
    assert day.files["a.csv"]["records"] == 5 and day.files["a.csv"]["blank_lines"] == 1
    assert day.files["b.jsonl"]["records"] == 2 and day.files["b.jsonl"]["blank_lines"] == 1
    assert day.reconcile["files_checked"] == 2
    assert len(day.bronze) == len(day.silver) + len(day.quarantine) + len(day.duplicates) == 7
    assert sorted(day.duplicates["_duplicate_kind"]) == ["exact", "key"]
