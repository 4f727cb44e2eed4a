"""The lakehouse on the local target: DuckDB SQL over Iceberg tables in a SQLite catalog.

Each public function is one task of the lakehouse DAG. It reads and writes only the partitions
of the landing dates it is given, commits through Iceberg (a write is invisible until its single
commit), and can be killed at any point and rerun: the rerun converges to the same tables.

Row accounting (rule 4 of the house): every Bronze row ends up in exactly one of Silver,
quarantine (with a reason code) or duplicates; :func:`reconcile` checks it per landing date.
"""

from __future__ import annotations

import csv
import errno
import functools
import io
import json
import logging
import os
import re
import shutil
import time
import uuid
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
from mlblueprints.lakehouse import accounting, iceberg, naming, scan, sqlgen
from mlblueprints.lakehouse.naming import gold_date_range, gold_driving_inputs, shift
from mlblueprints.lakehouse.sqlgen import ident, literal
from mlblueprints.lineage import RunInfo

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


class LakehouseError(PermanentError, RuntimeError):
    """A lakehouse step failed for a reason the user must act on; the message says what. A retry
    cannot help."""


# ------------------------------------------------------------------ disk failures


class StorageError(RuntimeError):
    """The local disk refused a write or a read (full, over quota, a size limit, permissions,
    read-only): one line naming the step, the reason and the path. Not permanent: every step is
    idempotent, so a rerun after freeing space or fixing permissions completes it."""


_STORAGE_ERRNO = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for a file size limit",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}
_STORAGE_TEXT = {
    "no space left on device": errno.ENOSPC,
    "database or disk is full": errno.ENOSPC,
    "disk quota exceeded": errno.EDQUOT,
    "file too large": errno.EFBIG,
    "permission denied": errno.EACCES,
    "operation not permitted": errno.EPERM,
    "read-only file system": errno.EROFS,
    "attempt to write a readonly database": errno.EROFS,
}
_PATH_IN_MESSAGE = re.compile(r"""(?:file|directory|path)[: ]+\\?["']([^"'\\]+)""", re.IGNORECASE)


def storage_problem(exc: BaseException) -> str | None:
    """``reason (path)`` when ``exc`` is the disk refusing a read or write, else None."""
    code = exc.errno if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNO else None
    text = str(exc)
    if code is None:
        lowered = text.lower()
        code = next((c for t, c in _STORAGE_TEXT.items() if t in lowered), None)
    if code is None:
        return None
    path = getattr(exc, "filename", None)
    if not path:
        m = _PATH_IN_MESSAGE.search(text)
        path = m.group(1) if m else None
    return _STORAGE_ERRNO[code] + (f" ({path})" if path else "")


def on_storage_errors(fn: Any) -> Any:
    """Turn the disk refusing a write or read inside a step into one :class:`StorageError` line."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (StorageError, PermanentError):
            raise
        except Exception as exc:
            problem = storage_problem(exc)
            if problem is None:
                raise
            uc = args[0] if args and isinstance(args[0], UseCase) else None
            step = f"{uc.name} {fn.__name__}" if uc else fn.__name__
            raise StorageError(
                f"{step}: {problem}; free space or fix permissions under {runtime.home()}, then rerun "
                "(the step is idempotent)"
            ) from None

    return wrapper


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
    status: str  # ingested | already_ingested | duplicate_file | empty | rejected | set_aside
    duplicate_of: str | None = None
    reason: str | None = None
    new: bool = True  # False: seen by an earlier run, not recorded again
    blank_lines: int = 0
    select: str | None = None  # the SELECT of the file's Bronze rows (a new ingested file)

    def as_summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "select"}

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
            "blank_lines": self.blank_lines,
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
        ("blank_lines", pa.int64()),
    ]
)


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


class FileRejected(Exception):
    """A landed file that cannot be read as a whole (the reason names what is wrong)."""


# A record longer than this is kept raw and quarantined (malformed_record), as DuckDB's reader
# reports it; longer than the largest buffer the reader may use, the file is rejected.
MAX_RECORD_BYTES = 2 << 20
_DEFAULT_BUFFER = 32 << 20
MAX_BUFFER_BYTES = 256 << 20
# characters DuckDB would read as a glob pattern (a backslash cannot even be escaped)
_GLOB_CHARS = frozenset("*?[]\\")
# delimiters for reading JSON Lines as whole lines: the first one absent from the file is used
_LINE_DELIMITERS = ("\x1f", "\x1e", "\x1d", "\x1c")
_MAGIC = (
    (b"\x1f\x8b", "gzip-compressed data: land the file uncompressed"),
    (b"PK\x03\x04", "a zip archive: land the files it holds"),
    (b"\xff\xfe", "UTF-16 text (little-endian byte-order mark): save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 text (big-endian byte-order mark): save it as UTF-8"),
    (b"BZh", "bzip2-compressed data: land the file uncompressed"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data: land the file uncompressed"),
    (b"PAR1", "a Parquet file: land CSV or JSON Lines"),
)


def _scan(path: Path, fmt: str, delimiter: str) -> scan.FileScan:
    """Checksum, size, encoding and the physical records of a landed file (one streaming pass)."""
    return scan.scan_file(path, fmt, delimiter)


def _encoding_problem(s: scan.FileScan) -> str | None:
    """Why a file is not UTF-8 text (one line), or None."""
    for magic, what in _MAGIC:
        if s.head.startswith(magic):
            return f"not UTF-8 text: {what}"
    if s.nul_offset is not None:
        return (
            f"not UTF-8 text: a NUL byte at byte {s.nul_offset} (binary data, or UTF-16/UTF-32 text: save it as UTF-8)"
        )
    if s.invalid_utf8 is not None:
        offset, line = s.invalid_utf8
        return f"not UTF-8 text: invalid byte sequence at byte {offset} (line {line}); save the file as UTF-8"
    return None


def _entry_problem(entry: os.DirEntry[str]) -> str | None:
    """Why an entry of a landing-date folder is not read as a landed file, or None."""
    if any(ord(c) < 32 or ord(c) == 127 for c in entry.name):
        return "the file name contains control characters; rename it"
    if entry.is_symlink():
        return "a symbolic link: links are not followed; land the file itself"
    if entry.is_dir(follow_symlinks=False):
        return "a folder: files in subfolders are not read; land files directly in the landing-date folder"
    if not entry.is_file(follow_symlinks=False):
        return "not a regular file"
    return None


@dataclass
class _Staging:
    """Where DuckDB reads a landed file from: the file itself, or a private copy when its path
    would be read as a glob pattern or its line ends must be normalized to LF."""

    root: Path
    count: int = 0

    def path_for(self, path: Path, s: scan.FileScan, fmt: str, delimiter: str) -> Path:
        if not s.only_lf:
            self.count += 1
            out = self.root / f"{self.count}.{fmt}"
            self.root.mkdir(parents=True, exist_ok=True)
            scan.normalize_line_ends(path, out, fmt, delimiter)
            return out
        if _GLOB_CHARS & set(str(path)):
            self.count += 1
            out = self.root / f"{self.count}.{fmt}"
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, out)
            except OSError:  # another file system, or links not allowed: copy
                shutil.copyfile(path, out)
            return out
        return path


def _reader_options(s: scan.FileScan) -> str:
    """read_csv options sized for the file: DuckDB silently skips a record longer than its
    buffer, so the buffer must hold the longest record (rejected as too long, and kept raw)."""
    opts = f"max_line_size = {MAX_RECORD_BYTES}, new_line = '\\n'"
    if s.longest + (2 << 20) > _DEFAULT_BUFFER:
        buffer = 1 << (s.longest + (4 << 20)).bit_length()
        opts += f", buffer_size = {buffer}"
    return opts


def _check_record_size(s: scan.FileScan) -> None:
    if s.longest + (4 << 20) > MAX_BUFFER_BYTES:
        raise FileRejected(
            f"the record at line {s.longest_line} is {s.longest / 1e6:.1f} MB; records up to "
            f"{(MAX_BUFFER_BYTES >> 20) - 4} MB can be read (up to {MAX_RECORD_BYTES >> 20} MB are loaded, "
            "longer ones are quarantined)"
        )


def _count_mismatch(s: scan.FileScan, expected: int, read: int) -> FileRejected:
    why = ""
    if s.quote_error is not None:
        why = (
            f"; a quoted field is closed in the middle of a field at line {s.quote_error[1]} "
            f"(byte {s.quote_error[0]}), after which the reader loses track of records"
        )
    return FileRejected(
        f"the file holds {expected} record(s) but the reader returned {read}{why}; nothing of it was loaded"
    )


def _clear_rejects(con: duckdb.DuckDBPyConnection) -> None:
    """DuckDB keeps reject tables across scans; every file starts with empty ones."""
    for t in ("_rej", "_rej_scan"):
        con.execute(f"DROP TABLE IF EXISTS {t}")


def _stage_rejects(con: duckdb.DuckDBPyConnection) -> list[tuple[int, str, str]]:
    """One row per record the reader rejected: (its reader line, its text, the errors)."""
    rows = _rows(
        con,
        "SELECT line, ANY_VALUE(csv_line), STRING_AGG(CAST(error_type AS VARCHAR) || ': ' || error_message, '; ') "
        "FROM _rej GROUP BY line ORDER BY line",
    )
    return [(int(r[0]), r[1], r[2]) for r in rows]


def _line_numbers(
    n_good: int, rejects: list[int], first_line: int, s: scan.FileScan, blank_is_record: bool
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Physical lines of the good records (in order) and of the rejected ones.

    ``rejects`` are the reader's line numbers of the records it rejected: it counts records and
    blank lines, not physical lines, so a record spanning lines shifts them. For a regular file
    (one record per line, no blank line) they are the physical lines; otherwise the scan's
    record start lines translate them. Returns (good lines, reject lines, exact); not exact only
    when the reader's numbering cannot be matched (the lines are then ordinals).
    """
    rej = np.asarray(rejects, dtype=np.int64)
    if s.regular or s.seq_lines is None:
        total = n_good + rej.size
        all_lines = np.arange(first_line, first_line + total, dtype=np.int64)
        if rej.size and (rej.min() < first_line or rej.max() >= first_line + total):
            return np.arange(first_line, first_line + n_good, dtype=np.int64), rej, False
        return np.setdiff1d(all_lines, rej, assume_unique=True), rej, True
    seq, blank = s.seq_lines, s.seq_blank
    is_record = np.ones(seq.size, dtype=bool) if blank_is_record else ~blank
    rec_lines = seq[is_record]
    rec_index = np.cumsum(is_record) - 1
    pos = rej - first_line  # position in the reader's sequence of records and blank lines
    if pos.size and (pos.min() < 0 or pos.max() >= seq.size or not is_record[pos].all()):
        return np.arange(first_line, first_line + n_good, dtype=np.int64), rej, False
    rej_idx = rec_index[pos] if pos.size else np.empty(0, dtype=np.int64)
    good_idx = np.setdiff1d(np.arange(rec_lines.size), rej_idx, assume_unique=True)
    if good_idx.size != n_good:
        return np.arange(first_line, first_line + n_good, dtype=np.int64), rej, False
    return rec_lines[good_idx], seq[pos] if pos.size else rej, True


def _line_source(
    con: duckdb.DuckDBPyConnection, tag: str, n_good: int, first_line: int, s: scan.FileScan, blank_is_record: bool
) -> tuple[str, str, str, int, bool]:
    """How the staged records ``_good{tag}`` get their physical line numbers.

    Returns (SQL of the line of a good record ``g``, the join that SQL needs, the SELECT of the
    rejected records as (_line, csv_line, err), the number of rejected records, whether line
    numbers are exact). For a regular file without rejected records the line is the record's
    ordinal plus the header; otherwise a small table maps ordinals to lines.
    """
    rejects = _stage_rejects(con)
    none = "SELECT CAST(NULL AS BIGINT) AS _line, CAST(NULL AS VARCHAR) AS csv_line, CAST(NULL AS VARCHAR) AS err WHERE FALSE"
    if not rejects and s.regular:
        return f"g._ord + {first_line - 1}", "", none, 0, True
    good, rej_lines, exact = _line_numbers(n_good, [r[0] for r in rejects], first_line, s, blank_is_record)
    con.register("_arrow", pa.table({"_line": pa.array(good, pa.int64())}))
    con.execute(f"CREATE OR REPLACE TEMP TABLE _lines{tag} AS SELECT * FROM _arrow")
    if rejects:
        con.register(
            "_arrow",
            pa.table(
                {
                    "_line": pa.array(rej_lines, pa.int64()),
                    "csv_line": pa.array([r[1] for r in rejects], pa.string()),
                    "err": pa.array([r[2] for r in rejects], pa.string()),
                }
            ),
        )
        con.execute(f"CREATE OR REPLACE TEMP TABLE _rejects{tag} AS SELECT * FROM _arrow")
        rejected = f"SELECT _line, csv_line, err FROM _rejects{tag}"
    else:
        rejected = none
    con.unregister("_arrow")
    return "l._line", f"POSITIONAL JOIN _lines{tag} AS l", rejected, len(rejects), exact


def _short(values: list[str], limit: int = 200) -> str:
    text = repr(values)
    return text if len(text) <= limit else text[: limit - 5] + " ...]"


def _read_csv_file(
    con: duckdb.DuckDBPyConnection, ds: Dataset, path: Path, source: Path, s: scan.FileScan, tag: str
) -> tuple[str, int, list[str]]:
    """Stage one CSV file as ``_good<tag>``; returns (SELECT of its Bronze rows without the
    ingest metadata, number of records, warnings). ``source`` is what DuckDB reads (the file,
    or its staged copy)."""
    with path.open("r", encoding="utf-8", newline="") as f:
        first = f.readline()
    header_line = first.lstrip("\ufeff").rstrip("\r\n")
    if not header_line.strip():
        raise FileRejected("the first line (the CSV header) is empty")
    header = [h.strip() for h in next(csv.reader(io.StringIO(header_line), delimiter=ds.landing.csv_delimiter))]
    folded = [h.casefold() for h in header]
    dupes = sorted({h for h in header if folded.count(h.casefold()) > 1})
    if dupes or "" in header:
        raise FileRejected(
            "the header names a column twice (column names are compared ignoring case) or leaves one unnamed: "
            f"{_short(dupes or ['<empty>'])}"
        )
    declared = [c.name for c in ds.columns]
    missing_required = [c.name for c in ds.columns if c.required and c.name not in header]
    if missing_required:
        raise FileRejected(f"the header lacks required column(s) {missing_required} (header: {_short(header)})")
    warn = []
    missing = [n for n in declared if n not in header]
    if missing:
        warn.append(f"optional column(s) {missing} absent from the header; loaded as NULL")
    extra = [h for h in header if h not in declared]
    if extra:
        warn.append(f"unexpected column(s) {_short(extra)} kept in _extra")
    # with one column an empty line is a record (one empty value); with more, DuckDB skips it
    blank_is_record = len(header) == 1
    expected = s.records - 1 + (s.blank if blank_is_record else 0)
    if expected <= 0:
        return "", 0, warn
    _check_record_size(s)
    columns = "{" + ", ".join(f"{literal(h)}: 'VARCHAR'" for h in header) + "}"
    _clear_rejects(con)
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _good{tag} AS SELECT *, ROW_NUMBER() OVER () AS _ord FROM read_csv("
            f"{literal(str(source))}, header = true, auto_detect = false, columns = {columns}, "
            f"delim = {literal(ds.landing.csv_delimiter)}, quote = '\"', escape = '\"', "
            "store_rejects = true, rejects_table = '_rej', rejects_scan = '_rej_scan', "
            f"strict_mode = true, encoding = 'utf-8', {_reader_options(s)})"
        )
    except duckdb.Error as exc:
        raise FileRejected(f"unreadable as CSV: {str(exc).splitlines()[0]}") from None
    n_good = _scalar(con, f"SELECT COUNT(*) FROM _good{tag}")
    line, join, rejected, n_rejected, exact = _line_source(con, tag, n_good, 2, s, blank_is_record)
    if n_good + n_rejected != expected:
        raise _count_mismatch(s, expected, n_good + n_rejected)
    if not exact:
        warn.append("line numbers are record ordinals: the reader's numbering could not be matched to the file")
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
    return sql, expected, warn


def _read_jsonl_file(
    con: duckdb.DuckDBPyConnection, ds: Dataset, path: Path, source: Path, s: scan.FileScan, tag: str
) -> tuple[str, int, list[str]]:
    """Stage one JSON Lines file as ``_good<tag>``; every non-blank line is a record.

    Each line is parsed once into all declared keys (``json_transform``). A line that is not a
    JSON object, names a key twice, or holds an object or array under a declared key is kept
    raw (``malformed_record`` in Silver). Other values arrive as text (numbers as DuckDB's JSON
    parser prints them, booleans as ``true``/``false``).
    """
    warn: list[str] = []
    if s.records == 0:
        return "", 0, warn
    _check_record_size(s)
    delim = next((d for d in _LINE_DELIMITERS if d not in s.controls), None)
    if delim is None:
        raise FileRejected("the file holds the control characters U+001C to U+001F, which JSON text cannot contain")
    _clear_rejects(con)
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _good{tag} AS SELECT line, ROW_NUMBER() OVER () AS _ord FROM read_csv("
            f"{literal(str(source))}, header = false, auto_detect = false, columns = {{'line': 'VARCHAR'}}, "
            f"delim = {literal(delim)}, quote = '', escape = '', store_rejects = true, rejects_table = '_rej', "
            f"rejects_scan = '_rej_scan', encoding = 'utf-8', {_reader_options(s)})"
        )
    except duckdb.Error as exc:
        raise FileRejected(f"unreadable as text lines: {str(exc).splitlines()[0]}") from None
    n_good = _scalar(con, f"SELECT COUNT(*) FROM _good{tag}")
    # every line, blank ones included, is one row of the reader: the lines are exact
    line, join, rejected, n_rejected, exact = _line_source(con, tag, n_good, 1, _JSONL_LINES, True)
    if n_good + n_rejected != s.lines:
        raise _count_mismatch(s, s.lines, n_good + n_rejected)
    declared = [c.name for c in ds.columns]
    struct = literal(json.dumps({n: "VARCHAR" for n in declared}))
    removal = literal(json.dumps({n: None for n in declared}))
    keys = "[" + ", ".join(literal(n) for n in declared) + "]"
    fields = ", ".join(f"s.{ident(n)} AS {ident(n)}" for n in declared)
    n_declared = len(declared)
    # the common case, cheap: exactly the declared keys (no key twice, nothing extra)
    plain = f"(k = {keys} OR (len(k) = {n_declared} AND list_has_all(k, {keys})))"
    # a value that may be an object or array (a brace or bracket past the first byte) is checked
    # exactly, per declared key
    maybe_nested = "(strpos(substr(raw, 2), '{') > 0 OR strpos(raw, '[') > 0)"
    nested = (
        "CASE "
        + " ".join(
            f"WHEN left(t.{ident(n)}, 1) IN ('{{', '[') AND json_type(raw, {literal('$.' + n)}) IN ('OBJECT', 'ARRAY') "
            f"THEN {literal(n)}"
            for n in declared
        )
        + " END"
    )
    sql = f"""
        SELECT {fields},
            CASE WHEN ok AND NOT is_plain AND len(list_filter(k, lambda x: NOT list_contains({keys}, x))) > 0
                 THEN CAST(json_merge_patch(raw, {removal}) AS VARCHAR) END AS _extra,
            CASE WHEN NOT ok THEN raw END AS _raw_record,
            CASE WHEN NOT ok THEN COALESCE(err,
                CASE WHEN NOT obj THEN CASE WHEN json_valid(raw) THEN 'not a JSON object' ELSE 'invalid JSON' END
                     WHEN dup THEN 'a key appears twice in the object'
                     ELSE 'key ' || nested_key || ' holds a JSON object or array (a declared column takes a string, '
                          || 'number, boolean or null)' END) END AS _parse_error,
            _line
        FROM (
            SELECT *, CASE WHEN ok THEN t END AS s
            FROM (
                SELECT *, obj AND NOT dup AND nested_key IS NULL AS ok
                FROM (
                    SELECT *,
                        CASE WHEN NOT obj OR is_plain THEN FALSE ELSE len(k) <> len(list_distinct(k)) END AS dup,
                        CASE WHEN obj AND {maybe_nested} THEN {nested} END AS nested_key
                    FROM (
                        SELECT *, CASE WHEN obj THEN json_transform(raw, {struct}) END AS t,
                               COALESCE({plain}, FALSE) AS is_plain
                        FROM (
                            SELECT *, CASE WHEN obj THEN json_keys(raw) END AS k
                            FROM (
                                SELECT g.line AS raw, {line} AS _line, CAST(NULL AS VARCHAR) AS err,
                                       COALESCE(CASE WHEN json_valid(g.line) THEN json_type(g.line) = 'OBJECT' END, FALSE)
                                         AS obj
                                FROM _good{tag} AS g {join}
                                WHERE g.line IS NOT NULL AND TRIM(g.line, ' ' || chr(9)) <> ''
                                UNION ALL
                                SELECT csv_line, _line, err, FALSE FROM ({rejected})
                            )
                        )
                    )
                )
            )
        )
    """
    if s.blank:
        warn.append(f"{s.blank} blank line(s) skipped")
    if not exact:  # pragma: no cover - every line is a row of the reader
        warn.append("line numbers are record ordinals")
    return sql, s.records, warn


# JSON Lines: every line (blank ones too) is a row of the line reader, so its numbering is exact
_JSONL_LINES = scan.FileScan(sha256="", size=0, head=b"")


@on_storage_errors
def ingest_bronze(uc: UseCase, dataset: str, dates: list[date], run: RunInfo) -> dict[str, Any]:
    """Landing -> Bronze for the landing dates: raw records as received, with ingest metadata.

    Every entry of a landing-date folder gets an outcome (names starting with ``_`` or ``.``
    are skipped by convention). A file whose checksum is already ingested (under any name or
    date) is not ingested again. Each file's physical records are counted independently of the
    reader; a file whose reader returns another number is rejected. One Iceberg commit adds the
    rows of all new files of the landing dates (replacing any rows a killed earlier attempt
    committed for the same files), then the file manifest is committed.
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
    final = ("ingested", "duplicate_file", "empty")
    seen = {(r["source_file"], r["file_checksum"]): r["status"] for r in manifest if r["status"] in final}
    by_checksum = {r["file_checksum"]: r["source_file"] for r in manifest if r["status"] == "ingested"}
    write_dir = iceberg.new_write_dir(bronze)
    staging = _Staging(runtime.path("tmp", "ingest") / uuid.uuid4().hex)
    staged: list[str] = []
    new_rows: list[dict[str, Any]] = []
    try:
        for landing in sorted(dates):
            directory = root / landing.isoformat()
            outcomes: list[FileOutcome] = []
            parts: list[str] = []
            expected_rows = 0
            ingest_time = datetime.now(UTC).replace(tzinfo=None)
            for entry in _landing_entries(directory):
                rel = f"{root.name}/{landing.isoformat()}/{entry.name}"  # <dataset dir>/<landing date>/<file>
                p = Path(entry.path)
                fmt = FORMATS.get(p.suffix.lower(), p.suffix.lower().lstrip(".") or "none")
                problem = _entry_problem(entry)
                if problem:
                    out = FileOutcome(rel, "", fmt, 0, 0, "rejected", reason=problem)
                else:
                    out = _ingest_file(
                        con, ds, p, rel, fmt, seen, by_checksum, staging, f"_{len(parts)}", summary["warnings"]
                    )
                    if out.status == "ingested" and out.new:
                        parts.append(
                            f"SELECT * EXCLUDE (_line), {_meta_sql(rel, out.file_checksum, run, ingest_time, landing)} "
                            f"FROM ({out.select})"
                        )
                        expected_rows += out.records
                        staged.append(out.file_checksum)
                        by_checksum[out.file_checksum] = rel
                if out.status == "rejected":
                    log.error("%s: file %s rejected: %s", dataset, rel, out.reason)
                outcomes.append(out)
                totals[out.status if out.new else "already_seen"] += 1
                summary["files"].append({**out.as_summary(), "landing_date": landing.isoformat()})
            new_rows += [o.as_row(landing, run, ingest_time) for o in outcomes if o.new]
            if parts:
                # one landing date per COPY: the files need no partition folders, Iceberg reads the
                # partition value from their column statistics
                day_dir = write_dir / f"_landing_date={landing.isoformat()}"
                day_dir.mkdir()
                written = iceberg.write_files(
                    con, day_dir, " UNION ALL ".join(parts), partition_by=None, target_file_size=target_file_size(uc)
                )
                if written != expected_rows:
                    raise LakehouseError(
                        f"{dataset} {landing}: wrote {written} Bronze row(s) for files holding {expected_rows} "
                        "record(s); nothing was committed"
                    )
            for i in range(len(parts) + 1):  # free the staged files of this landing date
                for t in ("_good", "_lines", "_rejects"):
                    con.execute(f"DROP TABLE IF EXISTS {t}_{i}")
    finally:
        shutil.rmtree(staging.root, ignore_errors=True)
    # One commit for all landing dates: it replaces whatever rows a killed earlier attempt
    # committed for the same files (a checksum is unique to its content), then the manifest.
    props = run.snapshot_properties(landing_dates=_iso(dates), step="bronze")
    replace = iceberg.in_filter("_file_checksum", staged) if staged else None
    iceberg.commit_files(bronze, write_dir, replace=replace, snapshot_properties=props)
    if new_rows:
        _write_manifest(con, files_tbl, new_rows, props, uc)
    bronze.refresh()
    summary["file_status"] = dict(totals)
    summary["rows_landed"] = sum(f["records"] for f in summary["files"] if f["status"] == "ingested" and f["new"])
    summary["rejected_files"] = [f for f in summary["files"] if f["status"] == "rejected"]
    summary["bronze_snapshot_id"] = iceberg.snapshot_id(bronze)
    return summary


def _landing_entries(directory: Path) -> list[os.DirEntry[str]]:
    """Entries of a landing-date folder in name order, without the ``_``/``.`` ones."""
    try:
        with os.scandir(directory) as it:
            entries = [e for e in it if not e.name.startswith(("_", "."))]
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise LakehouseError(f"landing path {directory} is a file, not a folder") from None
    return sorted(entries, key=lambda e: e.name)


def _ingest_file(
    con: duckdb.DuckDBPyConnection,
    ds: Dataset,
    p: Path,
    rel: str,
    fmt: str,
    seen: dict[tuple[str, str], str],
    by_checksum: dict[str, str],
    staging: _Staging,
    tag: str,
    warnings_out: list[str],
) -> FileOutcome:
    """The outcome of one regular landed file; for a new ingested file, ``select`` holds the
    SELECT of its Bronze rows (staged in DuckDB as ``_good<tag>``)."""
    try:
        s = _scan(p, fmt, ds.landing.csv_delimiter)
    except OSError as exc:
        return FileOutcome(rel, "", fmt, 0, 0, "rejected", reason=f"cannot read the file: {exc.strerror or exc}")
    out = FileOutcome(rel, s.sha256, fmt, s.size, 0, "ingested", blank_lines=s.blank)
    if (rel, s.sha256) in seen:
        out.status = "already_ingested" if seen[rel, s.sha256] == "ingested" else seen[rel, s.sha256]
        out.new = False
        return out
    if s.sha256 in by_checksum:
        out.status, out.duplicate_of = "duplicate_file", by_checksum[s.sha256]
        return out
    if fmt not in ds.landing.formats:
        out.status, out.reason = "rejected", f"format {fmt!r} is not one of {ds.landing.formats}"
        return out
    if s.size == 0:
        out.status, out.reason = "empty", "zero-byte file"
        return out
    problem = _encoding_problem(s)
    if problem:
        out.status, out.reason = "rejected", problem
        return out
    reader = _read_csv_file if fmt == "csv" else _read_jsonl_file
    try:
        source = staging.path_for(p, s, fmt, ds.landing.csv_delimiter)
        select, records, warns = reader(con, ds, p, source, s, tag)
    except FileRejected as exc:
        out.status, out.reason = "rejected", str(exc)
        return out
    except OSError as exc:
        out.status, out.reason = "rejected", f"cannot read the file: {exc.strerror or exc}"
        return out
    for w in warns:
        warnings_out.append(f"{rel}: {w}")
    if not s.only_lf:
        warnings_out.append(f"{rel}: line ends {s.endings()} read as line ends")
    if records == 0:
        out.status, out.reason = "empty", "no records"
    else:
        out.records, out.select = records, select
    return out


def _write_manifest(
    con: duckdb.DuckDBPyConnection, files_tbl: Table, rows: list[dict[str, Any]], props: dict[str, str], uc: UseCase
) -> None:
    con.register("_manifest_new", pa.Table.from_pylist(rows, schema=FILES_SCHEMA))
    key = _or_all(
        And(
            EqualTo("landing_date", r["landing_date"].isoformat()),
            And(EqualTo("source_file", r["source_file"]), EqualTo("file_checksum", r["file_checksum"])),
        )
        for r in rows
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


def _or_all(exprs: Iterable[BooleanExpression]) -> BooleanExpression:
    """``e1 OR e2 OR ...`` as a balanced tree: its depth grows with log2 of the count, so
    thousands of files in one landing date stay far below the recursion limit of pyiceberg's
    expression visitors (a left-deep chain of 3,000 did not)."""
    level = list(exprs)
    if not level:
        return AlwaysTrue()
    while len(level) > 1:
        pairs = [Or(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = pairs + ([level[-1]] if len(level) % 2 else [])
    return level[0]


def _manifest_rows(con: duckdb.DuckDBPyConnection, files_tbl: Table) -> list[dict[str, Any]]:
    files_tbl.refresh()
    iceberg.register_view(con, "_manifest", files_tbl)
    cur = con.execute("SELECT source_file, file_checksum, status, landing_date FROM _manifest")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


class SetAsideError(PermanentError):
    """A landed file that cannot be set aside (not found, already ingested, a name clash)."""


@on_storage_errors
def set_aside(uc: UseCase, source_file: str, reason: str | None = None) -> dict[str, Any]:
    """Set a landed file aside: rename ``<dataset dir>/<date>/<name>`` to ``_<name>`` (files
    named ``_*`` are not read) and record it in the file manifest (status ``set_aside``, who and
    why), so the next run of its landing date no longer fails on it. A file already ingested is
    refused: its rows are in Bronze, renaming the file would not remove them."""
    parts = source_file.strip("/").split("/")
    datasets = {landing_root(uc, d).name: name for name, d in uc.datasets.items()}
    if len(parts) != 3 or parts[0] not in datasets:
        raise SetAsideError(
            f"{source_file!r} is not <data set folder>/<YYYY-MM-DD>/<file> of {uc.name} "
            f"(data set folders: {', '.join(sorted(datasets))})"
        )
    folder, day, name = parts
    try:
        landing = date.fromisoformat(day)
    except ValueError:
        raise SetAsideError(f"{source_file!r}: {day!r} is not a landing date (YYYY-MM-DD)") from None
    if name.startswith(("_", ".")) or name in ("", ".."):
        raise SetAsideError(f"{source_file!r}: names starting with '_' or '.' are not read anyway")
    dataset = datasets[folder]
    ds = uc.datasets[dataset]
    path = landing_root(uc, ds) / day / name
    if not os.path.lexists(path):
        raise SetAsideError(f"{source_file}: no such file under {landing_root(uc, ds)}")
    target = path.with_name("_" + name)
    if os.path.lexists(target):
        raise SetAsideError(f"{source_file}: {target.name} exists already; move one of them yourself")
    con = connect()
    files_tbl = _table(uc, naming.table_name(dataset, naming.BRONZE_FILES))
    checksum, size, fmt = "", 0, FORMATS.get(path.suffix.lower(), path.suffix.lower().lstrip(".") or "none")
    if path.is_file() and not path.is_symlink():
        s = _scan(path, "", ds.landing.csv_delimiter)
        checksum, size = s.sha256, s.size
    if files_tbl is not None and checksum:
        for r in _manifest_rows(con, files_tbl):
            if r["file_checksum"] == checksum and r["status"] == "ingested":
                raise SetAsideError(
                    f"{source_file}: already ingested (as {r['source_file']}); its rows are in Bronze, setting the "
                    "file aside would not remove them"
                )
    os.rename(path, target)
    who = os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"
    why = f"set aside by {who}" + (f": {reason}" if reason else "") + f"; renamed to {target.name}"
    run = RunInfo.for_usecase(uc, run_id=f"set_aside__{datetime.now(UTC):%Y%m%dT%H%M%S}")
    if files_tbl is None:
        con.register("_files_schema", FILES_SCHEMA.empty_table())
        files_tbl = _ensure(
            uc, con, naming.table_name(dataset, naming.BRONZE_FILES), "SELECT * FROM _files_schema", None
        )
    out = FileOutcome(source_file, checksum, fmt, size, 0, "set_aside", reason=why)
    row = out.as_row(landing, run, datetime.now(UTC).replace(tzinfo=None))
    _write_manifest(con, files_tbl, [row], run.snapshot_properties(step="set_aside", landing_dates=[day]), uc)
    return {
        "dataset": dataset,
        "source_file": source_file,
        "renamed_to": str(target),
        "landing_date": day,
        "reason": why,
    }


# ------------------------------------------------------------------ bronze -> silver


@on_storage_errors
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


def sandbox(con: duckdb.DuckDBPyConnection, directories: Iterable[Path]) -> None:
    """Lock a connection down before it runs a use case's SQL: files only under
    ``directories`` (and the spill directory), no network, no extension loading or installing,
    and no setting can be changed back. ``read_text('/proc/self/environ')``, ``glob('/etc/*')``,
    ``read_csv('https://...')`` then fail with a permission error."""
    dirs = sorted({str(Path(d)).rstrip("/") + "/" for d in [*directories, runtime.path("tmp", "duckdb")]})
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute(f"SET allowed_directories = [{', '.join(literal(d) for d in dirs)}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


@on_storage_errors
def build_gold(uc: UseCase, gold: str, touched: dict[str, list[str]], run: RunInfo) -> dict[str, Any]:
    """Silver -> Gold for the event dates a run touched (plus those their windows reach).

    The Gold SQL (checked first: one SELECT over its inputs, see
    :func:`sqlgen.parse_gold_sql`) runs on a sandboxed connection (:func:`sandbox`) over views
    of its input Silver tables restricted to the needed history; it can read those tables'
    files and write the Gold table's, nothing else. The recomputed partitions replace the old
    ones in one commit.
    """
    started = time.perf_counter()
    g = uc.gold[gold]
    dates = {date.fromisoformat(d) for ds in gold_driving_inputs(uc, gold) for d in touched.get(ds, [])}
    rng = gold_date_range(dates, g.lookback_days)
    if rng is None:
        return {"table": gold, "rows_written": 0, "recomputed": None, "seconds": 0.0}
    path = uc.gold_sql_path(gold)
    try:
        user_sql = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise sqlgen.GoldSqlError(f"gold {gold}: cannot read {path}: {exc}") from None
    try:
        _, body = sqlgen.parse_gold_sql(user_sql, list(g.inputs))
        cols = sqlgen.output_columns(user_sql)
    except (sqlgen.GoldSqlError, ValueError) as exc:
        raise sqlgen.GoldSqlError(f"gold {gold}: {path.name} {exc}") from None
    for need in (*g.primary_key, g.event_time):
        if need not in cols:
            raise sqlgen.GoldSqlError(f"gold {gold}: the SQL does not output column {need!r} (outputs {cols})")
    lo, hi = rng
    history_lo = shift(lo, -g.lookback_days)
    inputs = {}
    for inp in g.inputs:
        silver = _table(uc, naming.table_name(inp, naming.SILVER))
        if silver is None:
            raise LakehouseError(f"gold {gold}: input {inp} has no Silver table yet")
        inputs[inp] = silver
    source_snapshots = {naming.table_name(inp, naming.SILVER): iceberg.snapshot_id(t) for inp, t in inputs.items()}
    window = And(
        GreaterThanOrEqual("event_date", history_lo.isoformat()), LessThanOrEqual("event_date", hi.isoformat())
    )

    def sandboxed(writable: list[Path]) -> duckdb.DuckDBPyConnection:
        con = connect()
        for inp, t in inputs.items():
            # reference data (unpartitioned) is read whole; event data within the window
            row_filter: BooleanExpression = AlwaysTrue() if uc.datasets[inp].partition_column is None else window
            iceberg.register_view(con, inp, t, row_filter)
        sandbox(con, [*(iceberg.data_dir(t) for t in inputs.values()), *writable])
        return con

    if "event_date" not in cols:
        body = f"SELECT *, CAST({ident(g.event_time)} AS DATE) AS event_date FROM (\n{body}\n)"
    sql = (
        f"SELECT * FROM (\n{body}\n) WHERE event_date BETWEEN DATE {literal(lo.isoformat())} "
        f"AND DATE {literal(hi.isoformat())}"
    )
    table = _table(uc, gold)
    if table is None:  # its location is known once it exists: learn its schema read-only first
        probe = sandboxed([])
        table = _ensure(uc, probe, gold, sql, "event_date")
        probe.close()
    con = sandboxed([iceberg.data_dir(table)])
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
    con.close()
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


def rejected_file_advice(uc: UseCase) -> Any:
    """What to do about a rejected file locally: the command that reruns its landing date, and
    the one that sets it aside."""

    def advice(source: str, day: str) -> str:
        return (
            f"Fix the file and rerun: mlblueprints lakehouse {uc.name} {day}; or set it aside: "
            f"mlblueprints set-aside {uc.name} {source} (then rerun)"
        )

    return advice


@on_storage_errors
def reconcile(
    uc: UseCase, silver_summaries: list[dict[str, Any]], ingest_summaries: list[dict[str, Any]]
) -> dict[str, Any]:
    """Check, per data set and landing date touched: rows landed = Silver + quarantined + duplicates.

    Counts are read back from the committed tables (not from the steps' own bookkeeping); see
    :mod:`mlblueprints.lakehouse.accounting`.
    """
    con = connect()
    counts: dict[str, dict[str, dict[str, int]]] = {}
    file_counts: dict[str, list[tuple[str, str, int, int]]] = {}
    for s in silver_summaries:
        dataset = s["dataset"]
        landing = accounting.landing_dates_to_check(s)
        flt = _dates_filter("_landing_date", [date.fromisoformat(d) for d in landing])
        lst = _date_list(date.fromisoformat(d) for d in landing)
        by_date: dict[str, dict[str, int]] = {d: {} for d in landing}
        per_file: dict[str, int] = {}
        for kind in accounting.KINDS:
            table = _table(uc, naming.table_name(dataset, kind))
            if table is None:
                continue
            # Bronze and quarantine are partitioned by landing date; Silver and duplicates are not
            part = flt if kind in (naming.BRONZE, naming.QUARANTINE) else AlwaysTrue()
            iceberg.register_view(con, f"_r_{kind}", table, part)
            if kind == naming.BRONZE:
                sql = f"SELECT _landing_date, _file_checksum, COUNT(*) FROM _r_{kind} WHERE _landing_date IN ({lst}) GROUP BY 1, 2"
                for d, checksum, n in _rows(con, sql):
                    by_date[d.isoformat()][kind] = by_date[d.isoformat()].get(kind, 0) + n
                    per_file[checksum] = per_file.get(checksum, 0) + n
                continue
            sql = f"SELECT _landing_date, COUNT(*) FROM _r_{kind} WHERE _landing_date IN ({lst}) GROUP BY 1"
            for d, n in _rows(con, sql):
                by_date[d.isoformat()][kind] = n
        counts[dataset] = by_date
        # every file the manifest records as ingested on these dates: its records vs its Bronze rows
        files_tbl = _table(uc, naming.table_name(dataset, naming.BRONZE_FILES))
        if files_tbl is not None:
            iceberg.register_view(con, "_r_files", files_tbl)
            rows = _rows(
                con,
                f"SELECT landing_date, source_file, file_checksum, records FROM _r_files "
                f"WHERE status = 'ingested' AND landing_date IN ({lst}) ORDER BY 1, 2",
            )
            file_counts[dataset] = [(d.isoformat(), src, int(n), per_file.get(cs, 0)) for d, src, cs, n in rows]
    return accounting.reconcile_counts(
        uc,
        counts,
        ingest_summaries,
        file_counts,
        advice=rejected_file_advice(uc),
    )


# ------------------------------------------------------------------ compaction


@on_storage_errors
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
