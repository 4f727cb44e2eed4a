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

import json
import logging
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


def ensure_tables(uc: UseCase, rt: AwsRuntime) -> list[str]:
    """Create the Glue database, the landing tables and the Iceberg tables that are missing.

    boto3 by hand: the Amazon provider has no operator or hook method that creates a Glue
    database or table (``GlueCatalogHook`` reads tables and creates partitions only), and an
    Iceberg table is created with ``OpenTableFormatInput``, which nothing in the provider builds.
    """
    aws = uc.aws_settings
    glue = rt.client("glue")
    created = []
    try:
        glue.get_database(Name=aws.glue_database)
    except glue.exceptions.EntityNotFoundException:
        glue.create_database(DatabaseInput=req.glue_database_input(aws, f"mlblueprints use case {uc.name}"))
        created.append(aws.glue_database)
    wanted = []
    for ds_name in uc.datasets:
        for kind in (naming.BRONZE, naming.SILVER, naming.QUARANTINE, naming.DUPLICATES):
            wanted.append(naming.table_name(ds_name, kind))
    wanted += list(uc.gold)
    size = uc.lakehouse.target_file_size_mb * 1024 * 1024
    for name in wanted:
        if _table_exists(glue, aws.glue_database, name):
            continue
        cols, part = table_columns(uc, name)
        glue.create_table(**req.glue_iceberg_table_input(aws, name, cols, part, size, f"{uc.name} lakehouse"))
        created.append(name)
    for ds_name, ds in uc.datasets.items():
        for fmt in ds.landing.formats:
            name = landing_table(ds_name, fmt)
            if _table_exists(glue, aws.glue_database, name):
                continue
            glue.create_table(
                **req.glue_landing_table_input(
                    aws, name, landing_prefix(uc, ds), fmt, [c.name for c in ds.columns], ds.landing.csv_delimiter
                )
            )
            created.append(name)
    return created


def _table_exists(glue: Any, db: str, name: str) -> bool:
    try:
        glue.get_table(DatabaseName=db, Name=name)
        return True
    except glue.exceptions.EntityNotFoundException:
        return False


def landing_table(dataset: str, fmt: str) -> str:
    return f"{dataset}_landing_{fmt}"


def landing_prefix(uc: UseCase, ds: Dataset) -> str:
    p = ds.landing.path
    return p if p.startswith("s3://") else uc.aws_settings.s3_uri(p)


def fq(uc: UseCase, table: str) -> str:
    return f"{ident(uc.aws_settings.glue_database)}.{ident(table)}"


def _date_list(dates: Iterable[date] | Iterable[str]) -> str:
    return ", ".join(f"DATE {literal(d if isinstance(d, str) else d.isoformat())}" for d in sorted(set(dates)))


def _trino(stmt: Statement) -> Statement:
    """Transpile a DuckDB statement (and its body) to Trino."""
    return Statement(
        stmt.name, sqlgen.to_trino(stmt.sql), stmt.kind, sqlgen.to_trino(stmt.body) if stmt.body else None, stmt.fetch
    )


def unload_statement(name: str, body: str, target: str) -> Statement:
    """UNLOAD a SELECT (Trino) to an S3 prefix as ZSTD Parquet."""
    return Statement(
        name, f"UNLOAD ({body}) TO {literal(target)} WITH (format = 'PARQUET', compression = 'ZSTD')", "unload", body
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
    statement and the SELECT inside it."""
    ds = uc.datasets[dataset]
    paths = ", ".join(literal(f["uri"]) for f in files)
    checksum = (
        'CASE "$path" '
        + " ".join(f"WHEN {literal(f['uri'])} THEN {literal(f['file_checksum'])}" for f in files)
        + " END"
    )
    rel = (
        'CASE "$path" ' + " ".join(f"WHEN {literal(f['uri'])} THEN {literal(f['source_file'])}" for f in files) + " END"
    )
    meta = (
        f"{rel} AS _source_file, {checksum} AS _file_checksum, "
        f"{literal(run.run_id)} AS _ingest_run_id, "
        f"TIMESTAMP {literal(ingest_time.strftime('%Y-%m-%d %H:%M:%S.%f'))} AS _ingest_time, "
        f"DATE {literal(landing.isoformat())} AS _landing_date"
    )
    names = [c.name for c in ds.columns]
    if fmt == "csv":
        order = ", ".join(ident(n) for n in names)
        select = (
            f"SELECT {', '.join(ident(n) for n in names)}, CAST(NULL AS VARCHAR) AS _extra, "
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


def silver_statements(uc: UseCase, dataset: str, dates: list[date]) -> list[Statement]:
    """The three MERGE statements of Bronze -> Silver (quarantine, duplicates, Silver)."""
    ds = uc.datasets[dataset]
    pk = ds.primary_key
    bronze = f"(SELECT * FROM {fq(uc, naming.table_name(dataset, naming.BRONZE))} WHERE _landing_date IN ({_date_list(dates)}))"
    validated = f"({sqlgen.silver_validate_sql(ds, bronze)})"
    q_cols = sqlgen.quarantine_columns(ds)
    s_cols = sqlgen.silver_columns(ds)
    d_cols = sqlgen.duplicate_columns(ds)
    new_valid = f"(SELECT {sqlgen.typed_projection(ds, 'v.')} FROM {validated} AS v WHERE v._reason_code IS NULL)"
    silver_t = fq(uc, naming.table_name(dataset, naming.SILVER))
    dups_t = fq(uc, naming.table_name(dataset, naming.DUPLICATES))

    def key_in_new(alias: str) -> str:
        cond = " AND ".join(f"k.{ident(c)} = {alias}.{ident(c)}" for c in pk)
        return f"EXISTS (SELECT 1 FROM {new_valid} AS k WHERE {cond})"

    cols = ", ".join(ident(c) for c in s_cols)
    candidates = f"""(
        SELECT {cols} FROM (
            SELECT u.*, ROW_NUMBER() OVER (PARTITION BY _file_checksum, _line_number ORDER BY _src) AS _n FROM (
                SELECT {cols}, 0 AS _src FROM {new_valid} AS n
                UNION ALL SELECT {cols}, 1 AS _src FROM {silver_t} AS s WHERE {key_in_new("s")}
                UNION ALL SELECT {cols}, 2 AS _src FROM {dups_t} AS d WHERE {key_in_new("d")}
            ) AS u
        ) AS w WHERE _n = 1
    )"""
    resolved = f"({sqlgen.silver_resolve_sql(ds, candidates)})"

    def merge(target: str, source: str, on: list[str], cols_: list[str], update: bool) -> str:
        cond = " AND ".join(f"t.{ident(c)} = s.{ident(c)}" for c in on)
        ins = ", ".join(ident(c) for c in cols_)
        vals = ", ".join(f"s.{ident(c)}" for c in cols_)
        sql = f"MERGE INTO {target} AS t USING {source} AS s ON {cond} "
        if update:
            sets = ", ".join(f"{ident(c)} = s.{ident(c)}" for c in cols_)
            sql += (
                "WHEN MATCHED AND (t._file_checksum <> s._file_checksum OR t._line_number <> s._line_number) "
                f"THEN UPDATE SET {sets} "
            )
        return sql + f"WHEN NOT MATCHED THEN INSERT ({ins}) VALUES ({vals})"

    identity = ["_file_checksum", "_line_number"]
    q_src = f"(SELECT {', '.join(ident(c) for c in q_cols)} FROM {validated} AS v WHERE v._reason_code IS NOT NULL)"
    d_src = f"(SELECT {', '.join(ident(c) for c in d_cols)} FROM {resolved} AS r WHERE r._version_rank > 1)"
    s_src = f"(SELECT {cols} FROM {resolved} AS r WHERE r._version_rank = 1)"
    out = [
        Statement(
            "silver_quarantine",
            merge(fq(uc, naming.table_name(dataset, naming.QUARANTINE)), q_src, identity, q_cols, False),
            "merge",
            q_src,
        ),
        Statement("silver_duplicates", merge(dups_t, d_src, identity, d_cols, False), "merge", d_src),
        Statement("silver_merge", merge(silver_t, s_src, pk, s_cols, True), "merge", s_src),
    ]
    stats = f"""SELECT
        COUNT(*) AS bronze_rows,
        COUNT(*) FILTER (WHERE _reason_code IS NULL) AS valid,
        COUNT(*) FILTER (WHERE _reason_code IS NOT NULL) AS quarantined,
        ARRAY_AGG(DISTINCT CAST(event_date AS VARCHAR)) FILTER (WHERE _reason_code IS NULL) AS event_dates
      FROM {validated} AS v"""
    out.append(Statement("silver_stats", stats, "select", stats, fetch=True))
    return [_trino(s) for s in out]


def _int(v: Any) -> int | None:
    return int(v) if v not in (None, "") else None


def _parse_array(v: Any) -> list[str]:
    """Athena returns ARRAY(VARCHAR) as ``[a, b]`` text."""
    if not v:
        return []
    return sorted(x.strip() for x in str(v).strip("[]").split(",") if x.strip())


# ---------------------------------------------------------------- silver -> gold


def gold_statement(uc: UseCase, gold: str, lo: date, hi: date) -> Statement:
    g = uc.gold[gold]
    history_lo = lo - timedelta(days=g.lookback_days)
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
    src = f"(SELECT * FROM ({body}) AS g WHERE event_date BETWEEN DATE {literal(lo.isoformat())} AND DATE {literal(hi.isoformat())})"
    cols = [c for c, _ in gold_columns(uc, gold)]
    cond = " AND ".join(f"t.{ident(c)} = s.{ident(c)}" for c in g.primary_key)
    sets = ", ".join(f"{ident(c)} = s.{ident(c)}" for c in cols)
    ins = ", ".join(ident(c) for c in cols)
    vals = ", ".join(f"s.{ident(c)}" for c in cols)
    sql = (
        f"MERGE INTO {fq(uc, gold)} AS t USING {src} AS s ON {cond} "
        f"WHEN MATCHED THEN UPDATE SET {sets} WHEN NOT MATCHED THEN INSERT ({ins}) VALUES ({vals})"
    )
    return _trino(Statement("gold_merge", sql, "merge", src))


def build_gold_statement(uc: UseCase, gold: str, touched: dict[str, list[str]]) -> tuple[Statement | None, Any]:
    """The Gold MERGE for the event dates a change on ``touched`` can affect, and that range."""
    g = uc.gold[gold]
    dates = {date.fromisoformat(d) for ds in naming.gold_driving_inputs(uc, gold) for d in touched.get(ds, [])}
    rng = gold_date_range(dates, g.lookback_days)
    return (gold_statement(uc, gold, *rng), rng) if rng else (None, None)


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


def compact_statements(uc: UseCase, tables: list[str] | None = None) -> list[Statement]:
    """Athena's OPTIMIZE ... REWRITE DATA USING BIN_PACK on every lakehouse table (Athena decides
    which files are small from the table's target file size)."""
    names = tables or [
        naming.table_name(ds, k)
        for ds in uc.datasets
        for k in (naming.BRONZE, naming.SILVER, naming.QUARANTINE, naming.DUPLICATES)
    ] + list(uc.gold)
    return [Statement(f"optimize_{n}", f"OPTIMIZE {fq(uc, n)} REWRITE DATA USING BIN_PACK", "optimize") for n in names]


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
        return service.athena(statements, CAPABILITY, resume, state)

    # ------------------------------------------------------------ landing -> bronze

    def ingest_bronze(self, dataset: str, dates: list[date], run: RunInfo) -> ServiceCall:
        """Landing (S3) -> Bronze (Iceberg). Same contract as the local target: per landing date,
        the files not seen before are inserted (after deleting what a killed earlier attempt left
        of them), then the date's file manifest is written (:meth:`resume_ingest`)."""
        uc = self.uc
        ensure_tables(uc, self.rt)
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
            if new_files:
                table = fq(uc, naming.table_name(dataset, naming.BRONZE))
                checks = ", ".join(literal(f["file_checksum"]) for f in new_files)
                stmts.append(
                    Statement(
                        f"bronze_delete_partial_{landing:%Y%m%d}",
                        f"DELETE FROM {table} WHERE _landing_date = DATE {literal(landing.isoformat())} "
                        f"AND _file_checksum IN ({checks})",
                        "delete",
                    )
                )
                for fmt in ds.landing.formats:
                    files = [f for f in new_files if f["format"] == fmt]
                    if files:
                        sql, body = bronze_insert_sql(uc, dataset, fmt, landing, files, run, ingest_time)
                        stmts.append(Statement(f"bronze_insert_{fmt}_{landing:%Y%m%d}", sql, "insert", body))
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
        ensure_tables(self.uc, self.rt)
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
        return {
            "dataset": ds,
            "landing_dates": state["dates"],
            "rows_landed": _int(stats.get("bronze_rows")),
            "valid": _int(stats.get("valid")),
            "quarantined": _int(stats.get("quarantined")),
            "quarantine_reasons": {},
            "duplicates": None,
            "rows_into_silver": None,
            "touched_event_dates": _parse_array(stats.get("event_dates")),
            "superseded_landing_dates": [],
            "statements": list(queries),
        }

    def build_gold(self, gold: str, touched: dict[str, list[str]], run: RunInfo) -> dict[str, Any] | ServiceCall:
        st, rng = build_gold_statement(self.uc, gold, touched)
        if st is None:
            return {"table": gold, "rows_written": 0, "recomputed": None}
        state = {"table": gold, "range": [rng[0].isoformat(), rng[1].isoformat()], "run": run.as_dict()}
        return self._call([st], "resume_gold", state)

    def resume_gold(self, state: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
        queries = output["queries"]
        self._record_lineage([state["table"]], "gold", state["run"], queries, recomputed=state["range"])
        return {
            "table": state["table"],
            "recomputed": state["range"],
            "rows_written": None,
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

    def compact(self, run: RunInfo) -> ServiceCall:
        stmts = compact_statements(self.uc)
        return self._call(stmts, "resume_compact", {"run": run.as_dict()})

    def resume_compact(self, state: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
        queries = output["queries"]
        tables = [name.removeprefix("optimize_") for name in queries]
        self._record_lineage(tables, "compaction", state["run"], queries)
        return {"tables": {t: {"statement": f"OPTIMIZE {fq(self.uc, t)} REWRITE DATA USING BIN_PACK"} for t in tables}}

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
