"""Feature materialization and training sets on the local target (DuckDB, Iceberg, SQLite).

:func:`materialize` computes one batch per view and event-date range from the Gold table and
feeds both stores from it:

1. DuckDB streams the batch (:func:`core.batch_sql`) into Parquet files in a fresh directory of
   the offline table (nothing visible yet);
2. one Iceberg commit replaces the range's partitions of the offline table with those files;
3. one SQLite transaction upserts the newest row per entity *read from the same files* into
   the online store and records the offline snapshot id it reflects.

A kill before (2) leaves only unreferenced files; between (2) and (3) the online store lags
until the rerun, which rewrites the same offline content and applies the same upserts; a kill
inside (3) rolls the transaction back. Rerunning a range leaves both stores as after one run.

:func:`build_training_set` is the point-in-time join (:func:`core.pit_sql`) of a use case's label
events with the offline stores, written as an Iceberg table whose snapshot records the snapshot
ids it read.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import date, timedelta
from typing import Any

from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    GreaterThanOrEqual,
    IsNull,
    LessThan,
    LessThanOrEqual,
    Or,
)

from mlblueprints import runtime
from mlblueprints.config import UseCase
from mlblueprints.core.duck import connect
from mlblueprints.features import core
from mlblueprints.features.core import FeatureViewError, TrainingSetError, ViewColumns, positive_sql
from mlblueprints.features.online import OnlineStore, store_path
from mlblueprints.lakehouse import iceberg, naming
from mlblueprints.lakehouse.local import on_storage_errors, table_properties, target_file_size
from mlblueprints.lakehouse.sqlgen import ident, literal
from mlblueprints.lineage import RunInfo

log = logging.getLogger(__name__)


def _gold(uc: UseCase, table: str, who: str) -> Any:
    t = iceberg.load(iceberg.catalog(), naming.identifier(uc, table))
    if t is None:
        raise LookupError(f"{uc.name}: {who}: Gold table {table!r} does not exist yet (run {uc.name}__lakehouse first)")
    return t


def iceberg_types(table: Any) -> dict[str, str]:
    return {f.name: str(f.field_type) for f in table.schema().fields}


def _range_filter(column: str, lo: date | None, hi: date | None, hi_exclusive: bool = False) -> BooleanExpression:
    parts: list[BooleanExpression] = []
    if lo is not None:
        parts.append(GreaterThanOrEqual(column, lo.isoformat()))
    if hi is not None:
        parts.append(LessThan(column, hi.isoformat()) if hi_exclusive else LessThanOrEqual(column, hi.isoformat()))
    if not parts:
        return AlwaysTrue()
    return parts[0] if len(parts) == 1 else And(parts[0], parts[1])


def _encode_sql(cols: ViewColumns, relation: str) -> str:
    """Rows of a batch relation in the online store's layout: (*keys, event_time_us, event_date, *features)."""
    out = [ident(k) for k in cols.entity_names]
    out += ["epoch_us(event_time)", "CAST(event_date AS VARCHAR)"]
    for n, t in cols.features:
        if t == "timestamp":
            out.append(f"epoch_us({ident(n)})")
        elif t == "boolean":
            out.append(f"CAST({ident(n)} AS INTEGER)")
        elif t == "date":
            out.append(f"CAST({ident(n)} AS VARCHAR)")
        elif t == "float":
            out.append(f"CAST({ident(n)} AS DOUBLE)")
        else:
            out.append(ident(n))
    return f"SELECT {', '.join(out)} FROM {relation}"


def _fetch(con: Any, sql: str, size: int = 50_000) -> Any:
    cur = con.execute(sql)
    while True:
        rows = cur.fetchmany(size)
        if not rows:
            return
        yield from rows


def view_columns(uc: UseCase, view: str) -> ViewColumns:
    """The view's typed columns, checked against its Gold table as it is now."""
    v = uc.features[view]
    try:
        gold = _gold(uc, v.source, f"features.{view}")
    except LookupError as exc:
        raise FeatureViewError(uc, view, None, str(exc).split(": ", 2)[-1]) from None
    return core.resolve_columns(uc, view, iceberg_types(gold))


def _checked(uc: UseCase, view: str) -> tuple[Any, ViewColumns, Any, OnlineStore | None]:
    """Every check that must pass before a byte is written: the view against its Gold table, and
    against the layout of stores written earlier. Returns (Gold table, columns, offline table or
    None, online store or None)."""
    v = uc.features[view]
    gold = _gold(uc, v.source, f"features.{view}")
    cols = core.resolve_columns(uc, view, iceberg_types(gold))
    off_id = naming.identifier(uc, core.offline_table(uc, view))
    offline = iceberg.load(iceberg.catalog(), off_id) if "offline" in v.stores else None
    if offline is not None:
        core.check_store_types(uc, view, cols, iceberg_types(offline), "offline")
    store: OnlineStore | None = None
    if "online" in v.stores:
        store = OnlineStore(store_path(uc))
        stored = store.stored_types(core.online_table(uc, view))
        if stored is not None:
            try:
                core.check_store_types(uc, view, cols, stored, "online")
            except FeatureViewError:
                store.close()
                raise
    return gold, cols, offline, store


def check_view(uc: UseCase, view: str) -> str | None:
    """Why ``view`` cannot be materialized now (one line), or None when its checks pass."""
    try:
        _, _, _, store = _checked(uc, view)
    except (FeatureViewError, LookupError) as exc:
        return str(exc)
    if store is not None:
        store.close()
    return None


@on_storage_errors
def materialize(uc: UseCase, view: str, lo: date, hi: date, run: RunInfo) -> dict[str, Any]:
    """Materialize ``view`` for the event dates [lo, hi] into its offline and online stores."""
    started = time.perf_counter()
    v = uc.features[view]
    gold, cols, offline, store = _checked(uc, view)
    cat = iceberg.catalog()
    off_id = naming.identifier(uc, core.offline_table(uc, view))

    con = connect()
    g = uc.gold[v.source]
    # prune Gold partitions when the view's event time is the one Gold is partitioned by
    # (and read the null partition: rows without an event time are counted as skipped)
    # (an IN list, not a range: pyiceberg's residual evaluator fails on a range over a null partition)
    prune = (
        Or(iceberg.in_filter("event_date", [d.isoformat() for d in core.dates_of(lo, hi)]), IsNull("event_date"))
        if cols.event_time == g.event_time
        else AlwaysTrue()
    )
    iceberg.register_view(con, "gold_src", gold, prune)
    null_key, null_et, total = con.execute(core.skipped_sql(cols, "gold_src", lo, hi)).fetchall()[0]
    batch = core.batch_sql(cols, "gold_src", g.primary_key, lo, hi)
    gold_snapshot = iceberg.snapshot_id(gold)
    batch_id = uuid.uuid4().hex

    if offline is None and "offline" in v.stores:
        offline = iceberg.ensure_table(
            cat,
            off_id,
            iceberg.query_schema(con, batch),
            "event_date",
            {
                **table_properties(uc),
                "mlb.feature-view": view,
                "mlb.feature-view-version": str(v.version),
                "mlb.entity": ",".join(v.entity),
                "mlb.ttl-seconds": str(v.ttl_seconds),
                "mlb.source": naming.identifier(uc, v.source),
            },
        )
    if offline is not None:
        location = iceberg.new_write_dir(offline)
    else:  # online only: the batch lives in a scratch directory
        location = runtime.path("tmp", "features", batch_id)
    rows = iceberg.write_files(con, location, batch, partition_by="event_date", target_file_size=target_file_size(uc))
    files = f"read_parquet('{location}/**/*.parquet', hive_partitioning = false)" if rows else None

    offline_out: dict[str, Any] = {}
    if offline is not None:
        props = run.snapshot_properties(
            step="features",
            feature_view=view,
            feature_view_version=str(v.version),
            source_snapshots={v.source: gold_snapshot},
            range=[lo.isoformat(), hi.isoformat()],
            batch_id=batch_id,
        )
        offline_out = iceberg.commit_files(
            offline, location, replace=_range_filter("event_date", lo, hi), snapshot_properties=props
        )

    online_out: dict[str, Any] = {}
    entities = 0
    if store is not None:
        table = store.ensure_table(uc, view, cols)
        if files:
            # computed before the SQLite write transaction opens, so the lock is held only for
            # the upserts themselves
            con.execute(f"CREATE OR REPLACE TEMP VIEW batch AS SELECT * FROM {files}")
            latest = _encode_sql(cols, f"({core.latest_sql(cols, 'batch')})")
            con.execute(f"CREATE OR REPLACE TEMP TABLE latest AS {latest}")
            entities = con.execute("SELECT count(*) FROM latest").fetchall()[0][0]
            incoming = _fetch(con, "SELECT * FROM latest")
        else:
            incoming = iter(())

        def reresolve(keys: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
            return _newest_before(con, uc, view, cols, offline, lo, keys)

        online_out = store.apply_batch(
            table,
            cols,
            v.ttl_seconds,
            incoming,
            lo=lo,
            hi=hi,
            batch_id=batch_id,
            offline_snapshot_id=offline_out.get("snapshot_id"),
            reresolve=reresolve,
            run=run,
            rows_in_batch=rows,
        )
        online_out["stats"] = store.stats(table)
        store.close()
        if online_out.get("purged_expired") or online_out.get("future_rows"):
            log.warning(
                "features.%s: %s entities online after this batch; %s purged as older than the TTL before the "
                "newest event time (%s); %s row(s) dated more than a day after the wall clock did not move it",
                view,
                online_out["stats"].get("entities"),
                online_out.get("purged_expired"),
                online_out.get("watermark"),
                online_out.get("future_rows"),
            )
    if offline is None:
        shutil.rmtree(location, ignore_errors=True)
    con.close()
    return {
        "view": view,
        "target": "local",
        "range": [lo.isoformat(), hi.isoformat()],
        "rows_in": int(total),
        "skipped_null_key": int(null_key),
        "skipped_null_event_time": int(null_et),
        "collapsed_duplicates": int(total) - int(null_key) - int(null_et) - rows,
        "offline_rows": rows,
        "online_entities": entities,
        "offline_table": off_id if offline is not None else None,
        "offline_snapshot_id": offline_out.get("snapshot_id"),
        "offline_files": offline_out.get("files_written"),
        "online": online_out,
        "source_snapshots": {v.source: gold_snapshot},
        "batch_id": batch_id,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _newest_before(
    con: Any, uc: UseCase, view: str, cols: ViewColumns, offline: Any, lo: date, keys: Sequence[Sequence[Any]]
) -> list[tuple[Any, ...]]:
    """Newest offline row before ``lo`` of each given entity (online-store layout)."""
    if offline is None or not keys:
        return []
    offline.refresh()
    iceberg.register_view(con, "older", offline, LessThan("event_date", lo.isoformat()))
    names = cols.entity_names
    out: list[tuple[Any, ...]] = []
    for i in range(0, len(keys), 5000):
        part = keys[i : i + 5000]
        vals = ", ".join("(" + ", ".join(literal(x) for x in k) + ")" for k in part)
        match = (
            f"({', '.join(ident(n) for n in names)}) IN (VALUES {vals})"
            if len(names) > 1
            else (f"{ident(names[0])} IN ({', '.join(literal(k[0]) for k in part)})")
        )
        latest = core.latest_sql(cols, f"(SELECT * FROM older WHERE {match})")
        out += con.execute(_encode_sql(cols, f"({latest})")).fetchall()
    return out


# ------------------------------------------------------------------ reads


def offline_rows(uc: UseCase, view: str, where: str | None = None) -> Any:
    """The offline store of a view as a pandas DataFrame (tests, inspection)."""
    t = iceberg.load(iceberg.catalog(), naming.identifier(uc, core.offline_table(uc, view)))
    if t is None:
        raise LookupError(f"{uc.name}: features.{view}: no offline table yet")
    con = connect()
    iceberg.register_view(con, "off", t)
    return con.execute(f"SELECT * FROM off {'WHERE ' + where if where else ''}").df()


# ------------------------------------------------------------------ training sets


def register_pit_views(
    uc: UseCase,
    con: Any,
    views: Sequence[str],
    missing: Callable[[str], Exception],
    start: date | None = None,
    end: date | None = None,
    snapshots: Mapping[str, int | None] | None = None,
) -> tuple[list[core.PitView], dict[str, int | None]]:
    """Register the offline store of each view as DuckDB view ``fv<i>`` for the point-in-time
    join of rows whose event times lie in [start, end) (the files a TTL can reach back to), each
    checked against its Gold table and its store's layout. ``snapshots`` (offline table ->
    snapshot id) pins what is read; by default the current snapshots. Returns the views as
    :func:`core.pit_sql` takes them and the snapshot id read per offline table; ``missing(view)``
    is the error raised for a view with no offline store yet."""
    out: list[core.PitView] = []
    sources: dict[str, int | None] = {}
    for i, vname in enumerate(views):
        fv = uc.features[vname]
        off_name = core.offline_table(uc, vname)
        off = iceberg.load(iceberg.catalog(), naming.identifier(uc, off_name))
        if off is None:
            raise missing(vname)
        cols = view_columns(uc, vname)
        core.check_store_types(uc, vname, cols, iceberg_types(off), "offline")
        vlo = start - timedelta(seconds=fv.ttl_seconds) - timedelta(days=1) if start else None
        snap = snapshots[off_name] if snapshots is not None and off_name in snapshots else iceberg.snapshot_id(off)
        iceberg.register_view(con, f"fv{i}", off, _range_filter("event_date", vlo, end), snapshot_id=snap)
        out.append(core.PitView(name=vname, relation=f"fv{i}", cols=cols, ttl_seconds=fv.ttl_seconds))
        sources[off_name] = snap
    return out, sources


@on_storage_errors
def build_training_set(
    uc: UseCase,
    name: str,
    run: RunInfo,
    label_start: date | None = None,
    label_end: date | None = None,
) -> dict[str, Any]:
    """Point-in-time join of label events (``training_sets.<name>.labels``) with the offline
    stores of its feature views; the result replaces the Iceberg table ``ts_<name>``.

    ``label_start`` (inclusive) and ``label_end`` (exclusive) restrict the label events by
    event time. The snapshot written records the snapshot id of every table read.
    """
    started = time.perf_counter()
    ts = uc.training_sets[name]
    labels_tbl = _gold(uc, ts.labels.source, f"training_sets.{name}")
    label_time = core.check_label_columns(uc, name, iceberg_types(labels_tbl))

    con = connect()
    g = uc.gold[ts.labels.source]
    lprune = _range_filter("event_date", label_start, label_end) if label_time == g.event_time else AlwaysTrue()
    iceberg.register_view(con, "labels", labels_tbl, lprune)
    sources: dict[str, Any] = {ts.labels.source: iceberg.snapshot_id(labels_tbl)}

    def missing(vname: str) -> Exception:
        return TrainingSetError(
            uc, name, None, f"feature view {vname!r} has no offline store yet (materialize it first)"
        )

    views, view_sources = register_pit_views(uc, con, ts.features, missing, label_start, label_end)
    sources.update(view_sources)
    sql = core.pit_sql("labels", label_time, ts.labels.label, ts.labels.columns, views, label_start, label_end)
    order = ["event_time", *dict.fromkeys(k for v in views for k in v.cols.entity_names), *ts.labels.columns]
    sql = f"SELECT * FROM ({sql}) ORDER BY {', '.join(ident(c) for c in order)}"
    table = iceberg.ensure_table(
        iceberg.catalog(),
        naming.identifier(uc, core.training_table(name)),
        iceberg.query_schema(con, sql),
        "event_date",
        {**table_properties(uc), "mlb.training-set": name},
    )
    props = run.snapshot_properties(
        step="training_set",
        training_set=name,
        source_snapshots=sources,
        feature_views={v: uc.features[v].version for v in ts.features},
        label_range=[label_start.isoformat() if label_start else None, label_end.isoformat() if label_end else None],
    )
    w = iceberg.write(
        con,
        table,
        sql,
        replace=AlwaysTrue(),
        partition_by="event_date",
        snapshot_properties=props,
        target_file_size=target_file_size(uc),
    )
    table.refresh()
    iceberg.register_view(con, "written", table)
    coverage = {
        v.name: con.execute(
            f"SELECT avg(CASE WHEN {ident(v.name + '__feature_time')} IS NULL THEN 0 ELSE 1 END) FROM written"
        ).fetchall()[0][0]
        for v in views
    }
    positives = con.execute(f"SELECT count(*) FILTER (WHERE {positive_sql(ts.labels.label)}) FROM written").fetchall()[
        0
    ][0]
    con.close()
    return {
        "training_set": name,
        "table": naming.identifier(uc, core.training_table(name)),
        "rows": w["rows_written"],
        "positives": int(positives or 0),
        "snapshot_id": w["snapshot_id"],
        "source_snapshots": sources,
        "feature_views": {v: uc.features[v].version for v in ts.features},
        "coverage": {k: round(float(x or 0.0), 4) for k, x in coverage.items()},
        "label_range": [label_start.isoformat() if label_start else None, label_end.isoformat() if label_end else None],
        "seconds": round(time.perf_counter() - started, 3),
    }


# ------------------------------------------------------------------ the backend


class LocalFeatureStore:
    """The feature store capability on the local target (``mlblueprints.backends.FeatureStore``):
    Iceberg offline tables and a SQLite online store per use case."""

    def __init__(self, uc: UseCase):
        self.uc = uc

    def materialize(self, view: str, lo: date, hi: date, run: RunInfo) -> dict[str, Any]:
        return materialize(self.uc, view, lo, hi, run)

    def check_view(self, view: str) -> str | None:
        return check_view(self.uc, view)

    def get_online_features(self, view: str, keys: Sequence[Any], as_of: Any = None) -> list[dict[str, Any] | None]:
        from mlblueprints.features.online import get_online_features

        return get_online_features(self.uc, view, keys, as_of)

    def build_training_set(self, name: str, run: RunInfo, job_dir: Any = None) -> dict[str, Any]:
        return build_training_set(self.uc, name, run)

    def describe(self, view: str) -> dict[str, Any]:
        """Sizes of a view's stores, and where they are (``features show``, run reports)."""
        from mlblueprints.features.online import OnlineReader, OnlineStore

        uc = self.uc
        out: dict[str, Any] = {
            "target": "local",
            "where": [f"offline stores: Iceberg tables {uc.name}.{core.OFFLINE_PREFIX}<view>_v<version>"],
        }
        t = iceberg.load(iceberg.catalog(), naming.identifier(uc, core.offline_table(uc, view)))
        snap = t.current_snapshot() if t is not None else None
        if t is not None:
            out["offline_rows"] = int(snap.summary.get("total-records", 0)) if snap and snap.summary else 0
            out["snapshots"] = len(t.snapshots())
        path = store_path(uc)
        size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) if path.exists() else None
        out["where"].insert(
            0, f"online store: {path}" + (f" ({size / 1e6:.1f} MB)" if size is not None else " (not created yet)")
        )
        if path.exists() and "online" in uc.features[view].stores:
            store = OnlineStore(path, readonly=True)
            try:
                if store.stored_types(core.online_table(uc, view)) is not None:
                    stats = store.stats(core.online_table(uc, view))
                    out.update(online_entities=stats["entities"], watermark=stats.get("watermark"))
                    out["last_range"] = stats.get("last_range")
                    out["online_stats"] = stats
            finally:
                store.close()
            try:  # the entity with the newest value, and what a lookup returns for it at the watermark
                reader = OnlineReader(uc, view)
                key = reader.newest_key()
                if key is not None:
                    out["sample_lookup"] = (key, reader.get([key], as_of=reader.watermark())[0])
            except LookupError:
                pass
        return out
