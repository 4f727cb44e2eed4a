"""The mutation check: deliberately wrong variants of the generated SQL must fail the aws tests.

A test that still passes when the SQL is wrong is not a test of the SQL. Each mutant below
patches one generator (monkeypatch, in process) the way a plausible bug would - a wrong MERGE
key, a wrong UNLOAD format, a dropped partition filter, a dropped dedupe, a dropped chunking -
and runs the aws scenario that covers it with the same checks the aws tests use
(``lake_scenarios``: the tables compared with the local target's, each step's scope, Athena's
limits and contracts as the twin enforces them). The mutant must be killed by the check named
in ``MUTANTS`` (``killed_by``), and the mutation must have been applied - a patch that matches
nothing proves nothing. Each scenario also runs unmutated and must pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from lake_scenarios import (
    AwsLake,
    build_oracle,
    check_same_as_local,
    check_steps_kept_to_their_scope,
    days_of,
    install_suites,
)
from moto_world import REGION, AthenaTwin, FeatureStoreTwin, patch_moto_like_sagemaker, run_direct

from landing_corpus import COLUMNS  # the transaction columns every hand-made feed uses
from mlblueprints.aws import featurestore as fsreq
from mlblueprints.core.service import Statement
from mlblueprints.datagen import DefectConfig, generate_fraud
from mlblueprints.features import aws as fa
from mlblueprints.features import core
from mlblueprints.lakehouse import aws as la
from mlblueprints.lakehouse import sqlgen
from mlblueprints.lineage import RunInfo

pytestmark = [pytest.mark.aws, pytest.mark.slow]

moto = pytest.importorskip("moto")

START = date(2024, 3, 1)
DB = "fraud_fs_lake"
FILES = 1500  # one INSERT for all would be over Athena's 262,144 bytes
DEFECTS = DefectConfig(
    malformed_record=0, invalid_type=5e-3, missing_required=5e-3, exact_duplicate=1e-2, key_duplicate=1e-2
)


# ---------------------------------------------------------------- the worlds (built once)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("mutations")
    lake = base / "lake"
    generate_fraud(lake, start=START, days=2, rows=240, seed=3, defects=DEFECTS, files_per_day=1)
    files = base / "files"
    for i in range(FILES):
        write(
            files,
            START,
            f"part-{i:05d}-{i * 7919 % 10**8:08d}.csv",
            [tx(i, datetime(2024, 3, 1, 9) + timedelta(seconds=i))],
        )
    backfill = base / "backfill"
    first = date(2024, 6, 1)
    rows = [tx(i, datetime(2024, 6, 1, 12) - timedelta(hours=12 * i)) for i in range(300)]  # 150 event dates
    write(backfill, first, "history.csv", rows)
    # moved 60 days back: a correction moved forward past the landing date would be quarantined
    # (implausible_event_time), not moved
    moved = [{**r, "event_time": _shift(r["event_time"], -60), "amount": "999.99"} for r in rows[:150:2]]
    write(backfill, first + timedelta(days=1), "corrections.csv", moved)
    return {
        "lake": lake,
        "lake_oracle": build_oracle(lake, base / "o1", days_of(START, 2)),
        "files": files,
        "backfill": backfill,
        "backfill_days": [first, first + timedelta(days=1)],
        "backfill_oracle": build_oracle(backfill, base / "o2", [first, first + timedelta(days=1)]),
    }


def tx(i: int, when: datetime) -> dict[str, str]:
    return {
        "transaction_id": f"tx_{i:08d}",
        "event_time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "card_id": f"card_{i % 13:03d}",
        "customer_id": f"cust_{i % 13:03d}",
        "merchant_id": f"m_{i % 7:03d}",
        "amount": f"{10 + i % 40:.2f}",
        "currency": "EUR",
        "channel": "pos",
        "merchant_category": "grocery",
        "country": "DE",
        "is_fraud": str(i % 2),
    }


def _shift(text: str, days: int) -> str:
    return (datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ") + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def write(root: Path, landing: date, name: str, rows: list[dict[str, str]]) -> None:
    path = root / "transactions" / landing.isoformat() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(",".join(COLUMNS) + "\n" + "".join(",".join(r[c] for c in COLUMNS) + "\n" for r in rows))


# ---------------------------------------------------------------- the scenarios: the aws test logic


def lake_days(mw, monkeypatch, w) -> AwsLake:
    """Two landing dates through Bronze, Silver and Gold; tables equal to the local target's,
    each Silver step reading its own landing date only."""
    lake = AwsLake.make(mw, monkeypatch, w["lake"])
    for d in days_of(START, 2):
        lake.day(d)
    check_same_as_local(lake, w["lake_oracle"])
    check_steps_kept_to_their_scope(lake, w["lake_oracle"])
    return lake


def gate(mw, monkeypatch, w) -> None:
    """The Silver gate validates exactly the rows of its scope (the event dates the run touched)."""
    lake = AwsLake.make(mw, monkeypatch, w["lake"])
    install_suites(mw, monkeypatch, lake.uc.name)
    lake.day(START)
    second = lake.day(START + timedelta(days=1))
    scope = second["silver__transactions"]["touched_event_dates"][-1:]  # one event date of two
    report = lake.step("gate", "gate", "transactions", "silver", {"event_dates": scope}, day="gate")
    silver = lake.table("transactions_silver")
    want = int(silver["event_date"].dt.date.isin([date.fromisoformat(d) for d in scope]).sum())
    assert report.rows == want, f"the gate checked {report.rows} rows, its scope holds {want}"
    assert report.success


def many_files(mw, monkeypatch, w) -> None:
    """1500 landed files of one date: every statement within Athena's size limit, every row in."""
    lake = AwsLake.make(mw, monkeypatch, w["files"])
    lake.step("tables", "ensure_tables", day=START)
    lake.step("ingest", "ingest_bronze", "transactions", [START], day=START)
    assert len(lake.table("transactions_bronze")) == FILES


def backfill(mw, monkeypatch, w) -> AwsLake:
    """150 event dates in one landing date, then keys moved to other dates: every write within
    100 partitions, tables equal to the local target's."""
    lake = AwsLake.make(mw, monkeypatch, w["backfill"])
    for d in w["backfill_days"]:
        lake.day(d)
    check_same_as_local(lake, w["backfill_oracle"])
    silver = lake.table("transactions_silver")
    moved = silver[silver["amount"].astype(float) == 999.99]
    assert len(moved) == 75, "every correction must have moved its key (none quarantined)"
    return lake


def maintenance(mw, monkeypatch, w) -> None:
    """Compaction of what a run wrote: OPTIMIZE scoped to the partitions written, repeated while
    Athena asks for more runs; VACUUM with the configured retention."""
    lake = AwsLake.make(mw, monkeypatch, w["lake"])
    out = lake.day(START)
    lake.twin.more_runs[("optimize", "transactions_silver")] = 2
    lake.twin.more_runs[("vacuum", "transactions_silver")] = 1
    touched = {
        "transactions_silver": out["silver__transactions"]["partitions"]["transactions_silver"],
        "transactions_quarantine": [START.isoformat()],
        "merchants_silver": [],
    }
    lake.compact(touched)
    done = [m for m in lake.twin.maintenance if not m.get("more_runs_needed")]
    for m in done:
        if m["op"] == "optimize" and m["table"] != "merchants_silver":
            part = "event_date" if m["table"] == "transactions_silver" else "_landing_date"
            assert re.match(rf"{part} IN \(", m.get("where", "")), f"OPTIMIZE of all of {m['table']}"
        if m["op"] == "vacuum":
            assert m["retention_seconds"] == str(7 * 86400), f"VACUUM of {m['table']} with {m['retention_seconds']}"
    assert {m["table"] for m in done if m["op"] == "vacuum"} == set(touched)


def features(mw, monkeypatch, w) -> None:
    """A materialization over a Gold table with same-instant rows and millisecond event times:
    the offline store holds the batch as PutRecord would store it, the online store the newest
    row per entity, the counts add up."""
    from lake_scenarios import usecase_data, write_usecase

    patch_moto_like_sagemaker(monkeypatch)
    mw.bucket("mlb-test-features")
    kms = mw.kms_key("f")
    mw.workgroup("mlb-test-features")
    uc = write_usecase(mw.tmp / "fuc", usecase_data("fraud_fs", "mlb-test-features", DB, kms))
    glue = boto3.client("glue", region_name=REGION)
    glue.create_database(DatabaseInput={"Name": DB})
    cols = la.gold_columns(uc, "transaction_features")
    glue.create_table(
        DatabaseName=DB,
        TableInput={
            "Name": "transaction_features",
            "Parameters": {"table_type": "ICEBERG"},
            "StorageDescriptor": {"Columns": [{"Name": n, "Type": t} for n, t in cols]},
        },
    )
    twin = AthenaTwin(DB, mw.tmp, kms).install(monkeypatch)
    rows = []
    for i in range(60):
        when = datetime(2024, 3, 1, 8) + timedelta(minutes=37 * i, milliseconds=250 * (i % 3))
        row = {n: None for n, _ in cols}
        row.update(
            transaction_id=f"tx_{i:04d}",
            event_time=when,
            card_id=f"card_{i % 6}",
            event_date=when.date(),
            card_txn_count_1h=i,
            card_amount_sum_24h=float(i) / 3,
            card_txn_count_24h=i % 4,
        )
        rows.append(row)
    rows.append({**rows[-1], "transaction_id": "tx_9999", "card_txn_count_1h": 999})  # same card and instant
    import pandas as pd

    frame = pd.DataFrame(rows, columns=[n for n, _ in cols])
    twin.con.register("_gold", frame)
    typed = ", ".join(f'CAST("{n}" AS {sqlgen.sql_type(t)}) AS "{n}"' for n, t in cols)
    twin.con.execute(f'CREATE TABLE {DB}."transaction_features" AS SELECT {typed} FROM _gold')
    store = FeatureStoreTwin()
    from mlblueprints.aws.session import boto3_runtime

    rt = boto3_runtime(uc, store.attach(boto3.Session(region_name=REGION)))
    run = RunInfo.for_usecase(uc, run_id="m")
    lo, hi = date(2024, 3, 1), date(2024, 3, 2)
    out = run_direct(uc, rt, fa.AwsFeatureStore(uc, rt).materialize("card_activity", lo, hi, run), run)

    view_cols = core.resolve_columns(uc, "card_activity", dict(cols))
    kept: dict[tuple, dict] = {}
    for r in rows:
        key = (r["card_id"], r["event_time"])
        if key not in kept or r["transaction_id"] > kept[key]["transaction_id"]:
            kept[key] = r

    def text(r: dict) -> dict[str, str]:
        req = fsreq.put_record_request(uc, "card_activity", view_cols, r, ["OfflineStore"])
        return {f["FeatureName"]: f["ValueAsString"] for f in req["Record"]}

    cur = twin.con.execute(f'SELECT * FROM {DB}."fv_card_activity_v1"')
    names = [d[0] for d in cur.description]
    offline = [dict(zip(names, r)) for r in cur.fetchall()]
    assert len(offline) == len(kept), f"offline store: {len(offline)} rows, batch {len(kept)}"
    features = fsreq.feature_names(view_cols)

    def stored(r: dict) -> dict[str, str]:  # an offline row as the text PutRecord carries
        return {
            n: v if isinstance(v, str) else repr(float(v)) if isinstance(v, float) else str(int(v))
            for n, v in r.items()
            if n in features and v is not None
        }

    got = sorted(repr(sorted(stored(r).items())) for r in offline)
    assert got == sorted(repr(sorted(text(r).items())) for r in kept.values()), "the offline store holds other values"
    latest = {}
    for r in kept.values():
        if r["card_id"] not in latest or r["event_time"] > latest[r["card_id"]]["event_time"]:
            latest[r["card_id"]] = r
    assert out["online_entities"] == len(latest) and out["collapsed_duplicates"] == 1
    online = {rid: rec for (g, rid), rec in store.online.items()}
    assert online == {c: text(r) for c, r in latest.items()}


SCENARIOS: dict[str, Callable[..., Any]] = {
    "lake": lake_days,
    "gate": gate,
    "files": many_files,
    "backfill": backfill,
    "maintenance": maintenance,
    "features": features,
}


# ---------------------------------------------------------------- the mutants


@dataclass
class Mutant:
    name: str
    scenario: str
    killed_by: str  # a regex the failure must match: the check (or the refusal) that kills it
    apply: Callable[[Any, dict[str, int]], None]  # (monkeypatch, hits)


def _wrap_statements(monkeypatch, module, fn: str, hits: dict[str, int], change: Callable[[Statement], Statement]):
    original = getattr(module, fn)

    def mutated(*a, **k):
        out = original(*a, **k)
        if isinstance(out, tuple):  # (statements, range)
            return [_count(change(s), s, hits) for s in out[0]], out[1]
        return [_count(change(s), s, hits) for s in out]

    monkeypatch.setattr(module, fn, mutated)


def _count(new: Statement, old: Statement, hits: dict[str, int]) -> Statement:
    if new != old:
        hits["n"] += 1
    return new


def _sub(pattern: str, repl: str, names: tuple[str, ...] = ()) -> Callable[[Statement], Statement]:
    def change(st: Statement) -> Statement:
        if names and not st.name.startswith(names):
            return st
        return Statement(**{**st.as_dict(), "sql": re.sub(pattern, repl, st.sql, flags=re.S)})

    return change


def _key_on(table_cols: str) -> str:
    return rf"(AS s\s+ON\s+){table_cols}"


def mut_gold_on_true(mp, hits):
    _wrap_statements(
        mp,
        la,
        "build_gold_statements",
        hits,
        _sub(_key_on(r't\."transaction_id" = s\."transaction_id"'), r"\g<1>1 = 1", ("gold_merge",)),
    )


def mut_gold_wrong_key(mp, hits):
    change = _sub(
        _key_on(r't\."transaction_id" = s\."transaction_id"'), r'\g<1>t."card_id" = s."card_id"', ("gold_merge",)
    )
    _wrap_statements(mp, la, "build_gold_statements", hits, change)


def mut_silver_wrong_key(mp, hits):
    change = _sub(
        _key_on(r't\."transaction_id" = s\."transaction_id"'),
        r'\g<1>t."_line_number" = s."_line_number"',
        ("silver_merge",),
    )
    _wrap_statements(mp, la, "silver_statements", hits, change)


def mut_quarantine_half_key(mp, hits):
    change = _sub(
        _key_on(r't\."_file_checksum" = s\."_file_checksum"\s+AND\s+t\."_line_number" = s\."_line_number"'),
        r'\g<1>t."_file_checksum" = s."_file_checksum"',
        ("silver_quarantine",),
    )
    _wrap_statements(mp, la, "silver_statements", hits, change)


def _unload_format(module, fmt: str, compression: str):
    def apply(mp, hits):
        original = module.unload_statement

        def unload(name, body, target):
            st = original(name, body, target)
            hits["n"] += 1
            return Statement(
                **{
                    **st.as_dict(),
                    "sql": st.sql.replace(
                        "format = 'PARQUET', compression = 'ZSTD'", f"format = '{fmt}', compression = '{compression}'"
                    ),
                }
            )

        mp.setattr(module, "unload_statement", unload)

    return apply


def mut_silver_reads_all_bronze(mp, hits):
    original = sqlgen.silver_validate_sql

    def validate(ds, source):
        if " WHERE _landing_date IN (" in source:
            hits["n"] += 1
            source = source.split(" WHERE _landing_date IN (")[0] + ")"
        return original(ds, source)

    mp.setattr(sqlgen, "silver_validate_sql", validate)


def mut_gate_whole_table(mp, hits):
    original = la.gate_statement

    def gate_statement(uc, name, layer, scope, run):
        st, target = original(uc, name, layer, scope, run)
        hits["n"] += 1
        body = re.sub(r"\s+WHERE\s+.*$", "", st.body, flags=re.S)
        return la.unload_statement(st.name, body, target), target

    mp.setattr(la, "gate_statement", gate_statement)


def mut_optimize_whole_table(mp, hits):
    original = la.maintenance_statements

    def maintenance_statements(uc, table, partition, dates, retention_days):
        if dates is not None:
            hits["n"] += 1
        return original(uc, table, partition, None, retention_days)

    mp.setattr(la, "maintenance_statements", maintenance_statements)


def mut_silver_keeps_every_version(mp, hits):
    _wrap_statements(mp, la, "silver_statements", hits, _sub(r"_version_rank = 1", "_version_rank >= 1"))


def mut_batch_keeps_every_row(mp, hits):
    original = core.batch_sql

    def batch_sql(*a, **k):
        hits["n"] += 1
        return original(*a, **k).split(" QUALIFY ")[0]

    mp.setattr(core, "batch_sql", batch_sql)


def mut_offline_event_time_seconds(mp, hits):
    original = fa._text_sql

    def text_sql(expr, type_, *, event_time=False):
        if event_time:
            hits["n"] += 1
            return f"CASE WHEN {expr} IS NULL THEN NULL ELSE concat(date_format({expr}, '%Y-%m-%dT%H:%i:%s'), 'Z') END"
        return original(expr, type_, event_time=event_time)

    mp.setattr(fa, "_text_sql", text_sql)


def mut_bronze_one_statement(mp, hits):
    """No chunking, and no size check before sending either: what Athena (the twin) answers."""
    original = la.bronze_statements
    mp.setattr(la, "check_statement_sizes", lambda uc, statements: None)

    def bronze_statements(uc, *a, **k):
        hits["n"] += 1
        big = uc.aws.model_copy(update={"athena_max_statement_bytes": 10**9, "athena_max_files_per_statement": 10**9})
        return original(uc.model_copy(update={"aws": big}), *a, **k)

    mp.setattr(la, "bronze_statements", bronze_statements)


def mut_silver_one_chunk(mp, hits):
    original = la.plan_sql

    def plan_sql(writes, size):
        hits["n"] += 1
        return original(writes, 10**6)

    mp.setattr(la, "plan_sql", plan_sql)


def mut_gold_one_window(mp, hits):
    def date_windows(lo, hi, size):
        hits["n"] += 1
        return [(lo, hi)]

    mp.setattr(la, "date_windows", date_windows)


def mut_no_movers_pass(mp, hits):
    def drop(st: Statement) -> Statement:
        if st.name == "silver_movers":
            return Statement(**{**st.as_dict(), "each": {"plan": "silver_plan", "kind": "nothing"}})
        return st

    _wrap_statements(mp, la, "silver_statements", hits, drop)


def mut_optimize_not_repeated(mp, hits):
    original = la.maintenance_statements

    def maintenance_statements(*a, **k):
        out = original(*a, **k)
        hits["n"] += 1
        return [Statement(**{**s.as_dict(), "repeat_on": None, "max_runs": 1}) for s in out]

    mp.setattr(la, "maintenance_statements", maintenance_statements)


def mut_vacuum_without_retention(mp, hits):
    original = la.maintenance_statements

    def maintenance_statements(*a, **k):
        hits["n"] += 1
        return [s for s in original(*a, **k) if s.kind != "alter"]

    mp.setattr(la, "maintenance_statements", maintenance_statements)


MUTANTS = [
    Mutant("Gold MERGE ON 1 = 1", "lake", "MERGE key contract", mut_gold_on_true),
    Mutant("Gold MERGE keyed on card_id", "lake", "MERGE key contract", mut_gold_wrong_key),
    Mutant("Silver MERGE keyed on _line_number", "lake", "MERGE key contract", mut_silver_wrong_key),
    Mutant("quarantine MERGE keyed on the checksum only", "lake", "MERGE key contract", mut_quarantine_half_key),
    Mutant("gate UNLOAD as TEXTFILE", "gate", "(?i)parquet", _unload_format(la, "TEXTFILE", "GZIP")),
    Mutant("features UNLOAD as ORC", "features", "(?i)parquet", _unload_format(fa, "ORC", "ZLIB")),
    Mutant(
        "Silver reads all of Bronze (landing-date filter dropped)",
        "lake",
        "read \\d+ Bronze rows; that date has",
        mut_silver_reads_all_bronze,
    ),
    Mutant("gate checks the whole table (scope filter dropped)", "gate", "the gate checked", mut_gate_whole_table),
    Mutant(
        "OPTIMIZE of whole tables (partition filter dropped)",
        "maintenance",
        "OPTIMIZE of all of",
        mut_optimize_whole_table,
    ),
    Mutant(
        "Silver keeps every version (dedupe dropped)",
        "lake",
        "transactions_silver|MULTIPLE_MATCHES",
        mut_silver_keeps_every_version,
    ),
    Mutant(
        "feature batch keeps same-instant rows (dedupe dropped)",
        "features",
        "Gold changed|offline store",
        mut_batch_keeps_every_row,
    ),
    Mutant("offline event time without milliseconds", "features", "other values", mut_offline_event_time_seconds),
    Mutant("Bronze in one statement", "files", "262144", mut_bronze_one_statement),
    Mutant(
        "Silver MERGEs not chunked by event date", "backfill", "HIVE_TOO_MANY_OPEN_PARTITIONS", mut_silver_one_chunk
    ),
    Mutant("Gold in one MERGE over the whole range", "backfill", "HIVE_TOO_MANY_OPEN_PARTITIONS", mut_gold_one_window),
    Mutant("moved keys not deleted first", "backfill", "HIVE_TOO_MANY_OPEN_PARTITIONS", mut_no_movers_pass),
    Mutant(
        "OPTIMIZE not repeated on MORE_RUNS_NEEDED",
        "maintenance",
        "ICEBERG_OPTIMIZE_MORE_RUNS_NEEDED",
        mut_optimize_not_repeated,
    ),
    Mutant(
        "VACUUM without the configured retention",
        "maintenance",
        "VACUUM of \\w+ with None",
        mut_vacuum_without_retention,
    ),
]


def mutant_table() -> str:
    return "\n".join(f"| {m.name} | {m.scenario} | {m.killed_by} |" for m in MUTANTS)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_each_scenario_passes_unmutated(scenario, worlds, moto_world, monkeypatch):
    SCENARIOS[scenario](moto_world, monkeypatch, worlds)


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_every_mutant_is_killed(mutant, worlds, moto_world, monkeypatch):
    hits = {"n": 0}
    mutant.apply(monkeypatch, hits)
    with pytest.raises(BaseException) as caught:  # noqa: PT011 - which check killed it is asserted below
        SCENARIOS[mutant.scenario](moto_world, monkeypatch, worlds)
    assert hits["n"] > 0, f"{mutant.name}: the mutation was never applied"
    assert re.search(mutant.killed_by, f"{caught.type.__name__}: {caught.value}"), (
        f"{mutant.name}: killed, but not by the check expected ({mutant.killed_by!r}): "
        f"{caught.type.__name__}: {str(caught.value)[:600]}"
    )
