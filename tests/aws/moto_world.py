"""What every aws test shares: the moto world, and the twins that answer what moto does not run.

The fixtures (``moto_world``, ``sagemaker_like_aws``) are made available by ``conftest.py``.

* :func:`moto_world`: in-process moto (``mock_aws``: the tests' own boto3 clients) plus a
  ``ThreadedMotoServer`` on loopback behind the Airflow AWS connection (``endpoint_url``), both on
  one state. The provider's deferrable operators wait in triggers that use aiobotocore, which
  in-process moto cannot answer; the server answers them over real HTTP. botocore validates every
  request either way.
* :class:`AthenaTwin`: Athena runs no SQL under moto. The twin runs every statement on DuckDB,
  over the tables the code created through Glue and the landing files in S3, and refuses what
  Athena would refuse (size, partitions per write, Trino dialect, UNLOAD formats, maintenance
  syntax) or what breaks a table's MERGE key contract. A wrong statement therefore gives a wrong
  table or a failed query, never a green test.
* :class:`S3OwnerGuard`: S3's ``ExpectedBucketOwner`` check, which moto does not make, and a
  record of which S3 requests of the project named the owner.
* :class:`FeatureStoreTwin`: moto does not implement ``sagemaker-featurestore-runtime``; requests
  built by real boto3 clients (validated against the service model) are answered in memory.
* :func:`sagemaker_like_aws`: moto's feature groups patched where moto differs from SageMaker
  (including the offline store's Glue table, which SageMaker registers and moto does not).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import duckdb
import pytest
import sqlglot
from botocore.awsrequest import AWSResponse
from botocore.validate import validate_parameters
from sqlglot import exp

from mlblueprints.aws import featurestore as fsreq
from mlblueprints.aws import requests as req

moto = pytest.importorskip("moto")
from moto import mock_aws  # noqa: E402
from moto.athena.models import AthenaBackend, QueryResults  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's account: the owner of every bucket a test makes
MAX_QUERY_BYTES = 262_144  # Athena: StartQueryExecution's QueryString (not adjustable)
MAX_OPEN_PARTITIONS = 100  # Athena: partitions one write may touch (HIVE_TOO_MANY_OPEN_PARTITIONS)
UNLOAD = re.compile(
    r"^\s*UNLOAD\s*\((?P<body>.*)\)\s*TO\s*'(?P<target>s3://[^']+)'(\s*WITH\s*\((?P<props>[^)]*)\))?\s*$", re.S | re.I
)


@dataclass
class MotoWorld:
    home: Path
    tmp: Path
    endpoint_url: str
    made: dict[str, Any] = field(default_factory=dict)

    def bucket(self, name: str) -> str:
        boto3.client("s3", region_name=REGION).create_bucket(
            Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        return name

    def kms_key(self, description: str = "test") -> str:
        return boto3.client("kms", region_name=REGION).create_key(Description=description)["KeyMetadata"]["Arn"]

    def workgroup(self, bucket: str, name: str = "mlblueprints") -> None:
        boto3.client("athena", region_name=REGION).create_work_group(
            Name=name, Configuration={"ResultConfiguration": {"OutputLocation": f"s3://{bucket}/athena/"}}
        )


def moto_world_fixture(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("MLB_ATHENA_POLL_SECONDS", "0")
    monkeypatch.setenv("MLB_SAGEMAKER_POLL_SECONDS", "0")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MLB_HOME", str(home))
    with mock_aws():
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            url = f"http://{host}:{port}"
            conn = {"conn_type": "aws", "extra": {"region_name": REGION, "endpoint_url": url}}
            monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(conn))
            yield MotoWorld(home=home, tmp=tmp_path, endpoint_url=url)
        finally:
            server.stop()


class S3OwnerGuard:
    """S3's bucket-ownership check, which moto does not make: a request that names an
    ``ExpectedBucketOwner`` other than the bucket's account is refused (403 AccessDenied), and
    every S3 request is recorded with who made it - the project's code (a caller in
    ``mlblueprints``, or the transfer manager's threads working for it) or the test - and the
    owner it named, so a test can assert that every request of the project named the owner."""

    def __init__(self, account: str = ACCOUNT):
        self.account = account
        self.requests: list[dict[str, Any]] = []

    def install(self, monkeypatch) -> S3OwnerGuard:
        import sys

        from botocore.client import BaseClient
        from botocore.exceptions import ClientError

        original = BaseClient._make_request
        guard = self

        def make_request(client, operation_model, request_dict, request_context):
            if client.meta.service_model.service_name == "s3":
                owner = request_dict.get("headers", {}).get("x-amz-expected-bucket-owner")
                frame, who = sys._getframe(1), getattr(client, "_mlb_service", "test")
                while frame is not None and who in ("test", "transfer"):
                    module = frame.f_globals.get("__name__", "")
                    if module.startswith("mlblueprints."):
                        who = "project"
                        break
                    if module.startswith("s3transfer.") and who == "test":
                        who = "transfer"
                    frame = frame.f_back
                guard.requests.append({"operation": operation_model.name, "owner": owner, "by": who})
                if owner is not None and owner != guard.account:
                    raise ClientError(
                        {
                            "Error": {"Code": "AccessDenied", "Message": "Access Denied"},
                            "ResponseMetadata": {"HTTPStatusCode": 403},
                        },
                        operation_model.name,
                    )
            return original(client, operation_model, request_dict, request_context)

        monkeypatch.setattr(BaseClient, "_make_request", make_request)
        patch_moto_like_s3(monkeypatch)
        return self

    def without_owner(self) -> list[dict[str, Any]]:
        """The project's S3 requests that named no owner (the transfer manager's included)."""
        return [r for r in self.requests if r["by"] in ("project", "transfer") and r["owner"] != self.account]


def patch_moto_like_s3(monkeypatch) -> None:
    """moto keeps ``BucketKeyEnabled`` of a PutObject but drops the one a CreateMultipartUpload
    names; S3 applies it to the completed object. Carry it over, as S3 does."""
    from moto.s3.models import S3Backend
    from moto.s3.responses import S3Response

    post = S3Response._key_response_post

    def key_response_post(self, request, body, bucket_name, query, key_name):
        out = post(self, request, body, bucket_name, query, key_name)
        flag = request.headers.get("x-amz-server-side-encryption-bucket-key-enabled")
        if flag is not None and "uploads" in query:
            upload = re.search(r"<UploadId>([^<]+)</UploadId>", out[2] if isinstance(out[2], str) else out[2].decode())
            self.backend.get_bucket(bucket_name).multiparts[upload[1]].bucket_key_enabled = str(flag).lower()
        return out

    complete = S3Backend.complete_multipart_upload

    def complete_multipart_upload(self, bucket_name, multipart_id, body):
        key = complete(self, bucket_name, multipart_id, body)
        if key is not None and getattr(key.multipart, "bucket_key_enabled", None) is not None:
            key.bucket_key_enabled = key.multipart.bucket_key_enabled
        return key

    monkeypatch.setattr(S3Response, "_key_response_post", key_response_post)
    monkeypatch.setattr(S3Backend, "complete_multipart_upload", complete_multipart_upload)


class TwinRejects(Exception):
    """What Athena would answer a statement with (the query ends FAILED with this reason)."""


@dataclass
class TwinTable:
    """A table of the Athena twin: an Iceberg table (from its Glue definition) or a landing table
    (external, over S3 objects, read the way its SerDe reads them)."""

    name: str
    kind: str  # iceberg | landing
    columns: list[str]
    partition: str | None = None  # DuckDB expression of a row's partition (None: unpartitioned)
    partition_columns: tuple[str, ...] = ()  # what an OPTIMIZE predicate may name
    location: str = ""
    fmt: str = ""
    serde: dict[str, str] = field(default_factory=dict)
    skip_header: int = 0
    loaded: dict[str, str] = field(default_factory=dict)  # S3 key -> ETag read


_GLUE_DUCK_TYPES = {
    "string": "VARCHAR",
    "long": "BIGINT",
    "bigint": "BIGINT",
    "int": "INTEGER",
    "integer": "INTEGER",
    "double": "DOUBLE",
    "float": "FLOAT",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
    "timestamptz": "TIMESTAMP",
    "boolean": "BOOLEAN",
}
# UNLOAD: its formats and, per format, the compressions it accepts (default first)
UNLOAD_COMPRESSION = {
    "PARQUET": ("GZIP", "SNAPPY", "ZSTD", "LZ4", "NONE"),
    "ORC": ("ZLIB", "SNAPPY", "ZSTD", "LZ4", "NONE"),
    "JSON": ("GZIP", "BZIP2", "ZSTD", "LZ4", "NONE"),
    "TEXTFILE": ("GZIP", "BZIP2", "ZSTD", "LZ4", "NONE"),
    "AVRO": ("DEFLATE", "SNAPPY", "ZSTD", "NONE"),
}
UNLOAD_PROPERTIES = {"format", "compression", "compression_level", "field_delimiter", "partitioned_by"}
# table properties ALTER TABLE SET TBLPROPERTIES may set on an Iceberg table in Athena
ICEBERG_TABLE_PROPERTIES = {
    "vacuum_max_snapshot_age_seconds",
    "vacuum_min_snapshots_to_keep",
    "vacuum_max_metadata_files_to_keep",
    "optimize_rewrite_data_file_threshold",
    "optimize_rewrite_delete_file_threshold",
    "write_target_data_file_size_bytes",
    "write_compression",
    "compression_level",
    "format",
}
# functions sqlglot does not know (parsed as anonymous) that Trino / Athena engine v3 has
TRINO_FUNCTIONS = {"json_format", "json_parse", "is_finite", "try", "date_diff", "lpad", "array_join"}
# Trino functions whose DuckDB name differs and that sqlglot does not translate
DUCK_RENAMES = {"IS_FINITE": "ISFINITE"}
MAINTENANCE = re.compile(r"^\s*(?P<op>OPTIMIZE|VACUUM)\s+(?P<table>[^\s]+)(?P<rest>.*)$", re.S | re.I)
EXTERNAL = re.compile(
    r"^\s*CREATE\s+EXTERNAL\s+TABLE\s+(?P<if>IF\s+NOT\s+EXISTS\s+)?`(?P<db>[^`]+)`\.`(?P<name>[^`]+)`\s*"
    r"\((?P<cols>[^)]*)\)\s*ROW\s+FORMAT\s+DELIMITED\s+FIELDS\s+TERMINATED\s+BY\s+'(?P<delim>[^']+)'\s+"
    r"LINES\s+TERMINATED\s+BY\s+'\\n'\s+STORED\s+AS\s+TEXTFILE\s+LOCATION\s+'(?P<location>s3://[^']+/)'\s*$",
    re.S | re.I,
)
DROP = re.compile(r"^\s*DROP\s+TABLE\s+(?P<if>IF\s+EXISTS\s+)?`(?P<db>[^`]+)`\.`(?P<name>[^`]+)`\s*$", re.S | re.I)
ALTER = re.compile(r"^\s*ALTER\s+TABLE\s+(?P<table>[^\s]+)\s+SET\s+TBLPROPERTIES\s*\((?P<props>.*)\)\s*$", re.S | re.I)


class AthenaTwin:
    """Athena's answers under moto, from DuckDB, with Athena's limits and contracts.

    The twin is the engine the aws tests run the generated SQL on, so a wrong statement gives a
    wrong table (and a failing test), not a green one:

    * Tables: an Iceberg table created through Glue (``OpenTableFormatInput``, or a table with
      ``table_type=ICEBERG`` and its Iceberg metadata in S3) becomes a DuckDB table with its
      partition spec; a landing table (OpenCSVSerde / one line per row) is read from its S3
      objects as Athena reads them (CSV fields by position, header skipped, ``"$path"``,
      ``landing_date`` from the object's folder). A test may register read-only views instead.
    * Every statement: at most 262,144 bytes (else StartQueryExecution fails with
      InvalidRequestException); parsed as Trino; no DuckDB-only construct (QUALIFY, ILIKE) and no
      function Trino lacks. Writes (INSERT, MERGE, DELETE) run on DuckDB; each touches at most
      100 partitions (else HIVE_TOO_MANY_OPEN_PARTITIONS); a MERGE must be keyed on the key the
      test registered for its table (the key contract: ``merge_keys``), with no other join
      condition, and fails when a target row matches two source rows (Trino's rule).
    * UNLOAD writes the format and compression its WITH clause names (Parquet, ORC, JSON,
      TEXTFILE; AVRO is refused by the twin), under an empty prefix, SSE-KMS.
    * OPTIMIZE / VACUUM / ALTER TABLE SET TBLPROPERTIES: names unquoted, OPTIMIZE's predicate on
      partition columns only and over at most 100 partitions, known table properties only;
      ``more_runs[(op, table)] = n`` makes the next n runs end ICEBERG_*_MORE_RUNS_NEEDED.

    A statement the twin rejects ends FAILED with the reason Athena would give (or the contract
    it breaks), visible to the operator through GetQueryExecution.
    """

    def __init__(self, database: str, tmp: Path, kms: str = "", con: duckdb.DuckDBPyConnection | None = None):
        self.database = database
        self.tmp = tmp
        self.kms = kms
        self.con = con or duckdb.connect()
        self.con.execute(f'CREATE SCHEMA IF NOT EXISTS "{database}"')
        self.executions: list[dict[str, Any]] = []
        self.lock = threading.RLock()
        self.tables: dict[str, TwinTable] = {}
        self.merge_keys: dict[str, tuple[str, ...]] = {}
        self.more_runs: dict[tuple[str, str], int] = {}
        self.failures: dict[str, str] = {}
        self.writes: list[dict[str, Any]] = []
        self.unloads: list[dict[str, Any]] = []
        self.maintenance: list[dict[str, Any]] = []
        self.properties: dict[str, dict[str, str]] = defaultdict(dict)
        self.lagging: set[str] = set()  # tables whose writes succeed but are not there yet
        self._s3 = boto3.client("s3", region_name=REGION)
        self._s3._mlb_service = "athena"  # the twin's own S3 calls are the service's, not the project's

    # ------------------------------------------------------------ installation

    def install(self, monkeypatch) -> AthenaTwin:
        from moto.athena.responses import AthenaResponse
        from moto.core.exceptions import JsonRESTError
        from moto.glue.models import GlueBackend

        original = AthenaBackend.start_query_execution
        twin = self

        def start_query_execution(self, query, context, config, workgroup, execution_parameters):
            if len(query.encode()) > MAX_QUERY_BYTES:  # refused before it runs, as Athena does
                raise JsonRESTError(
                    "InvalidRequestException",
                    f"'queryString' failed to satisfy constraint: Member must have length less than or equal to {MAX_QUERY_BYTES}",
                )
            exec_id = original(self, query, context, config, workgroup, execution_parameters)
            if (context or {}).get("Database", twin.database) == twin.database:
                twin.answer(self, exec_id, query, context, config, workgroup)
            return exec_id

        describe = AthenaResponse.get_query_execution

        def get_query_execution(self):
            out = json.loads(describe(self))
            reason = twin.failures.get(out["QueryExecution"]["QueryExecutionId"])
            if reason is not None:
                out["QueryExecution"]["Status"].update(
                    State="FAILED",
                    StateChangeReason=reason,
                    AthenaError={"ErrorCategory": 2, "ErrorType": 1000, "Retryable": False, "ErrorMessage": reason},
                )
            return json.dumps(out)

        create_table = GlueBackend.create_table

        def glue_create_table(self, database_name, table_name, table_input, open_table_format_input=None):
            table = create_table(self, database_name, table_name, table_input, open_table_format_input)
            if database_name == twin.database:
                twin.define(table_name, table_input, open_table_format_input)
            return table

        monkeypatch.setattr(AthenaBackend, "start_query_execution", start_query_execution)
        monkeypatch.setattr(AthenaResponse, "get_query_execution", get_query_execution)
        monkeypatch.setattr(GlueBackend, "create_table", glue_create_table)
        return self

    def expect_merge_keys(self, uc: Any) -> AthenaTwin:
        """The MERGE key contract of a use case's lakehouse tables, from its YAML: Silver and Gold
        by their primary key, quarantine and duplicates by record identity."""
        for ds_name, ds in uc.datasets.items():
            self.merge_keys[f"{ds_name}_silver"] = tuple(ds.primary_key)
            self.merge_keys[f"{ds_name}_quarantine"] = ("_file_checksum", "_line_number")
            self.merge_keys[f"{ds_name}_duplicates"] = ("_file_checksum", "_line_number")
        for g, spec in uc.gold.items():
            self.merge_keys[g] = tuple(spec.primary_key)
        return self

    def _exists(self, name: str) -> bool:
        return bool(
            self.con.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                [self.database, name],
            ).fetchall()
        )

    def define(self, name: str, table_input: dict[str, Any], otf: dict[str, Any] | None) -> None:
        """A table created through Glue, as Athena would see it."""
        with self.lock:
            if self._exists(name):  # a view the test registered
                return
            params = table_input.get("Parameters") or {}
            sd = table_input.get("StorageDescriptor") or {}
            serde = (sd.get("SerdeInfo") or {}).get("SerializationLibrary", "")
            if otf:
                ice = otf["IcebergInput"]["CreateIcebergTableInput"]
                fields = ice["Schema"]["Fields"]
                cols = [(f["Name"], f["Type"]) for f in fields]
                by_id = {f["Id"]: f["Name"] for f in fields}
                spec = [(by_id[f["SourceId"]], f["Transform"]) for f in ice.get("PartitionSpec", {}).get("Fields", [])]
                self._create_iceberg(name, cols, spec)
            elif str(params.get("table_type", "")).upper() == "ICEBERG":
                cols = [(c["Name"], c["Type"]) for c in sd.get("Columns", [])]
                self._create_iceberg(name, cols, self._spec_from_metadata(params.get("metadata_location"), cols))
            elif table_input.get("PartitionKeys") and serde:
                fmt = "csv" if "OpenCSVSerde" in serde else "lines"
                cols = [c["Name"] for c in sd["Columns"]]
                ddl = ", ".join(f'"{c}" VARCHAR' for c in [*cols, "$path", "landing_date"])
                self.con.execute(f'CREATE TABLE "{self.database}"."{name}" ({ddl})')
                self.tables[name] = TwinTable(
                    name,
                    "landing",
                    cols,
                    location=sd["Location"],
                    fmt=fmt,
                    serde=(sd.get("SerdeInfo") or {}).get("Parameters") or {},
                    skip_header=int(params.get("skip.header.line.count", "0")),
                )

    def _spec_from_metadata(self, location: str | None, cols: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if not location:
            return []
        bucket, key = req.split_s3_uri(location)
        try:
            meta = json.loads(self._s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except Exception:  # noqa: BLE001 - a table whose metadata the test did not write
            return []
        ids = {f["id"]: f["name"] for s in meta.get("schemas", []) for f in s.get("fields", [])}
        spec = next(
            (s for s in meta.get("partition-specs", []) if s.get("spec-id") == meta.get("default-spec-id", 0)), {}
        )
        return [(ids[f["source-id"]], f["transform"]) for f in spec.get("fields", [])]

    def _create_iceberg(self, name: str, cols: list[tuple[str, str]], spec: list[tuple[str, str]]) -> None:
        def duck_type(t: str) -> str:
            t = t.strip().lower()
            return _GLUE_DUCK_TYPES.get(t) or t.upper()

        ddl = ", ".join(f'"{c}" {duck_type(t)}' for c, t in cols)
        self.con.execute(f'CREATE TABLE "{self.database}"."{name}" ({ddl})')
        parts, exprs = [], []
        for column, transform in spec:
            if transform == "identity":
                exprs.append(f'"{column}"')
                parts.append(column)
            elif m := re.fullmatch(r"truncate\[(\d+)\]", transform):
                exprs.append(f'substr("{column}", 1, {m[1]})')
            elif transform == "day":
                exprs.append(f'CAST("{column}" AS DATE)')
            else:
                raise AssertionError(f"the twin has no partition transform {transform!r}")
        partition = None if not exprs else exprs[0] if len(exprs) == 1 else "concat_ws('/', " + ", ".join(exprs) + ")"
        self.tables[name] = TwinTable(name, "iceberg", [c for c, _ in cols], partition, tuple(parts))

    # ------------------------------------------------------------ landing tables, read like Athena

    def _load_landing(self, t: TwinTable) -> None:
        bucket, prefix = req.split_s3_uri(t.location)
        rows: list[list[str | None]] = []
        replaced: list[str] = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                key = o["Key"]
                if t.loaded.get(key) == o["ETag"] or Path(key).name.startswith(("_", ".")):
                    continue
                folder = key[len(prefix) :].split("/", 1)[0]
                text = self._s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8", "replace")
                path = f"s3://{bucket}/{key}"
                rows += [[*r, path, folder] for r in self._parse(t, text)]
                replaced.append(path)
                t.loaded[key] = o["ETag"]
        if not replaced:
            return
        import pyarrow as pa

        names = [*t.columns, "$path", "landing_date"]
        batch = pa.table({n: pa.array([r[i] for r in rows], pa.string()) for i, n in enumerate(names)})
        self.con.register("_landing_batch", batch)
        self.con.register("_landing_paths", pa.table({"path": pa.array(replaced, pa.string())}))
        try:
            self.con.execute(
                f'DELETE FROM "{self.database}"."{t.name}" WHERE "$path" IN (SELECT path FROM _landing_paths)'
            )
            self.con.execute(f'INSERT INTO "{self.database}"."{t.name}" SELECT * FROM _landing_batch')
        finally:
            self.con.unregister("_landing_batch")
            self.con.unregister("_landing_paths")

    @staticmethod
    def _parse(t: TwinTable, text: str) -> list[list[str | None]]:
        lines = text.splitlines()
        if t.fmt == "lines":  # one row per line, the whole line in the only column
            return [[line] for line in lines]
        n = len(t.columns)
        if t.fmt == "delimited":  # LazySimpleSerDe: no quoting, \\N is NULL
            cut = [line.split(t.serde["field.delim"]) for line in lines if line]
            return [[None if v == "\\N" else v for v in (r + [None] * n)[:n]] for r in cut]
        rows = csv.reader(
            lines[t.skip_header :],
            delimiter=t.serde.get("separatorChar", ","),
            quotechar=t.serde.get("quoteChar", '"'),
            escapechar=t.serde.get("escapeChar") or None,
        )
        return [(r + [None] * n)[:n] for r in rows]  # by position: padded, or cut

    # ------------------------------------------------------------ dialect

    @staticmethod
    def duck(trino_sql: str) -> str:
        out = sqlglot.transpile(trino_sql, read="trino", write="duckdb")[0]
        for trino, duck in DUCK_RENAMES.items():
            out = re.sub(rf"\b{trino}\(", f"{duck}(", out)
        return out

    @staticmethod
    def check_trino(sql: str) -> exp.Expression:
        """Parse as Trino; refuse what Athena (Trino) would not run."""
        try:
            tree = sqlglot.parse_one(sql, read="trino", error_level=sqlglot.ErrorLevel.RAISE)
        except sqlglot.errors.ParseError as exc:
            raise TwinRejects(f"SYNTAX_ERROR: {str(exc)[:300]}") from None
        if isinstance(tree, exp.Command):
            raise TwinRejects(f"SYNTAX_ERROR: not a statement Trino parses: {sql[:80]}")
        if tree.find(exp.Qualify):
            raise TwinRejects("SYNTAX_ERROR: QUALIFY is not Trino SQL")
        if tree.find(exp.ILike):
            raise TwinRejects("SYNTAX_ERROR: ILIKE is not Trino SQL")
        for fn in tree.find_all(exp.Anonymous):
            if str(fn.name).lower() not in TRINO_FUNCTIONS:
                raise TwinRejects(f"FUNCTION_NOT_FOUND: line 1: Function '{fn.name}' not registered")
        return tree

    @staticmethod
    def text(v: Any) -> str | None:
        if v is None:
            return None
        if isinstance(v, list):
            return "[" + ", ".join(str(x) for x in v) + "]"
        return v.isoformat() if hasattr(v, "isoformat") else str(v)

    # ------------------------------------------------------------ statements

    def answer(self, backend: Any, exec_id: str, query: str, context: Any, config: Any, workgroup: str) -> None:
        with self.lock:
            record = {"id": exec_id, "query": query, "context": context, "config": config, "workgroup": workgroup}
            self.executions.append(record)
            try:
                self._run(backend, exec_id, query)
            except TwinRejects as exc:
                record["failed"] = self.failures[exec_id] = str(exc)
            except duckdb.Error as exc:
                record["failed"] = self.failures[exec_id] = f"GENERIC_USER_ERROR: {exc}"

    def _run(self, backend: Any, exec_id: str, query: str) -> None:
        head = query.lstrip().split(None, 1)[0].upper()
        if head == "UNLOAD":
            return self._unload(exec_id, query)
        if head in ("OPTIMIZE", "VACUUM"):
            return self._maintain(query)
        if head == "ALTER":
            return self._alter(query)
        if head == "CREATE":
            return self._create_external(query)
        if head == "DROP":
            return self._drop(query)
        tree = self.check_trino(query)
        if isinstance(tree, exp.Query):
            for t in self._referenced(tree):
                self._refresh(t)
            cur = self.con.execute(self.duck(query))
            cols = [d[0] for d in cur.description]
            header = {"Data": [{"VarCharValue": c} for c in cols]}
            data = [
                {"Data": [{"VarCharValue": self.text(v)} if v is not None else {} for v in r]} for r in cur.fetchall()
            ]
            backend.query_results[exec_id] = QueryResults(
                rows=[header, *data], column_info=[{"Name": c, "Type": "varchar"} for c in cols]
            )
            return None
        if isinstance(tree, (exp.Insert, exp.Merge, exp.Delete)):
            return self._write(tree, query)
        raise TwinRejects(f"NOT_SUPPORTED: the twin does not run {head} statements")

    def _referenced(self, tree: exp.Expression) -> list[TwinTable]:
        names = {t.name for t in tree.find_all(exp.Table)}
        return [self.tables[n] for n in names if n in self.tables]

    def _refresh(self, t: TwinTable) -> None:
        if t.kind == "landing":
            self._load_landing(t)

    def _table(self, node: exp.Table) -> TwinTable:
        if node.db and node.db != self.database:
            raise TwinRejects(f"TABLE_NOT_FOUND: {node.db}.{node.name}")
        if node.name not in self.tables:
            raise TwinRejects(f"TABLE_NOT_FOUND: {self.database}.{node.name} is not a table the twin knows")
        return self.tables[node.name]

    def _write(self, tree: exp.Expression, query: str) -> None:
        for t in self._referenced(tree):
            self._refresh(t)
        target_node = tree.this if not isinstance(tree, exp.Insert) else tree.this.find(exp.Table)
        target = self._table(target_node)
        if isinstance(tree, exp.Merge):
            self._check_merge(tree, target)
        touched = self._touched(tree, target)
        if touched > MAX_OPEN_PARTITIONS:
            raise TwinRejects(
                f"HIVE_TOO_MANY_OPEN_PARTITIONS: Exceeded limit of {MAX_OPEN_PARTITIONS} open writers for "
                f"partitions/buckets ({touched} partitions of {target.name})"
            )
        if target.name not in self.lagging:
            self.con.execute(self.duck(query))
        self.writes.append(
            {
                "kind": type(tree).__name__.lower(),
                "table": target.name,
                "partitions": touched,
                "bytes": len(query.encode()),
            }
        )

    def _check_merge(self, tree: exp.Merge, target: TwinTable) -> None:
        keys = self.merge_keys.get(target.name)
        if keys is None:
            raise AssertionError(f"no MERGE key registered for {target.name}: call expect_merge_keys")
        t_alias = tree.this.alias_or_name
        using = tree.args["using"]
        s_alias = using.alias_or_name
        on = tree.args["on"]
        conjuncts = list(on.flatten()) if isinstance(on, exp.And) else [on]
        joined: set[str] = set()
        for c in conjuncts:
            cols = list(c.find_all(exp.Column))
            if (
                isinstance(c, exp.EQ)
                and isinstance(c.left, exp.Column)
                and isinstance(c.right, exp.Column)
                and {c.left.table, c.right.table} == {t_alias, s_alias}
                and c.left.name == c.right.name
            ):
                joined.add(c.left.name)
            elif not cols or any(col.table != t_alias for col in cols):
                raise TwinRejects(
                    f"MERGE key contract: MERGE INTO {target.name} joins on {c.sql('trino')!r}, not only on its key {list(keys)}"
                )
        if joined != set(keys):
            raise TwinRejects(
                f"MERGE key contract: MERGE INTO {target.name} is keyed on {sorted(joined)}, its key is {list(keys)}"
            )
        src = self.duck(using.this.sql("trino")) if isinstance(using, exp.Subquery) else None
        src_rel = f"({src})" if src else self.duck(using.sql("trino"))
        on_duck = self.duck(f"SELECT 1 WHERE {on.sql('trino')}").split("WHERE", 1)[1]
        twice = self.con.execute(
            f'SELECT count(*) FROM (SELECT {t_alias}.rowid FROM "{self.database}"."{target.name}" AS {t_alias} '
            f"JOIN {src_rel} AS {s_alias} ON {on_duck} GROUP BY 1 HAVING count(*) > 1)"
        ).fetchone()[0]
        if twice:
            raise TwinRejects(
                f"MERGE_TARGET_ROW_MULTIPLE_MATCHES: One MERGE target table row matched more than one source row "
                f"({twice} rows of {target.name})"
            )

    def _touched(self, tree: exp.Expression, target: TwinTable) -> int:
        """How many partitions of the target a write writes (new rows, and rows it deletes or
        replaces)."""
        if target.partition is None:
            return 1
        fq_target = f'"{self.database}"."{target.name}"'
        if isinstance(tree, exp.Delete):
            where = tree.args.get("where")
            cond = self.duck(f"SELECT 1 WHERE {where.this.sql('trino')}").split("WHERE", 1)[1] if where else "TRUE"
            sql = f"SELECT count(DISTINCT {target.partition}) FROM {fq_target} WHERE {cond}"
            return self.con.execute(sql).fetchone()[0]
        if isinstance(tree, exp.Insert):
            names = [c.name for c in tree.this.expressions] if isinstance(tree.this, exp.Schema) else target.columns
            select = self.duck(tree.expression.sql("trino"))
            alias = ", ".join(f'"{n}"' for n in names)
            return self.con.execute(
                f"SELECT count(DISTINCT {target.partition}) FROM ({select}) AS ins({alias})"
            ).fetchone()[0]
        # MERGE: the partitions of the target rows it matches (updated or deleted) and of the rows
        # it writes (inserted, or updated to new values), from the source
        t_alias, using = tree.this.alias_or_name, tree.args["using"]
        s_alias = using.alias_or_name
        src_rel = f"({self.duck(using.this.sql('trino'))})" if isinstance(using, exp.Subquery) else using.sql("duckdb")
        on_duck = self.duck(f"SELECT 1 WHERE {tree.args['on'].sql('trino')}").split("WHERE", 1)[1]
        t_part = re.sub(r'"([^"]+)"', rf'{t_alias}."\1"', target.partition)
        parts = []
        whens = tree.args.get("whens")
        clauses = whens.expressions if whens is not None else tree.args.get("expressions", [])
        for when in clauses:
            then = when.args.get("then")
            if when.args.get("matched"):
                parts.append(
                    f"SELECT {t_part} AS p FROM {fq_target} AS {t_alias} JOIN {src_rel} AS {s_alias} ON {on_duck}"
                )
            values = None
            if isinstance(then, exp.Insert):
                names = [c.name for c in then.this.expressions] if isinstance(then.this, exp.Tuple) else []
                vals = then.expression.expressions if isinstance(then.expression, exp.Tuple) else []
                values = dict(zip(names, vals))
            elif isinstance(then, exp.Update):
                values = {e.this.name: e.expression for e in then.expressions}
            if values:
                mapped = target.partition
                for col in re.findall(r'"([^"]+)"', target.partition):
                    if col in values:
                        mapped = mapped.replace(f'"{col}"', self.duck(f"SELECT {values[col].sql('trino')}")[7:])
                if mapped != target.partition:
                    parts.append(f"SELECT {mapped} AS p FROM {src_rel} AS {s_alias}")
        if not parts:
            return 0
        return self.con.execute(f"SELECT count(DISTINCT p) FROM ({' UNION ALL '.join(parts)})").fetchone()[0]

    # ------------------------------------------------------------ UNLOAD

    def _unload(self, exec_id: str, query: str) -> None:
        m = UNLOAD.match(query)
        if not m:
            raise TwinRejects("SYNTAX_ERROR: UNLOAD (<select>) TO '<s3 prefix>' WITH (...)")
        props = {k.lower(): v for k, v in re.findall(r"(\w+)\s*=\s*'([^']*)'", m["props"] or "")}
        if set(props) - UNLOAD_PROPERTIES:
            raise TwinRejects(
                f"INVALID_TABLE_PROPERTY: UNLOAD has no properties {sorted(set(props) - UNLOAD_PROPERTIES)}"
            )
        fmt = props.get("format", "").upper()
        if fmt not in UNLOAD_COMPRESSION:
            raise TwinRejects(
                f"INVALID_TABLE_PROPERTY: UNLOAD format {fmt or '(none)'} is not one of {sorted(UNLOAD_COMPRESSION)}"
            )
        codec = props.get("compression", UNLOAD_COMPRESSION[fmt][0]).upper()
        if codec not in UNLOAD_COMPRESSION[fmt]:
            raise TwinRejects(f"INVALID_TABLE_PROPERTY: compression {codec} is not supported for {fmt}")
        tree = self.check_trino(m["body"])
        for t in self._referenced(tree):
            self._refresh(t)
        bucket, key = req.split_s3_uri(m["target"])
        if self._s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0):
            raise TwinRejects(f"HIVE_PATH_ALREADY_EXISTS: Target directory for UNLOAD {m['target']} is not empty")
        table = self.con.sql(self.duck(m["body"])).to_arrow_table()
        out = self.tmp / f"unload-{exec_id}"
        self._write_format(table, out, fmt, codec, props)
        self._s3.put_object(
            Bucket=bucket,
            Key=f"{key}{exec_id}_0",
            Body=out.read_bytes(),
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId=self.kms,
        )
        self.unloads.append({"target": m["target"], "format": fmt, "compression": codec, "rows": table.num_rows})

    @staticmethod
    def _write_format(table: Any, out: Path, fmt: str, codec: str, props: dict[str, str]) -> None:
        import gzip

        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        if fmt == "PARQUET":
            pq.write_table(table, out, compression=codec.lower() if codec != "NONE" else "none")
        elif fmt == "ORC":
            import pyarrow.orc as orc

            orc.write_table(table, out, compression={"ZLIB": "zlib", "NONE": "uncompressed"}.get(codec, codec.lower()))
        elif fmt in ("JSON", "TEXTFILE"):
            if fmt == "JSON":
                text = "".join(json.dumps(r, default=str) + "\n" for r in table.to_pylist()).encode()
            else:
                buf = io.BytesIO()
                delimiter = props.get("field_delimiter", "\x01")
                pacsv.write_csv(
                    table, buf, pacsv.WriteOptions(include_header=False, delimiter=delimiter, quoting_style="none")
                )
                text = buf.getvalue()
            if codec not in ("GZIP", "NONE"):
                raise TwinRejects(f"NOT_SUPPORTED: the twin writes {fmt} with GZIP or no compression only")
            out.write_bytes(gzip.compress(text) if codec == "GZIP" else text)
        else:
            raise TwinRejects(f"NOT_SUPPORTED: the twin does not write {fmt}")

    # ------------------------------------------------------------ maintenance

    def _named_table(self, text: str) -> TwinTable:
        if '"' in text:
            raise TwinRejects(f"SYNTAX_ERROR: {text}: Athena's maintenance statements do not take double quotes")
        db, _, name = text.replace("`", "").rpartition(".")
        if db and db != self.database:
            raise TwinRejects(f"TABLE_NOT_FOUND: {text}")
        if name not in self.tables or self.tables[name].kind != "iceberg":
            raise TwinRejects(f"TABLE_NOT_FOUND: {text} is not an Iceberg table")
        return self.tables[name]

    def _maintain(self, query: str) -> None:
        m = MAINTENANCE.match(query)
        t = self._named_table(m["table"])
        op = m["op"].upper()
        rest = m["rest"].strip()
        entry: dict[str, Any] = {"op": op.lower(), "table": t.name}
        if op == "OPTIMIZE":
            w = re.fullmatch(r"REWRITE\s+DATA\s+USING\s+BIN_PACK(\s+WHERE\s+(?P<where>.+))?", rest, re.S | re.I)
            if not w:
                raise TwinRejects("SYNTAX_ERROR: OPTIMIZE <table> REWRITE DATA USING BIN_PACK [WHERE <predicate>]")
            where = w["where"]
            if where:
                cond = sqlglot.parse_one(where, read="trino")
                named = {c.name for c in cond.find_all(exp.Column)}
                if not named <= set(t.partition_columns):
                    raise TwinRejects(
                        f"INVALID_ANALYZE_PROPERTY: OPTIMIZE on {t.name}: only partition columns are allowed in the "
                        f"WHERE clause ({sorted(named - set(t.partition_columns))} are not)"
                    )
                n = self.con.execute(
                    f'SELECT count(DISTINCT {t.partition}) FROM "{self.database}"."{t.name}" WHERE {self.duck("SELECT 1 WHERE " + where).split("WHERE", 1)[1]}'
                ).fetchone()[0]
                if n > MAX_OPEN_PARTITIONS:
                    raise TwinRejects(f"HIVE_TOO_MANY_OPEN_PARTITIONS: OPTIMIZE of {n} partitions of {t.name}")
                entry.update(where=where, partitions=n)
        elif rest:
            raise TwinRejects("SYNTAX_ERROR: VACUUM <table>")
        else:
            entry["retention_seconds"] = self.properties[t.name].get("vacuum_max_snapshot_age_seconds")
        left = self.more_runs.get((op.lower(), t.name), 0)
        if left:
            self.more_runs[(op.lower(), t.name)] = left - 1
            self.maintenance.append({**entry, "more_runs_needed": True})
            raise TwinRejects(
                f"ICEBERG_{op}_MORE_RUNS_NEEDED: {op} did part of the work on {t.name}; run it again to process the rest"
            )
        self.maintenance.append(entry)

    def _create_external(self, query: str) -> None:
        """Hive DDL of an external table over delimited text (as Athena takes it): every column a
        string, read from the objects under its location (objects named ``_*`` or ``.*`` ignored)."""
        m = EXTERNAL.match(query)
        if not m:
            raise TwinRejects("NOT_SUPPORTED: the twin creates only external delimited-text tables (Hive DDL)")
        if m["db"] != self.database:
            raise TwinRejects(f"SCHEMA_NOT_FOUND: {m['db']}")
        cols = [tuple(c.strip().split()) for c in m["cols"].split(",")]
        if any(len(c) != 2 or not re.fullmatch(r"`[^`]+`", c[0]) or c[1].lower() != "string" for c in cols):
            raise TwinRejects(
                f"NOT_SUPPORTED: the twin reads delimited text into `name` string columns only: {m['cols']}"
            )
        names = [c[0].strip("`") for c in cols]
        if self._exists(m["name"]):
            if m["if"]:
                return
            raise TwinRejects(f"ALREADY_EXISTS: Table {self.database}.{m['name']} already exists")
        ddl = ", ".join(f'"{c}" VARCHAR' for c in [*names, "$path", "landing_date"])
        self.con.execute(f'CREATE TABLE "{self.database}"."{m["name"]}" ({ddl})')
        self.tables[m["name"]] = TwinTable(
            m["name"], "landing", names, location=m["location"], fmt="delimited", serde={"field.delim": m["delim"]}
        )

    def _drop(self, query: str) -> None:
        m = DROP.match(query)
        if not m:
            raise TwinRejects("NOT_SUPPORTED: DROP TABLE [IF EXISTS] `db`.`table`")
        if m["db"] != self.database or not self._exists(m["name"]):
            if m["if"]:
                return
            raise TwinRejects(f"TABLE_NOT_FOUND: {m['db']}.{m['name']}")
        if self.tables.get(m["name"]) and self.tables[m["name"]].kind != "landing":
            raise TwinRejects(f"NOT_SUPPORTED: the twin drops only external tables, not {m['name']}")
        self.con.execute(f'DROP TABLE "{self.database}"."{m["name"]}"')
        self.tables.pop(m["name"], None)

    def _alter(self, query: str) -> None:
        m = ALTER.match(query)
        if not m:
            raise TwinRejects("SYNTAX_ERROR: ALTER TABLE <table> SET TBLPROPERTIES (...)")
        t = self._named_table(m["table"])
        props = dict(re.findall(r"'([^']+)'\s*=\s*'([^']*)'", m["props"]))
        if not props or set(props) - ICEBERG_TABLE_PROPERTIES:
            raise TwinRejects(f"INVALID_TABLE_PROPERTY: {sorted(set(props) - ICEBERG_TABLE_PROPERTIES) or m['props']}")
        self.properties[t.name].update(props)
        self.maintenance.append({"op": "alter", "table": t.name, "properties": props})


class FeatureStoreTwin:
    """sagemaker-featurestore-runtime in memory, behind real boto3 clients.

    A client validates every request against botocore's service model before this sees it; it
    validates once more (so a client built with validation off would still be caught), keeps
    every PutRecord, and answers BatchGetRecord from its online store (a record replaces the
    stored one when its event time is at least as new). ``faults`` maps a record identifier to
    error codes returned on its next attempts (throttling, 5xx)."""

    STATUS = {"ThrottlingException": 400, "ServiceUnavailable": 503, "InternalFailure": 500, "ValidationError": 400}
    SERVICE = "sagemaker-featurestore-runtime"

    def __init__(self):
        self.lock = threading.Lock()
        self.puts: list[dict] = []
        self.offline: list[dict] = []
        self.online: dict[tuple[str, str], dict[str, str]] = {}
        self.batch_gets: list[dict] = []
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.failed_attempts = 0

    def attach(self, session_or_client: Any) -> Any:
        """Answer the Feature Store runtime requests of a boto3 session's clients (or of one client)."""
        events = session_or_client.meta.events if hasattr(session_or_client, "meta") else session_or_client.events
        events.register(f"before-parameter-build.{self.SERVICE}", self._keep_params)
        events.register(f"before-call.{self.SERVICE}", self._answer)
        return session_or_client

    @staticmethod
    def _keep_params(params, context, **_):
        context["twin_params"] = copy.deepcopy(params)

    def _answer(self, model, context, **_):
        params = context["twin_params"]
        validate_parameters(params, model.input_shape)
        if model.name == "PutRecord":
            rid = params["Record"][0]["ValueAsString"]
            with self.lock:
                if self.faults.get(rid):
                    code = self.faults[rid].pop(0)
                    self.failed_attempts += 1
                    return self._error(code)
                self.puts.append(params)
                record = {f["FeatureName"]: f["ValueAsString"] for f in params["Record"]}
                if "OfflineStore" in params["TargetStores"]:
                    self.offline.append(record)
                if "OnlineStore" in params["TargetStores"]:
                    key = (params["FeatureGroupName"], rid)
                    old = self.online.get(key)
                    if old is None or fsreq.parse_iso_utc(record["event_time"]) >= fsreq.parse_iso_utc(
                        old["event_time"]
                    ):
                        self.online[key] = record
            return AWSResponse(None, 200, {}, None), {"ResponseMetadata": {"HTTPStatusCode": 200}}
        if model.name == "BatchGetRecord":
            with self.lock:
                self.batch_gets.append(params)
            records = []
            for ident in params["Identifiers"]:
                group = ident["FeatureGroupName"]
                for rid in ident["RecordIdentifiersValueAsString"]:
                    rec = self.online.get((group, rid))
                    if rec is None:
                        continue
                    names = ident.get("FeatureNames") or list(rec)
                    records.append(
                        {
                            "FeatureGroupName": group,
                            "RecordIdentifierValueAsString": rid,
                            "Record": [{"FeatureName": n, "ValueAsString": rec[n]} for n in names if n in rec],
                        }
                    )
            parsed = {"Records": records, "Errors": [], "UnprocessedIdentifiers": []}
            return AWSResponse(None, 200, {}, None), {**parsed, "ResponseMetadata": {"HTTPStatusCode": 200}}
        raise AssertionError(f"unexpected Feature Store call {model.name}")

    def _error(self, code: str):
        status = self.STATUS.get(code, 400)
        return AWSResponse(None, status, {}, None), {
            "Error": {"Code": code, "Message": f"twin says {code}"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }


OFFLINE_GLUE_TYPES = {"Integral": "bigint", "Fractional": "double", "String": "string"}


def offline_store_table(group_request: dict[str, Any], account: str = ACCOUNT, region: str = REGION) -> None:
    """What SageMaker does with an Iceberg offline store when it creates a feature group: it
    registers the offline table in the Glue database the request names - the features (String
    -> string, Integral -> bigint, Fractional -> double) plus ``write_time``,
    ``api_invocation_time`` and ``is_deleted`` - with its Iceberg metadata in S3, partitioned by
    day of the event-time string (``<event time>_trunc``, a ``truncate[10]`` of the ISO text)."""
    from moto.glue.models import glue_backends
    from moto.s3.models import s3_backends

    offline = group_request.get("OfflineStoreConfig")
    if not offline or offline.get("TableFormat") != "Iceberg":
        return
    catalog = offline["DataCatalogConfig"]
    name = group_request["FeatureGroupName"]
    cols = [(d["FeatureName"], OFFLINE_GLUE_TYPES[d["FeatureType"]]) for d in group_request["FeatureDefinitions"]]
    cols += [("write_time", "timestamp"), ("api_invocation_time", "timestamp"), ("is_deleted", "boolean")]
    bucket, prefix = req.split_s3_uri(offline["S3StorageConfig"]["S3Uri"])
    base = f"{prefix}/{account}/sagemaker/{region}/offline-store/{name}-1700000000"
    fields = [{"id": i, "name": n, "required": False, "type": t} for i, (n, t) in enumerate(cols, start=1)]
    event_time = next(f["id"] for f in fields if f["name"] == group_request["EventTimeFeatureName"])
    metadata = {
        "format-version": 2,
        "location": f"s3://{bucket}/{base}",
        "current-schema-id": 0,
        "schemas": [{"schema-id": 0, "type": "struct", "fields": fields}],
        "default-spec-id": 0,
        "partition-specs": [
            {
                "spec-id": 0,
                "fields": [
                    {
                        "source-id": event_time,
                        "field-id": 1000,
                        "name": f"{group_request['EventTimeFeatureName']}_trunc",
                        "transform": "truncate[10]",
                    }
                ],
            }
        ],
        "properties": {},
    }
    key = f"{base}/metadata/00000-{abs(hash(name)) % 10**8:08d}.metadata.json"
    s3_backends[account]["aws"].put_object(bucket, key, json.dumps(metadata).encode())
    glue_backends[account][region].create_table(
        catalog["Database"],
        catalog["TableName"],
        {
            "Name": catalog["TableName"],
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {"table_type": "ICEBERG", "metadata_location": f"s3://{bucket}/{key}"},
            "StorageDescriptor": {
                "Columns": [{"Name": n, "Type": t} for n, t in cols],
                "Location": f"s3://{bucket}/{base}",
            },
        },
    )


def patch_moto_like_sagemaker(monkeypatch) -> None:
    """Patch moto's feature groups where moto differs from SageMaker: it drops
    ``OnlineStoreConfig`` and ``Description``, raises ``KeyError`` (not ``ResourceNotFound``)
    from DescribeFeatureGroup of an unknown group, and registers no offline store table in Glue
    (see :func:`offline_store_table`)."""
    from moto.sagemaker import models as sm_models
    from moto.sagemaker.exceptions import ResourceNotFound
    from moto.sagemaker.responses import SageMakerResponse

    describe_backend = sm_models.SageMakerModelBackend.describe_feature_group

    def describe_feature_group(self, feature_group_name):
        try:
            return describe_backend(self, feature_group_name)
        except KeyError:
            raise ResourceNotFound(f"Resource Not Found: FeatureGroup {feature_group_name} does not exist") from None

    create_response = SageMakerResponse.create_feature_group

    def create_feature_group(self):
        out = create_response(self)
        arn = next(
            fg
            for fg in self.sagemaker_backend.feature_groups
            if fg.endswith("/" + self._get_param("FeatureGroupName").lower())
        )
        group = self.sagemaker_backend.feature_groups[arn]
        group.online_store_config = self._get_param("OnlineStoreConfig")
        group.description = self._get_param("Description")
        offline_store_table(json.loads(self.body))
        return out

    describe_group = sm_models.FeatureGroup.describe

    def describe(self):
        out = describe_group(self)
        for key, attr in (("OnlineStoreConfig", "online_store_config"), ("Description", "description")):
            if getattr(self, attr, None) is not None:
                out[key] = getattr(self, attr)
        return out

    monkeypatch.setattr(sm_models.SageMakerModelBackend, "describe_feature_group", describe_feature_group)
    monkeypatch.setattr(SageMakerResponse, "create_feature_group", create_feature_group)
    monkeypatch.setattr(sm_models.FeatureGroup, "describe", describe)


def run_direct(uc: Any, rt: Any, value: Any, run: Any) -> Any:
    """Run a backend's result to completion without Airflow (service calls run synchronously with
    the runtime's clients, as :mod:`mlblueprints.aws.direct` does)."""
    from mlblueprints.aws import direct
    from mlblueprints.core import service
    from mlblueprints.core.context import StepContext

    ctx = StepContext(uc=uc, run=run, runtime_factory=lambda: rt)
    return service.complete(ctx, value, direct.runner(rt, uc, run))
