"""Iceberg tables of the local target: a SQLite catalog and a warehouse on the file system.

Paths in the catalog and in the tables' metadata are relative to the runtime directory
(``mlb://warehouse/<namespace>/<table>/...``, read by :class:`HomeFileIO`), so a runtime directory
can be moved or copied as a whole: a copy reads and writes only its own files. (Tables written
before this scheme hold absolute ``file://`` paths; :func:`load` refuses one whose paths lie
outside the current runtime directory instead of writing into another directory's files.)

Writes are two-stage and atomic: DuckDB streams a query into Parquet files under a fresh
directory of the table's data location (bounded memory, files cut at the target size), then one
Iceberg transaction deletes what the write replaces and adds the new files. Until that commit
nothing is visible; a writer killed before it leaves only unreferenced files, which
:func:`remove_orphan_files` deletes later. Reads plan the files of a filtered scan with pyiceberg
and hand them to DuckDB.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pyiceberg import types as it
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.expressions import AlwaysTrue, BooleanExpression, EqualTo, In
from pyiceberg.io import PY_IO_IMPL
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.table import Table
from pyiceberg.typedef import EMPTY_DICT

from mlblueprints import relocate, runtime
from mlblueprints.errors import PermanentError

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)

TARGET_FILE_SIZE_PROP = "write.target-file-size-bytes"


HOME_SCHEME = "mlb"
HOME_PROP = "mlb.home"


class HomeFileIO(PyArrowFileIO):
    """PyArrow's FileIO plus the scheme ``mlb://<path>``: ``<path>`` relative to the runtime
    directory the catalog was opened in (the ``mlb.home`` property)."""

    @staticmethod
    def parse_location(location: str, properties: Mapping[str, str] = EMPTY_DICT) -> tuple[str, str, str]:
        prefix = f"{HOME_SCHEME}://"
        if location.startswith(prefix):
            return "file", "", str(Path(properties[HOME_PROP]) / location[len(prefix) :])
        return PyArrowFileIO.parse_location(location, properties)


class MovedHomeError(PermanentError):
    """A table whose metadata lies outside the runtime directory (a moved or copied old home)."""


def catalog(home: Path | None = None) -> Catalog:
    """The local SQLite-backed Iceberg catalog under ``<runtime>/warehouse``; table locations are
    ``mlb://warehouse/...``, relative to the runtime directory."""
    h = (home or runtime.home()).resolve()
    wh = h / "warehouse"
    wh.mkdir(parents=True, exist_ok=True)
    relocate.check_home(h)
    return SqlCatalog(
        "mlblueprints",
        uri=f"sqlite:///{wh / 'catalog.db'}",
        warehouse=f"{HOME_SCHEME}://warehouse",
        init_catalog_tables="true",
        **{PY_IO_IMPL: f"{__name__}.HomeFileIO", HOME_PROP: str(h)},
    )


def _home_of(table: Table | None) -> Path:
    prop = table.io.properties.get(HOME_PROP) if table is not None else None
    return Path(prop) if prop else runtime.home()


def _uri(path: Path | str, home: Path) -> str:
    """The URI a file is recorded under: relative to the runtime directory when inside it."""
    p = Path(path)
    try:
        return f"{HOME_SCHEME}://{p.resolve().relative_to(home.resolve()).as_posix()}"
    except ValueError:
        return p.resolve().as_uri()


def ensure_namespace(cat: Catalog, namespace: str) -> None:
    try:
        cat.create_namespace(namespace)
    except NamespaceAlreadyExistsError:
        pass


def load(cat: Catalog, identifier: str) -> Table | None:
    try:
        table = cat.load_table(identifier)
    except NoSuchTableError:
        return None
    _check_inside_home(table)
    return table


def _check_inside_home(table: Table) -> None:
    location = table.metadata_location
    if not location.startswith("file://"):
        return
    home = _home_of(table).resolve()
    if not Path(location.removeprefix("file://")).resolve().is_relative_to(home):
        raise MovedHomeError(
            f"table {'.'.join(table.name())} is recorded at {location}, outside this runtime directory "
            f"({home}): it was written by an older version that recorded absolute paths, and the "
            "directory was moved or copied since. Use it where it was created, or start a new runtime "
            "directory (MLB_HOME)"
        )


def ensure_table(
    cat: Catalog,
    identifier: str,
    schema: pa.Schema,
    partition_by: str | None,
    properties: Mapping[str, str],
) -> Table:
    """Load ``identifier`` or create it from an Arrow schema, partitioned by identity on one column.

    New columns in ``schema`` that the table lacks are added (schema evolution by union); a
    column whose type changed is an error naming the table and the column.
    """
    ensure_namespace(cat, identifier.split(".")[0])
    table = load(cat, identifier)
    if table is None:
        try:
            table = cat.create_table(identifier, schema=schema, properties=dict(properties))
        except TableAlreadyExistsError:  # created concurrently
            table = cat.load_table(identifier)
        else:
            if partition_by:
                with table.update_spec() as spec:
                    spec.add_identity(partition_by)
                table = cat.load_table(identifier)
    _check_and_evolve(table, schema)
    if any(table.properties.get(k) != v for k, v in properties.items()):
        with table.transaction() as tx:
            tx.set_properties(**properties)
        table = cat.load_table(identifier)
    return table


def _check_and_evolve(table: Table, schema: pa.Schema) -> None:
    existing = {f.name: f for f in table.schema().fields}
    missing = [f for f in schema if f.name not in existing]
    for f in schema:
        if f.name in existing:
            have = existing[f.name].field_type
            want = _iceberg_type(f.type)
            if want is not None and not _compatible(have, want):
                raise TypeError(
                    f"table {'.'.join(table.name())}: column {f.name!r} has type {have} but the write produces {want}"
                )
    if missing:
        with table.update_schema() as upd:
            for f in missing:
                upd.add_column(f.name, _iceberg_type(f.type) or it.StringType())
        log.warning("table %s: added column(s) %s", ".".join(table.name()), [f.name for f in missing])


def _iceberg_type(t: pa.DataType) -> it.IcebergType | None:
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return it.StringType()
    if pa.types.is_int32(t) or pa.types.is_int16(t) or pa.types.is_int8(t):
        return it.IntegerType()
    if pa.types.is_int64(t):
        return it.LongType()
    if pa.types.is_float64(t):
        return it.DoubleType()
    if pa.types.is_float32(t):
        return it.FloatType()
    if pa.types.is_boolean(t):
        return it.BooleanType()
    if pa.types.is_date32(t):
        return it.DateType()
    if pa.types.is_timestamp(t):
        return it.TimestamptzType() if t.tz else it.TimestampType()
    if pa.types.is_decimal(t):
        return it.DecimalType(t.precision, t.scale)
    return None


def _compatible(have: it.IcebergType, want: it.IcebergType) -> bool:
    if have == want:
        return True
    # allowed promotions when a write produces a narrower type than the table holds
    return (isinstance(have, it.LongType) and isinstance(want, it.IntegerType)) or (
        isinstance(have, it.DoubleType) and isinstance(want, it.FloatType)
    )


_DUCK_TYPES = {
    it.StringType: "VARCHAR",
    it.IntegerType: "INTEGER",
    it.LongType: "BIGINT",
    it.DoubleType: "DOUBLE",
    it.FloatType: "FLOAT",
    it.BooleanType: "BOOLEAN",
    it.DateType: "DATE",
    it.TimestampType: "TIMESTAMP",
    it.TimestamptzType: "TIMESTAMPTZ",
}


def duckdb_type(t: it.IcebergType) -> str:
    if isinstance(t, it.DecimalType):
        return f"DECIMAL({t.precision},{t.scale})"
    return _DUCK_TYPES[type(t)]


def data_files(table: Table, row_filter: BooleanExpression = AlwaysTrue(), snapshot_id: int | None = None) -> list[str]:
    """Local paths of the data files a filtered scan reads (copy-on-write: no delete files), of
    the current snapshot or of ``snapshot_id``."""
    files = []
    home = _home_of(table)
    for task in table.scan(row_filter=row_filter, snapshot_id=snapshot_id).plan_files():
        if task.delete_files:
            raise RuntimeError(
                f"table {'.'.join(table.name())} has delete files; this reader supports copy-on-write tables only"
            )
        files.append(_local_path(task.file.file_path, home))
    return files


def _local_path(uri: str, home: Path | None = None) -> str:
    """The local file of a recorded URI (``mlb://`` relative to the runtime directory)."""
    if uri.startswith(f"{HOME_SCHEME}://"):
        return str((home or runtime.home()) / uri[len(HOME_SCHEME) + 3 :])
    return uri.removeprefix("file://")


def register_view(
    con: duckdb.DuckDBPyConnection,
    name: str,
    table: Table | None,
    row_filter: BooleanExpression = AlwaysTrue(),
    schema: pa.Schema | None = None,
    where: str | None = None,
    temporary: bool = True,
    snapshot_id: int | None = None,
) -> int:
    """Create (or replace) a DuckDB view ``name`` over a filtered scan of an Iceberg table (its
    current snapshot, or ``snapshot_id``: a run that pins what it reads).

    Partition pruning uses ``row_filter``; ``where`` (SQL) filters rows inside the kept files.
    With no table or no matching file the view is empty but typed (from the table, or from
    ``schema`` when the table does not exist yet). Returns the number of files read.
    """
    from mlblueprints.lakehouse.sqlgen import ident, literal

    files = data_files(table, row_filter, snapshot_id) if table is not None else []
    if files:
        reader = f"read_parquet([{', '.join(literal(f) for f in files)}], union_by_name = true)"
        fields = table.schema().fields
        present = None
        if len(table.schemas()) > 1:  # the schema evolved: a column added or dropped since some files
            present = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()}
        cols = ", ".join(
            ident(f.name)
            if present is None or f.name in present
            else f"CAST(NULL AS {duckdb_type(f.field_type)}) AS {ident(f.name)}"  # none of these files has it
            for f in fields
        )
        src = f"SELECT {cols} FROM {reader}"
        # the files of a partition hold only its rows, but a filter on another column (or an
        # unpartitioned table) keeps whole files: filter the rows too
        conditions = [c for c in (expression_sql(row_filter), where) if c and c != "TRUE"]
        if conditions:
            src += " WHERE " + " AND ".join(f"({c})" for c in conditions)
    else:
        if table is not None:
            typed = [(f.name, duckdb_type(f.field_type)) for f in table.schema().fields]
        elif schema is not None:
            typed = [(f.name, _arrow_duck_type(f.type)) for f in schema]
        else:
            raise ValueError(f"view {name}: no table and no schema")
        src = "SELECT " + ", ".join(f"CAST(NULL AS {t}) AS {ident(n)}" for n, t in typed) + " WHERE FALSE"
    kind = "TEMP VIEW" if temporary else "VIEW"
    con.execute(f"CREATE OR REPLACE {kind} {ident(name)} AS {src}")
    return len(files)


def expression_sql(expr: BooleanExpression) -> str:
    """SQL of the pyiceberg expressions this package builds (for DuckDB)."""
    from pyiceberg.expressions import (
        AlwaysFalse,
        And,
        GreaterThan,
        GreaterThanOrEqual,
        IsNull,
        LessThan,
        LessThanOrEqual,
        Or,
    )
    from pyiceberg.expressions import EqualTo as Eq
    from pyiceberg.expressions import In as In_

    from mlblueprints.lakehouse.sqlgen import ident, literal

    if isinstance(expr, AlwaysTrue):
        return "TRUE"
    if isinstance(expr, AlwaysFalse):
        return "FALSE"
    if isinstance(expr, And):
        return f"({expression_sql(expr.left)}) AND ({expression_sql(expr.right)})"
    if isinstance(expr, Or):
        return f"({expression_sql(expr.left)}) OR ({expression_sql(expr.right)})"
    if isinstance(expr, IsNull):
        return f"{ident(expr.term.name)} IS NULL"
    ops = {Eq: "=", GreaterThanOrEqual: ">=", LessThanOrEqual: "<=", GreaterThan: ">", LessThan: "<"}
    for cls, op in ops.items():
        if isinstance(expr, cls):
            return f"{ident(expr.term.name)} {op} {literal(expr.literal.value)}"
    if isinstance(expr, In_):
        vals = ", ".join(literal(v.value) for v in sorted(expr.literals, key=lambda x: str(x.value)))
        return f"{ident(expr.term.name)} IN ({vals})"
    raise TypeError(f"no SQL for filter {expr!r}")


def _arrow_duck_type(t: pa.DataType) -> str:
    ice = _iceberg_type(t)
    if ice is None:
        raise TypeError(f"unsupported Arrow type {t}")
    return duckdb_type(ice)


def query_schema(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Schema:
    """The Arrow schema a query produces, without running it over data."""
    return con.sql(f"SELECT * FROM ({sql}) AS q LIMIT 0").to_arrow_table().schema


def data_dir(table: Table) -> Path:
    """The local folder holding a table's data files (one ``write-<uuid>`` folder per commit)."""
    return Path(_local_path(table.location(), _home_of(table))) / "data"


def new_write_dir(table: Table) -> Path:
    """A fresh directory under the table's data location for the files of one commit."""
    location = data_dir(table) / f"write-{uuid.uuid4().hex}"
    location.mkdir(parents=True, exist_ok=False)
    return location


def write_files(
    con: duckdb.DuckDBPyConnection,
    location: Path,
    sql: str,
    *,
    partition_by: str | None,
    target_file_size: int,
) -> int:
    """Stream the rows of ``sql`` into Parquet files under ``location`` (not yet committed).

    Files are cut at ``target_file_size`` bytes on disk; with ``partition_by`` they go to one
    folder per value (a file never spans two partitions). Returns the number of rows.
    """
    opts = [
        "FORMAT parquet",
        "COMPRESSION zstd",
        f"FILE_SIZE_BYTES {int(target_file_size)}",
        "FILENAME_PATTERN 'part-{uuid}'",
        "ROW_GROUP_SIZE 122880",
        "OVERWRITE_OR_IGNORE true",
    ]
    if partition_by:
        opts += [f"PARTITION_BY ({partition_by})", "WRITE_PARTITION_COLUMNS true"]
    return int(con.execute(f"COPY ({sql}) TO '{location}' ({', '.join(opts)})").fetchall()[0][0])


def commit_files(
    table: Table,
    location: Path,
    *,
    replace: BooleanExpression | None,
    snapshot_properties: Mapping[str, str],
) -> dict[str, Any]:
    """One Iceberg transaction: delete the rows matching ``replace`` and add every file under
    ``location``. Until it commits, nothing written under ``location`` is visible."""
    files = sorted(str(p) for p in location.rglob("*.parquet"))
    props = {k: str(v) for k, v in snapshot_properties.items()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Delete operation did not match any records")
        with table.transaction() as tx:
            if replace is not None:
                tx.delete(replace, snapshot_properties=props)
            if files:
                home = _home_of(table)
                tx.add_files([_uri(f, home) for f in files], snapshot_properties=props)
    if not files:
        shutil.rmtree(location, ignore_errors=True)
    table.refresh()
    snap = table.current_snapshot()
    return {
        "files_written": len(files),
        "bytes_written": sum(Path(f).stat().st_size for f in files),
        "snapshot_id": snap.snapshot_id if snap else None,
    }


def write(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    sql: str,
    *,
    replace: BooleanExpression | None,
    partition_by: str | None,
    snapshot_properties: Mapping[str, str],
    target_file_size: int,
) -> dict[str, Any]:
    """Atomically replace the rows matching ``replace`` (None: append) with the rows of ``sql``.

    DuckDB streams the query into Parquet under a fresh directory; one Iceberg commit then
    deletes the replaced files and adds the new ones. Returns counts of the commit.
    """
    started = time.perf_counter()
    location = new_write_dir(table)
    rows = write_files(con, location, sql, partition_by=partition_by, target_file_size=target_file_size)
    out = commit_files(table, location, replace=replace, snapshot_properties=snapshot_properties)
    return {"rows_written": rows, **out, "seconds": round(time.perf_counter() - started, 3)}


def in_filter(column: str, values: Iterable[Any]) -> BooleanExpression:
    vals = sorted({v for v in values})
    if len(vals) == 1:
        return EqualTo(column, vals[0])
    return In(column, vals)


def partition_files(table: Table) -> dict[Any, list[tuple[str, int, int]]]:
    """Per partition value: the (path, size in bytes, record count) of each data file."""
    out: dict[Any, list[tuple[str, int, int]]] = {}
    home = _home_of(table)
    for task in table.scan().plan_files():
        f = task.file
        key = f.partition[0] if len(f.partition) else None
        out.setdefault(key, []).append((_local_path(f.file_path, home), f.file_size_in_bytes, f.record_count))
    return out


def remove_orphan_files(table: Table, older_than_seconds: float = 3600) -> int:
    """Delete write directories no snapshot references (left by writers killed before commit).

    Only directories older than ``older_than_seconds`` are considered, so a write in progress is
    never touched. Returns the number of files removed.
    """
    referenced: set[str] = set()
    home = _home_of(table)
    for snap in table.snapshots():
        for manifest in snap.manifests(table.io):
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
                referenced.add(_local_path(entry.data_file.file_path, home))
    data = data_dir(table)
    removed = 0
    now = time.time()
    for d in data.glob("write-*"):
        if now - d.stat().st_mtime < older_than_seconds:
            continue
        files = [str(p) for p in d.rglob("*.parquet")]
        if not any(f in referenced for f in files):
            removed += len(files)
            shutil.rmtree(d, ignore_errors=True)
    return removed


def expire_snapshots(table: Table, older_than: timedelta) -> int:
    """Expire snapshots older than ``older_than`` (the current one is always kept)."""
    cutoff_ms = (datetime.now(UTC) - older_than).timestamp() * 1000
    current = table.current_snapshot()
    old = [
        s.snapshot_id
        for s in table.snapshots()
        if s.timestamp_ms < cutoff_ms and (current is None or s.snapshot_id != current.snapshot_id)
    ]
    if old:
        table.maintenance.expire_snapshots().by_ids(old).commit()
        table.refresh()
    return len(old)


def snapshot_id(table: Table | None) -> int | None:
    if table is None:
        return None
    snap = table.current_snapshot()
    return snap.snapshot_id if snap else None


def snapshot_files(table: Table, snapshot_id: int) -> list[str]:
    """Local paths of the data files of one snapshot of a (copy-on-write) table."""
    return [_local_path(t.file.file_path) for t in table.scan(snapshot_id=snapshot_id).plan_files()]
