"""Point-in-time training sets on the aws target, built in the worker from Athena UNLOADs.

The join runs with the same SQL as locally (:func:`mlblueprints.features.core.pit_sql` in
DuckDB). Its inputs are UNLOADed by Athena (results encrypted with the use case's KMS key) to an
S3 prefix unique per run and try, downloaded and deleted again:

* the label events: the columns the set needs from the Gold table ``training_sets.<name>.labels.source``;
* each feature view's offline store: the Glue table ``fv_<view>_v<n>`` SageMaker Feature Store
  registers, which is append-only, so it is deduplicated per (record identifier, ``event_time``)
  keeping the newest ``write_time`` (then ``api_invocation_time``); a record whose newest write
  is a deletion (``is_deleted``) is left out. Its String / Integral / Fractional columns are cast
  back to the view's types in the worker.

:func:`prepare` checks the inputs against the Glue Data Catalog and returns the UNLOADs as a
service call; :func:`finish` joins, writes one Parquet file under the job directory and uploads
it (SSE-KMS) to ``<prefix>/training-sets/<name>/<run id>/ts_<name>-<sha256[:16]>.parquet``: the
key is content-addressed, so the object never changes once written. Lineage:

* ``snapshot_id`` and ``s3_uri`` are that object's S3 URI (``sha256`` its digest): what the later
  steps (and the training job) read, and what the model package records;
* ``source_snapshots`` maps each Glue table read to its Iceberg **metadata location** (the
  ``metadata_location`` Glue holds: the table's exact state) as it was before and still was
  after the UNLOAD; when Glue has none, or a commit landed while the query ran (so the version
  read is not known from the catalog alone), the value is ``athena:<query execution id>``.
  ``source_queries`` always maps each table to its UNLOAD's query execution id.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.aws import featurestore as fsreq
from mlblueprints.aws import requests as req
from mlblueprints.aws import s3io
from mlblueprints.aws.session import AwsRuntime
from mlblueprints.config import UseCase
from mlblueprints.core import service
from mlblueprints.core.duck import connect
from mlblueprints.core.naming import safe
from mlblueprints.core.service import ServiceCall
from mlblueprints.features import aws as fa
from mlblueprints.features import core
from mlblueprints.features.core import TrainingSetError, ViewColumns
from mlblueprints.lakehouse.aws import fq, unload_statement
from mlblueprints.lakehouse.sqlgen import ident, literal, sql_type, to_trino
from mlblueprints.lineage import RunInfo

log = logging.getLogger(__name__)

# the columns Feature Store adds to every offline-store row
WRITE_TIME, API_TIME, IS_DELETED = "write_time", "api_invocation_time", "is_deleted"


def labels_sql(source: str, columns: list[str], label_time: str, label: str) -> str:
    """The label events the point-in-time join needs from the Gold table ``source``."""
    cols = ", ".join(ident(c) for c in columns)
    return f"SELECT {cols} FROM {source} WHERE {ident(label_time)} IS NOT NULL AND {ident(label)} IS NOT NULL"


def offline_store_sql(uc: UseCase, view: str, cols: ViewColumns, source: str) -> str:
    """A view's Feature Store offline store, deduplicated: per (record identifier, event_time)
    the newest write (``write_time``, then ``api_invocation_time``); rows whose newest write is
    a deletion are left out. Columns: the feature group's features (raw Feature Store types)."""
    rid = fsreq.record_identifier_name(uc, view)
    select = ", ".join(ident(n) for n in fsreq.feature_names(cols))
    order = f"{ident(WRITE_TIME)} DESC NULLS LAST, {ident(API_TIME)} DESC NULLS LAST"
    return (
        f"SELECT {select} FROM (SELECT {select}, {ident(IS_DELETED)}, row_number() OVER "
        f"(PARTITION BY {ident(rid)}, {ident(fsreq.EVENT_TIME)} ORDER BY {order}) AS _mlb_newest FROM {source}) AS w "
        f"WHERE _mlb_newest = 1 AND NOT coalesce({ident(IS_DELETED)}, FALSE)"
    )


def _typed_from_store(name: str, type_: str) -> str:
    """A Feature Store column (String / Integral / Fractional) back in the view's type."""
    c = ident(name)
    if type_ == "boolean":
        return f"CAST({c} AS BIGINT) <> 0 AS {c}"
    if type_ in ("timestamp", "date", "int", "bigint", "double", "float", "string"):
        return f"CAST({c} AS {sql_type(type_)}) AS {c}"
    return c


def view_relation_sql(cols: ViewColumns, files: list[str]) -> str:
    """The offline rows of a view in the layout ``pit_sql`` joins: entity keys, ``event_time``
    (TIMESTAMP, from Feature Store's ISO-8601 text), features in the view's types."""
    exprs = [_typed_from_store(k, t) for k, t in cols.entity]
    exprs.append(f"CAST({ident(fsreq.EVENT_TIME)} AS TIMESTAMP) AS event_time")
    exprs += [_typed_from_store(f, t) for f, t in cols.features]
    if files:
        src = f"read_parquet([{', '.join(literal(p) for p in files)}], union_by_name = true)"
        return f"SELECT {', '.join(exprs)} FROM {src}"
    typed = [*cols.entity, ("event_time", "timestamp"), *cols.features]
    return "SELECT " + ", ".join(f"CAST(NULL AS {sql_type(t)}) AS {ident(c)}" for c, t in typed) + " WHERE FALSE"


def glue_table(glue: Any, database: str, name: str) -> dict[str, Any] | None:
    try:
        return glue.get_table(DatabaseName=database, Name=name)["Table"]
    except glue.exceptions.EntityNotFoundException:
        return None


def metadata_location(glue: Any, database: str, name: str) -> str | None:
    return ((glue_table(glue, database, name) or {}).get("Parameters") or {}).get("metadata_location")


def view_reads(
    uc: UseCase, glue: Any, s3: Any, views: list[str], fail: Any, prefix: str
) -> tuple[list[tuple[str, str, str]], dict[str, Any]]:
    """The UNLOAD reads of the views' offline stores, each view checked against Glue first (its
    Gold table's columns, its offline store table and columns): ``[(Glue table, statement name,
    DuckDB SQL)]`` and the views' columns (``ViewColumns.as_dict``). ``fail(column, reason)`` is
    the error raised for a view that cannot be read."""
    aws = uc.aws_settings
    reads: list[tuple[str, str, str]] = []
    view_cols: dict[str, Any] = {}
    for vname in views:
        cols = fa.view_columns(uc, vname, glue, s3)
        table = core.offline_table(uc, vname)
        found = glue_table(glue, aws.glue_database, table)
        if found is None:
            raise fail(
                None,
                f"feature view {vname!r} has no offline store table {aws.glue_database}.{table} "
                "in the Glue Data Catalog yet (materialize it first)",
            )
        have = {c["Name"] for c in (found.get("StorageDescriptor") or {}).get("Columns", [])}
        for c in [*fsreq.feature_names(cols), WRITE_TIME, API_TIME, IS_DELETED]:
            if have and c not in have:
                raise fail(
                    c, f"the offline store {aws.glue_database}.{table} of feature view {vname!r} has no such column"
                )
        view_cols[vname] = cols.as_dict()
        reads.append((table, f"{prefix}{table}", offline_store_sql(uc, vname, cols, fq(uc, table))))
    return reads, view_cols


def prepare(uc: UseCase, rt: AwsRuntime, name: str, run: RunInfo, job_dir: Path) -> ServiceCall:
    """Check the label source and every view's offline store against Glue (the same checks as
    the local builder); return the UNLOADs of the join's inputs."""
    aws = uc.aws_settings
    ts = uc.training_sets[name]
    glue, s3 = rt.client("glue"), rt.client("s3")
    ltypes = {k: core.normalize_type(t) for k, t in fa.gold_types(uc, ts.labels.source, glue, s3).items()}
    label_time = core.check_label_columns(uc, name, ltypes)
    keys = list(dict.fromkeys(k for v in ts.features for k in uc.features[v].entity))
    label_cols = list(dict.fromkeys([*keys, label_time, *ts.labels.columns, ts.labels.label]))
    reads: list[tuple[str, str, str]] = [  # (Glue table, statement name, DuckDB SQL)
        (
            ts.labels.source,
            "training_set_labels",
            labels_sql(fq(uc, ts.labels.source), label_cols, label_time, ts.labels.label),
        )
    ]

    def fail(column: str | None, reason: str) -> Exception:
        return TrainingSetError(uc, name, column, reason)

    view_reads_, view_cols = view_reads(uc, glue, s3, ts.features, fail, "training_set_")
    reads += view_reads_
    safe_try = safe(f"{run.run_id}__{run.try_number}")
    stmts, staged = [], {}
    for table, stmt_name, sql in reads:
        target = aws.s3_uri("_training", core.training_table(name), safe_try, table) + "/"
        stmts.append(unload_statement(stmt_name, to_trino(sql), target))
        staged[table] = target
    state = {
        "name": name,
        "label_time": label_time,
        "label_cols": label_cols,
        "label_types": ltypes,
        "view_cols": view_cols,
        "reads": [[t, n] for t, n, _ in reads],
        "staged": staged,
        "before": {t: metadata_location(glue, aws.glue_database, t) for t, _, _ in reads},
        "job_dir": str(job_dir),
        "run": run.as_dict(),
        "started": time.time(),
    }
    return service.athena(stmts, "features", "resume_training_set", state)


def finish(uc: UseCase, rt: AwsRuntime, state: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
    """Join the unloaded inputs point in time, write and upload the set (module docstring)."""
    aws = uc.aws_settings
    name = state["name"]
    ts = uc.training_sets[name]
    run = RunInfo(**state["run"])
    glue, s3 = rt.client("glue"), rt.client("s3")
    queries = {table: output["queries"][stmt] for table, stmt in state["reads"]}
    sources: dict[str, str] = {}
    for table, _ in state["reads"]:
        before, after = state["before"][table], metadata_location(glue, aws.glue_database, table)
        if before and before == after:
            sources[table] = before
        else:
            if before:
                log.warning("%s changed while it was read (%s -> %s)", table, before, after)
            sources[table] = f"athena:{queries[table]}"
    label_time, label_cols, ltypes = state["label_time"], state["label_cols"], state["label_types"]
    out_dir = Path(state["job_dir"]) / "training_set"
    out_dir.mkdir(parents=True, exist_ok=True)
    local_path = out_dir / f"{core.training_table(name)}.parquet"
    con = connect()
    files: dict[str, list[tuple[str, str]]] = {}
    with tempfile.TemporaryDirectory(dir=runtime.path("tmp")) as tmp:
        for table, _ in state["reads"]:
            d = Path(tmp) / table
            d.mkdir()
            files[table] = s3io.download_prefix(s3, state["staged"][table], d)
        lfiles = [p for _, p in files[ts.labels.source]]
        if lfiles:
            lsrc = f"SELECT * FROM read_parquet([{', '.join(literal(p) for p in lfiles)}], union_by_name = true)"
        else:
            typed = ", ".join(f"CAST(NULL AS {sql_type(ltypes[c])}) AS {ident(c)}" for c in label_cols)
            lsrc = f"SELECT {typed} WHERE FALSE"
        con.execute(f"CREATE OR REPLACE TEMP VIEW labels AS {lsrc}")
        views = []
        for i, vname in enumerate(ts.features):
            table = core.offline_table(uc, vname)
            cols = ViewColumns.from_dict(state["view_cols"][vname])
            con.execute(f"CREATE OR REPLACE TEMP VIEW fv{i} AS {view_relation_sql(cols, [p for _, p in files[table]])}")
            views.append(
                core.PitView(name=vname, relation=f"fv{i}", cols=cols, ttl_seconds=uc.features[vname].ttl_seconds)
            )
        sql = core.pit_sql("labels", label_time, ts.labels.label, ts.labels.columns, views)
        order = ["event_time", *dict.fromkeys(k for v in views for k in v.cols.entity_names), *ts.labels.columns]
        sql = f"SELECT * FROM ({sql}) ORDER BY {', '.join(ident(c) for c in order)}"
        partial = local_path.with_name(local_path.name + ".partial")
        con.execute(f"COPY ({sql}) TO {literal(str(partial))} (FORMAT parquet, COMPRESSION zstd)")
        os.replace(partial, local_path)
    con.execute(f"CREATE OR REPLACE TEMP VIEW written AS SELECT * FROM read_parquet({literal(str(local_path))})")
    rows, positives = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE {core.positive_sql(ts.labels.label)}) FROM written"
    ).fetchone()
    coverage = {
        v.name: con.execute(
            f"SELECT avg(CASE WHEN {ident(v.name + '__feature_time')} IS NULL THEN 0 ELSE 1 END) FROM written"
        ).fetchone()[0]
        for v in views
    }
    con.close()
    sha = s3io.sha256_file(local_path)
    s3_uri = aws.s3_uri("training-sets", name, safe(run.run_id), f"{core.training_table(name)}-{sha[:16]}.parquet")
    if not s3io.exists(s3, s3_uri):  # content-addressed: an object under this key holds these bytes
        s3io.put_file(s3, local_path, s3_uri, aws, "application/x-parquet")
    for table, target in state["staged"].items():
        s3io.delete_keys(s3, req.split_s3_uri(target)[0], [k for k, _ in files[table]], target)
    out = {
        "training_set": name,
        "table": core.training_table(name),
        "rows": int(rows),
        "positives": int(positives or 0),
        "snapshot_id": s3_uri,
        "source_snapshots": sources,
        "source_queries": queries,
        "feature_views": {v: uc.features[v].version for v in ts.features},
        "coverage": {k: round(float(x or 0.0), 4) for k, x in coverage.items()},
        "label_range": [None, None],
        "seconds": round(time.time() - float(state["started"]), 3),
        "s3_uri": s3_uri,
        "sha256": sha,
        "local_path": str(local_path),
        "target": "aws",
    }
    log.info("training set %s: %s rows (%s positive) -> %s", name, out["rows"], out["positives"], s3_uri)
    return out
