"""Athena's, S3's and Glue's limits and contracts on the aws target, at the scale where they bite.

Each test runs the aws backend's steps on the Athena twin (``moto_world.AthenaTwin``), which
refuses a statement over 262,144 bytes or a write over 100 partitions as Athena does, and
compares the tables with the local target's where there is one:

* a landing date of thousands of files (Bronze statements chunked by file count and bytes);
* a backfill of hundreds of event dates, then keys that move to other dates (Silver and Gold
  MERGEs by at most 100 event dates, old rows of moved keys deleted first);
* compaction of what a run wrote, repeated while Athena asks for more runs, then VACUUM with the
  configured retention;
* tables created once, and a concurrent creation harmless;
* every S3 request naming the bucket owner, and bucket keys on every upload.
"""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta

import boto3
import pytest
from lake_scenarios import AwsLake, build_oracle, check_same_as_local, check_within_limits
from moto_world import ACCOUNT, REGION

from landing_corpus import COLUMNS  # the transaction columns every hand-made feed uses
from mlblueprints.aws import s3io
from mlblueprints.aws.direct import ServiceJobFailed
from mlblueprints.lakehouse import aws as la
from mlblueprints.lakehouse.steps import touched_partitions

pytestmark = [pytest.mark.aws]

moto = pytest.importorskip("moto")


def transaction(i: int, when: datetime, amount: float = 10.0) -> dict[str, str]:
    return {
        "transaction_id": f"tx_{i:08d}",
        "event_time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "card_id": f"card_{i % 37:04d}",
        "customer_id": f"cust_{i % 37:04d}",
        "merchant_id": f"m_{i % 11:03d}",
        "amount": f"{amount + i % 50:.2f}",
        "currency": "EUR",
        "channel": "pos",
        "merchant_category": "grocery",
        "country": "DE",
        "is_fraud": str(i % 2),
    }


def csv_text(rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def land(root, landing: date, name: str, text: str) -> None:
    path = root / "transactions" / landing.isoformat() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ---------------------------------------------------------------- Bronze at thousands of files


FILES = 3000


@pytest.fixture(scope="module")
def many_files(tmp_path_factory):
    """One landing date of 3000 one-row CSV files. (No local oracle here: the local target's
    Bronze delete filter has one term per file and exceeds pyiceberg's recursion depth at this
    count; the expected rows are known from the files themselves.)"""
    base = tmp_path_factory.mktemp("many_files")
    landing = base / "landing"
    day = date(2024, 3, 1)
    expected = {}
    for i in range(FILES):
        row = transaction(i, datetime(2024, 3, 1, 8) + timedelta(seconds=i))
        name = f"part-{i:05d}-{i * 7919 % 10**8:08d}-export.csv"
        land(landing, day, name, csv_text([row]))
        expected[row["transaction_id"]] = {**row, "_source_file": f"transactions/{day}/{name}"}
    return {"landing": landing, "day": day, "expected": expected}


@pytest.mark.slow
def test_bronze_at_thousands_of_files_stays_under_the_statement_limit(many_files, moto_world, monkeypatch):
    lake = AwsLake.make(moto_world, monkeypatch, many_files["landing"])
    day = many_files["day"]
    out = lake.day(day)

    inserts = [e for e in lake.twin.executions if e["query"].startswith("INSERT")]
    deletes = [e for e in lake.twin.executions if e["query"].startswith("DELETE")]
    sizes = [len(e["query"].encode()) for e in inserts + deletes]
    budget = lake.uc.aws.athena_max_statement_bytes
    assert len(inserts) == len(deletes) >= 3 and max(sizes) <= budget < 262_144, (len(inserts), max(sizes))
    # one statement for all the files would be refused by Athena: the chunking is what makes it work
    files = [f for f in out["ingest__transactions"]["files"] if f["status"] == "ingested"]
    assert len(files) == FILES
    run = lake.run_info("ingest__transactions", day)
    whole, _ = la.bronze_insert_sql(lake.uc, "transactions", "csv", day, files, run, datetime(2024, 3, 2))
    assert len(whole.encode()) > 262_144
    print(  # the figures docs/deployment.md quotes
        f"\n{FILES} files: one INSERT would be {len(whole.encode())} bytes; "
        f"{len(inserts)} INSERTs of at most {max(sizes)} bytes (budget {budget})"
    )
    assert out["silver__transactions"]["rows_landed"] == FILES
    bronze = lake.table("transactions_bronze")
    got = {r["transaction_id"]: r for r in bronze.to_dict("records")}
    expected = many_files["expected"]
    assert set(got) == set(expected)
    for tid, want in expected.items():
        assert {k: got[tid][k] for k in want} == want, tid
    assert bronze["_file_checksum"].nunique() == FILES and (bronze["_line_number"] == 1).all()
    silver = lake.table("transactions_silver")
    assert sorted(silver["transaction_id"]) == sorted(expected)
    assert lake.table("transactions_quarantine").empty and lake.table("transactions_duplicates").empty
    check_within_limits(lake)


def test_bronze_chunks_respect_the_file_count_and_byte_budget():
    """The chunking itself, without a world: every statement within both knobs, every file in
    exactly one chunk, and a file that alone exceeds the budget is an error, not a bad query."""
    from lake_scenarios import usecase_data

    from mlblueprints.config import parse_usecase
    from mlblueprints.lineage import RunInfo

    data = usecase_data("fraud_aws", "bkt", "db", "arn:aws:kms:eu-west-1:123456789012:key/k")
    data["aws"].update(athena_max_files_per_statement=40, athena_max_statement_bytes=16384)
    uc = parse_usecase(data)
    run = RunInfo.for_usecase(uc, run_id="r")
    files = [
        {"uri": f"s3://bkt/fraud/landing/transactions/2024-03-01/f{i:04d}.csv", "file_checksum": f"crc64nvme:{i:012d}"}
        for i in range(1000)
    ]
    stmts = la.bronze_statements(uc, "transactions", "csv", date(2024, 3, 1), files, run, datetime(2024, 3, 2))
    inserts = [s for s in stmts if s.kind == "insert"]
    assert all(len(s.sql.encode()) <= 16384 for s in stmts)
    assert all(s.sql.count("WHEN '") <= 40 for s in inserts)
    assert sum(s.sql.count("WHEN '") for s in inserts) == 1000
    assert [s.kind for s in stmts[:2]] == ["delete", "insert"]
    huge = [{"uri": "s3://bkt/" + "x" * 20000 + ".csv", "file_checksum": "etag:1"}]
    with pytest.raises(ValueError, match="alone makes a statement over"):
        la.bronze_statements(uc, "transactions", "csv", date(2024, 3, 1), huge, run, datetime(2024, 3, 2))


# ---------------------------------------------------------------- a backfill of hundreds of event dates


BACKFILL_DATES = 300
FIRST = date(2024, 6, 1)  # the landing date of the backfill
MOVED = 150  # keys re-sent the next day with their event time on another date


@pytest.fixture(scope="module")
def backfill(tmp_path_factory):
    """One landing date carrying two transactions on each of 300 event dates; the next landing
    date re-sends 150 of them with event times moved 120 days later (another partition)."""
    base = tmp_path_factory.mktemp("backfill")
    landing = base / "landing"
    start = FIRST - timedelta(days=BACKFILL_DATES - 1)
    rows = [transaction(i, datetime.combine(start, datetime.min.time()) + timedelta(hours=12 * i)) for i in range(600)]
    land(landing, FIRST, "history.csv", csv_text(rows))
    moved = []
    for r in rows[: 2 * MOVED : 2]:
        when = datetime.strptime(r["event_time"], "%Y-%m-%dT%H:%M:%SZ") + timedelta(days=120, minutes=1)
        moved.append({**r, "event_time": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "amount": "999.99"})
    land(landing, FIRST + timedelta(days=1), "corrections.csv", csv_text(moved))
    days = [FIRST, FIRST + timedelta(days=1)]
    return {"landing": landing, "days": days, "oracle": build_oracle(landing, base, days)}


@pytest.mark.slow
def test_backfill_of_hundreds_of_event_dates_writes_at_most_100_partitions_per_statement(
    backfill, moto_world, monkeypatch
):
    lake = AwsLake.make(moto_world, monkeypatch, backfill["landing"], aws={"athena_max_maintenance_runs": 2})
    first = lake.day(backfill["days"][0])
    silver = first["silver__transactions"]
    assert len(silver["touched_event_dates"]) == BACKFILL_DATES
    queries = silver["statements"]
    assert [q for q in queries if q.startswith("silver_merge")] == [f"silver_merge__{k:03d}" for k in range(3)]
    assert not [q for q in queries if q.startswith(("silver_movers", "silver_duplicates"))]
    gold = first["gold__transaction_features"]
    assert [q for q in gold["statements"] if q.startswith("gold_merge")] == [f"gold_merge__{k:03d}" for k in range(4)]
    figures = {"day 1 silver": len(queries), "day 1 gold": len(gold["statements"])}

    # the corrections move 150 keys to other event dates: their old rows go first, by old date
    second = lake.day(backfill["days"][1])
    queries = second["silver__transactions"]["statements"]
    assert [q for q in queries if q.startswith("silver_movers")] == ["silver_movers__000", "silver_movers__001"]
    assert [q for q in queries if q.startswith("silver_duplicates")] == [
        "silver_duplicates__000",
        "silver_duplicates__001",
    ]
    figures |= {"day 2 silver": len(queries), "day 2 gold": len(second["gold__transaction_features"]["statements"])}
    print(f"\nstatements per step of a {BACKFILL_DATES}-event-date backfill: {figures}")
    silver_t = lake.table("transactions_silver")
    assert len(silver_t) == 600 and silver_t["transaction_id"].is_unique
    assert (silver_t["amount"].astype(float) == 999.99).sum() == MOVED

    check_same_as_local(lake, backfill["oracle"])
    check_within_limits(lake)
    writes = [w for w in lake.twin.writes if w["kind"] == "merge"]
    assert max(w["partitions"] for w in writes) == 100, "the chunks are as large as Athena allows"

    # compaction: only what the runs wrote, at most 100 partitions per OPTIMIZE, run again while
    # Athena asks for more runs, then the retention and VACUUM
    results = {f"{k}": v for day in (first, second) for k, v in day.items()}
    touched = touched_partitions(
        _ctx(lake),
        {"t": results["ingest__transactions"]},
        {"t": results["silver__transactions"]},
        {"g": results["gold__transaction_features"]},
    )
    lake.twin.more_runs[("optimize", "transactions_silver")] = 1
    lake.twin.more_runs[("vacuum", "transaction_features")] = 1
    out = lake.compact(touched)
    optimizes = [m for m in lake.twin.maintenance if m["op"] == "optimize"]
    assert {m["table"] for m in optimizes} <= set(touched) and all(m.get("partitions", 0) <= 100 for m in optimizes)
    silver_opt = [m for m in optimizes if m["table"] == "transactions_silver"]
    assert silver_opt[0].get("more_runs_needed") and not silver_opt[1].get("more_runs_needed")
    assert sum(m["partitions"] for m in silver_opt[1:]) == len(touched["transactions_silver"])
    assert not [m for m in optimizes if m["table"].startswith("customers")], "untouched tables are left alone"
    for table, entry in out["tables"].items():
        names = entry["statements"]
        assert names.index(f"retention_{table}") < names.index(f"vacuum_{table}"), names
    vacuums = [m for m in lake.twin.maintenance if m["op"] == "vacuum" and not m.get("more_runs_needed")]
    assert {m["table"] for m in vacuums} == set(out["tables"])
    assert all(m["retention_seconds"] == str(lake.uc.lakehouse.snapshot_retention_days * 86400) for m in vacuums)
    # Athena still asking after athena_max_maintenance_runs: the step fails, saying so
    lake.twin.more_runs[("vacuum", "transactions_bronze")] = 5
    with pytest.raises(ServiceJobFailed, match=r"ICEBERG_VACUUM_MORE_RUNS_NEEDED.*still after 2 run"):
        lake.compact({"transactions_bronze": ["2024-06-01"]}, day="compact-again")


def _ctx(lake):
    from mlblueprints.core.context import StepContext

    return StepContext(uc=lake.uc, run=lake.run_info("compact"), runtime_factory=lambda: lake.rt)


# ---------------------------------------------------------------- tables, S3 ownership, bucket keys


def test_tables_are_created_once_and_a_concurrent_creation_is_harmless(moto_world, monkeypatch):
    from moto.glue.models import GlueBackend

    lake = AwsLake.make(moto_world, monkeypatch, None)
    first = lake.backend().ensure_tables(lake.run_info("tables"))
    assert first["created"][0] == "fraud_lake" and len(first["created"]) == first["tables"] + 1
    assert lake.backend().ensure_tables(lake.run_info("tables"))["created"] == []
    # another writer created everything between our listing and our creates
    with monkeypatch.context() as m:
        m.setattr(GlueBackend, "get_tables", lambda self, *a, **k: [])
        assert lake.backend().ensure_tables(lake.run_info("tables"))["created"] == []
    glue = boto3.client("glue", region_name=REGION)
    assert len(glue.get_tables(DatabaseName="fraud_lake")["TableList"]) == first["tables"]


def test_every_s3_request_names_the_owner_and_uploads_keep_bucket_keys(moto_world, monkeypatch, tmp_path):
    lake = AwsLake.make(moto_world, monkeypatch, None)
    s3 = lake.rt.client("s3")
    aws = lake.uc.aws
    monkeypatch.setattr(s3io, "PUT_OBJECT_MAX_BYTES", 1 << 20)
    monkeypatch.setattr(s3io, "PART_BYTES", 5 << 20)
    small, big = tmp_path / "small.json", tmp_path / "big.bin"
    small.write_text("{}")
    big.write_bytes(bytes(range(256)) * (12 * 4096))  # 12 MiB: three parts
    s3io.put_file(s3, small, aws.s3_uri("x/small.json"), aws, "application/json")
    s3io.put_file(s3, big, aws.s3_uri("x/big.bin"), aws, "application/octet-stream")
    s3io.put_bytes(s3, b"1", aws.s3_uri("x/one"), aws, "text/plain")
    assert s3io.exists(s3, aws.s3_uri("x/big.bin")) and not s3io.exists(s3, aws.s3_uri("x/none"))
    assert s3io.download(s3, aws.s3_uri("x/big.bin"), tmp_path / "back.bin").read_bytes() == big.read_bytes()
    got = s3io.download_prefix(s3, aws.s3_uri("x") + "/", tmp_path, suffix=".bin")
    assert len(got) == 3
    s3io.delete_keys(s3, aws.bucket, [k for k, _ in got], "x/")

    ops = {r["operation"] for r in lake.guard.requests if r["by"] in ("project", "transfer")}
    assert {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "HeadObject"} <= ops
    assert {"GetObject", "ListObjectsV2", "DeleteObjects"} <= ops
    assert lake.guard.without_owner() == []

    s3io.put_file(s3, small, aws.s3_uri("y/small.json"), aws, "application/json")
    s3io.put_file(s3, big, aws.s3_uri("y/big.bin"), aws, "application/octet-stream")
    test_s3 = boto3.client("s3", region_name=REGION)
    for key in ("fraud/y/small.json", "fraud/y/big.bin"):
        head = test_s3.head_object(Bucket=lake.bucket, Key=key)
        assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == aws.kms_key_arn
        assert head["BucketKeyEnabled"] is True, key

    # a multipart upload that fails is aborted: no parts are left behind
    calls = {"n": 0}
    upload_part = s3.upload_part

    def failing(**kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("network gone")
        return upload_part(**kw)

    monkeypatch.setattr(s3, "upload_part", failing)
    with pytest.raises(ConnectionError):
        s3io.put_file(s3, big, aws.s3_uri("z/big.bin"), aws, "application/octet-stream")
    assert not test_s3.list_multipart_uploads(Bucket=lake.bucket).get("Uploads")

    # a bucket owned by another account: S3 refuses, nothing is written
    from mlblueprints.aws.session import boto3_runtime

    other = lake.uc.model_copy(update={"aws": aws.model_copy(update={"account_id": "210987654321"})})
    with pytest.raises(Exception, match="AccessDenied"):
        s3io.put_bytes(boto3_runtime(other).client("s3"), b"x", aws.s3_uri("w/x"), aws, "text/plain")
    assert "Contents" not in test_s3.list_objects_v2(Bucket=lake.bucket, Prefix="fraud/w/")
    assert aws.account_id == ACCOUNT


def test_a_statement_over_the_byte_budget_fails_before_anything_runs(moto_world, monkeypatch):
    from mlblueprints.errors import PermanentError

    lake = AwsLake.make(moto_world, monkeypatch, None, aws={"athena_max_statement_bytes": 16384})
    with pytest.raises(PermanentError, match=r"athena statement silver_\w+ is \d+ bytes, over"):
        lake.backend().build_silver("transactions", [date(2024, 3, 1)], lake.run_info("silver"))
    assert lake.twin.executions == []
