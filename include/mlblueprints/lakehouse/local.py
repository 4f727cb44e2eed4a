"""The lakehouse on the local target: DuckDB SQL over Iceberg tables in a SQLite catalog.

Each public function is one task of the lakehouse DAG. It reads and writes only the partitions
of the landing dates it is given, commits through Iceberg (a write is invisible until its single
commit), and can be killed at any point and rerun: the rerun converges to the same tables.

Row accounting (rule 4 of the house): every Bronze row ends up in exactly one of Silver,
quarantine (with a reason code) or duplicates; :func:`reconcile` checks it per landing date.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from pyiceberg.expressions import (
    AlwaysFalse,
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    LessThanOrEqual,
    Or,
)
from pyiceberg.table import Table

from mlblueprints import runtime
from mlblueprints.config import Dataset, UseCase
from mlblueprints.core.duck import connect
from mlblueprints.errors import PermanentError
from mlblueprints.lakehouse import accounting, iceberg, naming, sqlgen
from mlblueprints.lakehouse.naming import gold_date_range
from mlblueprints.lakehouse.sqlgen import ident, literal
from mlblueprints.lineage import RunInfo

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


class LakehouseError(PermanentError, RuntimeError):
    """A lakehouse step failed for a reason the user must act on; the message says what. A retry
    cannot help."""


# ------------------------------------------------------------------ helpers


def landing_root(uc: UseCase, ds: Dataset) -> Path:
    p = Path(ds.landing.path).expanduser()
    return p if p.is_absolute() else runtime.home() / p


def target_file_size(uc: UseCase) -> int:
    return uc.lakehouse.target_file_size_mb * 1024 * 1024


def table_properties(uc: UseCase) -> dict[str, str]:
    """Iceberg properties of every table the use case writes locally (file size, codec, manifests)."""
    return {
        iceberg.TARGET_FILE_SIZE_PROP: str(target_file_size(uc)),
        "write.parquet.compression-codec": "zstd",
        # merge small manifests on commit, or every commit adds one and planning slows down
        "commit.manifest-merge.enabled": "true",
        "mlb.usecase": uc.name,
    }


def _table(uc: UseCase, name: str) -> Table | None:
    return iceberg.load(iceberg.catalog(), naming.identifier(uc, name))


def _ensure(uc: UseCase, con: duckdb.DuckDBPyConnection, name: str, sql: str, partition_by: str | None) -> Table:
    return iceberg.ensure_table(
        iceberg.catalog(),
        naming.identifier(uc, name),
        iceberg.query_schema(con, sql),
        partition_by,
        table_properties(uc),
    )


def _dates_filter(column: str, dates: Iterable[date]) -> BooleanExpression:
    ds = sorted({d.isoformat() for d in dates})
    if not ds:
        return AlwaysFalse()
    return iceberg.in_filter(column, ds)


def _date_list(dates: Iterable[date]) -> str:
    return ", ".join(f"DATE {literal(d.isoformat())}" for d in sorted(set(dates)))


def _iso(dates: Iterable[date]) -> list[str]:
    return sorted({d.isoformat() for d in dates})


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[Any, ...]]:
    return con.execute(sql).fetchall()


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    return con.execute(sql).fetchall()[0][0]


# ------------------------------------------------------------------ landing -> bronze


@dataclass
class FileOutcome:
    source_file: str
    file_checksum: str
    format: str
    size_bytes: int
    records: int
    status: str  # ingested | already_ingested | duplicate_file | empty | rejected
    duplicate_of: str | None = None
    reason: str | None = None
    new: bool = True  # False: seen by an earlier run, not recorded again

    def as_row(self, landing: date, run: RunInfo, ingest_time: datetime) -> dict[str, Any]:
        return {
            "landing_date": landing,
            "source_file": self.source_file,
            "file_checksum": self.file_checksum,
            "format": self.format,
            "size_bytes": self.size_bytes,
            "records": self.records,
            "status": self.status,
            "duplicate_of": self.duplicate_of,
            "reason": self.reason,
            "ingest_run_id": run.run_id,
            "ingest_time": ingest_time,
        }


FILES_SCHEMA = pa.schema(
    [
        ("landing_date", pa.date32()),
        ("source_file", pa.string()),
        ("file_checksum", pa.string()),
        ("format", pa.string()),
        ("size_bytes", pa.int64()),
        ("records", pa.int64()),
        ("status", pa.string()),
        ("duplicate_of", pa.string()),
        ("reason", pa.string()),
        ("ingest_run_id", pa.string()),
        ("ingest_time", pa.timestamp("us")),
    ]
)


class FileRejected(Exception):
    """A landed file that cannot be read as a whole (the reason names what is wrong)."""


def _digest(path: Path) -> tuple[str, int, int]:
    """sha256, size and number of newline-terminated lines of a file, in one streaming pass."""
    h = hashlib.sha256()
    size = lines = 0
    last = b""
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if size and last != b"\n":
        lines += 1
    return h.hexdigest(), size, lines


def _bronze_empty_sql(ds: Dataset) -> str:
    cols = [f"CAST(NULL AS VARCHAR) AS {ident(c.name)}" for c in ds.columns] + [
        "CAST(NULL AS VARCHAR) AS _extra",
        "CAST(NULL AS VARCHAR) AS _raw_record",
        "CAST(NULL AS VARCHAR) AS _parse_error",
        "CAST(NULL AS VARCHAR) AS _source_file",
        "CAST(NULL AS VARCHAR) AS _file_checksum",
        "CAST(NULL AS BIGINT) AS _line_number",
        "CAST(NULL AS VARCHAR) AS _ingest_run_id",
        "CAST(NULL AS TIMESTAMP) AS _ingest_time",
        "CAST(NULL AS DATE) AS _landing_date",
    ]
    return "SELECT " + ", ".join(cols) + " WHERE FALSE"


def _meta_sql(rel: str, checksum: str, run: RunInfo, ingest_time: datetime, landing: date) -> str:
    return (
        f"{literal(rel)} AS _source_file, {literal(checksum)} AS _file_checksum, "
        f"_line AS _line_number, {literal(run.run_id)} AS _ingest_run_id, "
        f"TIMESTAMP {literal(ingest_time.strftime('%Y-%m-%d %H:%M:%S.%f'))} AS _ingest_time, "
        f"DATE {literal(landing.isoformat())} AS _landing_date"
    )


def _line_numbers(n_good: int, reject_lines: list[int], first_line: int, physical: int) -> tuple[np.ndarray, bool]:
    """Physical line of each parsed record, in order, given the lines the reader rejected.

    Exact when every record is one line (the count of lines matches); otherwise the records'
    ordinals are returned instead and the second value is False.
    """
    rej = np.array(sorted(set(reject_lines)), dtype=np.int64)
    total = n_good + len(rej)
    if physical - (first_line - 1) == total:
        all_lines = np.arange(first_line, first_line + total, dtype=np.int64)
        return np.setdiff1d(all_lines, rej, assume_unique=True), True
    return np.arange(first_line, first_line + n_good, dtype=np.int64), False


def _clear_rejects(con: duckdb.DuckDBPyConnection) -> None:
    """DuckDB keeps reject tables across scans; every file starts with empty ones."""
    for t in ("_rej", "_rej_scan"):
        con.execute(f"DROP TABLE IF EXISTS {t}")


def _stage_rejects(con: duckdb.DuckDBPyConnection) -> list[tuple[int, str, str]]:
    rows = _rows(
        con,
        "SELECT line, ANY_VALUE(csv_line), STRING_AGG(CAST(error_type AS VARCHAR) || ': ' || error_message, '; ') "
        "FROM _rej GROUP BY line ORDER BY line",
    )
    return [(int(r[0]), r[1], r[2]) for r in rows]


def _line_source(
    con: duckdb.DuckDBPyConnection, tag: str, n_good: int, physical: int, first_line: int
) -> tuple[str, str, str, bool]:
    """How the staged records ``_good{tag}`` get their physical line numbers.

    Returns (SQL of the line of a good record ``g``, the join that SQL needs, the SELECT of the
    rejected records as (_line, csv_line, err), whether line numbers are exact). Without rejected
    lines the line is the record's ordinal plus the header; otherwise a small table maps ordinals
    to the lines left between the rejected ones.
    """
    rejects = _stage_rejects(con)
    if rejects:
        lines, exact = _line_numbers(n_good, [r[0] for r in rejects], first_line, physical)
        con.register("_arrow", pa.table({"_line": pa.array(lines, pa.int64())}))
        con.execute(f"CREATE OR REPLACE TEMP TABLE _lines{tag} AS SELECT * FROM _arrow")
        con.register(
            "_arrow",
            pa.table(
                {
                    "_line": pa.array([r[0] for r in rejects], pa.int64()),
                    "csv_line": pa.array([r[1] for r in rejects], pa.string()),
                    "err": pa.array([r[2] for r in rejects], pa.string()),
                }
            ),
        )
        con.execute(f"CREATE OR REPLACE TEMP TABLE _rejects{tag} AS SELECT * FROM _arrow")
        con.unregister("_arrow")
        return "l._line", f"POSITIONAL JOIN _lines{tag} AS l", f"SELECT _line, csv_line, err FROM _rejects{tag}", exact
    exact = physical - (first_line - 1) == n_good
    none = "SELECT CAST(NULL AS BIGINT) AS _line, CAST(NULL AS VARCHAR) AS csv_line, CAST(NULL AS VARCHAR) AS err WHERE FALSE"
    return f"g._ord + {first_line - 1}", "", none, exact


def _read_csv_file(
    con: duckdb.DuckDBPyConnection, ds: Dataset, path: Path, physical_lines: int, tag: str
) -> tuple[str, int, list[str]]:
    """Stage one CSV file as ``_good<tag>``; returns (SELECT of its Bronze rows without the
    ingest metadata, number of records, warnings)."""
    with path.open("r", encoding="utf-8", newline="") as f:
        try:
            first = f.readline()
        except UnicodeDecodeError as exc:
            raise FileRejected(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    header_line = first.lstrip("\ufeff").rstrip("\r\n")
    if not header_line.strip():
        raise FileRejected("the first line (the CSV header) is empty")
    header = [h.strip() for h in next(csv.reader(io.StringIO(header_line), delimiter=ds.landing.csv_delimiter))]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes or "" in header:
        raise FileRejected(f"the header names a column twice or leaves one unnamed: {dupes or ['<empty>']}")
    declared = [c.name for c in ds.columns]
    missing_required = [c.name for c in ds.columns if c.required and c.name not in header]
    if missing_required:
        raise FileRejected(f"the header lacks required column(s) {missing_required} (header: {header})")
    warn = []
    missing = [n for n in declared if n not in header]
    if missing:
        warn.append(f"optional column(s) {missing} absent from the header; loaded as NULL")
    extra = [h for h in header if h not in declared]
    if extra:
        warn.append(f"unexpected column(s) {extra} kept in _extra")
    if physical_lines <= 1:
        return "", 0, warn
    columns = "{" + ", ".join(f"{literal(h)}: 'VARCHAR'" for h in header) + "}"
    _clear_rejects(con)
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _good{tag} AS SELECT *, ROW_NUMBER() OVER () AS _ord FROM read_csv("
            f"{literal(str(path))}, header = true, auto_detect = false, columns = {columns}, "
            f"delim = {literal(ds.landing.csv_delimiter)}, quote = '\"', escape = '\"', "
            "store_rejects = true, rejects_table = '_rej', rejects_scan = '_rej_scan', "
            "strict_mode = true, encoding = 'utf-8')"
        )
    except duckdb.Error as exc:
        raise FileRejected(f"unreadable as CSV: {str(exc).splitlines()[0]}") from None
    n_good = _scalar(con, f"SELECT COUNT(*) FROM _good{tag}")
    line, join, rejected, exact = _line_source(con, tag, n_good, physical_lines, 2)
    n_rejected = _scalar(con, f"SELECT COUNT(*) FROM ({rejected})")
    if not exact:
        warn.append("line numbers are record ordinals: the file has blank or multi-line records")
    good_cols = [
        f"g.{ident(n)} AS {ident(n)}" if n in header else f"CAST(NULL AS VARCHAR) AS {ident(n)}" for n in declared
    ]
    extra_sql = (
        "CAST(json_object(" + ", ".join(f"{literal(e)}, g.{ident(e)}" for e in extra) + ") AS VARCHAR)"
        if extra
        else "CAST(NULL AS VARCHAR)"
    )
    null_cols = ", ".join(f"CAST(NULL AS VARCHAR) AS {ident(n)}" for n in declared)
    sql = (
        f"SELECT {', '.join(good_cols)}, {extra_sql} AS _extra, CAST(NULL AS VARCHAR) AS _raw_record, "
        f"CAST(NULL AS VARCHAR) AS _parse_error, {line} AS _line FROM _good{tag} AS g {join} "
        f"UNION ALL SELECT {null_cols}, CAST(NULL AS VARCHAR), csv_line, err, _line FROM ({rejected})"
    )
    return sql, n_good + n_rejected, warn


def _read_jsonl_file(
    con: duckdb.DuckDBPyConnection, ds: Dataset, path: Path, physical_lines: int, tag: str
) -> tuple[str, int, list[str]]:
    """Stage one JSON Lines file as ``_good<tag>``; every non-blank line is a record.

    Each line is parsed once into all declared keys (``json_transform``); a line that is not a
    JSON object is kept raw. Values of any JSON type arrive as text, objects as JSON text.
    """
    _clear_rejects(con)
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _good{tag} AS SELECT line, ROW_NUMBER() OVER () AS _ord FROM read_csv("
            f"{literal(str(path))}, header = false, auto_detect = false, columns = {{'line': 'VARCHAR'}}, "
            "delim = '\x1f', quote = '', escape = '', store_rejects = true, rejects_table = '_rej', "
            "rejects_scan = '_rej_scan', encoding = 'utf-8')"
        )
    except duckdb.Error as exc:
        raise FileRejected(f"unreadable as text lines: {str(exc).splitlines()[0]}") from None
    n_good, n_blank = con.execute(
        f"SELECT COUNT(*), COUNT(*) FILTER (WHERE line IS NULL OR TRIM(line) = '') FROM _good{tag}"
    ).fetchall()[0]
    line, join, rejected, exact = _line_source(con, tag, n_good, physical_lines, 1)
    n_rejected = _scalar(con, f"SELECT COUNT(*) FROM ({rejected})")
    warn = [] if exact else ["line numbers are record ordinals: the file has irregular lines"]
    declared = [c.name for c in ds.columns]
    struct = literal(json.dumps({n: "VARCHAR" for n in declared}))
    removal = literal(json.dumps({n: None for n in declared}))
    keys = "[" + ", ".join(literal(n) for n in declared) + "]"
    fields = ", ".join(f"s.{ident(n)} AS {ident(n)}" for n in declared)
    sql = f"""
        SELECT {fields},
            CASE WHEN len(list_filter(json_keys(CASE WHEN ok THEN raw END), lambda k: NOT list_contains({keys}, k))) > 0
                 THEN CAST(json_merge_patch(raw, {removal}) AS VARCHAR) END AS _extra,
            CASE WHEN NOT ok THEN raw END AS _raw_record,
            CASE WHEN NOT ok THEN COALESCE(err, CASE WHEN json_valid(raw) THEN 'not a JSON object' ELSE 'invalid JSON' END) END
                AS _parse_error,
            _line
        FROM (
            SELECT *, CASE WHEN ok THEN json_transform(raw, {struct}) END AS s
            FROM (
                SELECT g.line AS raw, {line} AS _line, CAST(NULL AS VARCHAR) AS err,
                       COALESCE(CASE WHEN json_valid(g.line) THEN json_type(g.line) = 'OBJECT' END, FALSE) AS ok
                FROM _good{tag} AS g {join}
                WHERE g.line IS NOT NULL AND TRIM(g.line) <> ''
                UNION ALL
                SELECT csv_line, _line, CAST(NULL AS VARCHAR), FALSE FROM ({rejected})
            )
        )
    """
    if n_blank:
        warn.append(f"{n_blank} blank line(s) skipped")
    return sql, n_good + n_rejected - n_blank, warn


def ingest_bronze(uc: UseCase, dataset: str, dates: list[date], run: RunInfo) -> dict[str, Any]:
    """Landing -> Bronze for the landing dates: raw records as received, with ingest metadata.

    A file whose checksum is already ingested (under any name or date) is not ingested again.
    One Iceberg commit adds the rows of all new files of the landing dates (replacing any rows a
    killed earlier attempt committed for the same files), then the file manifest is committed.
    """
    ds = uc.datasets[dataset]
    root = landing_root(uc, ds)
    con = connect()
    bronze = _ensure(uc, con, naming.table_name(dataset, naming.BRONZE), _bronze_empty_sql(ds), "_landing_date")
    con.register("_files_schema", FILES_SCHEMA.empty_table())
    files_tbl = _ensure(uc, con, naming.table_name(dataset, naming.BRONZE_FILES), "SELECT * FROM _files_schema", None)
    summary: dict[str, Any] = {"dataset": dataset, "landing_dates": _iso(dates), "files": [], "warnings": []}
    totals: Counter[str] = Counter()
    manifest = _manifest_rows(con, files_tbl)
    # a file already seen with a final outcome keeps it (and its original ingest metadata);
    # a rejected file is tried again
    seen = {(r["source_file"], r["file_checksum"]): r["status"] for r in manifest if r["status"] != "rejected"}
    by_checksum = {r["file_checksum"]: r["source_file"] for r in manifest if r["status"] == "ingested"}
    write_dir = iceberg.new_write_dir(bronze)
    staged: list[str] = []
    new_rows: list[dict[str, Any]] = []
    for landing in sorted(dates):
        directory = root / landing.isoformat()
        paths = sorted(p for p in directory.glob("*") if p.is_file() and not p.name.startswith(("_", ".")))
        outcomes: list[FileOutcome] = []
        parts: list[str] = []
        ingest_time = datetime.now(UTC).replace(tzinfo=None)
        for p in paths:
            rel = p.relative_to(root.parent).as_posix()  # <dataset dir>/<landing date>/<file>
            checksum, size, physical = _digest(p)
            fmt = FORMATS.get(p.suffix.lower(), p.suffix.lower().lstrip(".") or "none")
            out = FileOutcome(rel, checksum, fmt, size, 0, "ingested")
            if (rel, checksum) in seen:
                out.status = "already_ingested" if seen[rel, checksum] == "ingested" else seen[rel, checksum]
                out.new = False
            elif checksum in by_checksum:
                out.status, out.duplicate_of = "duplicate_file", by_checksum[checksum]
            elif fmt not in ds.landing.formats:
                out.status, out.reason = "rejected", f"format {fmt!r} is not one of {ds.landing.formats}"
            elif size == 0:
                out.status, out.reason = "empty", "zero-byte file"
            else:
                reader = _read_csv_file if fmt == "csv" else _read_jsonl_file
                try:
                    select, records, warns = reader(con, ds, p, physical, f"_{len(parts)}")
                except FileRejected as exc:
                    out.status, out.reason = "rejected", str(exc)
                else:
                    for w in warns:
                        summary["warnings"].append(f"{rel}: {w}")
                    if records == 0:
                        out.status, out.reason = "empty", "no records"
                    else:
                        out.records = records
                        parts.append(
                            f"SELECT * EXCLUDE (_line), {_meta_sql(rel, checksum, run, ingest_time, landing)} "
                            f"FROM ({select})"
                        )
                        staged.append(checksum)
                        by_checksum[checksum] = rel
            if out.status == "rejected":
                log.error("%s: file %s rejected: %s", dataset, rel, out.reason)
            outcomes.append(out)
            totals[out.status if out.new else "already_seen"] += 1
            summary["files"].append({**out.__dict__, "landing_date": landing.isoformat()})
        new_rows += [o.as_row(landing, run, ingest_time) for o in outcomes if o.new]
        if parts:
            # one landing date per COPY: the files need no partition folders, Iceberg reads the
            # partition value from their column statistics
            day_dir = write_dir / f"_landing_date={landing.isoformat()}"
            day_dir.mkdir()
            iceberg.write_files(
                con, day_dir, " UNION ALL ".join(parts), partition_by=None, target_file_size=target_file_size(uc)
            )
        for i in range(len(parts) + 1):  # free the staged files of this landing date
            for t in ("_good", "_lines", "_rejects"):
                con.execute(f"DROP TABLE IF EXISTS {t}_{i}")
    # One commit for all landing dates: it replaces whatever rows a killed earlier attempt
    # committed for the same files (a checksum is unique to its content), then the manifest.
    props = run.snapshot_properties(landing_dates=_iso(dates), step="bronze")
    replace = iceberg.in_filter("_file_checksum", staged) if staged else None
    iceberg.commit_files(bronze, write_dir, replace=replace, snapshot_properties=props)
    if new_rows:
        con.register("_manifest_new", pa.Table.from_pylist(new_rows, schema=FILES_SCHEMA))
        key = _or_all(
            And(
                EqualTo("landing_date", r["landing_date"].isoformat()),
                And(EqualTo("source_file", r["source_file"]), EqualTo("file_checksum", r["file_checksum"])),
            )
            for r in new_rows
        )
        iceberg.write(
            con,
            files_tbl,
            "SELECT * FROM _manifest_new",
            replace=key,
            partition_by=None,
            snapshot_properties=props,
            target_file_size=target_file_size(uc),
        )
    bronze.refresh()
    summary["file_status"] = dict(totals)
    summary["rows_landed"] = sum(f["records"] for f in summary["files"] if f["status"] == "ingested" and f["new"])
    summary["rejected_files"] = [f for f in summary["files"] if f["status"] == "rejected"]
    summary["bronze_snapshot_id"] = iceberg.snapshot_id(bronze)
    return summary


def _or_all(exprs: Iterable[BooleanExpression]) -> BooleanExpression:
    out: BooleanExpression | None = None
    for e in exprs:
        out = e if out is None else Or(out, e)
    return out if out is not None else AlwaysTrue()


def _manifest_rows(con: duckdb.DuckDBPyConnection, files_tbl: Table) -> list[dict[str, Any]]:
    files_tbl.refresh()
    iceberg.register_view(con, "_manifest", files_tbl)
    cur = con.execute("SELECT source_file, file_checksum, status, landing_date FROM _manifest")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


# ------------------------------------------------------------------ bronze -> silver


def build_silver(uc: UseCase, dataset: str, dates: list[date], run: RunInfo) -> dict[str, Any]:
    """Bronze -> Silver for the landing dates: type, quarantine, deduplicate, partition by event date.

    Commits, in this order, each atomic and each idempotent: the quarantine rows of the landing
    dates; the duplicate rows of the touched event dates; the Silver partitions of the touched
    event dates. Candidates for the latest version of a key are read back from Silver and from
    the duplicates table, so a rerun after a kill between two commits converges.
    """
    started = time.perf_counter()
    ds = uc.datasets[dataset]
    pk = ", ".join(ident(k) for k in ds.primary_key)
    con = connect()
    bronze = _table(uc, naming.table_name(dataset, naming.BRONZE))
    if bronze is None:
        raise LakehouseError(f"{dataset}: no Bronze table yet; run the ingest step first")
    iceberg.register_view(con, "bronze_batch", bronze, _dates_filter("_landing_date", dates))
    scratch = ", ".join(ident(f"__s__{c.name}") for c in ds.columns)  # trimmed text: not needed after typing
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE validated AS SELECT * EXCLUDE ({scratch}) "
        f"FROM ({sqlgen.silver_validate_sql(ds, 'bronze_batch')})"
    )

    silver_sql_cols = ", ".join(ident(c) for c in sqlgen.silver_columns(ds))
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW new_valid AS SELECT {sqlgen.typed_projection(ds)} FROM validated "
        "WHERE _reason_code IS NULL"
    )
    q_cols = ", ".join(ident(c) for c in sqlgen.quarantine_columns(ds))
    quarantine_sql = f"SELECT {q_cols} FROM validated WHERE _reason_code IS NOT NULL"

    silver_name = naming.table_name(dataset, naming.SILVER)
    dups_name = naming.table_name(dataset, naming.DUPLICATES)
    q_name = naming.table_name(dataset, naming.QUARANTINE)
    part = ds.partition_column
    silver = _ensure(uc, con, silver_name, "SELECT * FROM new_valid", part)
    resolve_probe = sqlgen.silver_resolve_sql(ds, "new_valid")
    dup_cols_sql = (
        f"SELECT {silver_sql_cols}, _duplicate_kind, _kept_source_file, _kept_line_number FROM ({resolve_probe})"
    )
    dups = _ensure(uc, con, dups_name, dup_cols_sql, part)
    quarantine = _ensure(uc, con, q_name, quarantine_sql, "_landing_date")
    source_snapshots = {
        naming.table_name(dataset, naming.BRONZE): iceberg.snapshot_id(bronze),
        silver_name: iceberg.snapshot_id(silver),
        dups_name: iceberg.snapshot_id(dups),
    }
    props = run.snapshot_properties(landing_dates=_iso(dates), step="silver", source_snapshots=source_snapshots)

    con.execute(f"CREATE OR REPLACE TEMP TABLE new_keys AS SELECT DISTINCT {pk} FROM new_valid")
    new_dates = {r[0] for r in _rows(con, "SELECT DISTINCT event_date FROM new_valid")}

    # Where do stored versions of these keys live? Read only key and partition columns.
    iceberg.register_view(con, "silver_keys", silver)
    iceberg.register_view(con, "dups_keys", dups)
    key_cols = f"{pk}, event_date"
    silver_hit_dates = {
        r[0]
        for r in _rows(
            con, f"SELECT DISTINCT event_date FROM (SELECT {key_cols} FROM silver_keys) SEMI JOIN new_keys USING ({pk})"
        )
    }
    dups_hit_dates = {
        r[0]
        for r in _rows(
            con, f"SELECT DISTINCT event_date FROM (SELECT {key_cols} FROM dups_keys) SEMI JOIN new_keys USING ({pk})"
        )
    }
    touched = new_dates | silver_hit_dates
    iceberg.register_view(con, "silver_old", silver, _dates_filter("event_date", touched))
    iceberg.register_view(con, "dups_hits", dups, _dates_filter("event_date", dups_hit_dates))
    # Every stored or new version of the keys this run touches. Most keys have one version (a new
    # row never seen before): those are kept as they are; only keys with several versions go
    # through the ranking, which sorts.
    con.execute(f"""
        CREATE OR REPLACE TEMP VIEW cand_raw AS
        SELECT {silver_sql_cols}, 0 AS _src FROM new_valid
        UNION ALL
        SELECT {silver_sql_cols}, 1 AS _src FROM silver_old SEMI JOIN new_keys USING ({pk})
        UNION ALL
        SELECT {silver_sql_cols}, 2 AS _src FROM dups_hits SEMI JOIN new_keys USING ({pk})
    """)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE multi_keys AS SELECT {pk} FROM cand_raw GROUP BY {pk} HAVING COUNT(*) > 1"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW single AS SELECT {silver_sql_cols} FROM new_valid ANTI JOIN multi_keys USING ({pk})"
    )
    candidates = f"""
        SELECT * EXCLUDE (_src, _n) FROM (
            SELECT *, ROW_NUMBER() OVER (PARTITION BY _file_checksum, _line_number ORDER BY _src) AS _n
            FROM (SELECT * FROM cand_raw SEMI JOIN multi_keys USING ({pk}))
        ) WHERE _n = 1
    """
    con.execute(f"CREATE OR REPLACE TEMP VIEW candidates AS {candidates}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE resolved AS {sqlgen.silver_resolve_sql(ds, 'candidates')}")
    loser_dates = {r[0] for r in _rows(con, "SELECT DISTINCT event_date FROM resolved WHERE _version_rank > 1")}
    dup_dates = dups_hit_dates | loser_dates
    winners_outside = _scalar(
        con,
        f"SELECT COUNT(*) FROM resolved WHERE _version_rank = 1 AND event_date NOT IN "
        f"({_date_list(touched) or 'NULL'})",
    )
    if winners_outside:
        raise LakehouseError(f"{dataset}: {winners_outside} kept row(s) fall outside the touched partitions")

    counts = dict(
        zip(
            ("bronze_rows", "valid", "quarantined"),
            con.execute(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE _reason_code IS NULL), "
                "COUNT(*) FILTER (WHERE _reason_code IS NOT NULL) FROM validated"
            ).fetchall()[0],
        )
    )
    landing_list = _date_list(dates)
    dup_counts = con.execute(
        f"""SELECT
              COUNT(*) FILTER (WHERE _version_rank > 1 AND _landing_date IN ({landing_list})),
              COUNT(*) FILTER (WHERE _version_rank > 1 AND _landing_date IN ({landing_list}) AND _duplicate_kind = 'exact'),
              COUNT(*) FILTER (WHERE _version_rank > 1 AND _landing_date NOT IN ({landing_list})),
              COUNT(*) FILTER (WHERE _version_rank = 1 AND _landing_date IN ({landing_list}))
                + (SELECT COUNT(*) FROM single)
            FROM resolved"""
    ).fetchall()[0]
    superseded_landing = {
        r[0]
        for r in _rows(con, f"SELECT DISTINCT _landing_date FROM resolved WHERE _landing_date NOT IN ({landing_list})")
    }
    reasons = {
        f"{r[0]}:{r[1] or '-'}": r[2]
        for r in _rows(
            con,
            "SELECT _reason_code, _reason_column, COUNT(*) FROM validated WHERE _reason_code IS NOT NULL "
            "GROUP BY ALL ORDER BY ALL",
        )
    }

    writes = {}
    writes["quarantine"] = iceberg.write(
        con,
        quarantine,
        quarantine_sql,
        replace=_dates_filter("_landing_date", dates),
        partition_by="_landing_date",
        snapshot_properties=props,
        target_file_size=target_file_size(uc),
    )
    if dup_dates:
        iceberg.register_view(con, "dups_old", dups, _dates_filter("event_date", dup_dates))
        dups_sql = f"""
            SELECT {silver_sql_cols}, _duplicate_kind, _kept_source_file, _kept_line_number
            FROM dups_old ANTI JOIN new_keys USING ({pk})
            UNION ALL
            SELECT {silver_sql_cols}, _duplicate_kind, _kept_source_file, _kept_line_number
            FROM resolved WHERE _version_rank > 1
        """
        writes["duplicates"] = iceberg.write(
            con,
            dups,
            dups_sql,
            replace=_dates_filter("event_date", dup_dates),
            partition_by=part,
            snapshot_properties=props,
            target_file_size=target_file_size(uc),
        )
    if touched:
        silver_sql = f"""
            SELECT {silver_sql_cols} FROM silver_old ANTI JOIN new_keys USING ({pk})
            UNION ALL
            SELECT {silver_sql_cols} FROM single
            UNION ALL
            SELECT {silver_sql_cols} FROM resolved WHERE _version_rank = 1
        """
        writes["silver"] = iceberg.write(
            con,
            silver,
            silver_sql,
            replace=_dates_filter("event_date", touched),
            partition_by=part,
            snapshot_properties=props,
            target_file_size=target_file_size(uc),
        )
    return {
        "dataset": dataset,
        "landing_dates": _iso(dates),
        "rows_landed": counts["bronze_rows"],
        "valid": counts["valid"],
        "quarantined": counts["quarantined"],
        "quarantine_reasons": reasons,
        "duplicates": dup_counts[0],
        "exact_duplicates": dup_counts[1],
        "key_duplicates": dup_counts[0] - dup_counts[1],
        "superseded_stored_rows": dup_counts[2],
        "rows_into_silver": dup_counts[3],
        "touched_event_dates": _iso(touched),
        "superseded_landing_dates": _iso(superseded_landing),
        "writes": writes,
        "silver_snapshot_id": iceberg.snapshot_id(_table(uc, silver_name)),
        "source_snapshots": source_snapshots,
        "seconds": round(time.perf_counter() - started, 3),
    }


# ------------------------------------------------------------------ silver -> gold


def build_gold(uc: UseCase, gold: str, touched: dict[str, list[str]], run: RunInfo) -> dict[str, Any]:
    """Silver -> Gold for the event dates a run touched (plus those their windows reach).

    The Gold SQL runs over views of its input Silver tables restricted to the needed history;
    the recomputed partitions replace the old ones in one commit.
    """
    started = time.perf_counter()
    g = uc.gold[gold]
    dates = {date.fromisoformat(d) for ds in g.inputs for d in touched.get(ds, [])}
    rng = gold_date_range(dates, g.lookback_days)
    con = connect()
    if rng is None:
        return {"table": gold, "rows_written": 0, "recomputed": None, "seconds": 0.0}
    lo, hi = rng
    history_lo = lo - timedelta(days=g.lookback_days)
    source_snapshots = {}
    for inp in g.inputs:
        silver = _table(uc, naming.table_name(inp, naming.SILVER))
        if silver is None:
            raise LakehouseError(f"gold {gold}: input {inp} has no Silver table yet")
        row_filter = And(
            GreaterThanOrEqual("event_date", history_lo.isoformat()), LessThanOrEqual("event_date", hi.isoformat())
        )
        iceberg.register_view(con, inp, silver, row_filter)
        source_snapshots[naming.table_name(inp, naming.SILVER)] = iceberg.snapshot_id(silver)
    user_sql = uc.gold_sql_path(gold).read_text()
    cols = sqlgen.output_columns(user_sql)
    for need in (*g.primary_key, g.event_time):
        if need not in cols:
            raise LakehouseError(f"gold {gold}: the SQL does not output column {need!r} (outputs {cols})")
    body = user_sql.strip().rstrip(";")
    if "event_date" not in cols:
        body = f"SELECT *, CAST({ident(g.event_time)} AS DATE) AS event_date FROM ({body})"
    sql = (
        f"SELECT * FROM ({body}) WHERE event_date BETWEEN DATE {literal(lo.isoformat())} "
        f"AND DATE {literal(hi.isoformat())}"
    )
    table = _ensure(uc, con, gold, sql, "event_date")
    replace = And(GreaterThanOrEqual("event_date", lo.isoformat()), LessThanOrEqual("event_date", hi.isoformat()))
    props = run.snapshot_properties(
        step="gold", source_snapshots=source_snapshots, recomputed=[lo.isoformat(), hi.isoformat()]
    )
    w = iceberg.write(
        con,
        table,
        sql,
        replace=replace,
        partition_by="event_date",
        snapshot_properties=props,
        target_file_size=target_file_size(uc),
    )
    return {
        "table": gold,
        "recomputed": [lo.isoformat(), hi.isoformat()],
        "history_from": history_lo.isoformat(),
        "rows_written": w["rows_written"],
        "write": w,
        "source_snapshots": source_snapshots,
        "gold_snapshot_id": w["snapshot_id"],
        "seconds": round(time.perf_counter() - started, 3),
    }


# ------------------------------------------------------------------ reconciliation


def reconcile(
    uc: UseCase, silver_summaries: list[dict[str, Any]], ingest_summaries: list[dict[str, Any]]
) -> dict[str, Any]:
    """Check, per data set and landing date touched: rows landed = Silver + quarantined + duplicates.

    Counts are read back from the committed tables (not from the steps' own bookkeeping); see
    :mod:`mlblueprints.lakehouse.accounting`.
    """
    con = connect()
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for s in silver_summaries:
        dataset = s["dataset"]
        landing = accounting.landing_dates_to_check(s)
        flt = _dates_filter("_landing_date", [date.fromisoformat(d) for d in landing])
        lst = _date_list(date.fromisoformat(d) for d in landing)
        by_date: dict[str, dict[str, int]] = {d: {} for d in landing}
        for kind in accounting.KINDS:
            table = _table(uc, naming.table_name(dataset, kind))
            if table is None:
                continue
            # Bronze and quarantine are partitioned by landing date; Silver and duplicates are not
            part = flt if kind in (naming.BRONZE, naming.QUARANTINE) else AlwaysTrue()
            iceberg.register_view(con, f"_r_{kind}", table, part)
            sql = f"SELECT _landing_date, COUNT(*) FROM _r_{kind} WHERE _landing_date IN ({lst}) GROUP BY 1"
            for d, n in _rows(con, sql):
                by_date[d.isoformat()][kind] = n
        counts[dataset] = by_date
    return accounting.reconcile_counts(uc, counts, ingest_summaries)


# ------------------------------------------------------------------ compaction


def compact(uc: UseCase, run: RunInfo, tables: list[str] | None = None) -> dict[str, Any]:
    """Rewrite partitions made of many small files into files of the target size.

    A partition is compacted when it holds at least ``compaction.min_files`` files smaller than
    ``small_file_fraction`` x the target size. The rewrite reads exactly that partition's files
    and replaces them in one commit (same rows). Then snapshots older than
    ``snapshot_retention_days`` are expired (time travel reaches back that far) and files no
    remaining snapshot references are deleted: write directories of killed writers and of
    replaced data (only directories older than an hour, so a write in progress is never touched).
    """
    started = time.perf_counter()
    con = connect()
    target = target_file_size(uc)
    small = target * uc.lakehouse.compaction.small_file_fraction
    names = tables or _all_tables(uc)
    out: dict[str, Any] = {"tables": {}, "seconds": 0.0}
    for name in names:
        table = _table(uc, name)
        if table is None:
            continue
        spec = table.spec()
        part_col = table.schema().find_field(spec.fields[0].source_id).name if spec.fields else None
        groups = iceberg.partition_files(table)
        chosen = {
            k: files
            for k, files in groups.items()
            if sum(1 for f in files if f[1] < small) >= uc.lakehouse.compaction.min_files
        }
        entry = {"partitions": len(groups), "files_before": sum(len(v) for v in groups.values())}
        if chosen:
            paths = [f[0] for files in chosen.values() for f in files]
            cols = ", ".join(ident(f.name) for f in table.schema().fields)
            sql = f"SELECT {cols} FROM read_parquet([{', '.join(literal(p) for p in paths)}], union_by_name = true)"
            if part_col:
                replace = iceberg.in_filter(part_col, [_partition_literal(k) for k in chosen])
            else:
                replace = AlwaysTrue()
            w = iceberg.write(
                con,
                table,
                sql,
                replace=replace,
                partition_by=ident(part_col) if part_col else None,
                snapshot_properties=run.snapshot_properties(step="compaction"),
                target_file_size=target,
            )
            entry.update(partitions_compacted=len(chosen), files_rewritten=len(paths), files_written=w["files_written"])
        keep = uc.lakehouse.snapshot_retention_days
        entry["snapshots_expired"] = iceberg.expire_snapshots(table, older_than=timedelta(days=keep))
        entry["orphan_files_removed"] = iceberg.remove_orphan_files(table)
        table.refresh()
        entry["files_after"] = sum(len(v) for v in iceberg.partition_files(table).values())
        out["tables"][name] = entry
    out["seconds"] = round(time.perf_counter() - started, 3)
    return out


def _partition_literal(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        # identity partitions on DATE columns are stored as days since epoch
        return (date(1970, 1, 1) + timedelta(days=value)).isoformat()
    return value


def _all_tables(uc: UseCase) -> list[str]:
    names = []
    for ds in uc.datasets:
        names += [
            naming.table_name(ds, k) for k in (naming.BRONZE, naming.SILVER, naming.QUARANTINE, naming.DUPLICATES)
        ]
    return names + list(uc.gold)


# ------------------------------------------------------------------ quality gates


def gate(uc: UseCase, table: str, layer: str, scope: dict[str, Any], run: RunInfo) -> Any:
    """Run the Great Expectations suite of ``table`` at ``layer`` on the rows this run wrote.

    ``scope`` names those rows: ``landing_dates`` (Bronze), ``event_dates`` (Silver) or
    ``range`` [first, last] event date (Gold). Returns a :class:`~mlblueprints.quality.gx.GateReport`.
    """
    from mlblueprints.quality.gx import GateReport, run_gate

    name = table if layer == "gold" else naming.table_name(table, layer)
    suite = uc.suite_name(table, layer)
    if "landing_dates" in scope:
        row_filter = _dates_filter("_landing_date", [date.fromisoformat(d) for d in scope["landing_dates"]])
    elif "event_dates" in scope:
        row_filter = _dates_filter("event_date", [date.fromisoformat(d) for d in scope["event_dates"]])
    else:
        lo, hi = scope["range"]
        row_filter = And(GreaterThanOrEqual("event_date", lo), LessThanOrEqual("event_date", hi))
    if suite is None:
        return GateReport(suite="-", table=name, layer=layer, rows=0, success=True, evaluated=0)
    tbl = _table(uc, name)
    if tbl is None:
        raise LakehouseError(f"gate {layer} {name}: the table does not exist yet")
    con = connect()
    iceberg.register_view(con, "batch", tbl, row_filter, temporary=False)
    return run_gate(
        con,
        "batch",
        suite_name=suite,
        table=name,
        layer=layer,
        run_name=f"{run.run_id}__{run.try_number}",
        quality_dir=runtime.path("quality", uc.name),
        result_format=uc.lakehouse.gate_result_format,
    )


def latest_gold_range(uc: UseCase, golds: Iterable[str]) -> tuple[date, date] | None:
    """The event dates recomputed by the current snapshot of each Gold table (merged), from the
    ``mlb.recomputed`` property every Gold commit records."""
    los, his = [], []
    for g in golds:
        t = _table(uc, g)
        snap = t.current_snapshot() if t is not None else None
        rng = snap.summary.additional_properties.get("mlb.recomputed") if snap and snap.summary else None
        if rng:
            lo, hi = json.loads(rng)
            los.append(date.fromisoformat(lo))
            his.append(date.fromisoformat(hi))
    return (min(los), max(his)) if los else None


# ------------------------------------------------------------------ the backend


class LocalLakehouse:
    """The lakehouse capability on the local target (``mlblueprints.backends.Lakehouse``)."""

    def __init__(self, uc: UseCase):
        self.uc = uc

    def ingest_bronze(self, dataset: str, dates: list[date], run: RunInfo) -> dict[str, Any]:
        return ingest_bronze(self.uc, dataset, dates, run)

    def build_silver(self, dataset: str, dates: list[date], run: RunInfo) -> dict[str, Any]:
        return build_silver(self.uc, dataset, dates, run)

    def build_gold(self, gold: str, touched: dict[str, list[str]], run: RunInfo) -> dict[str, Any]:
        return build_gold(self.uc, gold, touched, run)

    def reconcile(self, silvers: list[dict[str, Any]], ingests: list[dict[str, Any]]) -> dict[str, Any]:
        return reconcile(self.uc, silvers, ingests)

    def ensure_tables(self, run: RunInfo) -> dict[str, Any]:
        """Nothing to do ahead: a local table is created by its first write, in the same commit."""
        return {"created": [], "note": "local tables are created by their first write"}

    def compact(self, run: RunInfo, touched: dict[str, list[str]] | None = None) -> dict[str, Any]:
        # the local compaction finds the partitions made of small files itself
        return compact(self.uc, run)

    def gate(self, table: str, layer: str, scope: dict[str, Any], run: RunInfo) -> Any:
        return gate(self.uc, table, layer, scope, run)

    def latest_gold_range(self, golds: Iterable[str]) -> tuple[date, date] | None:
        return latest_gold_range(self.uc, golds)

    def where(self) -> list[str]:
        home = runtime.home()
        return [
            f"Data Docs (Great Expectations): {home / 'quality' / self.uc.name / 'uncommitted/data_docs/local_site/index.html'}",
            f"Iceberg warehouse: {home / 'warehouse'} (SQLite catalog: warehouse/catalog.db, namespace {self.uc.name})",
            f"Quarantine: table {self.uc.name}.<dataset>_quarantine; duplicates: {self.uc.name}.<dataset>_duplicates",
        ]
