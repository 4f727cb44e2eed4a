"""The lakehouse DAG end to end through dag.test() on generated data with every defect injected.

The generator's manifest says, independently of the pipeline, what must come out: which
physical line is quarantined for which reason, which rows are duplicates, how many rows survive.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from helpers import all_tables, read_table, run_days, table_fingerprint
from mlblueprints.lakehouse import naming

pytestmark = pytest.mark.slow


def test_every_run_succeeds(pipeline):
    for day, dr, states in zip(pipeline.days, pipeline.runs, pipeline.task_states, strict=True):
        bad = sorted(task for task, state in states.items() if state != "success")
        assert dr.state == "success" and not bad, f"{day}: {bad}"


def test_row_counts_per_layer_match_the_manifest(in_pipeline_home, uc):
    exp = pipeline_expected = in_pipeline_home.manifest.expected
    for ds in uc.datasets:
        silver = read_table(uc, naming.table_name(ds, "silver"))
        quarantine = read_table(uc, naming.table_name(ds, "quarantine"))
        dups = read_table(uc, naming.table_name(ds, "duplicates"))
        bronze = read_table(uc, naming.table_name(ds, "bronze"))
        assert len(bronze) == exp.ingested_records[ds], ds
        assert len(silver) == exp.silver_rows[ds], ds
        assert len(quarantine) == exp.quarantined_total[ds], ds
        assert len(dups) == exp.duplicates[ds], ds
        got = Counter(quarantine["_reason_code"]) if len(quarantine) else Counter()
        assert dict(got) == {k: v for k, v in pipeline_expected.quarantined[ds].items() if v}, ds
    tx = read_table(uc, "transactions_silver")
    assert tx["transaction_id"].is_unique
    assert len(tx) == exp.distinct_valid_transactions


def test_every_injected_row_defect_has_its_outcome(in_pipeline_home, uc):
    m = in_pipeline_home.manifest
    q = read_table(uc, "transactions_quarantine").set_index(["_source_file", "_line_number"])
    dups = read_table(uc, "transactions_duplicates")
    silver = read_table(uc, "transactions_silver").set_index("transaction_id")
    seen = Counter()
    for d in m.row_defects:
        if d.dataset != "transactions":
            continue
        seen[d.defect] += 1
        if d.expected in ("malformed_record", "missing_required", "invalid_type", "out_of_range", "unknown_category"):
            row = q.loc[(d.path, d.line)]
            assert row["_reason_code"] == d.expected, (d, row["_reason_detail"])
            if d.expected != "malformed_record":
                assert row["_reason_column"] == d.column, (d, row["_reason_detail"])
            else:
                assert row["_raw_record"], d
        elif d.expected == "duplicate":
            pair = {(d.path, d.line), (d.original_path, d.original_line)}
            kept = dups[dups["transaction_id"] == d.transaction_id]
            assert (kept["_duplicate_kind"] == "exact").all() and len(kept) >= 1, d
            assert {(f, n) for f, n in zip(kept["_source_file"], kept["_line_number"])} <= pair
            assert d.transaction_id in silver.index
        elif d.expected == "supersedes":
            final = m.expected.key_duplicate_final[d.transaction_id]
            assert str(silver.loc[d.transaction_id, "amount"]) == final["amount"], d
            assert silver.loc[d.transaction_id, "_source_file"] == d.path
            old = dups[(dups["_source_file"] == d.original_path) & (dups["_line_number"] == d.original_line)]
            assert list(old["_duplicate_kind"]) == ["key"], d
    assert set(seen) == {
        "malformed_record",
        "invalid_type",
        "missing_required",
        "out_of_range",
        "unknown_category",
        "exact_duplicate",
        "key_duplicate",
    }, seen


def test_file_level_defects(in_pipeline_home, uc):
    m = in_pipeline_home.manifest
    files = read_table(uc, "transactions_bronze_files").set_index("source_file")
    bronze = read_table(uc, "transactions_bronze")
    kinds = Counter(d.defect for d in m.file_defects)
    assert kinds["extra_column"] >= 1 and kinds["empty_file"] >= 1 and kinds["file_landed_twice"] >= 1
    for d in m.file_defects:
        if d.expected == "no_records":
            assert files.loc[d.path, "status"] == "empty", d
        elif d.expected == "duplicate_file":
            assert files.loc[d.path, "status"] == "duplicate_file", d
            assert files.loc[d.path, "duplicate_of"] == d.source_path
            assert not (bronze["_source_file"] == d.path).any()
        elif d.expected == "accepted":
            rows = bronze[bronze["_source_file"] == d.path]
            assert len(rows) == d.records
            extra = rows["_extra"].dropna().map(json.loads)
            assert len(extra) == d.records and all("device_fingerprint" in e for e in extra)
    assert (files["status"] != "rejected").all()


def test_late_events_land_in_their_own_event_date(in_pipeline_home, uc):
    silver = read_table(uc, "transactions_silver")
    late = silver[silver["event_date"] < silver["_landing_date"]]
    assert len(late) >= in_pipeline_home.manifest.expected.late_records * 0.9
    assert (silver["event_date"] == silver["event_time"].dt.date).all()
    # an event from before the first landing day still has a partition of its own
    first = min(in_pipeline_home.days)
    assert (silver["event_date"] < first).sum() == 0 or (late["event_date"] < first).any()


def test_reconciliation_holds_per_landing_date(in_pipeline_home, uc):
    for ds in uc.datasets:
        counts = {}
        for kind in ("bronze", "silver", "quarantine", "duplicates"):
            df = read_table(uc, naming.table_name(ds, kind))
            counts[kind] = df.groupby("_landing_date").size() if len(df) else pd.Series(dtype=int)
        idx = counts["bronze"].index
        total = sum(counts[k].reindex(idx, fill_value=0) for k in ("silver", "quarantine", "duplicates"))
        assert (counts["bronze"] == total).all(), ds
    for states in in_pipeline_home.task_states:
        assert states["reconcile"] == "success"


def independent_features(silver: pd.DataFrame) -> pd.DataFrame:
    """Rolling features recomputed with numpy, row by row: window [t - w, t], same card/merchant."""
    s = silver.sort_values("event_time").reset_index(drop=True)
    t = s["event_time"].values.astype("datetime64[s]").astype(np.int64)
    amount = s["amount"].astype(float).values
    out = {"transaction_id": s["transaction_id"].values}
    for key, prefix in (("card_id", "card"), ("merchant_id", "merchant")):
        cnt1h, cnt24h, cnt7d, sum24h, avg7d, max7d = (np.zeros(len(s)) for _ in range(6))
        for _, idx in s.groupby(key).indices.items():
            tt, aa = t[idx], amount[idx]
            for j, i in enumerate(idx):
                for w, arr in ((3600, cnt1h), (86400, cnt24h), (7 * 86400, cnt7d)):
                    arr[i] = np.sum((tt >= tt[j] - w) & (tt <= tt[j]))
                m24 = (tt >= tt[j] - 86400) & (tt <= tt[j])
                m7 = (tt >= tt[j] - 7 * 86400) & (tt <= tt[j])
                sum24h[i], avg7d[i], max7d[i] = aa[m24].sum(), aa[m7].mean(), aa[m7].max()
        out[f"{prefix}_txn_count_1h"] = cnt1h
        out[f"{prefix}_txn_count_24h"] = cnt24h
        if prefix == "card":
            out.update(
                card_txn_count_7d=cnt7d, card_amount_sum_24h=sum24h, card_amount_avg_7d=avg7d, card_amount_max_7d=max7d
            )
        else:
            out["merchant_amount_avg_7d"] = avg7d
    return pd.DataFrame(out).set_index("transaction_id")


def test_gold_aggregates_match_an_independent_computation(in_pipeline_home, uc):
    silver = read_table(uc, "transactions_silver")
    gold = read_table(uc, "transaction_features").set_index("transaction_id")
    assert len(gold) == len(silver)
    expected = independent_features(silver)
    gold = gold.loc[expected.index]
    for col in expected.columns:
        np.testing.assert_allclose(gold[col].astype(float).values, expected[col].values, rtol=1e-9, err_msg=col)
    # no future: the latest transaction of a card counts everything in its day, the earliest only itself
    first = silver.sort_values("event_time").groupby("card_id").head(1)["transaction_id"]
    assert (gold.loc[first, "card_txn_count_7d"] == 1).all()
    assert gold.loc[first, "seconds_since_prev_card_txn"].isna().all()
    # the previous transaction of the card, within the 7-day lookback (ties by transaction id)
    s = silver.sort_values(["card_id", "event_time", "transaction_id"])
    prev = s.groupby("card_id")["event_time"].shift()
    gap = (s["event_time"] - prev).dt.total_seconds()
    want = gap.where(gap <= 7 * 86400).set_axis(s["transaction_id"])
    got = gold.loc[want.index, "seconds_since_prev_card_txn"].astype(float)
    np.testing.assert_array_equal(got.isna().values, want.isna().values)
    np.testing.assert_allclose(got.dropna().values, want.dropna().values)


def test_gates_wrote_results_and_data_docs(in_pipeline_home, uc):
    quality = in_pipeline_home.home / "quality" / uc.name
    assert (quality / "uncommitted" / "data_docs" / "local_site" / "index.html").exists()
    results = list((quality / "results").rglob("*.json"))
    layers = {p.parent.name for p in results}
    assert layers == {"bronze", "silver", "gold"}
    one = json.loads(next(p for p in results if p.parent.name == "silver").read_text())
    assert one["report"]["verdict"].startswith("PASSED") and one["validation"]["results"]
    html = list((quality / "uncommitted" / "data_docs" / "local_site" / "validations").rglob("*.html"))
    assert len(html) >= 3 * len(in_pipeline_home.days)


def test_snapshots_carry_lineage(in_pipeline_home, uc):
    from mlblueprints.lakehouse import iceberg

    t = iceberg.load(iceberg.catalog(), naming.identifier(uc, "transaction_features"))
    props = t.current_snapshot().summary.additional_properties
    assert props["mlb.dag-id"] == "fraud_detection__lakehouse"
    assert props["mlb.run-id"].startswith("manual__")
    assert len(props["mlb.config-hash"]) == 16 and props["mlb.git-commit"]
    sources = json.loads(props["mlb.source-snapshots"])
    assert sources["transactions_silver"] is not None


def test_gold_asset_events_recorded(in_pipeline_home):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetModel.name, AssetEvent.source_run_id).join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
        ).all()
    gold_runs = {r for n, r in rows if n == "fraud_detection.transaction_features"}
    assert {dr.run_id for dr in in_pipeline_home.runs} <= gold_runs


def test_rerun_of_a_day_changes_nothing(in_pipeline_home, uc):
    before = {t: table_fingerprint(uc, t) for t in all_tables(uc)}
    (dr,) = run_days(in_pipeline_home.dag, [in_pipeline_home.days[1]])
    assert dr.state == "success"
    after = {t: table_fingerprint(uc, t) for t in all_tables(uc)}
    for t in before:
        assert after[t] == before[t], t


def test_one_multi_day_run_equals_daily_runs(pipeline, uc, tmp_path, airflow_db):
    """A run whose interval spans all days (as after a pause) gives the same tables as daily runs;
    running the days in reverse order gives the same Silver and Gold content."""
    from helpers import runtime_home
    from mlblueprints.lakehouse import local
    from mlblueprints.lineage import RunInfo

    ignore = ("_ingest_time", "_ingest_run_id", "ingest_time", "ingest_run_id")
    lineage = ignore + ("_source_file", "_file_checksum", "_line_number", "_landing_date")
    with runtime_home(pipeline.home):
        reference = {t: table_fingerprint(uc, t, ignore) for t in all_tables(uc)}
        reference_business = {
            t: table_fingerprint(uc, t, lineage) for t in ("transactions_silver", "transaction_features")
        }
    for name, plans in (("together", [pipeline.days]), ("reverse", [[d] for d in reversed(pipeline.days)])):
        home = tmp_path / name
        (home / "landing").mkdir(parents=True)
        import shutil

        shutil.copytree(pipeline.home / "landing", home / "landing", dirs_exist_ok=True)
        with runtime_home(home):
            for dates in plans:
                run = RunInfo.for_usecase(uc, run_id=f"{name}-{dates[0]}")
                silvers = []
                for ds in uc.datasets:
                    local.ingest_bronze(uc, ds, dates, run)
                    silvers.append(local.build_silver(uc, ds, dates, run))
                touched = {s["dataset"]: s["touched_event_dates"] for s in silvers}
                local.build_gold(uc, "transaction_features", touched, run)
            got = {t: table_fingerprint(uc, t, ignore) for t in all_tables(uc)}
            business = {t: table_fingerprint(uc, t, lineage) for t in ("transactions_silver", "transaction_features")}
        if name == "together":
            for t in reference:
                if t.endswith("bronze_files"):
                    continue  # the manifest records which run saw a file, which differs by design
                assert got[t] == reference[t], f"{name}: {t}"
        else:
            # out of order, a file landed twice is ingested from whichever copy came first, so
            # lineage differs; the business content of Silver and Gold does not
            for t, rows in business.items():
                assert rows == reference_business[t], f"{name}: {t}"
