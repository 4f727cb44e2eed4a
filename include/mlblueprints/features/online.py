"""The local online store: the newest feature values per entity, in one SQLite file per use case.

``<runtime>/online/<usecase>.sqlite`` holds one table per feature view version
(``fv_<view>_v<n>``), keyed by the entity columns (``WITHOUT ROWID``: a lookup is one B-tree
descent), plus two bookkeeping tables:

* ``_views``: per view table, its column types, TTL, the newest event time materialized (the
  store's clock for TTL purges), and the offline snapshot it was last updated with;
* ``_materializations``: one row per materialization (range, run ids, offline snapshot, counts).

The file is in WAL mode: a materialization writes in one transaction while readers keep
reading the previous state, and a reader never sees half a batch. Values are stored exactly:
integers as INTEGER, doubles as REAL, text as TEXT, timestamps as INTEGER microseconds since
the epoch (UTC), dates as ISO text, booleans as 0/1.

Reads honour the TTL: a value whose event time is older than ``ttl`` before ``as_of`` (default:
now) is reported as missing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.config import UseCase
from mlblueprints.features import core
from mlblueprints.features.core import ViewColumns

_EPOCH = datetime(1970, 1, 1)
SQLITE_TYPES = {
    "int": "INTEGER",
    "bigint": "INTEGER",
    "boolean": "INTEGER",
    "timestamp": "INTEGER",
    "double": "REAL",
    "float": "REAL",
    "string": "TEXT",
    "date": "TEXT",
}
# SQLite limits the number of host parameters of one statement (32766 by default)
_MAX_PARAMS = 30000
# how far after the wall clock an event time may move the store's clock (clock skew)
FUTURE_TOLERANCE_US = 86_400 * 1_000_000


def store_path(uc: UseCase | str) -> Path:
    name = uc if isinstance(uc, str) else uc.name
    return runtime.path("online") / f"{name}.sqlite"


def to_micros(value: datetime | None) -> int | None:
    """A timestamp (naive = UTC) -> microseconds since the epoch."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    delta = value - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int | None) -> datetime | None:
    """Microseconds since the epoch -> a naive UTC datetime (the tables' TIMESTAMP convention)."""
    if us is None:
        return None
    return _EPOCH + timedelta(microseconds=int(us))


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _to_bool(v: Any) -> bool | None:
    return None if v is None else bool(v)


def _to_date(v: Any) -> date | None:
    return None if v is None else date.fromisoformat(v)


# how a stored value is turned back into Python; absent: stored as it is read
_DECODERS = {"timestamp": from_micros, "boolean": _to_bool, "date": _to_date}


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), timeout=60, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; a crash loses no committed batch's
    # atomicity, and a rerun rewrites the same values. Views of one use case materialize in
    # parallel tasks into one file: a writer waits for the other's transaction (minutes at 10M)
    con.execute("PRAGMA busy_timeout = 900000")
    if readonly:
        con.execute("PRAGMA query_only = ON")
    else:
        con.execute("PRAGMA cache_size = -131072")  # 128 MB of page cache for the upserts
    return con


class OnlineStore:
    """Writer (and reader) of one use case's online store file."""

    def __init__(self, path: Path, readonly: bool = False):
        self.path = path
        self.con = connect(path, readonly)
        if not readonly:
            self.con.executescript(
                """
                CREATE TABLE IF NOT EXISTS _views (
                  table_name TEXT PRIMARY KEY, usecase TEXT, view TEXT, version INTEGER,
                  columns TEXT, entity TEXT, ttl_seconds INTEGER, watermark_us INTEGER,
                  offline_table TEXT, offline_snapshot_id INTEGER, last_range TEXT,
                  last_run_id TEXT, updated_at TEXT);
                CREATE TABLE IF NOT EXISTS _materializations (
                  batch_id TEXT PRIMARY KEY, table_name TEXT, range_lo TEXT, range_hi TEXT,
                  run_id TEXT, dag_id TEXT, task_id TEXT, try_number INTEGER,
                  offline_snapshot_id INTEGER, rows_in_batch INTEGER, entities_upserted INTEGER,
                  entities_reresolved INTEGER, entities_removed INTEGER, purged_expired INTEGER,
                  committed_at TEXT);
                """
            )

    def close(self) -> None:
        self.con.close()

    # ------------------------------------------------------------------ layout

    def stored_types(self, table: str) -> dict[str, str] | None:
        row = self.con.execute("SELECT columns FROM _views WHERE table_name = ?", (table,)).fetchone()
        return json.loads(row[0]) if row else None

    def ensure_table(self, uc: UseCase, view: str, cols: ViewColumns) -> str:
        """Create the view's table on first use; later, the columns must match (checked by the caller)."""
        table = core.online_table(uc, view)
        if self.stored_types(table) is not None:
            return table
        defs = [f"{_q(n)} {SQLITE_TYPES[t]} NOT NULL" for n, t in cols.entity]
        defs += ["event_time INTEGER NOT NULL", "event_date TEXT NOT NULL", "expires_at INTEGER NOT NULL"]
        defs += [f"{_q(n)} {SQLITE_TYPES[t]}" for n, t in cols.features]
        defs += ["_batch_id TEXT NOT NULL", "_offline_snapshot_id INTEGER"]
        pk = ", ".join(_q(k) for k in cols.entity_names)
        self.con.execute("BEGIN IMMEDIATE")
        try:
            self.con.execute(
                f"CREATE TABLE IF NOT EXISTS {_q(table)} ({', '.join(defs)}, PRIMARY KEY ({pk})) WITHOUT ROWID"
            )
            # no secondary index: keeping one up to date costs more per upsert (about 3x at 1M
            # entities, bench/features.py) than the full scans of the rare stale/purge queries
            v = uc.features[view]
            self.con.execute(
                "INSERT OR IGNORE INTO _views (table_name, usecase, view, version, columns, entity, ttl_seconds, "
                "watermark_us, offline_table) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                (
                    table,
                    uc.name,
                    view,
                    v.version,
                    json.dumps(cols.types()),
                    json.dumps(cols.entity_names),
                    v.ttl_seconds,
                    core.offline_table(uc, view),
                ),
            )
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return table

    # ------------------------------------------------------------------ write

    def apply_batch(
        self,
        table: str,
        cols: ViewColumns,
        ttl_seconds: int,
        rows: Iterable[Sequence[Any]],
        *,
        lo: date,
        hi: date,
        batch_id: str,
        offline_snapshot_id: int | None,
        reresolve: Any,
        run: Any,
        rows_in_batch: int,
        chunk: int = 20_000,
    ) -> dict[str, int]:
        """Upsert the newest row per entity of one batch, in one transaction.

        ``rows`` are tuples ``(*entity, event_time_us, event_date, *features)`` encoded for
        SQLite. A stored row is replaced when the incoming one is at least as new, or when the
        stored one lies in [lo, hi] (the range this batch replaces in the offline store). Stored
        rows in [lo, hi] that the batch did not replace lost their source row: ``reresolve(keys)``
        returns the newest offline rows before ``lo`` for them (same tuple layout); the others are
        removed. Then rows that expired before the newest event time ever materialized are purged.

        The newest event time (the store's clock, ``watermark``) only moves to event times up
        to one day after the wall clock: a row dated in the future is stored, but it does not
        expire every other entity (counted as ``future_rows``).
        """
        keys = cols.entity_names
        names = [*keys, "event_time", "event_date", *cols.feature_names]
        ins_cols = [*names, "expires_at", "_batch_id", "_offline_snapshot_id"]
        ttl_us = int(ttl_seconds) * 1_000_000
        et_pos = len(keys)
        update = ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in ins_cols if c not in keys)
        upsert = (
            f"INSERT INTO {_q(table)} ({', '.join(_q(c) for c in ins_cols)}) "
            f"VALUES ({', '.join('?' for _ in ins_cols)}) "
            f"ON CONFLICT ({', '.join(_q(k) for k in keys)}) DO UPDATE SET {update} "
            f"WHERE excluded.event_time >= {_q(table)}.event_time "
            f"OR {_q(table)}.event_date BETWEEN '{lo.isoformat()}' AND '{hi.isoformat()}'"
        )
        upserted = future = 0
        max_et: int | None = None
        clock_cap = to_micros(datetime.now(UTC)) + FUTURE_TOLERANCE_US
        tail = (batch_id, offline_snapshot_id)
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            buf: list[tuple[Any, ...]] = []
            for r in rows:
                et = r[et_pos]
                if et > clock_cap:
                    future += 1
                elif max_et is None or et > max_et:
                    max_et = et
                buf.append((*r, et + ttl_us, *tail))
                if len(buf) >= chunk:
                    con.executemany(upsert, buf)
                    upserted += len(buf)
                    buf = []
            if buf:
                con.executemany(upsert, buf)
                upserted += len(buf)
            # stored rows of [lo, hi] that no incoming row replaced: their source row is gone
            stale = con.execute(
                f"SELECT {', '.join(_q(k) for k in keys)} FROM {_q(table)} "
                f"WHERE event_date BETWEEN ? AND ? AND _batch_id <> ?",
                (lo.isoformat(), hi.isoformat(), batch_id),
            ).fetchall()
            reresolved = removed = 0
            if stale:
                found = list(reresolve(stale))
                plain = upsert.split(" ON CONFLICT")[0].replace("INSERT INTO", "INSERT OR REPLACE INTO")
                con.executemany(plain, [(*r, r[et_pos] + ttl_us, *tail) for r in found])
                reresolved = len(found)
                kept = {tuple(r[: len(keys)]) for r in found}
                gone = [k for k in stale if tuple(k) not in kept]
                where = " AND ".join(f"{_q(k)} = ?" for k in keys)
                con.executemany(f"DELETE FROM {_q(table)} WHERE {where}", gone)
                removed = len(gone)
            prev = con.execute("SELECT watermark_us FROM _views WHERE table_name = ?", (table,)).fetchone()
            candidates = [x for x in (prev[0] if prev else None, max_et) if x is not None]
            watermark = max(candidates) if candidates else None
            purged = 0
            if watermark is not None:
                purged = con.execute(f"DELETE FROM {_q(table)} WHERE expires_at < ?", (watermark,)).rowcount
            now = datetime.now(UTC).isoformat(timespec="seconds")
            con.execute(
                "UPDATE _views SET watermark_us = ?, offline_snapshot_id = ?, last_range = ?, last_run_id = ?, "
                "updated_at = ? WHERE table_name = ?",
                (watermark, offline_snapshot_id, f"{lo.isoformat()}..{hi.isoformat()}", run.run_id, now, table),
            )
            con.execute(
                "INSERT OR REPLACE INTO _materializations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    batch_id,
                    table,
                    lo.isoformat(),
                    hi.isoformat(),
                    run.run_id,
                    run.dag_id,
                    run.task_id,
                    run.try_number,
                    offline_snapshot_id,
                    rows_in_batch,
                    upserted,
                    reresolved,
                    removed,
                    purged,
                    now,
                ),
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return {
            "entities_upserted": upserted,
            "entities_reresolved": reresolved,
            "entities_removed": removed,
            "purged_expired": purged,
            "future_rows": future,
            "watermark": from_micros(watermark).isoformat() if watermark is not None else None,
        }

    # ------------------------------------------------------------------ read

    def stats(self, table: str) -> dict[str, Any]:
        meta = self.con.execute(
            "SELECT watermark_us, offline_snapshot_id, last_range, last_run_id, updated_at FROM _views "
            "WHERE table_name = ?",
            (table,),
        ).fetchone()
        if meta is None:
            return {"table": table, "entities": 0}
        n = self.con.execute(f"SELECT count(*) FROM {_q(table)}").fetchone()[0]
        return {
            "table": table,
            "entities": n,
            "watermark": from_micros(meta[0]).isoformat() if meta[0] is not None else None,
            "offline_snapshot_id": meta[1],
            "last_range": meta[2],
            "last_run_id": meta[3],
            "updated_at": meta[4],
            "file": str(self.path),
            "file_bytes": _file_bytes(self.path),
            "table_bytes": self._table_bytes(table),
        }

    def _table_bytes(self, table: str) -> int | None:
        """Bytes of the view's table and its indexes (SQLite's dbstat; None where not compiled in)."""
        try:
            row = self.con.execute(
                "SELECT sum(pgsize) FROM dbstat WHERE name = ? OR name LIKE ? ESCAPE '\\'",
                (table, table.replace("_", "\\_") + "\\_\\_%"),
            ).fetchone()
        except sqlite3.OperationalError:
            return None
        return int(row[0]) if row and row[0] is not None else None


def _file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


class OnlineReader:
    """Point lookups against one view of the local online store; one connection per thread."""

    def __init__(self, uc: UseCase, view: str):
        self.uc = uc
        self.view = view
        self.path = store_path(uc)
        self.table = core.online_table(uc, view)
        self._local = threading.local()
        con = self._con()
        row = con.execute(
            "SELECT columns, entity, ttl_seconds, watermark_us FROM _views WHERE table_name = ?", (self.table,)
        )
        meta = row.fetchone() if row else None
        if meta is None:
            raise LookupError(
                f"{uc.name}: features.{view}: the online store has no table {self.table} yet "
                f"(materialize the view first: the {uc.name}__features DAG)"
            )
        self.types: dict[str, str] = json.loads(meta[0])
        self.keys: list[str] = json.loads(meta[1])
        self.ttl_us = int(meta[2]) * 1_000_000
        self.columns = [*self.keys, "event_time", *(c for c in self.types if c not in self.keys and c != "event_time")]
        self._decoders = [
            (i, _DECODERS[self.types[c]]) for i, c in enumerate(self.columns) if self.types[c] in _DECODERS
        ]
        select = ", ".join(_q(c) for c in self.columns)
        self._one = f"SELECT {select} FROM {_q(self.table)} WHERE " + " AND ".join(f"{_q(k)} = ?" for k in self.keys)
        self._select = select

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            if not self.path.exists():
                raise LookupError(f"{self.uc.name}: no online store yet at {self.path} (materialize a view first)")
            con = self._local.con = connect(self.path, readonly=True)
        return con

    def newest_key(self) -> Any:
        """The key of the entity with the newest event time (a tuple for composite keys), or None."""
        cols = ", ".join(_q(k) for k in self.keys)
        row = self._con().execute(f"SELECT {cols} FROM {_q(self.table)} ORDER BY event_time DESC LIMIT 1").fetchone()
        if row is None:
            return None
        return row[0] if len(row) == 1 else tuple(row)

    def watermark(self) -> datetime | None:
        row = self._con().execute("SELECT watermark_us FROM _views WHERE table_name = ?", (self.table,)).fetchone()
        return from_micros(row[0]) if row and row[0] is not None else None

    def _row(self, r: Sequence[Any] | None, as_of_us: int) -> dict[str, Any] | None:
        if r is None:
            return None
        et = r[len(self.keys)]
        if et + self.ttl_us < as_of_us:
            return None
        values = list(r)
        for i, decode in self._decoders:
            values[i] = decode(values[i])
        return dict(zip(self.columns, values))

    def _key_tuple(self, key: Any) -> tuple[Any, ...]:
        t = tuple(key) if isinstance(key, (tuple, list)) else (key,)
        if len(t) != len(self.keys):
            raise ValueError(f"features.{self.view}: a key has {len(self.keys)} part(s) {self.keys}, got {key!r}")
        return t

    def get(self, keys: Sequence[Any], as_of: datetime | None = None) -> list[dict[str, Any] | None]:
        """Values per key (in order); None for an unknown key or a value older than the TTL."""
        as_of_us = int(to_micros(as_of or datetime.now(UTC)) or 0)  # a datetime always converts
        con = self._con()
        tuples = [self._key_tuple(k) for k in keys]
        if len(tuples) == 1:
            return [self._row(con.execute(self._one, tuples[0]).fetchone(), as_of_us)]
        found: dict[tuple[Any, ...], Sequence[Any]] = {}
        nk = len(self.keys)
        step = max(1, _MAX_PARAMS // nk)
        for i in range(0, len(tuples), step):
            part = tuples[i : i + step]
            if nk == 1:
                where = f"{_q(self.keys[0])} IN ({', '.join('?' for _ in part)})"
                params = [t[0] for t in part]
            else:
                cols = ", ".join(_q(k) for k in self.keys)
                vals = ", ".join("(" + ", ".join("?" for _ in self.keys) + ")" for _ in part)
                where = f"({cols}) IN (VALUES {vals})"
                params = [v for t in part for v in t]
            for r in con.execute(f"SELECT {self._select} FROM {_q(self.table)} WHERE {where}", params):
                found[tuple(r[:nk])] = r
        return [self._row(found.get(t), as_of_us) for t in tuples]


def get_online_features(
    uc: UseCase, view: str, keys: Sequence[Any], as_of: datetime | str | None = None
) -> list[dict[str, Any] | None]:
    """Online values of ``view`` for ``keys`` (scalars, or tuples for composite keys), in order.

    Each value is a dict of the entity keys, ``event_time`` and the features; ``None`` for an
    entity the store does not know or whose newest value is older than the view's TTL at
    ``as_of`` (default: now; ``"watermark"``: the newest event time materialized, which is what
    a replay of historical data wants). Reads the local SQLite store (a view held on aws is read
    through its backend: ``backend_for(uc, "features", view=view).get_online_features``).
    """
    if view not in uc.features:
        raise KeyError(f"{uc.name}: no feature view {view!r} (views: {', '.join(uc.features)})")
    reader = _reader(uc, view)
    if as_of == "watermark":
        as_of = reader.watermark()
    return reader.get(keys, as_of)  # type: ignore[arg-type]


_READERS: dict[tuple[str | None, str, str, int], OnlineReader] = {}


def _reader(uc: UseCase, view: str) -> OnlineReader:
    """A cached reader per (runtime directory, view version): lookups reuse prepared statements
    and connections. Keyed on the environment, not the resolved path, to keep a lookup cheap."""
    key = (os.environ.get(runtime.ENV_HOME), uc.name, view, uc.features[view].version)
    r = _READERS.get(key)
    if r is None:
        r = _READERS[key] = OnlineReader(uc, view)
    return r
