"""The lakehouse on the aws target: the same transforms as SQL statements run by Athena.

Tables are Iceberg tables in the Glue Data Catalog (created through the Glue API with their
schema and partition spec), data in S3 encrypted with the use case's KMS key. The Silver and
Gold transforms are the DuckDB SQL of the local target, transpiled to Trino by sqlglot and
wrapped in ``MERGE`` statements, which Athena commits atomically and which are idempotent
(a rerun merges the same rows again and changes nothing).

:class:`AwsLakehouse` builds the statements of each step and interprets their results; it does
not run them. Each step method returns a :class:`~mlblueprints.core.service.ServiceCall` of
Athena statements, which the orchestrator runs (in a DAG: the Amazon provider's operator, as a
deferrable task of its own that stops its query when killed), then resumes the matching
``resume_*`` method with the query execution ids. Its clients come from the injected
:class:`~mlblueprints.aws.session.AwsRuntime`.

Lineage: Athena cannot attach properties to the Iceberg snapshots it commits, so every step that
commits writes a lineage record (the run, the code, the config, the statements and the table's
Glue ``metadata_location`` after the commit) to ``<prefix>/lineage/<table>/``.

Differences from the local target (Athena exposes less of a raw file than DuckDB):
- CSV is read by OpenCSVSerde, by position in schema order: a row with too few or too many
  fields is padded or truncated, so it is quarantined by its missing values rather than as
  ``malformed_record``; unexpected columns are not kept in ``_extra``.
- ``_line_number`` is a deterministic ordinal of the record within its file, not its line.
- A file's checksum is S3's full-object checksum (CRC64NVME or SHA256) or, failing both, its ETag.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.aws import requests as req
from mlblueprints.aws import s3io
from mlblueprints.aws.session import AwsRuntime
from mlblueprints.config import Dataset, UseCase
from mlblueprints.core import service
from mlblueprints.core.naming import safe
from mlblueprints.core.service import ServiceCall, Statement
from mlblueprints.errors import PermanentError
from mlblueprints.lakehouse import accounting, naming, sqlgen
from mlblueprints.lakehouse.naming import gold_date_range
from mlblueprints.lakehouse.sqlgen import LINEAGE, ident, literal
from mlblueprints.lineage import RunInfo

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
CAPABILITY = "lakehouse"


# ---------------------------------------------------------------- schemas

BRONZE_META_TYPES = [
    ("_extra", "string"),
    ("_raw_record", "string"),
    ("_parse_error", "string"),
    ("_source_file", "string"),
    ("_file_checksum", "string"),
    ("_line_number", "bigint"),
    ("_ingest_run_id", "string"),
    ("_ingest_time", "timestamp"),
    ("_landing_date", "date"),
]
LINEAGE_TYPES = [(n, t) for n, t in BRONZE_META_TYPES if n in LINEAGE]


def table_columns(uc: UseCase, name: str) -> tuple[list[tuple[str, str]], str | None]:
    """(columns with config types, partition column) of a lakehouse table."""
    for ds_name, ds in uc.datasets.items():
        typed = [(c.name, c.type) for c in ds.columns]
        text = [(c.name, "string") for c in ds.columns]
        if name == naming.table_name(ds_name, naming.BRONZE):
            return text + BRONZE_META_TYPES, "_landing_date"
        if name == naming.table_name(ds_name, naming.SILVER):
            return typed + [("event_date", "date")] + LINEAGE_TYPES, ds.partition_column
        if name == naming.table_name(ds_name, naming.DUPLICATES):
            extra = [("_duplicate_kind", "string"), ("_kept_source_file", "string"), ("_kept_line_number", "bigint")]
            return typed + [("event_date", "date")] + LINEAGE_TYPES + extra, ds.partition_column
        if name == naming.table_name(ds_name, naming.QUARANTINE):
            reasons = [("_reason_code", "string"), ("_reason_column", "string"), ("_reason_detail", "string")]
            return text + BRONZE_META_TYPES[:3] + LINEAGE_TYPES + reasons, "_landing_date"
    if name in uc.gold:
        return gold_columns(uc, name), "event_date"
    raise KeyError(name)


def gold_columns(uc: UseCase, gold: str) -> list[tuple[str, str]]:
    """Column types of a Gold table, inferred by DuckDB from its SQL over empty typed inputs."""
    import duckdb

    con = duckdb.connect()
    for inp in uc.gold[gold].inputs:
        ds = uc.datasets[inp]
        cols = [f"CAST(NULL AS {sqlgen.sql_type(c.type)}) AS {ident(c.name)}" for c in ds.columns]
        cols.append("CAST(NULL AS DATE) AS event_date")
        con.execute(f"CREATE TEMP VIEW {ident(inp)} AS SELECT {', '.join(cols)} WHERE FALSE")
    rel = con.sql(uc.gold_sql_path(gold).read_text().strip().rstrip(";"))
    out = []
    for name, dtype in zip(rel.columns, rel.types):
        t = str(dtype).lower()
        t = {
            "varchar": "string",
            "integer": "int",
            "bigint": "bigint",
            "double": "double",
            "float": "double",
            "date": "date",
            "timestamp": "timestamp",
            "boolean": "boolean",
            "hugeint": "bigint",
        }.get(t, t)
        out.append((name, t))
    if "event_date" not in rel.columns:
        out.append(("event_date", "date"))
    return out


# ---------------------------------------------------------------- catalog


def ensure_tables(uc: UseCase, rt: AwsRuntime) -> dict[str, Any]:
    """Create the Glue database, the landing tables and the Iceberg tables that are missing.

    Run once per DAG run, by its ``tables`` step, before any step writes (so parallel ingest
    tasks never race to create the same table). Idempotent: the existing tables are listed with
    one paginated GetTables, only the missing ones are created, and a table or database another
    writer created in between (``AlreadyExistsException``) counts as existing.

    boto3 by hand: the Amazon provider has no operator or hook method that creates a Glue
    database or table (``GlueCatalogHook`` reads tables and creates partitions only), and an
    Iceberg table is created with ``OpenTableFormatInput``, which nothing in the provider builds.
    """
    aws = uc.aws_settings
    glue = rt.client("glue")
    created: list[str] = []
    try:
        glue.get_database(Name=aws.glue_database)
    except glue.exceptions.EntityNotFoundException:
        try:
            glue.create_database(DatabaseInput=req.glue_database_input(aws, f"mlblueprints use case {uc.name}"))
            created.append(aws.glue_database)
        except glue.exceptions.AlreadyExistsException:
            log.info("glue database %s was created concurrently", aws.glue_database)
    existing = {
        t["Name"]
        for page in glue.get_paginator("get_tables").paginate(DatabaseName=aws.glue_database)
        for t in page.get("TableList", [])
    }
    size = uc.lakehouse.target_file_size_mb * 1024 * 1024
    wanted: list[tuple[str, dict[str, Any]]] = []
    iceberg_tables = [
        naming.table_name(ds_name, kind)
        for ds_name in uc.datasets
        for kind in (naming.BRONZE, naming.SILVER, naming.QUARANTINE, naming.DUPLICATES)
    ] + list(uc.gold)
    for name in iceberg_tables:
        cols, part = table_columns(uc, name)
        wanted.append((name, req.glue_iceberg_table_input(aws, name, cols, part, size, f"{uc.name} lakehouse")))
    for ds_name, ds in uc.datasets.items():
        for fmt in ds.landing.formats:
            name = landing_table(ds_name, fmt)
            cols = [c.name for c in ds.columns]
            prefix = landing_prefix(uc, ds)
            wanted.append((name, req.glue_landing_table_input(aws, name, prefix, fmt, cols, ds.landing.csv_delimiter)))
    for name, request in wanted:
        if name in existing:
            continue
        try:
            glue.create_table(**request)
            created.append(name)
        except glue.exceptions.AlreadyExistsException:
            log.info("glue table %s.%s was created concurrently", aws.glue_database, name)
    return {"database": aws.glue_database, "created": created, "tables": len(wanted)}


def landing_table(dataset: str, fmt: str) -> str:
    return f"{dataset}_landing_{fmt}"


def landing_prefix(uc: UseCase, ds: Dataset) -> str:
    p = ds.landing.path
    return p if p.startswith("s3://") else uc.aws_settings.s3_uri(p)


def source_root(uc: UseCase, ds: Dataset) -> str:
    """What ``_source_file`` leaves out of a landed file's URI: ``s3://<bucket>/<parent of the
    landing prefix>/`` (so ``_source_file`` is ``<dataset dir>/<landing date>/<file>``)."""
    bucket, prefix = req.split_s3_uri(landing_prefix(uc, ds))
    parent = prefix.rstrip("/").rpartition("/")[0]
    return f"s3://{bucket}/{parent}/" if parent else f"s3://{bucket}/"


def fq(uc: UseCase, table: str) -> str:
    return f"{ident(uc.aws_settings.glue_database)}.{ident(table)}"


def ddl_name(uc: UseCase, table: str) -> str:
    """``database.table`` as Athena's maintenance statements (OPTIMIZE, VACUUM, ALTER TABLE) take
    it: unquoted, since VACUUM does not accept double quotes (backticks for a name starting with
    ``_``, as VACUUM needs); the names are checked to need no quoting."""
    db = uc.aws_settings.glue_database
    for part in (db, table):
        if not re.fullmatch(r"[a-z0-9_]+", part):
            raise ValueError(f"{part!r} cannot be named unquoted in Athena DDL")
    return f"{db}.`{table}`" if table.startswith("_") else f"{db}.{table}"


def _date_list(dates: Iterable[date] | Iterable[str]) -> str:
    return ", ".join(f"DATE {literal(d if isinstance(d, str) else d.isoformat())}" for d in sorted(set(dates)))


def date_chunks(dates: Iterable[date] | Iterable[str], size: int) -> list[list[date]]:
    """Distinct dates, sorted, in chunks of at most ``size``."""
    days = sorted({d if isinstance(d, date) else date.fromisoformat(d) for d in dates})
    return [days[i : i + size] for i in range(0, len(days), size)]


def date_windows(lo: date, hi: date, size: int) -> list[tuple[date, date]]:
    """[lo, hi] as consecutive windows of at most ``size`` days."""
    out = []
    while lo <= hi:
        end = min(hi, lo + timedelta(days=size - 1))
        out.append((lo, end))
        lo = end + timedelta(days=1)
    return out


def chunk_name(base: str, k: int, n: int) -> str:
    return base if n == 1 else f"{base}__{k:03d}"


def _trino(stmt: Statement) -> Statement:
    """Transpile a DuckDB statement (and its body) to Trino."""
    return dataclasses.replace(
        stmt, sql=sqlgen.to_trino(stmt.sql), body=sqlgen.to_trino(stmt.body) if stmt.body else None
    )


def unload_statement(name: str, body: str, target: str) -> Statement:
    """UNLOAD a SELECT (Trino) to an S3 prefix as ZSTD Parquet."""
    return Statement(
        name, f"UNLOAD ({body}) TO {literal(target)} WITH (format = 'PARQUET', compression = 'ZSTD')", "unload", body
    )


# ---------------------------------------------------------------- chunks planned from the data

# A write may touch at most ``aws.athena_max_partitions_per_write`` partitions. Where the
# partitions depend on the data (the event dates of the rows a Silver run writes, the old dates
# of keys whose event date changed), a plan query returns them in chunks - rows (kind, chunk,
# dates) - and each chunked statement runs once per chunk of its kind (``Statement.each``). A
# NULL partition value takes part as NULL_DATE.
NULL_DATE = "0001-01-01"
PLACEHOLDER = service.placeholder("dates")


def part_value(column: str, alias: str = "") -> str:
    return f"COALESCE({alias}{ident(column)}, DATE {literal(NULL_DATE)})"


def in_chunk(column: str, alias: str = "") -> str:
    """The filter a chunked statement restricts its rows (or its target) with."""
    return f"{part_value(column, alias)} IN ({PLACEHOLDER})"


def plan_sql(writes: str, size: int) -> str:
    """The chunk plan (Trino) of ``writes`` (Trino, rows ``(kind, d)``): per kind, its distinct
    dates in chunks of at most ``size``, each as the SQL list the statement's placeholder takes."""
    rank = "dense_rank() OVER (PARTITION BY kind ORDER BY d) - 1"
    quote = "'"
    as_literal = f"concat('DATE {quote * 2}', CAST(d AS varchar), '{quote * 2}')"
    return (
        f"SELECT kind, chunk, array_join(array_agg({as_literal} ORDER BY d), ', ') AS dates "
        f"FROM (SELECT kind, d, CAST(floor(CAST({rank} AS double) / {int(size)}) AS bigint) AS chunk "
        f"FROM ({writes}) AS w WHERE d IS NOT NULL) AS c GROUP BY kind, chunk ORDER BY kind, chunk"
    )


def plan_dates(rows: list[dict[str, Any]], kind: str) -> list[str]:
    """The dates a plan gives one kind of chunked statement (ISO text; NULL_DATE for NULL)."""
    return sorted(
        d
        for r in rows
        if r.get("kind") == kind
        for d in re.findall(r"DATE '(\d{4}-\d{2}-\d{2})'", str(r.get("dates") or ""))
    )


# ---------------------------------------------------------------- landing -> bronze


def _checksum(head: dict[str, Any]) -> str:
    for key in ("ChecksumCRC64NVME", "ChecksumSHA256"):
        if head.get(key) and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
            return f"{key.removeprefix('Checksum').lower()}:{head[key]}"
    return "etag:" + head["ETag"].strip('"')


def _manifest_key(uc: UseCase, dataset: str, landing: date | None = None) -> str:
    _, key = req.split_s3_uri(uc.aws_settings.s3_uri("lakehouse", dataset, "_manifest"))
    return key + "/" + (f"{landing.isoformat()}.json" if landing else "")


def read_manifests(uc: UseCase, dataset: str, s3: Any) -> list[dict[str, Any]]:
    aws = uc.aws_settings
    rows = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=aws.bucket, Prefix=_manifest_key(uc, dataset)):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=aws.bucket, Key=obj["Key"])["Body"].read()
            rows += json.loads(body)["files"]
    return rows


def bronze_insert_sql(
    uc: UseCase, dataset: str, fmt: str, landing: date, files: list[dict[str, Any]], run: RunInfo, ingest_time: datetime
) -> tuple[str, str]:
    """INSERT the records of the given landed files into Bronze (Trino SQL); returns the
    statement and the SELECT inside it.

    Per file the statement carries its URI twice (the ``"$path"`` filter Athena prunes files by,
    and the branch that maps it to the file's checksum) and its checksum: about 200 bytes, so
    :func:`bronze_statements` splits a landing date's files into statements that stay within
    the statement byte budget. ``_source_file`` is cut from ``"$path"`` (the key below the
    landing root's parent), not spelt out per file.
    """
    ds = uc.datasets[dataset]
    paths = ", ".join(literal(f["uri"]) for f in files)
    checksum = (
        'CASE "$path" '
        + " ".join(f"WHEN {literal(f['uri'])} THEN {literal(f['file_checksum'])}" for f in files)
        + " END"
    )
    rel = f'SUBSTR("$path", {len(source_root(uc, ds)) + 1})'
    meta = (
        f"{rel} AS _source_file, {checksum} AS _file_checksum, "
        f"{literal(run.run_id)} AS _ingest_run_id, "
        f"TIMESTAMP {literal(ingest_time.strftime('%Y-%m-%d %H:%M:%S.%f'))} AS _ingest_time, "
        f"DATE {literal(landing.isoformat())} AS _landing_date"
    )
    names = [c.name for c in ds.columns]
    if fmt == "csv":
        order = ", ".join(ident(n) for n in names)
        # OpenCSVSerde reads an empty field as '': NULL, as the local target's CSV reader gives it
        fields = ", ".join(f"NULLIF({ident(n)}, '') AS {ident(n)}" for n in names)
        select = (
            f"SELECT {fields}, CAST(NULL AS VARCHAR) AS _extra, "
            "CAST(NULL AS VARCHAR) AS _raw_record, CAST(NULL AS VARCHAR) AS _parse_error, "
            f'{meta}, ROW_NUMBER() OVER (PARTITION BY "$path" ORDER BY {order}) AS _line_number '
            f"FROM {fq(uc, landing_table(dataset, 'csv'))} "
            f'WHERE landing_date = {literal(landing.isoformat())} AND "$path" IN ({paths})'
        )
    else:
        ok = "(TRY(JSON_PARSE(line)) IS NOT NULL AND JSON_FORMAT(TRY(JSON_PARSE(line))) LIKE '{%')"
        fields = ", ".join(
            f"CASE WHEN {ok} THEN JSON_EXTRACT_SCALAR(line, {literal('$[' + json.dumps(n) + ']')}) END AS {ident(n)}"
            for n in names
        )
        select = (
            f"SELECT {fields}, CAST(NULL AS VARCHAR) AS _extra, CASE WHEN NOT {ok} THEN line END AS _raw_record, "
            f"CASE WHEN NOT {ok} THEN 'invalid JSON or not an object' END AS _parse_error, {meta}, "
            'ROW_NUMBER() OVER (PARTITION BY "$path" ORDER BY line) AS _line_number '
            f"FROM {fq(uc, landing_table(dataset, 'jsonl'))} "
            f'WHERE landing_date = {literal(landing.isoformat())} AND "$path" IN ({paths}) '
            "AND TRIM(line) <> ''"
        )
    cols = ", ".join(ident(n) for n in names + [m for m, _ in BRONZE_META_TYPES])
    body = f"SELECT {cols} FROM ({select})"
    return f"INSERT INTO {fq(uc, naming.table_name(dataset, naming.BRONZE))} ({cols}) {body}", body


def bronze_delete_sql(uc: UseCase, dataset: str, landing: date, files: list[dict[str, Any]]) -> str:
    """DELETE what an earlier, killed attempt left of these files in the landing date's partition."""
    checks = ", ".join(literal(f["file_checksum"]) for f in files)
    table = fq(uc, naming.table_name(dataset, naming.BRONZE))
    return f"DELETE FROM {table} WHERE _landing_date = DATE {literal(landing.isoformat())} AND _file_checksum IN ({checks})"


def bronze_statements(
    uc: UseCase, dataset: str, fmt: str, landing: date, files: list[dict[str, Any]], run: RunInfo, ingest_time: datetime
) -> list[Statement]:
    """The Bronze writes of one landing date's new files of one format: per chunk of files, the
    DELETE of a killed attempt's rows, then the INSERT. A chunk holds at most
    ``aws.athena_max_files_per_statement`` files and each of its statements at most
    ``aws.athena_max_statement_bytes`` bytes (Athena refuses a query over 262,144 bytes);
    every statement writes the one partition of its landing date."""
    aws = uc.aws_settings
    budget, most = aws.athena_max_statement_bytes, aws.athena_max_files_per_statement

    def size(chunk: list[dict[str, Any]]) -> int:
        sql, _ = bronze_insert_sql(uc, dataset, fmt, landing, chunk, run, ingest_time)
        return max(len(sql.encode()), len(bronze_delete_sql(uc, dataset, landing, chunk).encode()))

    base = size(files[:1])
    chunks: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    used = base
    for f in files:
        grow = 2 * len(literal(f["uri"]).encode()) + len(literal(f["file_checksum"]).encode()) + 16
        if current and (len(current) >= most or used + grow > budget):
            chunks.append(current)
            current, used = [], base
        current.append(f)
        used += grow
    if current:
        chunks.append(current)
    checked: list[list[dict[str, Any]]] = []
    while chunks:  # the estimate above keeps every chunk within the budget; this makes it certain
        chunk = chunks.pop(0)
        if size(chunk) <= budget:
            checked.append(chunk)
        elif len(chunk) == 1:
            raise ValueError(
                f"{dataset}: the landed file {chunk[0]['uri']} alone makes a statement over {budget} bytes"
            )
        else:
            chunks[:0] = [chunk[: len(chunk) // 2], chunk[len(chunk) // 2 :]]
    out = []
    for k, chunk in enumerate(checked):
        sql, body = bronze_insert_sql(uc, dataset, fmt, landing, chunk, run, ingest_time)
        name = f"{fmt}_{landing:%Y%m%d}"
        out.append(
            Statement(
                chunk_name(f"bronze_delete_{name}", k, len(checked)),
                bronze_delete_sql(uc, dataset, landing, chunk),
                "delete",
            )
        )
        out.append(Statement(chunk_name(f"bronze_insert_{name}", k, len(checked)), sql, "insert", body))
    return out


def merge_sql(
    target: str, source: str, on: list[str], cols: list[str], update: bool, target_filter: str | None = None
) -> str:
    """MERGE ``source`` into ``target`` keyed on ``on``: insert what is new; with ``update``,
    replace a row whose record identity (file checksum, line) differs. ``target_filter`` (on
    target columns only) restricts which target rows may match: the partitions of a chunk."""
    cond = " AND ".join(f"t.{ident(c)} = s.{ident(c)}" for c in on)
    if target_filter:
        cond += f" AND {target_filter}"
    ins = ", ".join(ident(c) for c in cols)
    vals = ", ".join(f"s.{ident(c)}" for c in cols)
    sql = f"MERGE INTO {target} AS t USING {source} AS s ON {cond} "
    if update:
        sets = ", ".join(f"{ident(c)} = s.{ident(c)}" for c in cols)
        sql += f"WHEN MATCHED AND ({_identity_differs()}) THEN UPDATE SET {sets} "
    return sql + f"WHEN NOT MATCHED THEN INSERT ({ins}) VALUES ({vals})"


def _identity_differs(t: str = "t", s: str = "s") -> str:
    return f"{t}._file_checksum <> {s}._file_checksum OR {t}._line_number <> {s}._line_number"


def silver_statements(uc: UseCase, dataset: str, dates: list[date]) -> list[Statement]:
    """The statements of Bronze -> Silver: MERGEs into quarantine, duplicates and Silver, then
    the statistics the step reports.

    Every MERGE writes at most ``aws.athena_max_partitions_per_write`` partitions:

    * quarantine (partitioned by landing date): one MERGE per chunk of the run's landing dates;
    * duplicates and Silver (partitioned by event date, when the data set is): the event dates
      are known only from the data, so ``silver_plan`` lists them in chunks and the MERGEs run
      once per chunk. A key whose newest version moved to another event date would make its
      Silver MERGE touch the old partition too: those old rows are deleted first, by
      ``silver_movers`` (chunked by the old dates, after the duplicates MERGE has kept them as
      duplicates), so each Silver MERGE touches only the partitions of its chunk.

    A run within the limit is one MERGE per table, one commit each, as before; a larger one is
    several commits per table (see docs/lakehouse.md on what a reader sees in between). Each
    statement is idempotent and the plan is computed again from the tables on a rerun, so a
    rerun after a kill between chunks ends with the same tables.
    """
    ds = uc.datasets[dataset]
    pk = ds.primary_key
    pcol = ds.partition_column
    size = uc.aws_settings.athena_max_partitions_per_write
    bronze = f"(SELECT * FROM {fq(uc, naming.table_name(dataset, naming.BRONZE))} WHERE _landing_date IN ({_date_list(dates)}))"
    q_cols = sqlgen.quarantine_columns(ds)
    s_cols = sqlgen.silver_columns(ds)
    d_cols = sqlgen.duplicate_columns(ds)
    silver_t = fq(uc, naming.table_name(dataset, naming.SILVER))
    dups_t = fq(uc, naming.table_name(dataset, naming.DUPLICATES))
    quarantine_t = fq(uc, naming.table_name(dataset, naming.QUARANTINE))

    def key_in_new(alias: str) -> str:
        cond = " AND ".join(f"k.{ident(c)} = {alias}.{ident(c)}" for c in pk)
        return f"EXISTS (SELECT 1 FROM new_valid AS k WHERE {cond})"

    def pk_eq(a: str, b: str) -> str:
        return " AND ".join(f"{a}.{ident(c)} = {b}.{ident(c)}" for c in pk)

    cols = ", ".join(ident(c) for c in s_cols)
    # every statement starts from the same named relations, written once per statement (a
    # statement's size is the sum of what it spells out; Athena refuses more than 262,144 bytes)
    prelude = f"""WITH validated AS ({sqlgen.silver_validate_sql(ds, bronze)}),
    new_valid AS (SELECT {sqlgen.typed_projection(ds, "v.")} FROM validated AS v WHERE v._reason_code IS NULL),
    candidates AS (
        SELECT {cols} FROM (
            SELECT u.*, ROW_NUMBER() OVER (PARTITION BY _file_checksum, _line_number ORDER BY _src) AS _n FROM (
                SELECT {cols}, 0 AS _src FROM new_valid AS n
                UNION ALL SELECT {cols}, 1 AS _src FROM {silver_t} AS s WHERE {key_in_new("s")}
                UNION ALL SELECT {cols}, 2 AS _src FROM {dups_t} AS d WHERE {key_in_new("d")}
            ) AS u
        ) AS w WHERE _n = 1
    ),
    resolved AS ({sqlgen.silver_resolve_sql(ds, "candidates")}),
    kept AS (SELECT {cols} FROM resolved AS r WHERE r._version_rank = 1)"""

    def rel(select: str) -> str:
        return f"({prelude} {select})"

    identity = ["_file_checksum", "_line_number"]
    q_list = ", ".join(ident(c) for c in q_cols)
    d_list = ", ".join(ident(c) for c in d_cols)
    out: list[Statement] = []
    landing_chunks = date_chunks(dates, size)
    for k, chunk in enumerate(landing_chunks):
        q_src = rel(
            f"SELECT {q_list} FROM validated AS v "
            f"WHERE v._reason_code IS NOT NULL AND v._landing_date IN ({_date_list(chunk)})"
        )
        name = chunk_name("silver_quarantine", k, len(landing_chunks))
        out.append(Statement(name, merge_sql(quarantine_t, q_src, identity, q_cols, False), "merge", q_src))
    if pcol is None:  # unpartitioned: one partition, one MERGE each
        d_src = rel(f"SELECT {d_list} FROM resolved AS r WHERE r._version_rank > 1")
        s_src = rel(f"SELECT {cols} FROM kept")
        out.append(Statement("silver_duplicates", merge_sql(dups_t, d_src, identity, d_cols, False), "merge", d_src))
        out.append(Statement("silver_merge", merge_sql(silver_t, s_src, pk, s_cols, True), "merge", s_src))
        plan = None
    else:
        writes = rel(f"""
            SELECT 'dups' AS kind, {part_value(pcol, "r.")} AS d FROM resolved AS r
             WHERE r._version_rank > 1 AND NOT EXISTS (
               SELECT 1 FROM {dups_t} AS x WHERE x._file_checksum = r._file_checksum AND x._line_number = r._line_number)
            UNION
            SELECT 'movers' AS kind, {part_value(pcol, "t.")} AS d FROM {silver_t} AS t JOIN kept AS s ON {pk_eq("t", "s")}
             WHERE {part_value(pcol, "t.")} <> {part_value(pcol, "s.")} AND ({_identity_differs()})
            UNION
            SELECT 'silver' AS kind, {part_value(pcol, "s.")} AS d FROM kept AS s
             WHERE NOT EXISTS (SELECT 1 FROM {silver_t} AS t WHERE {pk_eq("t", "s")}
               AND t._file_checksum = s._file_checksum AND t._line_number = s._line_number)""")
        plan = Statement("silver_plan", plan_sql(sqlgen.to_trino(writes), size), "select", None, fetch=True)
        d_src = rel(f"SELECT {d_list} FROM resolved AS r WHERE r._version_rank > 1 AND {in_chunk(pcol, 'r.')}")
        kept = rel(f"SELECT {cols} FROM kept")
        movers = (
            f"MERGE INTO {silver_t} AS t USING {kept} AS s ON {pk_eq('t', 's')} AND {in_chunk(pcol, 't.')} "
            f"WHEN MATCHED AND {part_value(pcol, 't.')} <> {part_value(pcol, 's.')} AND ({_identity_differs()}) "
            "THEN DELETE"
        )
        s_src = rel(f"SELECT {cols} FROM kept AS r WHERE {in_chunk(pcol, 'r.')}")
        each = {"plan": "silver_plan"}
        out += [
            Statement(
                "silver_duplicates",
                merge_sql(dups_t, d_src, identity, d_cols, False),
                "merge",
                d_src,
                each={**each, "kind": "dups"},
            ),
            Statement("silver_movers", movers, "merge", kept, each={**each, "kind": "movers"}),
            Statement(
                "silver_merge",
                merge_sql(silver_t, s_src, pk, s_cols, True),
                "merge",
                s_src,
                each={**each, "kind": "silver"},
            ),
        ]
    stats = rel("""SELECT
        COUNT(*) AS bronze_rows,
        COUNT(*) FILTER (WHERE _reason_code IS NULL) AS valid,
        COUNT(*) FILTER (WHERE _reason_code IS NOT NULL) AS quarantined,
        ARRAY_AGG(DISTINCT CAST(event_date AS VARCHAR)) FILTER (WHERE _reason_code IS NULL) AS event_dates
      FROM validated AS v""")[1:-1]
    out.append(Statement("silver_stats", stats, "select", stats, fetch=True))
    out = [_trino(s) for s in out]
    if plan is not None:  # already Trino; it runs before the statements it chunks
        out.insert(len(landing_chunks), plan)
    return out


def check_statement_sizes(uc: UseCase, statements: list[Statement]) -> None:
    """Fail before anything runs when a statement (a chunk template: its chunk adds at most
    ``athena_max_partitions_per_write`` dates) would be over the statement byte budget."""
    budget = uc.aws_settings.athena_max_statement_bytes
    chunk = len(_date_list([date(2000, 1, 1)])) + 2
    for st in statements:
        n = len(st.sql.encode()) + (chunk * uc.aws_settings.athena_max_partitions_per_write if st.each else 0)
        if n > budget:
            raise PermanentError(
                f"{uc.name}: athena statement {st.name} is {n} bytes, over aws.athena_max_statement_bytes ({budget}; "
                "Athena refuses more than 262,144): split the Gold SQL or shorten names"
            )


def _int(v: Any) -> int | None:
    return int(v) if v not in (None, "") else None


def _parse_array(v: Any) -> list[str]:
    """Athena returns ARRAY(VARCHAR) as ``[a, b]`` text."""
    if not v:
        return []
    return sorted(x.strip() for x in str(v).strip("[]").split(",") if x.strip())


# ---------------------------------------------------------------- silver -> gold


def gold_source(uc: UseCase, gold: str, lo: date, hi: date, history_from: date | None = None) -> str:
    """The Gold rows of the event dates [lo, hi] (DuckDB SQL): the table's SQL over its inputs'
    Silver rows of [history_from, hi] (default: lo - lookback_days)."""
    g = uc.gold[gold]
    history_lo = history_from or lo - timedelta(days=g.lookback_days)
    inputs = {
        inp: f"SELECT * FROM {fq(uc, naming.table_name(inp, naming.SILVER))}"
        + (
            ""  # reference data (partition_by: none) is read whole
            if uc.datasets[inp].partition_column is None
            else f" WHERE event_date BETWEEN DATE {literal(history_lo.isoformat())} AND DATE {literal(hi.isoformat())}"
        )
        for inp in g.inputs
    }
    user = uc.gold_sql_path(gold).read_text().strip().rstrip(";")
    body = sqlgen.gold_with_inputs(user, inputs, dialect="duckdb")
    if "event_date" not in sqlgen.output_columns(user):
        body = f"SELECT *, CAST({ident(g.event_time)} AS DATE) AS event_date FROM ({body})"
    return f"(SELECT * FROM ({body}) AS g WHERE event_date BETWEEN DATE {literal(lo.isoformat())} AND DATE {literal(hi.isoformat())})"


def gold_statements(uc: UseCase, gold: str, lo: date, hi: date) -> list[Statement]:
    """The MERGEs that recompute the Gold rows of [lo, hi], keyed on the table's primary key.

    One MERGE per window of at most ``aws.athena_max_partitions_per_write`` event dates, so none
    writes more partitions than Athena allows. Every window reads the history the whole range
    reads (from ``lo - lookback_days``), so the rows are those of one MERGE over the range even
    for a feature that looks further back than ``lookback_days`` (the cost: a backfill of n
    windows reads the early dates n times). A row
    whose key now belongs to another event date would make the MERGE touch its old partition
    too: ``gold_plan`` finds those old dates and ``gold_movers`` deletes the old rows first
    (chunked by old date); the window's MERGE then inserts them at their new date.
    """
    g = uc.gold[gold]
    size = uc.aws_settings.athena_max_partitions_per_write
    cols = [c for c, _ in gold_columns(uc, gold)]
    target = fq(uc, gold)
    on = " AND ".join(f"t.{ident(c)} = s.{ident(c)}" for c in g.primary_key)
    keys = ", ".join(ident(c) for c in g.primary_key)
    now = f"(SELECT {keys}, event_date FROM {gold_source(uc, gold, lo, hi)} AS n)"
    writes = (
        f"SELECT 'movers' AS kind, {part_value('event_date', 't.')} AS d FROM {target} AS t JOIN {now} AS s ON {on} "
        f"WHERE {part_value('event_date', 't.')} <> {part_value('event_date', 's.')}"
    )
    movers = (
        f"MERGE INTO {target} AS t USING {now} AS s ON {on} AND {in_chunk('event_date', 't.')} "
        f"WHEN MATCHED AND {part_value('event_date', 't.')} <> {part_value('event_date', 's.')} THEN DELETE"
    )
    out = [
        Statement("gold_plan", plan_sql(sqlgen.to_trino(writes), size), "select", None, fetch=True),
        _trino(Statement("gold_movers", movers, "merge", now, each={"plan": "gold_plan", "kind": "movers"})),
    ]
    sets = ", ".join(f"{ident(c)} = s.{ident(c)}" for c in cols)
    ins = ", ".join(ident(c) for c in cols)
    vals = ", ".join(f"s.{ident(c)}" for c in cols)
    windows = date_windows(lo, hi, size)
    history = lo - timedelta(days=g.lookback_days)
    for k, (w_lo, w_hi) in enumerate(windows):
        src = gold_source(uc, gold, w_lo, w_hi, history)
        sql = (
            f"MERGE INTO {target} AS t USING {src} AS s ON {on} "
            f"WHEN MATCHED THEN UPDATE SET {sets} WHEN NOT MATCHED THEN INSERT ({ins}) VALUES ({vals})"
        )
        out.append(_trino(Statement(chunk_name("gold_merge", k, len(windows)), sql, "merge", src)))
    return out


def build_gold_statements(uc: UseCase, gold: str, touched: dict[str, list[str]]) -> tuple[list[Statement], Any]:
    """The Gold statements for the event dates a change on ``touched`` can affect, and that range."""
    g = uc.gold[gold]
    dates = {date.fromisoformat(d) for ds in naming.gold_driving_inputs(uc, gold) for d in touched.get(ds, [])}
    rng = gold_date_range(dates, g.lookback_days)
    return (gold_statements(uc, gold, *rng), rng) if rng else ([], None)


# ---------------------------------------------------------------- reconciliation


def reconcile_statement(uc: UseCase, dataset: str, landing: list[str]) -> Statement:
    parts = []
    for kind in (naming.BRONZE, naming.SILVER, naming.QUARANTINE, naming.DUPLICATES):
        parts.append(
            f"SELECT CAST(_landing_date AS VARCHAR) AS landing_date, {literal(kind)} AS kind, COUNT(*) AS n "
            f"FROM {fq(uc, naming.table_name(dataset, kind))} WHERE _landing_date IN ({_date_list(landing)}) GROUP BY 1"
        )
    sql = " UNION ALL ".join(parts)
    return _trino(Statement(f"reconcile_{dataset}", sql, "select", sql))


OPTIMIZE_MORE_RUNS = "ICEBERG_OPTIMIZE_MORE_RUNS_NEEDED"
VACUUM_MORE_RUNS = "ICEBERG_VACUUM_MORE_RUNS_NEEDED"


def lakehouse_tables(uc: UseCase) -> list[str]:
    return [
        naming.table_name(ds, k)
        for ds in uc.datasets
        for k in (naming.BRONZE, naming.SILVER, naming.QUARANTINE, naming.DUPLICATES)
    ] + list(uc.gold)


def maintenance_statements(
    uc: UseCase, table: str, partition: str | None, dates: list[str] | None, retention_days: int
) -> list[Statement]:
    """Compaction and snapshot expiry of one Iceberg table.

    * ``OPTIMIZE ... REWRITE DATA USING BIN_PACK WHERE <partition> IN (...)`` over the partitions
      a run wrote (``dates``; ``None``: the whole table, also for an unpartitioned one), at most
      ``aws.athena_max_partitions_per_write`` per statement; run again while Athena answers
      ICEBERG_OPTIMIZE_MORE_RUNS_NEEDED (each run commits what it compacted).
    * ``ALTER TABLE ... SET TBLPROPERTIES ('vacuum_max_snapshot_age_seconds' = ...)``: the
      configured retention, set on every run so a changed configuration takes effect;
    * ``VACUUM``: expires snapshots older than that and removes the files only they referenced
      (and orphan files as old), run again while Athena answers ICEBERG_VACUUM_MORE_RUNS_NEEDED.
    """
    aws = uc.aws_settings
    name = ddl_name(uc, table)
    runs = aws.athena_max_maintenance_runs
    out = []
    optimize = f"OPTIMIZE {name} REWRITE DATA USING BIN_PACK"
    if partition is None or dates is None:
        out.append(Statement(f"optimize_{table}", optimize, "optimize", repeat_on=OPTIMIZE_MORE_RUNS, max_runs=runs))
    else:
        real = [d for d in dates if d != NULL_DATE]
        chunks = date_chunks(real, aws.athena_max_partitions_per_write)
        for k, chunk in enumerate(chunks):
            out.append(
                Statement(
                    chunk_name(f"optimize_{table}", k, len(chunks)),
                    f"{optimize} WHERE {partition} IN ({_date_list(chunk)})",
                    "optimize",
                    repeat_on=OPTIMIZE_MORE_RUNS,
                    max_runs=runs,
                )
            )
        if NULL_DATE in dates:
            out.append(
                Statement(
                    f"optimize_{table}__null",
                    f"{optimize} WHERE {partition} IS NULL",
                    "optimize",
                    repeat_on=OPTIMIZE_MORE_RUNS,
                    max_runs=runs,
                )
            )
    seconds = int(retention_days) * 86400
    out.append(
        Statement(
            f"retention_{table}",
            f"ALTER TABLE {name} SET TBLPROPERTIES ('vacuum_max_snapshot_age_seconds'='{seconds}')",
            "alter",
        )
    )
    out.append(Statement(f"vacuum_{table}", f"VACUUM {name}", "vacuum", repeat_on=VACUUM_MORE_RUNS, max_runs=runs))
    return out


def compact_statements(uc: UseCase, touched: dict[str, list[str]] | None = None) -> list[Statement]:
    """Maintenance of the lakehouse tables a run wrote (``touched``: table -> the partition values
    it wrote; None: every table, whole), see :func:`maintenance_statements`."""
    out = []
    for table in lakehouse_tables(uc):
        if touched is not None and table not in touched:
            continue
        _, partition = table_columns(uc, table)
        dates = None if touched is None else touched[table]
        out += maintenance_statements(uc, table, partition, dates, uc.lakehouse.snapshot_retention_days)
    return out


def gate_statement(uc: UseCase, name: str, layer: str, scope: dict[str, Any], run: RunInfo) -> tuple[Statement, str]:
    """The UNLOAD of the rows a gate checks (scope: landing dates, event dates or an event-date
    range) to a prefix unique per run and try; returns (statement, prefix)."""
    if "landing_dates" in scope:
        where = f"_landing_date IN ({_date_list(scope['landing_dates']) or 'NULL'})"
    elif "event_dates" in scope:
        where = f"event_date IN ({_date_list(scope['event_dates']) or 'NULL'})"
    else:
        lo, hi = scope["range"]
        where = f"event_date BETWEEN DATE {literal(lo)} AND DATE {literal(hi)}"
    target = uc.aws_settings.s3_uri("_gates", name, layer, safe(f"{run.run_id}__{run.try_number}")) + "/"
    body = sqlgen.to_trino(f"SELECT * FROM {fq(uc, name)} WHERE {where}")
    return unload_statement(f"gate_unload_{name}", body, target), target


# ---------------------------------------------------------------- the backend


class AwsLakehouse:
    """The lakehouse capability on the aws target (``mlblueprints.backends.Lakehouse``)."""

    def __init__(self, uc: UseCase, rt: AwsRuntime):
        self.uc = uc
        self.aws = uc.aws_settings
        self.rt = rt

    def _call(self, statements: list[Statement], resume: str, state: dict[str, Any]) -> ServiceCall:
        check_statement_sizes(self.uc, statements)
        return service.athena(statements, CAPABILITY, resume, state)

    # ------------------------------------------------------------ catalog

    def ensure_tables(self, run: RunInfo) -> dict[str, Any]:
        """The Glue database and every table of the use case, created once per run (the
        pattern's ``tables`` step) before anything writes: see :func:`ensure_tables`."""
        return ensure_tables(self.uc, self.rt)

    # ------------------------------------------------------------ landing -> bronze

    def ingest_bronze(self, dataset: str, dates: list[date], run: RunInfo) -> ServiceCall:
        """Landing (S3) -> Bronze (Iceberg). Same contract as the local target: per landing date,
        the files not seen before are inserted (after deleting what a killed earlier attempt left
        of them), then the date's file manifest is written (:meth:`resume_ingest`)."""
        uc = self.uc
        ds = uc.datasets[dataset]
        s3 = self.rt.client("s3")
        bucket, prefix = req.split_s3_uri(landing_prefix(uc, ds))
        summary: dict[str, Any] = {
            "dataset": dataset,
            "landing_dates": [d.isoformat() for d in dates],
            "files": [],
            "warnings": [],
            "statements": [],
        }
        manifest = read_manifests(uc, dataset, s3)
        by_checksum = {r["file_checksum"]: r["source_file"] for r in manifest if r["status"] == "ingested"}
        seen = {(r["source_file"], r["file_checksum"]): r["status"] for r in manifest if r["status"] != "rejected"}
        status: dict[str, int] = {}
        stmts: list[Statement] = []
        manifests: dict[str, Any] = {}
        for landing in sorted(dates):
            ingest_time = datetime.now(UTC).replace(tzinfo=None)
            day_prefix = f"{prefix.rstrip('/')}/{landing.isoformat()}/"
            objs = []
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=day_prefix):
                objs += [o for o in page.get("Contents", []) if not Path(o["Key"]).name.startswith(("_", "."))]
            new_files: list[dict[str, Any]] = []
            outcomes = []
            for o in sorted(objs, key=lambda o: o["Key"]):
                head = s3.head_object(Bucket=bucket, Key=o["Key"], ChecksumMode="ENABLED")
                parent = prefix.rstrip("/").rpartition("/")[0]
                rel = o["Key"][len(parent) + 1 :] if parent else o["Key"]  # <dataset dir>/<landing date>/<file>
                fmt = FORMATS.get(Path(o["Key"]).suffix.lower(), "none")
                f = {
                    "source_file": rel,
                    "uri": f"s3://{bucket}/{o['Key']}",
                    "file_checksum": _checksum(head),
                    "format": fmt,
                    "size_bytes": o["Size"],
                    "records": None,
                    "status": "ingested",
                    "duplicate_of": None,
                    "reason": None,
                }
                f["new"] = (rel, f["file_checksum"]) not in seen
                if not f["new"]:
                    prior = seen[rel, f["file_checksum"]]
                    f["status"] = "already_ingested" if prior == "ingested" else prior
                elif f["file_checksum"] in by_checksum:
                    f["status"], f["duplicate_of"] = "duplicate_file", by_checksum[f["file_checksum"]]
                elif fmt not in ds.landing.formats:
                    f["status"], f["reason"] = "rejected", f"format {fmt!r} is not one of {ds.landing.formats}"
                elif o["Size"] == 0:
                    f["status"], f["reason"] = "empty", "zero-byte file"
                else:
                    new_files.append(f)
                    by_checksum[f["file_checksum"]] = rel
                outcomes.append(f)
                label = f["status"] if f["new"] else "already_seen"
                status[label] = status.get(label, 0) + 1
            for fmt in ds.landing.formats:
                files = [f for f in new_files if f["format"] == fmt]
                if files:
                    stmts += bronze_statements(uc, dataset, fmt, landing, files, run, ingest_time)
            day_manifest = [f for f in outcomes if f["new"]]
            if day_manifest:
                new_keys = {(f["source_file"], f["file_checksum"]) for f in day_manifest}
                keep = [
                    r
                    for r in manifest
                    if r.get("landing_date") == landing.isoformat()
                    and (r["source_file"], r["file_checksum"]) not in new_keys
                ]
                manifests[landing.isoformat()] = {
                    "files": keep
                    + [
                        {
                            **f,
                            "landing_date": landing.isoformat(),
                            "ingest_run_id": run.run_id,
                            "ingest_time": ingest_time.isoformat(),
                        }
                        for f in day_manifest
                    ]
                }
            summary["files"] += [{**f, "landing_date": landing.isoformat()} for f in outcomes]
        summary["file_status"] = status
        summary["rows_landed"] = None  # Athena's INSERT reports rows in the query statistics, not here
        summary["rejected_files"] = [f for f in summary["files"] if f["status"] == "rejected"]
        summary["statements"] = [st.name for st in stmts]
        return self._call(stmts, "resume_ingest", {"summary": summary, "manifests": manifests})

    def resume_ingest(self, state: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
        """After the INSERTs: each landing date's manifest (the files' final outcomes)."""
        s3 = self.rt.client("s3")
        summary = state["summary"]
        for landing, body in state["manifests"].items():
            s3.put_object(
                Bucket=self.aws.bucket,
                Key=_manifest_key(self.uc, summary["dataset"], date.fromisoformat(landing)),
                Body=json.dumps(body, indent=1).encode(),
                ContentType="application/json",
                **req.s3_put_kms(self.aws),
            )
        return {**summary, "queries": output.get("queries", {})}

    # ------------------------------------------------------------ bronze -> silver -> gold

    def build_silver(self, dataset: str, dates: list[date], run: RunInfo) -> ServiceCall:
        stmts = silver_statements(self.uc, dataset, dates)
        state = {"dataset": dataset, "dates": [d.isoformat() for d in dates], "run": run.as_dict()}
        return self._call(stmts, "resume_silver", state)

    def resume_silver(self, state: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
        queries = output["queries"]
        stats_rows = self.rt.fetch_rows(queries["silver_stats"]) if "silver_stats" in queries else []
        stats = stats_rows[0] if stats_rows else {}
        ds = state["dataset"]
        tables = [naming.table_name(ds, k) for k in (naming.QUARANTINE, naming.DUPLICATES, naming.SILVER)]
        self._record_lineage(tables, "silver", state["run"], queries, landing_dates=state["dates"])
        touched = _parse_array(stats.get("event_dates"))
        partitions = {naming.table_name(ds, naming.QUARANTINE): list(state["dates"])}
        if "silver_plan" in queries:  # the partitions each chunked MERGE wrote, as planned
            plan = self.rt.fetch_rows(queries["silver_plan"])
            moved = plan_dates(plan, "movers")
            partitions[naming.table_name(ds, naming.DUPLICATES)] = plan_dates(plan, "dups")
            partitions[naming.table_name(ds, naming.SILVER)] = sorted(set(plan_dates(plan, "silver")) | set(moved))
            # a key moved away from an event date changes that date's Gold rows too
            touched = sorted(set(touched) | {d for d in moved if d != NULL_DATE})
        else:  # unpartitioned tables: one partition each
            partitions[naming.table_name(ds, naming.DUPLICATES)] = []
            partitions[naming.table_name(ds, naming.SILVER)] = []
        return {
            "dataset": ds,
            "landing_dates": state["dates"],
            "rows_landed": _int(stats.get("bronze_rows")),
            "valid": _int(stats.get("valid")),
            "quarantined": _int(stats.get("quarantined")),
            "quarantine_reasons": {},
            "duplicates": None,
            "rows_into_silver": None,
            "touched_event_dates": touched,
            "superseded_landing_dates": [],
            "partitions": partitions,
            "statements": list(queries),
        }

    def build_gold(self, gold: str, touched: dict[str, list[str]], run: RunInfo) -> dict[str, Any] | ServiceCall:
        stmts, rng = build_gold_statements(self.uc, gold, touched)
        if not stmts:
            return {"table": gold, "rows_written": 0, "recomputed": None}
        state = {"table": gold, "range": [rng[0].isoformat(), rng[1].isoformat()], "run": run.as_dict()}
        return self._call(stmts, "resume_gold", state)

    def resume_gold(self, state: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
        queries = output["queries"]
        self._record_lineage([state["table"]], "gold", state["run"], queries, recomputed=state["range"])
        lo, hi = (date.fromisoformat(d) for d in state["range"])
        written = {(lo + timedelta(days=i)).isoformat() for i in range((hi - lo).days + 1)}
        if "gold_plan" in queries:
            written |= set(plan_dates(self.rt.fetch_rows(queries["gold_plan"]), "movers"))
        return {
            "table": state["table"],
            "recomputed": state["range"],
            "rows_written": None,
            "partitions": {state["table"]: sorted(written)},
            "statements": list(queries),
        }

    # ------------------------------------------------------------ reconciliation, compaction

    def reconcile(self, silvers: list[dict[str, Any]], ingests: list[dict[str, Any]]) -> dict[str, Any] | ServiceCall:
        """Count rows per landing date in the four tables (one Athena query per data set) and check
        that they add up; see :mod:`mlblueprints.lakehouse.accounting`."""
        stmts, checked = [], {}
        for s in silvers:
            landing = accounting.landing_dates_to_check(s)
            if landing:
                st = reconcile_statement(self.uc, s["dataset"], landing)
                st.fetch = True
                stmts.append(st)
                checked[s["dataset"]] = landing
        if not stmts:
            return accounting.reconcile_counts(self.uc, {}, ingests)
        return self._call(stmts, "resume_reconcile", {"checked": checked, "ingests": ingests})

    def resume_reconcile(self, state: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
        counts: dict[str, dict[str, dict[str, int]]] = {}
        for dataset, landing in state["checked"].items():
            by_date: dict[str, dict[str, int]] = {d: {} for d in landing}
            for r in self.rt.fetch_rows(output["queries"][f"reconcile_{dataset}"]):
                by_date.setdefault(r["landing_date"], {})[r["kind"]] = int(r["n"])
            counts[dataset] = by_date
        return accounting.reconcile_counts(self.uc, counts, state["ingests"])

    def compact(self, run: RunInfo, touched: dict[str, list[str]] | None = None) -> dict[str, Any] | ServiceCall:
        """OPTIMIZE the partitions the run wrote (``touched``: table -> partition values; None:
        every table, whole), then expire snapshots with the configured retention (VACUUM)."""
        stmts = compact_statements(self.uc, touched)
        if not stmts:
            return {"tables": {}}
        tables = [t for t in lakehouse_tables(self.uc) if touched is None or t in touched]
        return self._call(stmts, "resume_compact", {"run": run.as_dict(), "tables": tables})

    def resume_compact(self, state: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
        queries = output["queries"]
        tables = state["tables"]
        self._record_lineage(tables, "compaction", state["run"], queries)

        def of(t: str, name: str) -> bool:
            return name in (f"optimize_{t}", f"retention_{t}", f"vacuum_{t}") or name.startswith(f"optimize_{t}__")

        return {
            "tables": {t: {"statements": [n for n in queries if of(t, n)]} for t in tables},
            "retention_days": self.uc.lakehouse.snapshot_retention_days,
        }

    # ------------------------------------------------------------ gates

    def gate(self, table: str, layer: str, scope: dict[str, Any], run: RunInfo) -> Any:
        """UNLOAD the rows to check to S3 (Parquet, KMS); :meth:`resume_gate` validates them in
        the worker with the same Great Expectations code as the local target."""
        from mlblueprints.quality.gx import GateReport

        name = table if layer == "gold" else naming.table_name(table, layer)
        suite = self.uc.suite_name(table, layer)
        if suite is None:
            return GateReport(suite="-", table=name, layer=layer, rows=0, success=True, evaluated=0)
        st, target = gate_statement(self.uc, name, layer, scope, run)
        state = {"name": name, "layer": layer, "suite": suite, "target": target, "run": run.as_dict()}
        return self._call([st], "resume_gate", state)

    def resume_gate(self, state: dict[str, Any], output: dict[str, Any]) -> Any:
        import duckdb

        from mlblueprints.quality.gx import run_gate

        aws, name, layer = self.aws, state["name"], state["layer"]
        run = RunInfo(**state["run"])
        s3 = self.rt.client("s3")
        cols, _ = table_columns(self.uc, name)
        started = time.time()
        with tempfile.TemporaryDirectory(dir=runtime.path("tmp")) as tmp:
            files = [p for _, p in s3io.download_prefix(s3, state["target"], Path(tmp))]
            con = duckdb.connect()
            if files:
                src = f"SELECT * FROM read_parquet([{', '.join(literal(f) for f in files)}], union_by_name = true)"
            else:  # nothing unloaded: validate an empty, typed relation
                src = (
                    "SELECT "
                    + ", ".join(f"CAST(NULL AS {sqlgen.sql_type(t)}) AS {ident(c)}" for c, t in cols)
                    + " WHERE FALSE"
                )
            con.execute(f"CREATE VIEW batch AS {src}")
            quality_dir = runtime.path("quality", self.uc.name)
            report = run_gate(
                con,
                "batch",
                suite_name=state["suite"],
                table=name,
                layer=layer,
                run_name=f"{run.run_id}__{run.try_number}",
                quality_dir=quality_dir,
                result_format=self.uc.lakehouse.gate_result_format,
            )
        s3io.upload_dir(s3, aws, quality_dir, aws.s3_uri("quality"), since=started - 1)
        report.docs_path = aws.s3_uri("quality", Path(report.docs_path).relative_to(quality_dir).as_posix())
        report.results_path = aws.s3_uri("quality", Path(report.results_path).relative_to(quality_dir).as_posix())
        return report

    # ------------------------------------------------------------ lineage, locations

    def _record_lineage(
        self, tables: list[str], step: str, run: dict[str, Any], queries: dict[str, str], **inputs: Any
    ) -> None:
        """One JSON record per table committed: who wrote it (run, code, config), with which
        statements, and the table's Glue ``metadata_location`` (its exact Iceberg state) after."""
        glue, s3 = self.rt.client("glue"), self.rt.client("s3")
        info = RunInfo(**run)
        for table in tables:
            try:
                params = (
                    glue.get_table(DatabaseName=self.aws.glue_database, Name=table)["Table"].get("Parameters") or {}
                )
            except glue.exceptions.EntityNotFoundException:
                params = {}
            record = {
                "table": f"{self.aws.glue_database}.{table}",
                "metadata_location": params.get("metadata_location"),
                "query_execution_ids": queries,
                "properties": info.snapshot_properties(step=step, **inputs),
            }
            uri = self.aws.s3_uri("lineage", table, f"{safe(info.run_id)}__{info.try_number}__{step}.json")
            s3io.put_bytes(s3, json.dumps(record, indent=1, sort_keys=True).encode(), uri, self.aws, "application/json")

    def latest_gold_range(self, golds: Iterable[str]) -> tuple[date, date] | None:
        """Not known from the Glue catalog alone on aws: the Gold Asset event carries the range."""
        return None

    def where(self) -> list[str]:
        aws = self.aws
        return [
            f"Data Docs (Great Expectations): {aws.s3_uri('quality', 'uncommitted/data_docs/local_site/index.html')}",
            f"Iceberg warehouse: {aws.s3_uri('warehouse')} (Glue database {aws.glue_database})",
            f"Quarantine: table {aws.glue_database}.<dataset>_quarantine; duplicates: {aws.glue_database}.<dataset>_duplicates",
            f"Lineage records: {aws.s3_uri('lineage')}",
        ]
