"""Pure logic of feature views: configuration, column checks, names, and the point-in-time SQL.

The point-in-time join is checked against a brute-force reference on random data (hypothesis):
for every label event, the newest feature row of its entity at or before the label time, null
when that row is older than the TTL - never a row from after the label.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import duckdb
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import ROOT, fraud_usecase
from mlblueprints.config import UseCaseError, duration_seconds, parse_usecase
from mlblueprints.features import core


def _doc() -> dict:
    return yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())


def _expect_error(doc: dict, field: str, words: str) -> None:
    with pytest.raises(UseCaseError) as e:
        parse_usecase(doc, "fraud_detection.yaml")
    assert e.value.field.startswith(field), str(e.value)
    assert words in e.value.reason, str(e.value)


def test_shipped_views_and_training_set_load():
    uc = fraud_usecase()
    assert set(uc.features) == {"card_activity", "merchant_activity"}
    assert uc.features["card_activity"].entity == ["card_id"]
    assert uc.features["card_activity"].ttl_seconds == 7 * 86400
    assert uc.training_sets["fraud_training"].features == ["card_activity", "merchant_activity"]


def test_durations():
    assert duration_seconds("90s") == 90 and duration_seconds("15m") == 900
    assert duration_seconds("24h") == 86400 and duration_seconds("7d") == 604800
    for bad in ("7", "0d", "1w", "-1d", "d"):
        with pytest.raises(ValueError):
            duration_seconds(bad)


@pytest.mark.parametrize(
    "mutate, field, words",
    [
        (
            lambda d: d["features"]["card_activity"].update(source="nope"),
            "features.card_activity.source",
            "unknown Gold table 'nope'",
        ),
        (
            lambda d: d["features"]["card_activity"].update(ttl="7 weeks"),
            "features.card_activity.ttl",
            "not a duration",
        ),
        (lambda d: d["features"]["card_activity"].update(entity=[]), "features.card_activity.entity", "at least 1"),
        (
            lambda d: d["features"]["card_activity"]["features"].append("card_id"),
            "features.card_activity",
            "listed twice",
        ),
        (
            lambda d: d["features"]["card_activity"]["features"].append("event_date"),
            "features.card_activity",
            "reserved",
        ),
        (lambda d: d["features"]["card_activity"].update(stores=["offline", "offline"]), "features", "twice"),
        (
            lambda d: d["features"]["card_activity"].update(colour="red"),
            "features.card_activity",
            "unknown field 'colour'",
        ),
        (
            lambda d: d["training_sets"]["fraud_training"].update(features=["card_activity", "ghost"]),
            "training_sets.fraud_training.features[1]",
            "unknown feature view 'ghost'",
        ),
        (
            lambda d: d["features"]["merchant_activity"]["features"].append("card_txn_count_1h"),
            "training_sets.fraud_training.features[1]",
            "'card_txn_count_1h' is in both",
        ),
        (
            lambda d: d["features"]["card_activity"].update(target="aws") or d.pop("aws"),
            "features.card_activity.target",
            "aws section is missing",
        ),
    ],
)
def test_bad_view_config_is_one_line(mutate, field, words):
    doc = _doc()
    mutate(doc)
    _expect_error(doc, field, words)


GOLD = {
    "transaction_id": "string",
    "event_time": "timestamp",
    "card_id": "string",
    "merchant_id": "string",
    "card_txn_count_1h": "long",
    "card_txn_count_24h": "long",
    "card_amount_sum_24h": "double",
    "card_amount_avg_7d": "double",
    "card_amount_max_7d": "double",
    "card_txn_count_7d": "long",
    "seconds_since_prev_card_txn": "long",
    "amount": "decimal(12, 2)",
}


def test_resolve_columns_types_from_gold():
    uc = fraud_usecase()
    cols = core.resolve_columns(uc, "card_activity", GOLD)
    assert cols.entity == (("card_id", "string"),)
    assert dict(cols.features)["card_amount_sum_24h"] == "double"
    assert dict(cols.features)["card_txn_count_1h"] == "bigint"
    assert cols.types()["event_time"] == "timestamp"


def test_missing_feature_column_names_view_and_column():
    uc = fraud_usecase()
    gold = {k: v for k, v in GOLD.items() if k != "card_amount_max_7d"}
    with pytest.raises(core.FeatureViewError) as e:
        core.resolve_columns(uc, "card_activity", gold)
    assert e.value.view == "card_activity" and e.value.column == "card_amount_max_7d"
    assert "features.card_activity: column 'card_amount_max_7d': feature column is not in Gold" in str(e.value)


def test_unstorable_types_are_named():
    uc = fraud_usecase()
    with pytest.raises(core.FeatureViewError, match="column 'card_txn_count_1h'.*decimal.*CAST it to DOUBLE"):
        core.resolve_columns(uc, "card_activity", {**GOLD, "card_txn_count_1h": "decimal(12, 2)"})
    with pytest.raises(core.FeatureViewError, match="column 'card_id': entity key must be"):
        core.resolve_columns(uc, "card_activity", {**GOLD, "card_id": "double"})
    with pytest.raises(core.FeatureViewError, match="column 'event_time': event-time column must be a timestamp"):
        core.resolve_columns(uc, "card_activity", {**GOLD, "event_time": "string"})


def test_type_change_against_a_store_is_named():
    uc = fraud_usecase()
    cols = core.resolve_columns(uc, "card_activity", GOLD)
    stored = dict(cols.types())
    core.check_store_types(uc, "card_activity", cols, stored, "online")  # same: fine
    core.check_store_types(uc, "card_activity", cols, {**stored, "card_txn_count_1h": "bigint"}, "online")
    changed = core.resolve_columns(uc, "card_activity", {**GOLD, "card_txn_count_1h": "string"})
    with pytest.raises(core.FeatureViewError) as e:
        core.check_store_types(uc, "card_activity", changed, stored, "offline")
    assert e.value.column == "card_txn_count_1h"
    assert "type changed: the offline store holds bigint, Gold now gives string" in str(e.value)
    assert "bump features.card_activity.version" in str(e.value)


def test_names():
    uc = fraud_usecase()
    assert core.offline_table(uc, "card_activity") == "fv_card_activity_v1"
    assert core.feature_group_name(uc, "card_activity") == "fraud-detection-card-activity-v1"
    assert core.record_id(["a", 7, None]) == "a#7#"
    assert core.asset_uri(uc, "card_activity") == "file://mlblueprints/fraud_detection/features/fv_card_activity_v1"


def test_range_from_asset_events_merges_ranges():
    assert core.range_from_asset_extras([]) is None
    assert core.range_from_asset_extras([{}, None, {"snapshot_id": 1}]) is None
    got = core.range_from_asset_extras(
        [{"range": ["2024-03-02", "2024-03-09"]}, {"range": ["2024-03-01", "2024-03-05"]}]
    )
    assert got == (date(2024, 3, 1), date(2024, 3, 9))
    assert core.date_range(["2024-03-05", "2024-03-01", "2024-03-03"]) == (date(2024, 3, 1), date(2024, 3, 5))


# ------------------------------------------------------------------ point-in-time join vs brute force

T0 = datetime(2024, 3, 1)


def _pit(features: list[tuple[str, int, float]], labels: list[tuple[str, int, int]], ttl: int):
    """Run core.pit_sql on DuckDB over (entity, second offset, value) rows."""
    con = duckdb.connect()
    con.execute("CREATE TABLE fv (card_id VARCHAR, event_time TIMESTAMP, f DOUBLE)")
    con.execute("CREATE TABLE lab (lid INTEGER, card_id VARCHAR, t TIMESTAMP, y INTEGER)")
    if features:
        con.executemany("INSERT INTO fv VALUES (?, ?, ?)", [(e, T0 + timedelta(seconds=s), v) for e, s, v in features])
    if labels:
        con.executemany(
            "INSERT INTO lab VALUES (?, ?, ?, ?)",
            [(i, e, T0 + timedelta(seconds=s), y) for i, (e, s, y) in enumerate(labels)],
        )
    cols = core.ViewColumns(
        view="v", entity=(("card_id", "string"),), event_time="event_time", features=(("f", "double"),)
    )
    sql = core.pit_sql("lab", "t", "y", ["lid"], [core.PitView("v", "fv", cols, ttl)])
    rows = con.execute(f"SELECT lid, f, v__feature_time FROM ({sql}) ORDER BY lid").fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def _reference(features, labels, ttl):
    out = {}
    for i, (e, s, _y) in enumerate(labels):
        cands = [(fs, v) for fe, fs, v in features if fe == e and fs <= s]
        if not cands:
            out[i] = (None, None)
            continue
        fs, v = max(cands)
        out[i] = (v, T0 + timedelta(seconds=fs)) if fs >= s - ttl else (None, None)
    return out


def test_pit_hand_made_cases():
    # entity A changes just before and just after the label time
    feats = [("A", 5000, 1.0), ("A", 7199, 2.0), ("A", 7201, 3.0), ("B", 0, 10.0), ("C", 500, 5.0)]
    labels = [
        ("A", 7200, 0),  # -> 2.0 (the value one second before), never 3.0 (one second after)
        ("A", 7199, 1),  # exactly at the feature time -> 2.0
        ("A", 7198, 0),  # -> 1.0
        ("B", 3600, 0),  # value 3600 s old, ttl 3600 -> still valid
        ("B", 3601, 1),  # one second past the ttl -> null, not the expired value
        ("C", 499, 0),  # the only value comes after the label -> null
        ("Z", 100, 0),  # unknown entity -> null
    ]
    got = _pit(feats, labels, ttl=3600)
    assert [got[i][0] for i in range(len(labels))] == [2.0, 2.0, 1.0, 10.0, None, None, None]
    assert got[0][1] == T0 + timedelta(seconds=7199)


entities = st.sampled_from(["A", "B", "C"])


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    feats=st.lists(st.tuples(entities, st.integers(0, 200), st.floats(-1e6, 1e6, allow_nan=False)), max_size=25),
    labels=st.lists(st.tuples(entities, st.integers(0, 220), st.integers(0, 1)), max_size=25),
    ttl=st.integers(1, 120),
)
def test_pit_matches_brute_force(feats, labels, ttl):
    # the offline store holds one row per (entity, time): keep the first of equal instants
    seen, uniq = set(), []
    for e, s, v in feats:
        if (e, s) not in seen:
            seen.add((e, s))
            uniq.append((e, s, v))
    assert _pit(uniq, labels, ttl) == _reference(uniq, labels, ttl)


def test_check_config_reads_the_gold_sql_columns(tmp_path):
    import shutil

    from mlblueprints.config import load_usecase

    assert core.check_against_gold_sql(fraud_usecase()) == []
    shutil.copytree(ROOT / "dags/usecases", tmp_path / "uc")
    path = tmp_path / "uc/fraud_detection.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["features"]["card_activity"]["features"].append("card_risk")
    doc["training_sets"]["fraud_training"]["labels"]["columns"].append("ticket")
    path.write_text(yaml.safe_dump(doc))
    got = core.check_against_gold_sql(load_usecase(path))
    assert got == [
        f"{path}: features.card_activity: column 'card_risk' is not an output of gold.transaction_features",
        f"{path}: training_sets.fraud_training: column 'ticket' is not an output of gold.transaction_features",
    ]


def test_label_columns_of_a_training_set_are_checked_by_name():
    uc = fraud_usecase()
    assert (
        core.check_label_columns(
            uc,
            "fraud_training",
            {
                **GOLD,
                "is_fraud": "int",
                "channel": "string",
                "merchant_category": "string",
                "country": "string",
                "event_hour": "long",
                "age_band": "string",
                "region": "string",
            },
        )
        == "event_time"
    )
    with pytest.raises(
        core.TrainingSetError, match="column 'channel': carried column is not in 'transaction_features'"
    ):
        core.check_label_columns(uc, "fraud_training", {**GOLD, "is_fraud": "int"})
