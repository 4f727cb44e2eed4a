"""Feature materialization on the local target, on small hand-made Gold tables.

Each test writes the Gold rows it needs straight into an Iceberg table (so every value and
instant is known), materializes views into the offline (Iceberg) and online (SQLite) stores,
and builds point-in-time training sets from them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import date, datetime, timedelta
from typing import Any

import pytest
import yaml
from pyiceberg.expressions import AlwaysTrue

from helpers import ROOT, read_table
from mlblueprints.config import parse_usecase
from mlblueprints.features import core, online
from mlblueprints.features import local as fl
from mlblueprints.lakehouse import iceberg, naming
from mlblueprints.lakehouse.local import connect
from mlblueprints.lineage import RunInfo

D1 = date(2024, 3, 1)
T = datetime(2024, 3, 1, 12, 0, 0)

GOLD_TYPES = {
    "transaction_id": "VARCHAR",
    "event_time": "TIMESTAMP",
    "card_id": "VARCHAR",
    "customer_id": "VARCHAR",
    "merchant_id": "VARCHAR",
    "amount": "DOUBLE",
    "currency": "VARCHAR",
    "channel": "VARCHAR",
    "merchant_category": "VARCHAR",
    "country": "VARCHAR",
    "is_fraud": "INTEGER",
    "age_band": "VARCHAR",  # the card holder's, carried into the training set for the bias metrics
    "region": "VARCHAR",
    "event_hour": "BIGINT",
    "card_txn_count_1h": "BIGINT",
    "card_txn_count_24h": "BIGINT",
    "card_amount_sum_24h": "DOUBLE",
    "card_amount_avg_7d": "DOUBLE",
    "card_amount_max_7d": "DOUBLE",
    "card_txn_count_7d": "BIGINT",
    "merchant_txn_count_1h": "BIGINT",
    "merchant_txn_count_24h": "BIGINT",
    "merchant_amount_avg_7d": "DOUBLE",
    "amount_to_card_avg_7d": "DOUBLE",
    "seconds_since_prev_card_txn": "BIGINT",
}
LABEL_TYPES = {
    "case_id": "VARCHAR",
    "event_time": "TIMESTAMP",
    "card_id": "VARCHAR",
    "merchant_id": "VARCHAR",
    "is_fraud": "INTEGER",
}


@pytest.fixture
def uc(mlb_home):
    """The shipped use case plus a Gold table of label events (chargebacks) and a training set
    on it, so label times need not coincide with feature rows."""
    doc = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    doc["gold"]["chargebacks"] = {
        "sql": "unused.sql",
        "inputs": ["transactions"],
        "primary_key": ["case_id"],
        "event_time": "event_time",
    }
    doc["training_sets"]["leak_check"] = {
        "labels": {"source": "chargebacks", "label": "is_fraud", "columns": ["case_id"]},
        "features": ["card_activity", "merchant_activity"],
    }
    return parse_usecase(doc, str(ROOT / "dags/usecases/fraud_detection.yaml"))


def txn(tid: str, when: datetime, card: str | None, merchant: str = "m1", **feats: Any) -> dict[str, Any]:
    row = {c: None for c in GOLD_TYPES}
    row.update(transaction_id=tid, event_time=when, card_id=card, customer_id="cu", merchant_id=merchant)
    row.update(amount=10.0, currency="EUR", channel="pos", merchant_category="grocery", country="DE", is_fraud=0)
    row.update(
        event_hour=when.hour if when else None, card_txn_count_1h=1, merchant_txn_count_1h=1, merchant_txn_count_24h=1
    )
    row.update(feats)
    return row


def write_gold(
    uc, name: str, rows: list[dict[str, Any]], types: dict[str, str] | None = None, rebuild: bool = False
) -> None:
    """Replace a Gold table's content with ``rows`` (typed by ``types``)."""
    types = types or GOLD_TYPES
    con = connect()
    cols = list(types)
    if rows:
        import pandas as pd

        frame = pd.DataFrame([[r.get(c) for c in cols] for r in rows], columns=cols, dtype=object)
        con.register("frame", frame)
        casts = ", ".join(f'CAST("{c}" AS {t}) AS "{c}"' for c, t in types.items())
        con.execute(f"CREATE TEMP TABLE src AS SELECT {casts} FROM frame")
        sql = "SELECT *, CAST(event_time AS DATE) AS event_date FROM src"
    else:
        sql = (
            "SELECT "
            + ", ".join(f'CAST(NULL AS {t}) AS "{c}"' for c, t in types.items())
            + ", DATE '2024-03-01' AS event_date WHERE FALSE"
        )
    ident = naming.identifier(uc, name)
    cat = iceberg.catalog()
    if rebuild:  # the Gold SQL changed a column's type and its table was rebuilt
        cat.drop_table(ident)
    table = iceberg.ensure_table(cat, ident, iceberg.query_schema(con, sql), "event_date", {})
    iceberg.write(
        con,
        table,
        sql,
        replace=AlwaysTrue(),
        partition_by="event_date",
        snapshot_properties={},
        target_file_size=1 << 27,
    )


def run(name: str = "t") -> RunInfo:
    return RunInfo(run_id=name, git_commit="test")


def online_rows(uc, view: str) -> list[tuple]:
    con = sqlite3.connect(online.store_path(uc))
    cols = [r[1] for r in con.execute(f"PRAGMA table_info({core.online_table(uc, view)})")]
    keep = [c for c in cols if c not in ("_batch_id", "_offline_snapshot_id")]
    return sorted(con.execute(f"SELECT {', '.join(keep)} FROM {core.online_table(uc, view)}").fetchall())


def offline_rows(uc, view: str) -> list[tuple]:
    df = read_table(uc, core.offline_table(uc, view))
    return sorted(map(tuple, df.astype(object).where(df.notna(), None).itertuples(index=False, name=None)))


# ------------------------------------------------------------------ no leakage


def test_training_set_joins_only_values_from_before_each_label(uc):
    h = timedelta(hours=1)
    s = timedelta(seconds=1)
    write_gold(
        uc,
        "transaction_features",
        [
            # card A: its features change one second before and one second after the label at T
            txn("a1", T - 2 * h, "A", card_txn_count_1h=1, card_amount_sum_24h=10.0),
            txn("a2", T - s, "A", card_txn_count_1h=2, card_amount_sum_24h=20.0),
            txn("a3", T + s, "A", card_txn_count_1h=3, card_amount_sum_24h=30.0),
            # card B: last seen 7 days + 1 s before its label (ttl 7d) -> expired
            txn("b1", T - timedelta(days=7) - s, "B", card_txn_count_1h=9),
            # card C: last seen exactly 7 days before its label -> still valid
            txn("c1", T - timedelta(days=7), "C", card_txn_count_1h=7),
            # card D: only after its label
            txn("d1", T + h, "D", card_txn_count_1h=4),
        ],
    )
    write_gold(
        uc,
        "chargebacks",
        [
            {"case_id": "A@T", "event_time": T, "card_id": "A", "merchant_id": "m1", "is_fraud": 1},
            {"case_id": "A@T-1s", "event_time": T - s, "card_id": "A", "merchant_id": "m1", "is_fraud": 0},
            {"case_id": "B@T", "event_time": T, "card_id": "B", "merchant_id": "m1", "is_fraud": 0},
            {"case_id": "C@T", "event_time": T, "card_id": "C", "merchant_id": "m1", "is_fraud": 0},
            {"case_id": "D@T", "event_time": T, "card_id": "D", "merchant_id": "m1", "is_fraud": 1},
            {"case_id": "E@T", "event_time": T, "card_id": "E", "merchant_id": "m1", "is_fraud": 0},
        ],
        LABEL_TYPES,
    )
    for view in uc.features:
        fl.materialize(uc, view, T.date() - timedelta(days=8), T.date() + timedelta(days=1), run())
    out = fl.build_training_set(uc, "leak_check", run("ts"))
    assert out["rows"] == 6
    got = read_table(uc, core.training_table("leak_check")).set_index("case_id")
    count = got["card_txn_count_1h"].astype("Int64")
    assert count["A@T"] == 2  # one second before, never the value one second after
    assert got.loc["A@T", "card_amount_sum_24h"] == 20.0
    assert got.loc["A@T", "card_activity__feature_time"] == T - s
    assert count["A@T-1s"] == 2  # at the label's own instant: included
    assert count.isna()["B@T"]  # expired, and not replaced by anything older
    assert count["C@T"] == 7  # exactly ttl old: still valid
    assert count.isna()["D@T"] and count.isna()["E@T"]  # only later values / unknown card
    # lineage: the snapshot records what it read
    t = iceberg.load(iceberg.catalog(), naming.identifier(uc, core.training_table("leak_check")))
    props = t.current_snapshot().summary.additional_properties
    assert set(out["source_snapshots"]) == {"chargebacks", "fv_card_activity_v1", "fv_merchant_activity_v1"}
    assert all(str(v) in props["mlb.source-snapshots"] for v in out["source_snapshots"].values())
    assert props["mlb.run-id"] == "ts" and props["mlb.feature-views"] == '{"card_activity": 1, "merchant_activity": 1}'


def test_label_range_restricts_label_events(uc):
    write_gold(uc, "transaction_features", [txn(f"t{i}", T + timedelta(days=i), "A") for i in range(4)])
    fl.materialize(uc, "card_activity", D1, D1 + timedelta(days=4), run())
    fl.materialize(uc, "merchant_activity", D1, D1 + timedelta(days=4), run())
    out = fl.build_training_set(
        uc, "fraud_training", run(), label_start=D1 + timedelta(days=1), label_end=D1 + timedelta(days=3)
    )
    assert out["rows"] == 2
    assert sorted(read_table(uc, "ts_fraud_training")["transaction_id"]) == ["t1", "t2"]


# ------------------------------------------------------------------ bad input


def test_null_entity_keys_are_skipped_and_counted(uc):
    rows = [txn(f"t{i}", T + timedelta(minutes=i), "A" if i % 3 else None) for i in range(9)]
    rows.append(txn("no-time", None, "A"))  # type: ignore[arg-type]
    write_gold(uc, "transaction_features", rows)
    out = fl.materialize(uc, "card_activity", D1, D1, run())
    assert (out["rows_in"], out["skipped_null_key"], out["skipped_null_event_time"], out["offline_rows"]) == (
        10,
        3,
        1,
        6,
    )
    assert all(r[0] == "A" for r in offline_rows(uc, "card_activity"))
    assert out["online_entities"] == 1
    m = fl.materialize(uc, "merchant_activity", D1, D1, run())
    assert m["skipped_null_key"] == 0 and m["skipped_null_event_time"] == 1 and m["offline_rows"] == 9


def test_missing_feature_column_fails_before_anything_is_written(uc):
    types = {k: v for k, v in GOLD_TYPES.items() if k != "card_amount_max_7d"}
    write_gold(uc, "transaction_features", [txn("t1", T, "A")], types)
    with pytest.raises(core.FeatureViewError) as e:
        fl.materialize(uc, "card_activity", D1, D1, run())
    assert "fraud_detection: features.card_activity: column 'card_amount_max_7d': feature column is not in Gold" in str(
        e.value
    )
    assert iceberg.load(iceberg.catalog(), naming.identifier(uc, "fv_card_activity_v1")) is None
    assert (
        not online.store_path(uc).exists()
        or online.OnlineStore(online.store_path(uc)).stored_types("fv_card_activity_v1") is None
    )


def test_type_change_fails_and_leaves_both_stores_as_they_were(uc):
    write_gold(uc, "transaction_features", [txn("t1", T, "A"), txn("t2", T, "B")])
    fl.materialize(uc, "card_activity", D1, D1, run())
    before = offline_rows(uc, "card_activity"), online_rows(uc, "card_activity")
    snap = iceberg.snapshot_id(iceberg.load(iceberg.catalog(), naming.identifier(uc, "fv_card_activity_v1")))
    changed = {**GOLD_TYPES, "card_txn_count_1h": "VARCHAR"}
    write_gold(uc, "transaction_features", [txn("t3", T, "A", card_txn_count_1h="many")], changed, rebuild=True)
    with pytest.raises(core.FeatureViewError) as e:
        fl.materialize(uc, "card_activity", D1, D1, run())
    assert e.value.view == "card_activity" and e.value.column == "card_txn_count_1h"
    assert "type changed" in str(e.value) and "holds bigint, Gold now gives string" in str(e.value)
    assert (offline_rows(uc, "card_activity"), online_rows(uc, "card_activity")) == before
    assert iceberg.snapshot_id(iceberg.load(iceberg.catalog(), naming.identifier(uc, "fv_card_activity_v1"))) == snap


# ------------------------------------------------------------------ stores agree, reruns converge


def _two_days(uc) -> None:
    rows = []
    for i in range(200):
        card = f"c{i % 37}"
        when = T + timedelta(minutes=13 * i)
        rows.append(txn(f"t{i}", when, card, merchant=f"m{i % 5}", card_txn_count_1h=i, card_amount_sum_24h=i * 1.5))
    write_gold(uc, "transaction_features", rows)


def test_online_equals_newest_offline_and_reruns_change_nothing(uc):
    _two_days(uc)
    lo, hi = D1, D1 + timedelta(days=2)
    for view in uc.features:
        fl.materialize(uc, view, lo, hi, run("first"))
    first = {v: (offline_rows(uc, v), online_rows(uc, v)) for v in uc.features}
    for view in uc.features:
        out = fl.materialize(uc, view, lo, hi, run("again"))
        assert out["online"]["entities_reresolved"] == 0 and out["online"]["entities_removed"] == 0
    assert {v: (offline_rows(uc, v), online_rows(uc, v)) for v in uc.features} == first
    # field by field: the online value of each entity is its newest offline row
    off = read_table(uc, "fv_card_activity_v1").sort_values("event_time").groupby("card_id").tail(1)
    got = online.get_online_features(uc, "card_activity", list(off["card_id"]), as_of="watermark")
    for (_, row), value in zip(off.iterrows(), got):
        assert value is not None
        for col in ["card_id", "event_time", *uc.features["card_activity"].features]:
            want = row[col]
            assert (value[col] is None and (want is None or want != want)) or value[col] == want, (col, want, value)


def test_rows_that_disappear_from_gold_leave_the_online_store_too(uc):
    rows = [
        txn("x1", T, "X", card_txn_count_1h=1),
        txn("x2", T + timedelta(days=1), "X", card_txn_count_1h=2),
        txn("y1", T + timedelta(days=1), "Y", card_txn_count_1h=5),
        txn("z1", T + timedelta(days=1), "Z", card_txn_count_1h=6),
    ]
    write_gold(uc, "transaction_features", rows)
    fl.materialize(uc, "card_activity", D1, D1 + timedelta(days=1), run())
    assert online.get_online_features(uc, "card_activity", ["X"], as_of="watermark")[0]["card_txn_count_1h"] == 2
    # Gold recomputed day 2 without x2 and y1 (e.g. they turned out to be duplicates upstream)
    write_gold(uc, "transaction_features", [rows[0], rows[3]])
    out = fl.materialize(uc, "card_activity", D1 + timedelta(days=1), D1 + timedelta(days=1), run())
    assert out["online"]["entities_reresolved"] == 1 and out["online"]["entities_removed"] == 1
    x, y, z = online.get_online_features(uc, "card_activity", ["X", "Y", "Z"], as_of="watermark")
    assert x["card_txn_count_1h"] == 1 and x["event_time"] == T  # back to its newest remaining row
    assert y is None and z["card_txn_count_1h"] == 6


def test_online_reads_honour_the_ttl(uc):
    write_gold(uc, "transaction_features", [txn("a", T, "A"), txn("b", T + timedelta(days=3), "B")])
    fl.materialize(uc, "card_activity", D1, D1 + timedelta(days=3), run())
    ttl = timedelta(days=7)
    at = lambda when: online.get_online_features(uc, "card_activity", ["A", "B", "nobody"], as_of=when)  # noqa: E731
    assert [r is not None for r in at(T + ttl)] == [True, True, False]
    assert [r is not None for r in at(T + ttl + timedelta(seconds=1))] == [False, True, False]
    assert [r is not None for r in at(datetime(2030, 1, 1))] == [False, False, False]  # default clock: now
    assert online.get_online_features(uc, "card_activity", ["A"]) == [None]


def test_readers_see_whole_batches_while_a_materialization_writes(uc):
    rows = [txn(f"t{i}", T + timedelta(seconds=i), f"c{i}", card_txn_count_1h=1) for i in range(20_000)]
    write_gold(uc, "transaction_features", rows)
    fl.materialize(uc, "card_activity", D1, D1, run())
    rows = [dict(r, card_txn_count_1h=2) for r in rows]
    write_gold(uc, "transaction_features", rows)
    seen: set[tuple[int, ...]] = set()
    errors: list[BaseException] = []
    stop = threading.Event()
    keys = [f"c{i}" for i in range(0, 20_000, 997)]

    def read() -> None:
        try:
            while not stop.is_set():
                got = online.get_online_features(uc, "card_activity", keys, as_of="watermark")
                seen.add(tuple(r["card_txn_count_1h"] for r in got))
                time.sleep(0.001)  # a reader thread that never sleeps starves the writer of the GIL
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    th = threading.Thread(target=read)
    th.start()
    try:
        fl.materialize(uc, "card_activity", D1, D1, run())
    finally:
        stop.set()
        th.join()
    assert errors == []
    # every read saw one batch or the other, never a mix
    assert seen <= {tuple([1] * len(keys)), tuple([2] * len(keys))}
    assert online.get_online_features(uc, "card_activity", keys[:1], as_of="watermark")[0]["card_txn_count_1h"] == 2


def test_a_row_dated_in_the_future_does_not_expire_every_other_entity(uc):
    """One Gold row dated 2030 used to move the online store's clock there: 113 of 114 entities
    were purged as expired. The clock only follows event times up to a day after the wall clock."""
    cards = [txn(f"t{i}", T + timedelta(minutes=i), f"card_{i:03d}") for i in range(114)]
    future = txn("t_future", datetime(2030, 1, 1, 0, 0), "card_future")
    write_gold(uc, "transaction_features", [*cards, future])
    out = fl.materialize(uc, "card_activity", D1, date(2030, 1, 1), run())
    assert out["offline_rows"] == 115 and out["online_entities"] == 115
    assert out["online"]["purged_expired"] == 0 and out["online"]["future_rows"] == 1
    assert out["online"]["stats"]["entities"] == 115
    assert out["online"]["watermark"] == (T + timedelta(minutes=113)).isoformat()
    got = online.get_online_features(uc, "card_activity", ["card_000", "card_113", "card_future"], as_of="watermark")
    assert [g["card_id"] if g else None for g in got] == ["card_000", "card_113", "card_future"]
