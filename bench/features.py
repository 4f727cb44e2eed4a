"""Benchmark of the local feature store: materialization, online lookups, point-in-time joins.

Usage::

    .venv/bin/python bench/features.py [--quick] [--json PATH] [--txt PATH]

Three sections, on the shipped ``fraud_detection`` use case and its ``card_activity`` view
(entity ``card_id``, 7 features, ttl 7d):

1. **Materialization.** A synthetic Gold table ``transaction_features`` is generated with DuckDB
   SQL (``range()`` and ``hash()``) and written through ``iceberg.ensure_table``/``write`` under a
   fresh ``MLB_HOME``: every day holds one row per entity for ``--entities`` distinct cards. Then
   ``features.local.materialize`` runs for one event date at a time, each call in a fresh
   subprocess of this script (``bench/features.py _step materialize ...``) whose peak RSS is its
   ``ru_maxrss`` (``os.wait4``). Inside it, the library is instrumented, not changed: the offline
   store is ``iceberg.write_files`` (DuckDB batch query -> Parquet) + ``iceberg.commit_files``
   (Iceberg commit); the online store is ``OnlineStore.apply_batch`` (one SQLite transaction),
   whose connection is wrapped to time each statement and to stamp ``BEGIN IMMEDIATE`` and
   ``COMMIT`` on the monotonic clock.
2. **Online lookups.** This process reads with ``get_online_features`` (1 key and 100 keys,
   keys drawn at random from all entities) and with a cached ``OnlineReader.get`` (1 key), first
   with no writer, then while materializations of later days run in a subprocess. One lookup per
   wake-up (``--pause-ms`` of sleep between two, the kinds in turn), like requests reaching an
   endpoint. Every lookup is timed with ``time.perf_counter_ns`` (CLOCK_MONOTONIC on Linux, the
   clock the writer stamps its transaction with), so a sample counts as "inside the write
   transaction" only when it started after the writer's ``BEGIN IMMEDIATE`` returned and ended
   before its ``COMMIT`` returned. A second connection probes the lock now and then (``BEGIN
   IMMEDIATE`` with a zero busy timeout, rolled back at once) to confirm those windows.
3. **Point-in-time join vs equi-join.** In one subprocess, DuckDB (``lakehouse.local.connect``)
   writes ``--pit-events`` label events over ``--pit-entities`` cards and ``--pit-days`` days, and
   the feature rows of the same events (the shipped ``fraud_training`` shape: labels and features
   come from the same Gold rows) to Parquet; then ``core.pit_sql`` (ASOF LEFT JOIN + TTL) and the
   same SQL with an exact equi-join on (entity, event_time) run interleaved, each consumed by one
   aggregate over every output column; medians are compared.

Results print as fixed-width tables on stdout (progress goes to stderr); ``--json PATH`` and
``--txt PATH`` also write them to files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from harness import (
    Profile,
    StepRunner,
    TimedConnection,
    duckdb_settings,
    log,
    machine_facts,
    mb,
    recorded,
    run_child_step,
)

SCRIPT = Path(__file__).resolve()
PROJECT = SCRIPT.parent.parent
USECASE = PROJECT / "dags" / "usecases" / "fraud_detection.yaml"
GOLD = "transaction_features"
VIEW = "card_activity"
START = date(2024, 3, 1)
KINDS = (
    ("one", "1 key, get_online_features"),
    ("batch", "100 keys, get_online_features"),
    ("reader", "1 key, OnlineReader.get"),
)
BATCH_KEYS = 100


# ====================================================================== child side (one step)


def _label(sql: str, prefix: str) -> str:
    s = " ".join(re.sub(r"--[^\n]*", "", str(sql)).split())
    m = re.match(r"COPY \(.*\) TO '([^']*)'", s)
    if m:
        return f"{prefix}COPY (batch_sql ...) TO <offline write dir> parquet"
    s = re.sub(r"'[^']*'", "'?'", s)
    s = re.sub(r"\((\?, )+\?\)", "(?, ...)", s)
    if s.startswith("INSERT INTO") and "ON CONFLICT" in s:
        return f"{prefix}INSERT ... ON CONFLICT DO UPDATE (the upsert)"
    if s.startswith("INSERT OR REPLACE INTO") and "_materializations" not in s:
        return f"{prefix}INSERT OR REPLACE (re-resolved rows)"
    return prefix + s[:110]


class _TimedSqlite:
    """The online store's sqlite3 connection, timed per statement; stamps the write transaction."""

    def __init__(self, con: sqlite3.Connection, prof: Profile) -> None:
        self._con = con
        self._prof = prof

    def _run(self, method: str, sql: str, *a: Any) -> Any:
        if sql.strip().upper() == "COMMIT":
            self._prof.stamp("commit_begin")  # COMMIT also runs the WAL auto-checkpoint, lock released
        t = time.perf_counter()
        try:
            return getattr(self._con, method)(sql, *a)
        finally:
            self._prof.add(self._prof.sql, _label(sql, f"sqlite {method}: "), time.perf_counter() - t)
            word = sql.strip().upper()
            if word == "BEGIN IMMEDIATE":
                self._prof.stamp("txn_open")
            elif word in ("COMMIT", "ROLLBACK"):
                self._prof.stamp("txn_close")

    def execute(self, sql: str, *a: Any) -> Any:
        return self._run("execute", sql, *a)

    def executemany(self, sql: str, *a: Any) -> Any:
        return self._run("executemany", sql, *a)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def _instrument_materialize(prof: Profile) -> None:
    from mlblueprints.features import local as fl
    from mlblueprints.features.online import OnlineStore
    from mlblueprints.lakehouse import iceberg

    raw_connect = fl.connect
    fl.connect = lambda: TimedConnection(raw_connect(), prof, lambda sql: _label(sql, "duckdb: "))
    prof.wrap(iceberg, "write_files", "offline: iceberg.write_files (DuckDB batch query -> Parquet)", "offline_write")
    prof.wrap(iceberg, "commit_files", "offline: iceberg.commit_files (Iceberg commit)", "offline_commit")
    prof.wrap(iceberg, "register_view", "iceberg.register_view (scan planning)")
    prof.wrap(iceberg, "ensure_table", "iceberg.ensure_table")
    prof.wrap(iceberg, "load", "iceberg.load (catalog)")
    prof.wrap(OnlineStore, "apply_batch", "online: OnlineStore.apply_batch (the SQLite transaction)", "apply_batch")
    prof.wrap(OnlineStore, "stats", "online: OnlineStore.stats (after the commit)")
    prof.wrap(OnlineStore, "ensure_table", "online: OnlineStore.ensure_table")
    prof.wrap(fl, "_newest_before", "online: _newest_before (re-resolve stale keys)")

    raw_init = OnlineStore.__init__

    def init(self: Any, *a: Any, **k: Any) -> None:
        raw_init(self, *a, **k)
        self.con = _TimedSqlite(self.con, prof)

    OnlineStore.__init__ = init  # type: ignore[method-assign]

    def fetch(con: Any, sql: str, size: int = 50_000) -> Any:  # features.local._fetch, timed
        t = time.perf_counter()
        cur = con.execute(sql)
        prof.add(prof.calls, "online: DuckDB newest-row-per-entity query (inside the txn)", time.perf_counter() - t)
        while True:
            t = time.perf_counter()
            rows = cur.fetchmany(size)
            prof.add(prof.calls, "online: DuckDB fetchmany -> Python tuples (inside the txn)", time.perf_counter() - t)
            if not rows:
                return
            yield from rows

    fl._fetch = fetch


def _usecase() -> Any:
    from mlblueprints.config import load_usecase

    return load_usecase(USECASE)


def _key_width(entities: int) -> int:
    return max(1, len(str(max(0, entities - 1))))


def gold_sql(entities: int, per_entity: int, days: int) -> str:
    """Gold rows of ``transaction_features``: each day, ``per_entity`` rows for each of ``entities`` cards."""
    per_day = entities * per_entity
    us_day = 86_400_000_000
    width = _key_width(entities)

    def h(i: int) -> str:
        return f"hash(i, {i})"

    return f"""
SELECT *, CAST(event_time AS DATE) AS event_date FROM (
  SELECT printf('t%012d', i) AS transaction_id,
    TIMESTAMP '{START}' + to_days(CAST(i // {per_day} AS INTEGER))
      + to_microseconds(CAST({h(1)} % {us_day} AS BIGINT)) AS event_time,
    printf('c%0{width}d', i % {entities}) AS card_id,
    printf('u%0{width}d', i % {entities}) AS customer_id,
    printf('m%05d', {h(2)} % 50000) AS merchant_id,
    round(CAST({h(3)} % 100000 AS DOUBLE) / 100 + 0.01, 2) AS amount,
    'EUR' AS currency, 'pos' AS channel, 'grocery' AS merchant_category, 'DE' AS country,
    CAST({h(4)} % 100 = 0 AS INTEGER) AS is_fraud,
    CAST({h(1)} % {us_day} // 3600000000 AS BIGINT) AS event_hour,
    CAST({h(5)} % 5 AS BIGINT) AS card_txn_count_1h,
    CAST({h(6)} % 20 AS BIGINT) AS card_txn_count_24h,
    CAST({h(7)} % 1000000 AS DOUBLE) / 100 AS card_amount_sum_24h,
    CAST({h(8)} % 100000 AS DOUBLE) / 100 AS card_amount_avg_7d,
    CAST({h(9)} % 1000000 AS DOUBLE) / 100 AS card_amount_max_7d,
    CAST({h(10)} % 100 AS BIGINT) AS card_txn_count_7d,
    CAST({h(11)} % 50 AS BIGINT) AS merchant_txn_count_1h,
    CAST({h(12)} % 500 AS BIGINT) AS merchant_txn_count_24h,
    CAST({h(13)} % 100000 AS DOUBLE) / 100 AS merchant_amount_avg_7d,
    CAST({h(14)} % 1000 AS DOUBLE) / 100 AS amount_to_card_avg_7d,
    CAST({h(15)} % 604800 AS BIGINT) AS seconds_since_prev_card_txn
  FROM range(0, {per_day * days}) r(i)
)"""


def _step_gold(home: Path, p: dict[str, Any]) -> dict[str, Any]:
    from pyiceberg.expressions import AlwaysTrue

    from mlblueprints.lakehouse import iceberg, naming
    from mlblueprints.lakehouse.local import connect, target_file_size

    uc = _usecase()
    con = connect()
    sql = gold_sql(p["entities"], p["per_entity"], p["days"])
    table = iceberg.ensure_table(
        iceberg.catalog(), naming.identifier(uc, GOLD), iceberg.query_schema(con, sql), "event_date", {}
    )
    w = iceberg.write(
        con,
        table,
        sql,
        replace=AlwaysTrue(),
        partition_by="event_date",
        snapshot_properties={"mlb.run-id": "bench-gold"},
        target_file_size=target_file_size(uc),
    )
    con.close()
    return w


def _step_materialize(home: Path, p: dict[str, Any], prof: Profile) -> dict[str, Any]:
    from mlblueprints.features import local as fl
    from mlblueprints.lineage import RunInfo

    uc = _usecase()
    day = date.fromisoformat(p["day"])
    run = RunInfo.for_usecase(uc, run_id=p["run_id"], dag_id="bench", task_id="materialize")
    prof.stamp("materialize_begin")
    out = fl.materialize(uc, VIEW, day, day, run)
    prof.stamp("materialize_end")
    return out


def _step_pit(home: Path, p: dict[str, Any], prof: Profile) -> dict[str, Any]:
    from mlblueprints.features import core
    from mlblueprints.lakehouse.local import connect

    uc = _usecase()
    con = connect()
    d = home / "pit"
    d.mkdir(parents=True, exist_ok=True)
    n, ents, days = p["events"], p["entities"], p["days"]
    width = _key_width(ents)
    span_us = days * 86_400_000_000
    base = (
        f"SELECT i, printf('c%0{width}d', i % {ents}) AS card_id, TIMESTAMP '{START}' + "
        f"to_microseconds(CAST(hash(i, 1) % {span_us} AS BIGINT)) AS event_time FROM range(0, {n}) r(i)"
    )
    t = time.perf_counter()
    con.execute(
        f"COPY (SELECT card_id, event_time, printf('t%012d', i) AS transaction_id, "
        f"CAST(hash(i, 4) % 100 = 0 AS INTEGER) AS is_fraud FROM ({base})) "
        f"TO '{d / 'labels.parquet'}' (FORMAT parquet, COMPRESSION zstd)"
    )
    con.execute(
        f"""COPY (SELECT card_id, event_time,
          CAST(hash(i, 5) % 5 AS BIGINT) AS card_txn_count_1h,
          CAST(hash(i, 6) % 20 AS BIGINT) AS card_txn_count_24h,
          CAST(hash(i, 7) % 1000000 AS DOUBLE) / 100 AS card_amount_sum_24h,
          CAST(hash(i, 8) % 100000 AS DOUBLE) / 100 AS card_amount_avg_7d,
          CAST(hash(i, 9) % 1000000 AS DOUBLE) / 100 AS card_amount_max_7d,
          CAST(hash(i, 10) % 100 AS BIGINT) AS card_txn_count_7d,
          CAST(hash(i, 15) % 604800 AS BIGINT) AS seconds_since_prev_card_txn,
          CAST(event_time AS DATE) AS event_date
        FROM ({base})) TO '{d / "features.parquet"}' (FORMAT parquet, COMPRESSION zstd)"""
    )
    gen_seconds = time.perf_counter() - t
    con.execute(f"CREATE VIEW labels AS SELECT * FROM read_parquet('{d / 'labels.parquet'}')")
    con.execute(f"CREATE VIEW fv0 AS SELECT * FROM read_parquet('{d / 'features.parquet'}')")
    sizes = {
        "labels": con.execute("SELECT count(*), count(DISTINCT card_id) FROM labels").fetchall()[0],
        "features": con.execute("SELECT count(*), count(DISTINCT card_id) FROM fv0").fetchall()[0],
        "bytes": {f.name: f.stat().st_size for f in d.iterdir()},
    }
    types = {r[0]: r[1] for r in con.execute("DESCRIBE fv0").fetchall()}
    cols = core.resolve_columns(uc, VIEW, types)
    ttl = uc.features[VIEW].ttl_seconds
    pit = core.pit_sql("labels", "event_time", "is_fraud", ["transaction_id"], [core.PitView(VIEW, "fv0", cols, ttl)])
    asof_on = 'ASOF LEFT JOIN fv0 v0 ON l."card_id" = v0."card_id" AND l.event_time >= v0.event_time'
    if asof_on not in pit:
        raise RuntimeError(f"pit_sql changed shape; cannot derive the equi-join from:\n{pit}")
    equi = pit.replace(asof_on, asof_on.replace("ASOF LEFT JOIN", "LEFT JOIN").replace(">=", "="))
    consume = "SELECT count(*) AS n, sum(hash(COLUMNS(*))) FROM ({})"
    queries = {"pit": consume.format(pit), "equi": consume.format(equi)}
    runs: dict[str, list[float]] = {"pit": [], "equi": []}
    results: dict[str, Any] = {}
    order: list[str] = []
    for r in range(p["runs"]):
        for name in ("pit", "equi") if r % 2 == 0 else ("equi", "pit"):
            t = time.perf_counter()
            res = con.execute(queries[name]).fetchall()[0]
            runs[name].append(time.perf_counter() - t)
            order.append(name)
            results.setdefault(name, [str(x) for x in res])
            print(f"{name} run {r + 1}: {runs[name][-1]:.2f} s", file=sys.stderr, flush=True)
    profiles: dict[str, Any] = {}
    if p.get("profile"):
        for name in ("pit", "equi"):
            out = home / f"profile-{name}.json"
            con.execute("SET enable_profiling = 'json'")
            con.execute(f"SET profiling_output = '{out}'")
            t = time.perf_counter()
            con.execute(queries[name]).fetchall()
            seconds = time.perf_counter() - t
            con.execute("SET enable_profiling = 'no_output'")
            profiles[name] = {"seconds": round(seconds, 3), "operators": _operators(json.loads(out.read_text()))}
    con.close()
    return {
        "gen_seconds": round(gen_seconds, 3),
        "sizes": sizes,
        "pit_sql": pit,
        "equi_sql": equi,
        "consume": consume.format("<query>"),
        "runs": {k: [round(x, 3) for x in v] for k, v in runs.items()},
        "order": order,
        "median": {k: round(statistics.median(v), 3) for k, v in runs.items()},
        "results": results,
        "same_result": results.get("pit") == results.get("equi"),
        "profiles": profiles,
    }


def _operators(tree: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten DuckDB's JSON profile into operators (CPU seconds summed over threads), biggest first."""
    out: list[dict[str, Any]] = []

    def walk(node: dict[str, Any], depth: int) -> None:
        name = node.get("operator_name") or node.get("name") or node.get("operator_type") or "?"
        timing = node.get("operator_timing", node.get("timing", 0.0)) or 0.0
        rows = node.get("operator_cardinality", node.get("intermediate_rows"))
        extra = node.get("extra_info") or {}
        what = extra.get("Join Type") or ""
        out.append({"operator": str(name).strip(), "detail": str(what)[:60], "seconds": timing, "rows": rows})
        for child in node.get("children", []):
            walk(child, depth + 1)

    for top in tree.get("operator", tree.get("children", [])) or []:
        walk(top, 0)
    return sorted(out, key=lambda r: -r["seconds"])[:8]


STEPS = {"gold": _step_gold, "materialize": _step_materialize, "pit": _step_pit}


def child_main(name: str, params_path: str, result_path: str) -> None:
    params = json.loads(Path(params_path).read_text())
    home = Path(os.environ["MLB_HOME"])
    t = time.perf_counter()
    import duckdb  # noqa: F401  (imports are paid before the clock of the step starts)
    import pyiceberg.table  # noqa: F401

    from mlblueprints.features import local  # noqa: F401

    import_seconds = time.perf_counter() - t
    prof = Profile(top_sql=30)
    if name == "materialize":
        _instrument_materialize(prof)
    fn = STEPS[name]
    run_child_step(
        name, result_path, lambda: fn(home, params) if name == "gold" else fn(home, params, prof), import_seconds, prof
    )


# ====================================================================== parent side


# ---------------------------------------------------------------------- section 1: materialization


def _call(res: dict[str, Any], prefix: str) -> float:
    return sum(c["seconds"] for c in res["profile"]["calls"] if c["what"].startswith(prefix))


def _sql(res: dict[str, Any], prefix: str) -> float:
    return sum(c["seconds"] for c in res["profile"]["sql"] if c["what"].startswith(prefix))


def _phase_windows(res: dict[str, Any], begin: str, end: str) -> list[tuple[int, int]]:
    out, opened = [], None
    for event, ns in res["profile"]["phases"]:
        if event == begin:
            opened = ns
        elif event == end and opened is not None:
            out.append((opened, ns))
            opened = None
    return out


def summarize_materialize(res: dict[str, Any], label: str) -> dict[str, Any]:
    """The split of one materialize() call: offline store, online store, the rest."""
    o = res["out"]
    entities = o["online_entities"]
    rows = o["offline_rows"]
    whole = res["seconds"]
    write = _call(res, "offline: iceberg.write_files")
    commit = _call(res, "offline: iceberg.commit_files")
    txn = _call(res, "online: OnlineStore.apply_batch")
    txn_windows = _phase_windows(res, "txn_open", "txn_close")
    # the write transaction proper: from BEGIN IMMEDIATE returned to COMMIT returned (longest one)
    txn_open = max(((b - a) / 1e9 for a, b in txn_windows), default=0.0)
    fetch_query = _call(res, "online: DuckDB newest-row-per-entity query")
    fetch_rows = _call(res, "online: DuckDB fetchmany")
    upsert = _sql(res, "sqlite executemany: INSERT ... ON CONFLICT")
    commit_sql = _sql(res, "sqlite execute: COMMIT")
    stale = _sql(res, "sqlite execute: SELECT") - _sql(res, "sqlite execute: SELECT columns FROM _views")
    stale -= _sql(res, "sqlite execute: SELECT watermark_us")
    purge = sum(
        c["seconds"]
        for c in res["profile"]["sql"]
        if c["what"].startswith("sqlite execute: DELETE") and "expires_at" in c["what"]
    )
    count_latest = sum(
        c["seconds"]
        for c in res["profile"]["sql"]
        if c["what"].startswith("duckdb: SELECT count(*) FROM (SELECT * FROM batch QUALIFY")
    )
    stats = _call(res, "online: OnlineStore.stats")
    skipped = sum(c["seconds"] for c in res["profile"]["sql"] if "FILTER (WHERE" in c["what"])
    planning = _call(res, "iceberg.register_view") + _call(res, "iceberg.load")
    offline = write + commit
    online = txn
    return {
        "label": label,
        "day": res["out"]["range"][0],
        "entities": entities,
        "offline_rows": rows,
        "whole_seconds": whole,
        "entities_per_second": entities / whole if whole else None,
        "offline_seconds": round(offline, 3),
        "offline_write_seconds": round(write, 3),
        "offline_commit_seconds": round(commit, 3),
        "offline_rows_per_second": rows / offline if offline else None,
        "online_txn_seconds": round(online, 3),
        "online_txn_open_seconds": round(txn_open, 3),
        "online_entities_per_second": entities / online if online else None,
        "online_fetch_seconds": round(fetch_query + fetch_rows, 3),
        "online_fetch_query_seconds": round(fetch_query, 3),
        "online_fetch_rows_seconds": round(fetch_rows, 3),
        "online_upsert_seconds": round(upsert, 3),
        "online_stale_seconds": round(stale, 3),
        "online_purge_seconds": round(purge, 3),
        "online_commit_seconds": round(commit_sql, 3),
        "count_latest_seconds": round(count_latest, 3),
        "stats_seconds": round(stats, 3),
        "skipped_count_seconds": round(skipped, 3),
        "planning_seconds": round(planning, 3),
        "other_seconds": round(whole - offline - online - count_latest - stats - skipped - planning, 3),
        "cpu_seconds": res["cpu_seconds"],
        "user_seconds": res["user_seconds"],
        "system_seconds": res["system_seconds"],
        "peak_rss_kb": res["peak_rss_kb"],
        "rss_after_imports_kb": res["rss_after_imports_kb"],
        "online_store_bytes": o["online"].get("stats", {}).get("file_bytes"),
        "online_result": {k: v for k, v in o["online"].items() if k != "stats"},
        "offline_files": o["offline_files"],
    }


# ---------------------------------------------------------------------- section 2: lookups


class Lookups:
    """Timed lookups from this process; samples are (kind, start_ns, end_ns, misses)."""

    def __init__(self, uc: Any, entities: int, as_of: datetime, seed: int = 7) -> None:
        from mlblueprints.features import online

        self.online = online
        self.uc = uc
        self.as_of = as_of
        self.rng = random.Random(seed)
        self.entities = entities
        self.width = _key_width(entities)
        self.reader = online.OnlineReader(uc, VIEW)
        self.samples: list[tuple[str, int, int, int]] = []
        self.n = 0
        self.probes: list[tuple[int, bool]] = []
        self._probe_con: sqlite3.Connection | None = None

    def key(self) -> str:
        return f"c{self.rng.randrange(self.entities):0{self.width}d}"

    def one_lookup(self) -> None:
        """One timed lookup; the kind rotates (1 key, 100 keys, 1 key via the reader). Keys are drawn
        before the clock starts. The caller sleeps between lookups, so each one starts right after a
        wake-up, as a request reaching an endpoint would (not at the end of a burst of work, where a
        busy machine's scheduler is likelier to preempt it)."""
        kind = KINDS[self.n % len(KINDS)][0]
        self.n += 1
        if kind == "one":
            keys = [self.key()]
            t0 = time.perf_counter_ns()
            r = self.online.get_online_features(self.uc, VIEW, keys, as_of=self.as_of)
        elif kind == "batch":
            keys = [self.key() for _ in range(BATCH_KEYS)]
            t0 = time.perf_counter_ns()
            r = self.online.get_online_features(self.uc, VIEW, keys, as_of=self.as_of)
        else:
            keys = [self.key()]
            t0 = time.perf_counter_ns()
            r = self.reader.get(keys, as_of=self.as_of)
        t1 = time.perf_counter_ns()
        self.samples.append((kind, t0, t1, sum(x is None for x in r)))

    def probe(self) -> None:
        """Is a write transaction open? BEGIN IMMEDIATE with no busy wait; roll back at once if we got it."""
        if self._probe_con is None:
            self._probe_con = sqlite3.connect(str(self.reader.path), timeout=0, isolation_level=None)
        t = time.perf_counter_ns()
        try:
            self._probe_con.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            self.probes.append((t, True))
            return
        self._probe_con.execute("ROLLBACK")
        self.probes.append((t, False))

    def take(self) -> list[tuple[str, int, int, int]]:
        out, self.samples = self.samples, []
        return out


def pct(values: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return float("nan")
    k = max(0, min(len(values) - 1, math.ceil(q * len(values)) - 1))
    return values[k]


def latency_stats(samples: list[tuple[str, int, int, int]]) -> dict[str, Any]:
    out = {}
    for kind, _ in KINDS:
        durs = sorted(e - s for k, s, e, _ in samples if k == kind)
        misses = sum(m for k, _, _, m in samples if k == kind)
        out[kind] = {
            "n": len(durs),
            "p50_us": pct(durs, 0.50) / 1e3,
            "p90_us": pct(durs, 0.90) / 1e3,
            "p99_us": pct(durs, 0.99) / 1e3,
            "p999_us": pct(durs, 0.999) / 1e3,
            "max_us": (durs[-1] / 1e3) if durs else float("nan"),
            "mean_us": (sum(durs) / len(durs) / 1e3) if durs else float("nan"),
            "over_2ms": sum(1 for d in durs if d > 2_000_000),
            "misses": misses,
        }
    return out


def classify(
    samples: list[tuple[str, int, int, int]], txn: list[tuple[int, int]], alive: list[tuple[int, int]]
) -> dict[str, list[tuple[str, int, int, int]]]:
    """inside the write transaction / writer's materialize() running, outside it / neither (start-up)."""
    out: dict[str, list[tuple[str, int, int, int]]] = {"txn": [], "writer": [], "straddle": [], "other": []}
    for s in samples:
        _, a, b, _ = s
        if any(lo <= a and b <= hi for lo, hi in txn):
            out["txn"].append(s)
        elif any(lo < b and a < hi for lo, hi in txn):
            out["straddle"].append(s)
        elif any(lo <= a and b <= hi for lo, hi in alive):
            out["writer"].append(s)
        else:
            out["other"].append(s)
    return out


def run_lookups_idle(lk: Lookups, per_kind: int, pause: float) -> dict[str, Any]:
    for _ in range(min(600, 3 * per_kind)):  # warm-up: connections, statement cache, page cache
        lk.one_lookup()
    lk.take()
    t = time.perf_counter()
    for _ in range(len(KINDS) * per_kind):
        lk.one_lookup()
        if pause:
            time.sleep(pause)
    seconds = time.perf_counter() - t
    return {"seconds": round(seconds, 3), "stats": latency_stats(lk.take())}


def run_concurrent_write(r: StepRunner, lk: Lookups, day: date, pause: float, probe_every: float) -> dict[str, Any]:
    """Materialize ``day`` in a subprocess while this process keeps looking up keys until it exits."""
    lk.take()
    probes_before = len(lk.probes)
    proc, rp, lp, started = r.spawn("materialize", {"day": day.isoformat(), "run_id": f"bench-{day}-concurrent"})
    next_probe = time.perf_counter() + probe_every
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        lk.one_lookup()
        if time.perf_counter() >= next_probe:
            lk.probe()
            next_probe = time.perf_counter() + probe_every
        if pause:
            time.sleep(pause)
    res = StepRunner.finish("materialize", proc, rp, lp, started, status, ru)
    txn = _phase_windows(res, "txn_open", "txn_close")
    alive = _phase_windows(res, "materialize_begin", "materialize_end")
    groups = classify(lk.take(), txn, alive)
    probes = lk.probes[probes_before:]
    body = [(lo, c) for (lo, _), c in zip(txn, [ns for e, ns in res["profile"]["phases"] if e == "commit_begin"])]
    in_body = [locked for t, locked in probes if any(lo <= t <= hi for lo, hi in body)]
    in_txn = [locked for t, locked in probes if any(lo <= t <= hi for lo, hi in txn)]
    outside = [locked for t, locked in probes if not any(lo <= t <= hi for lo, hi in txn)]
    return {
        "result": res,
        "txn_windows_seconds": [round((b - a) / 1e9, 3) for a, b in txn],
        "groups": groups,
        "commit_seconds": [round((hi - c) / 1e9, 3) for (_, hi), (_, c) in zip(txn, body)],
        "probes": {
            "before_commit": len(in_body),
            "before_commit_locked": sum(in_body),
            "during_commit": len(in_txn) - len(in_body),
            "during_commit_locked": sum(in_txn) - sum(in_body),
            "outside_txn": len(outside),
            "outside_txn_locked": sum(outside),
        },
    }


def run_feature_store(r: StepRunner, args: argparse.Namespace) -> dict[str, Any]:
    from mlblueprints.config import load_usecase

    days = 2 + args.max_writes
    out: dict[str, Any] = {"entities": args.entities, "per_entity": args.rows_per_entity, "days": days}
    log(f"Gold: {args.entities:,} cards x {args.rows_per_entity} row(s) x {days} days")
    g = r.step("gold", {"entities": args.entities, "per_entity": args.rows_per_entity, "days": days})
    out["gold"] = {
        "seconds": g["seconds"],
        "rows": g["out"]["rows_written"],
        "files": g["out"]["files_written"],
        "bytes": g["out"]["bytes_written"],
        "peak_rss_kb": g["peak_rss_kb"],
    }
    log(f"  {g['out']['rows_written']:,} Gold rows in {g['seconds']:.1f} s")
    runs = []
    for i, label in enumerate(("initial load (empty stores)", "update (newer row for every entity)")):
        day = START + timedelta(days=i)
        log(f"materialize {day}: {label}")
        res = r.step("materialize", {"day": day.isoformat(), "run_id": f"bench-{day}"})
        s = summarize_materialize(res, label)
        runs.append({"summary": s, "result": res})
        log(
            f"  {s['whole_seconds']:.1f} s, offline {s['offline_seconds']:.1f} s, online txn {s['online_txn_seconds']:.1f} s"
        )

    uc = load_usecase(USECASE)
    as_of = datetime.combine(START + timedelta(days=days), datetime.min.time())
    lk = Lookups(uc, args.entities, as_of)
    pause = args.pause_ms / 1000
    log(f"lookups, idle: {args.idle_lookups:,} of each kind")
    idle = run_lookups_idle(lk, args.idle_lookups, pause)
    writes = []
    need = args.min_txn_samples
    for k in range(args.max_writes):
        day = START + timedelta(days=2 + k)
        log(f"lookups while materializing {day} in another process")
        w = run_concurrent_write(r, lk, day, pause, args.probe_every)
        s = summarize_materialize(w["result"], "update, while this process reads")
        w["summary"] = s
        writes.append(w)
        n_txn = sum(1 for x in w["groups"]["txn"] if x[0] == "one")
        log(
            f"  write {s['whole_seconds']:.1f} s, txn open {s['online_txn_open_seconds']:.1f} s; "
            f"{n_txn:,} single-key samples inside it"
        )
        total = sum(1 for ww in writes for x in ww["groups"]["txn"] if x[0] == "one")
        if total >= need:
            break
    merged = {key: [s for w in writes for s in w["groups"][key]] for key in ("txn", "writer", "straddle", "other")}
    out["materialize"] = [x["summary"] for x in runs] + [w["summary"] for w in writes]
    out["materialize_profiles"] = [
        {"label": x["summary"]["label"], "day": x["summary"]["day"], "profile": x["result"]["profile"]}
        for x in runs + [{"summary": w["summary"], "result": w["result"]} for w in writes]
    ]
    out["lookups"] = {
        "as_of": as_of.isoformat(),
        "pause_ms": args.pause_ms,
        "idle": idle,
        "during_txn": latency_stats(merged["txn"]),
        "during_writer_outside_txn": latency_stats(merged["writer"]),
        "straddling_txn_boundary": {k: sum(1 for s in merged["straddle"] if s[0] == k) for k, _ in KINDS},
        "writer_startup_or_exit": {k: sum(1 for s in merged["other"] if s[0] == k) for k, _ in KINDS},
        "writes": [
            {
                "day": w["summary"]["day"],
                "txn_windows_seconds": w["txn_windows_seconds"],
                "samples_in_txn": {k: sum(1 for s in w["groups"]["txn"] if s[0] == k) for k, _ in KINDS},
                "commit_seconds": w["commit_seconds"],
                "probes": w["probes"],
            }
            for w in writes
        ],
    }
    return out


# ---------------------------------------------------------------------- section 3: PIT


def run_pit(r: StepRunner, args: argparse.Namespace) -> dict[str, Any]:
    log(f"PIT vs equi-join: {args.pit_events:,} events over {args.pit_entities:,} cards, {args.pit_days} days")
    res = r.step(
        "pit",
        {
            "events": args.pit_events,
            "entities": args.pit_entities,
            "days": args.pit_days,
            "runs": args.pit_runs,
            "profile": not args.no_profile,
        },
    )
    o = res["out"]
    log(f"  medians: pit {o['median']['pit']:.2f} s, equi {o['median']['equi']:.2f} s")
    shutil.rmtree(r.home / "pit", ignore_errors=True)
    return {**o, "peak_rss_kb": res["peak_rss_kb"], "seconds": res["seconds"], "cpu_seconds": res["cpu_seconds"]}


# ---------------------------------------------------------------------- report


def _us(x: float) -> str:
    if x != x:  # nan
        return "-"
    return f"{x / 1000:,.2f} ms" if x >= 1000 else f"{x:,.0f} us"


def _rate(x: float | None) -> str:
    return f"{x:,.0f}" if x else "-"


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    m, dd = results["machine"], results["duckdb"]
    L: list[str] = []
    w = L.append
    w("=" * 118)
    w(f"Local feature store benchmark (bench/features.py{' --quick' if args.quick else ''}), {results['started']}")
    w(
        f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB RAM, {m['platform']}; "
        f"load average at start {' / '.join(f'{x:.2f}' for x in m['loadavg_start'])}, "
        f"at end {' / '.join(f'{x:.2f}' for x in results['loadavg_end'])} (shared machine)"
    )
    w(
        f"versions: python {m['python']}, duckdb {m['duckdb']}, pyiceberg {m['pyiceberg']}, pyarrow {m['pyarrow']}, "
        f"sqlite {m['sqlite']}; perf_counter = {m['perf_counter']}"
    )
    w(
        f"DuckDB (lakehouse.local.connect): threads={dd['threads']} ({dd['threads_source']}), "
        f"memory_limit={dd['memory_limit']} ({dd['memory_source']})"
    )
    fs = results.get("feature_store")
    if fs:
        w("")
        w("-" * 118)
        w(
            f"1. Materialization: features.local.materialize(uc, '{VIEW}', day, day) of one event date, "
            "each in a fresh subprocess"
        )
        g = fs["gold"]
        w(
            f"   Gold '{GOLD}' (synthetic, DuckDB range()/hash(), iceberg.write): {fs['entities']:,} distinct card_id x "
            f"{fs['per_entity']} row(s) per card per day x {fs['days']} days = {g['rows']:,} rows, "
            f"{g['bytes'] / 1e6:,.0f} MB in {g['files']} files, written in {g['seconds']:.1f} s"
        )
        w(
            "   offline = iceberg.write_files (DuckDB batch_sql -> Parquet, partitioned by event_date) + "
            "iceberg.commit_files (one Iceberg commit)"
        )
        w(
            "   online  = OnlineStore.apply_batch: one SQLite transaction (BEGIN IMMEDIATE .. COMMIT), incl. the DuckDB "
            "query of the newest row per entity that it streams from"
        )
        hdr = (
            f"{'run':<38}{'entities':>10}{'whole s':>9}{'ent/s':>9} |{'offline s':>10}{'rows/s':>9}"
            f"{'(write+commit)':>16} |{'online s':>9}{'ent/s':>9} |{'cpu s':>7}{'peak RSS':>10}"
        )
        w(hdr)
        w("-" * len(hdr))
        for s in fs["materialize"]:
            label = f"{s['day']} {s['label']}"
            w(
                f"{label:<38.38}{s['entities']:>10,}{s['whole_seconds']:>9.2f}{_rate(s['entities_per_second']):>9} |"
                f"{s['offline_seconds']:>10.2f}{_rate(s['offline_rows_per_second']):>9}"
                f"{s['offline_write_seconds']:>8.2f} +{s['offline_commit_seconds']:>5.2f} |"
                f"{s['online_txn_seconds']:>9.2f}{_rate(s['online_entities_per_second']):>9} |"
                f"{s['cpu_seconds']:>7.1f}{mb(s['peak_rss_kb']):>10}"
            )
        w(
            "   split of each call (s): the online transaction = DuckDB fetch + upsert + stale-row query + purge + COMMIT"
        )
        hdr2 = (
            f"   {'day':<11}{'gold scan':>10}{'nulls cnt':>10}{'offline':>9}{'count new':>10}{'txn':>8}{'(open)':>8}"
            f"{'fetch':>8}{'upsert':>8}{'stale':>8}{'purge':>8}{'commit':>8}{'stats()':>9}{'other':>8}{'user/sys cpu':>14}"
        )
        w(hdr2)
        for s in fs["materialize"]:
            w(
                f"   {s['day']:<11}{s['planning_seconds']:>10.2f}{s['skipped_count_seconds']:>10.2f}"
                f"{s['offline_seconds']:>9.2f}{s['count_latest_seconds']:>10.2f}{s['online_txn_seconds']:>8.2f}"
                f"{s['online_txn_open_seconds']:>8.2f}{s['online_fetch_seconds']:>8.2f}{s['online_upsert_seconds']:>8.2f}"
                f"{s['online_stale_seconds']:>8.2f}{s['online_purge_seconds']:>8.2f}{s['online_commit_seconds']:>8.2f}"
                f"{s['stats_seconds']:>9.2f}{s['other_seconds']:>8.2f}"
                f"{s['user_seconds']:>8.1f}/{s['system_seconds']:<5.1f}"
            )
        w(
            "   gold scan = catalog loads + pyiceberg scan planning; nulls cnt = core.skipped_sql; count new = "
            "SELECT count(*) over latest_sql (before the txn); (open) = BEGIN IMMEDIATE returned -> COMMIT returned;"
        )
        w(
            "   fetch = the same latest_sql run again inside the txn + fetchmany into Python tuples; stale = the SELECT "
            "of stored rows in [lo, hi] not replaced; stats() = OnlineStore.stats after the commit (count(*) of the table)"
        )
        lu = fs["lookups"]
        w("")
        w("-" * 118)
        w(
            f"2. Online lookups from this process, keys drawn at random from {fs['entities']:,} entities, "
            f"as_of={lu['as_of']} (every value within ttl); one lookup per wake-up "
            f"({lu['pause_ms']} ms sleep between two), the kinds in turn"
        )
        hdr = (
            f"{'condition':<34}{'lookup':<31}{'samples':>9}{'p50':>10}{'p90':>10}{'p99':>10}{'p99.9':>10}"
            f"{'max':>10}{'>2 ms':>7}{'miss':>6}"
        )
        w(hdr)
        w("-" * len(hdr))
        conds = (
            ("idle (no writer)", lu["idle"]["stats"]),
            ("writer running, outside its txn", lu["during_writer_outside_txn"]),
            ("inside the writer's SQLite txn", lu["during_txn"]),
        )
        for cname, st in conds:
            for kind, kname in KINDS:
                x = st[kind]
                w(
                    f"{cname:<34}{kname:<31}{x['n']:>9,}{_us(x['p50_us']):>10}{_us(x['p90_us']):>10}"
                    f"{_us(x['p99_us']):>10}{_us(x['p999_us']):>10}{_us(x['max_us']):>10}{x['over_2ms']:>7,}"
                    f"{x['misses']:>6}"
                )
        for wr in lu["writes"]:
            pr = wr["probes"]
            w(
                f"   write of {wr['day']}: txn {', '.join(f'{x:.2f}' for x in wr['txn_windows_seconds'])} s "
                f"(BEGIN IMMEDIATE returned -> COMMIT returned; the COMMIT call {', '.join(f'{x:.2f}' for x in wr['commit_seconds'])} s"
                f" of it); samples inside: {', '.join(f'{k} {v:,}' for k, v in wr['samples_in_txn'].items())}"
            )
            w(
                f"     lock probes from a 2nd connection (BEGIN IMMEDIATE, busy_timeout 0, rolled back at once): "
                f"before COMMIT {pr['before_commit_locked']}/{pr['before_commit']} found it locked, during the COMMIT "
                f"call (incl. its WAL auto-checkpoint) {pr['during_commit_locked']}/{pr['during_commit']}, "
                f"outside {pr['outside_txn_locked']}/{pr['outside_txn']}"
            )
        st = lu["straddling_txn_boundary"]
        w(
            f"   samples straddling a txn boundary (excluded): {sum(st.values())}; taken while the writer process "
            f"was starting or exiting (excluded): {sum(lu['writer_startup_or_exit'].values())}"
        )
    pit = results.get("pit")
    if pit:
        w("")
        w("-" * 118)
        lab, fea = pit["sizes"]["labels"], pit["sizes"]["features"]
        w(
            f"3. Point-in-time join vs equi-join: {lab[0]:,} label events ({lab[1]:,} cards, {args.pit_days} days) x "
            f"{fea[0]:,} feature rows ({fea[1]:,} cards), Parquet, generated in {pit['gen_seconds']:.1f} s"
        )
        w("   pit   = core.pit_sql(labels, one PitView card_activity, ttl 7d): ASOF LEFT JOIN on card_id and time <=")
        w("   equi  = the same SQL with LEFT JOIN ... ON card_id = AND event_time = (features share the labels' times)")
        w(f"   both consumed by {pit['consume']} (every output column computed)")
        hdr = f"   {'query':<8}{'runs s':<28}{'median s':>10}{'rows/s':>12}"
        w(hdr)
        for name in ("pit", "equi"):
            med = pit["median"][name]
            w(
                f"   {name:<8}{', '.join(f'{x:.2f}' for x in pit['runs'][name]):<28}{med:>10.2f}"
                f"{lab[0] / med if med else 0:>12,.0f}"
            )
        ratio = pit["median"]["pit"] / pit["median"]["equi"]
        w(
            f"   ratio pit / equi = {ratio:.2f}x; same result (count and per-column hash sums): "
            f"{'yes' if pit['same_result'] else 'NO'}; order {', '.join(pit['order'])}; peak RSS {mb(pit['peak_rss_kb'])}"
        )
        for name, prof in pit.get("profiles", {}).items():
            ops = ", ".join(
                f"{o['operator']}{'/' + o['detail'] if o['detail'] else ''} {o['seconds']:.1f}"
                for o in prof["operators"][:5]
            )
            w(f"   profile {name} (one extra run, {prof['seconds']:.1f} s; operator CPU s): {ops}")
    w("")
    w("-" * 118)
    w(targets_report(results))
    w("=" * 118)
    return "\n".join(L)


def targets_report(results: dict[str, Any]) -> str:
    L = ["Targets"]
    fs = results.get("feature_store")
    if fs:
        t = fs["lookups"]["during_txn"]["one"]
        if t["n"]:
            ok = t["p99_us"] < 2000
            L.append(
                f"  single-key p99 under 2 ms while a materialization writes: p99 {_us(t['p99_us'])} over {t['n']:,} "
                f"samples inside the write txn -> {'PASS' if ok else 'FAIL'}"
            )
        else:
            L.append("  single-key p99 under 2 ms while writes run: no sample inside a write transaction -> UNKNOWN")
    pit = results.get("pit")
    if pit:
        ratio = pit["median"]["pit"] / pit["median"]["equi"]
        L.append(
            f"  point-in-time join within 3x of the equi-join: {pit['median']['pit']:.2f} s / "
            f"{pit['median']['equi']:.2f} s = {ratio:.2f}x -> {'PASS' if ratio <= 3 else 'FAIL'}"
        )
    return "\n".join(L)


# ---------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few seconds")
    ap.add_argument("--entities", type=int, help="distinct entities (cards) of the view (default 1,000,000)")
    ap.add_argument("--rows-per-entity", type=int, default=1, help="Gold rows per card per day (default 1)")
    ap.add_argument("--max-writes", type=int, help="materializations to read against, at most (default 3)")
    ap.add_argument("--min-txn-samples", type=int, help="single-key samples wanted inside write txns (default 5000)")
    ap.add_argument("--idle-lookups", type=int, help="lookups of each kind with no writer (default 5000)")
    ap.add_argument("--pause-ms", type=float, default=0.5, help="sleep between two lookups (default 0.5)")
    ap.add_argument("--probe-every", type=float, default=0.2, help="seconds between lock probes (default 0.2)")
    ap.add_argument("--pit-events", type=int, help="label events = feature rows (default 10,000,000)")
    ap.add_argument("--pit-entities", type=int, help="cards of the label events (default 1,000,000)")
    ap.add_argument("--pit-days", type=int, default=30)
    ap.add_argument("--pit-runs", type=int, default=3)
    ap.add_argument("--no-profile", action="store_true", help="skip the extra profiled run of each join")
    ap.add_argument("--sections", nargs="+", choices=["store", "pit"], default=["store", "pit"])
    ap.add_argument("--json", help="also write the results as JSON to this path")
    ap.add_argument("--txt", help="also write the printed report to this path")
    ap.add_argument("--workdir", help="where to put MLB_HOME (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data and stores")
    args = ap.parse_args(argv)
    full = {
        "entities": 1_000_000,
        "max_writes": 3,
        "min_txn_samples": 5000,
        "idle_lookups": 5000,
        "pit_events": 10_000_000,
        "pit_entities": 1_000_000,
    }
    quick = {
        "entities": 20_000,
        "max_writes": 1,
        "min_txn_samples": 50,
        "idle_lookups": 300,
        "pit_events": 200_000,
        "pit_entities": 20_000,
    }
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.quick:
        args.pit_runs = min(args.pit_runs, 3)
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if "CLOCK_MONOTONIC" not in time.get_clock_info("perf_counter").implementation:
        raise SystemExit("perf_counter is not CLOCK_MONOTONIC here: samples cannot be matched to the writer's clock")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mlb-bench-features-")).resolve()
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    os.environ["MLB_HOME"] = str(home)  # the reader in this process opens the same store
    env = {"MLB_GIT_COMMIT": os.environ.get("MLB_GIT_COMMIT", "bench")}
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": vars(args),
        "machine": machine_facts(
            "duckdb",
            "pyiceberg",
            "pyarrow",
            sqlite=sqlite3.sqlite_version,
            perf_counter=time.get_clock_info("perf_counter").implementation,
        ),
        "duckdb": duckdb_settings(),
        "workdir": str(work),
    }
    log(f"work dir {work}")
    r = StepRunner(SCRIPT, work, env, home)
    with recorded(results, work, args):
        if "store" in args.sections:
            results["feature_store"] = run_feature_store(r, args)
        if "pit" in args.sections:
            results["pit"] = run_pit(r, args)
    text = report(results, args)
    text += f"\ntotal benchmark time {results['elapsed_seconds']:.0f} s" + (f"; JSON: {args.json}" if args.json else "")
    print(text)
    if args.txt:
        Path(args.txt).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_step":
        child_main(*sys.argv[2:5])
    else:
        sys.exit(main(sys.argv[1:]))
