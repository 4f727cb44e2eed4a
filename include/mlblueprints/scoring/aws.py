"""Batch scoring on the aws target: Athena reads and commits, SageMaker Batch Transform predicts.

* ``plan`` checks the rows against the model in the Glue Data Catalog (the same checks as the
  local target), finds the model package the registered version was registered as (and, unless
  ``scoring.sagemaker.require_approved`` is off, refuses one a person has not approved), creates
  the predictions table (Iceberg, Glue) when missing, and returns the UNLOADs of the interval as
  a service call: with the features read from the rows, Athena writes the transform job's CSV
  input itself; with feature views, it UNLOADs the rows and the views' offline stores (Feature
  Store's, deduplicated) as Parquet, and ``resume_plan`` joins them in the worker with the
  point-in-time builder training sets use and uploads the CSV (SSE-KMS). Each input's Glue
  ``metadata_location`` is recorded as the snapshot read.
* ``score`` returns the Batch Transform job (:mod:`mlblueprints.aws.scoring`); the orchestrator
  runs it with the provider's ``SageMakerTransformOperator`` (deferrable, named per try, stopped
  when killed). ``resume_score`` reads the job's output: keys, event time and prediction per row.
* ``gate`` validates the output with the same Great Expectations code as the local target.
* ``commit`` returns Athena statements: an external table over the job's output, one MERGE by key
  into the predictions table that replaces the interval (rows of the interval the output no
  longer has are deleted in the same statement: one Iceberg commit), the table's maintenance
  (``lakehouse.aws.maintenance_statements``: OPTIMIZE of the interval's partitions, retention,
  VACUUM), and the external table dropped again. An interval longer than Athena's partitions per
  write (``aws.athena_max_partitions_per_write``) is refused in ``plan``. ``resume_commit``
  records the lineage (Athena cannot set snapshot properties), with the job's input
  (``input_s3_uri``: what the job scored, row for row; drift monitoring reads it).

The decision, the threshold and the lineage columns are added by the same SQL in the gate's
view and in the MERGE (:func:`parse_output_sql`), so what was validated is what is committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.aws import requests as req
from mlblueprints.aws import s3io
from mlblueprints.aws import scoring as sr
from mlblueprints.aws import training as tr
from mlblueprints.aws.session import AwsRuntime
from mlblueprints.config import UseCase
from mlblueprints.core import service
from mlblueprints.core.duck import connect
from mlblueprints.core.naming import safe
from mlblueprints.core.service import ServiceCall, Statement
from mlblueprints.features import aws as fa
from mlblueprints.features import aws_training_set as ats
from mlblueprints.features import core as fcore
from mlblueprints.features.core import ViewColumns
from mlblueprints.lakehouse.aws import fq, maintenance_statements, unload_statement
from mlblueprints.lakehouse.sqlgen import ident, literal, sql_type, to_trino
from mlblueprints.lineage import RunInfo
from mlblueprints.registry.aws import find_model_package
from mlblueprints.scoring import core
from mlblueprints.scoring.core import ScoringError
from mlblueprints.scoring.gate import gate_view

log = logging.getLogger(__name__)

CAPABILITY = "scorer"
INPUT_FILE_BYTES = 64 * 1024 * 1024  # per CSV input file (gzip): many files, many parallel requests


# ---------------------------------------------------------------- SQL (DuckDB dialect; Trino by sqlglot)


def interval_sql(rows: Mapping[str, Any], lo: date, hi: date, partitioned: bool) -> str:
    """The rows of [lo, hi] (whole days, UTC) of the rows' Gold table, pruned by event date when
    the table is partitioned by the same event time."""
    et = ident(rows["event_time"])
    end = hi + timedelta(days=1)
    where = f"{et} >= TIMESTAMP {literal(lo.isoformat())} AND {et} < TIMESTAMP {literal(end.isoformat())}"
    if partitioned:
        where += f" AND event_date BETWEEN DATE {literal(lo.isoformat())} AND DATE {literal(hi.isoformat())}"
    return where


def keyed_sql(keys: Sequence[str]) -> str:
    return " AND ".join(f"{ident(k)} IS NOT NULL" for k in keys)


def csv_sql(keys: Sequence[str], time_col: str, features: Sequence[str], relation: str, null_as_empty: bool) -> str:
    """The transform job's input record: keys hex-encoded (any character may be in a key, none of
    a hex string is a delimiter), the event time as text, the features as text (full precision),
    a null as an empty field (Athena's TEXTFILE writes nulls as \\N: ``null_as_empty``)."""

    def num(f: str) -> str:
        text = f"CAST(CAST({ident(f)} AS DOUBLE) AS VARCHAR)"
        return f"COALESCE({text}, '')" if null_as_empty else text

    cols = [f"hex(encode(CAST({ident(k)} AS VARCHAR))) AS {ident(f'k{i}')}" for i, k in enumerate(keys)]
    cols.append(f"CAST(CAST({ident(time_col)} AS TIMESTAMP(6)) AS VARCHAR) AS event_time")
    cols += [f"{num(f)} AS {ident(f)}" for f in features]
    return f"SELECT {', '.join(cols)} FROM {relation}"


def output_column_names(key_count: int, task: str) -> list[str]:
    """The columns of a line of the job's output (after its OutputFilter)."""
    out = [f"k{i}" for i in range(key_count)] + ["event_time"]
    return out + (["label_index", "probability"] if task == "multiclass" else ["prediction"])


def _double(value: float) -> str:
    return f"CAST({literal(repr(float(value)))} AS DOUBLE)"


def parse_output_sql(
    relation: str,
    keys: Sequence[tuple[str, str]],
    model: Mapping[str, Any],
    snapshots: Mapping[str, Any],
    run_id: str,
) -> str:
    """The predictions of the job's output lines (``relation``: text columns of
    :func:`output_column_names`) in the predictions table's layout: keys decoded and typed, the
    event time, the score, the decision (binary: score >= the threshold; multiclass: the class
    of the container's argmax), the threshold, the lineage and the event date."""
    task = model["task"]
    et = "CAST(event_time AS TIMESTAMP(6))"
    cols = [f"CAST(decode(unhex(k{i})) AS {sql_type(t)}) AS {ident(k)}" for i, (k, t) in enumerate(keys)]
    cols.append(f"{et} AS event_time")
    if task == "binary":
        score = "CAST(prediction AS DOUBLE)"
        thr = _double(model["threshold"])
        cols += [
            f"{score} AS score",
            f"CASE WHEN {score} >= {thr} THEN 1 ELSE 0 END AS decision",
            f"{thr} AS threshold",
        ]
    elif task == "multiclass":
        idx = "CAST(CAST(label_index AS DOUBLE) AS INTEGER)"
        whens = " ".join(f"WHEN {i} THEN {literal(c)}" for i, c in enumerate(model["classes"]))
        cols += ["CAST(probability AS DOUBLE) AS score", f"CASE {idx} {whens} END AS decision"]
    else:
        cols.append("CAST(prediction AS DOUBLE) AS score")
    cols += [
        f"{literal(model['name'])} AS model_name",
        f"CAST({int(model['version'])} AS BIGINT) AS model_version",
        f"{literal(model.get('mlflow_run_id') or '')} AS mlflow_run_id",
        f"{literal(json.dumps(dict(snapshots), sort_keys=True))} AS input_snapshots",
        f"{literal(run_id)} AS scoring_run_id",
        f"CAST({et} AS DATE) AS event_date",
    ]
    return f"SELECT {', '.join(cols)} FROM {relation}"


def replace_sql(
    target: str,
    parsed: str,
    keys: Sequence[str],
    columns: Sequence[tuple[str, str]],
    scope: str,
    carried: Sequence[str] = (),
) -> str:
    """One MERGE that makes the rows of ``target`` in ``scope`` (a condition on its alias ``p``)
    hold exactly the ``parsed`` rows: a key ``parsed`` has is updated or inserted; a row in scope
    whose key ``parsed`` does not have is deleted. One statement, one commit. ``carried``: the
    columns (besides the keys) a deleted row keeps in the source, for the partitions it touches."""
    on = " AND ".join(f"t.{ident(k)} = s.{ident(k)}" for k in keys)
    gone = " AND ".join(f"n.{ident(k)} = p.{ident(k)}" for k in keys)
    stale = [
        f"p.{ident(c)}" if c in (*keys, *carried) else f"CAST(NULL AS {sql_type(t)}) AS {ident(c)}" for c, t in columns
    ]
    names = [c for c, _ in columns]
    sets = ", ".join(f"{ident(c)} = s.{ident(c)}" for c in names if c not in keys)
    return (
        f"MERGE INTO {target} AS t USING ("
        f"SELECT {', '.join(f's.{ident(c)}' for c in names)}, FALSE AS _mlb_delete FROM ({parsed}) AS s "
        f"UNION ALL SELECT {', '.join(stale)}, TRUE AS _mlb_delete FROM {target} AS p "
        f"WHERE {scope} "
        f"AND NOT EXISTS (SELECT 1 FROM ({parsed}) AS n WHERE {gone})"
        f") AS s ON {on} "
        "WHEN MATCHED AND s._mlb_delete THEN DELETE "
        f"WHEN MATCHED THEN UPDATE SET {sets} "
        f"WHEN NOT MATCHED AND NOT s._mlb_delete THEN INSERT ({', '.join(ident(c) for c in names)}) "
        f"VALUES ({', '.join(f's.{ident(c)}' for c in names)})"
    )


def merge_sql(
    target: str, parsed: str, keys: Sequence[str], columns: Sequence[tuple[str, str]], lo: str, hi: str
) -> str:
    """One MERGE that makes the interval [lo, hi] of ``target`` hold exactly the ``parsed``
    predictions: a key the output has is updated or inserted; a prediction of the interval whose
    key the output does not have (its row left Gold) is deleted. One statement, one commit."""
    scope = f"p.event_date BETWEEN DATE {literal(lo)} AND DATE {literal(hi)}"
    return replace_sql(target, parsed, keys, columns, scope, ("event_time", "event_date"))


def stage_table_ddl(database: str, name: str, columns: Sequence[str], location: str) -> str:
    """An external table over the transform job's output lines (Hive DDL, as Athena takes it)."""
    cols = ", ".join(f"`{c}` string" for c in columns)
    return (
        f"CREATE EXTERNAL TABLE IF NOT EXISTS `{database}`.`{name}` ({cols}) "
        "ROW FORMAT DELIMITED FIELDS TERMINATED BY ',' LINES TERMINATED BY '\\n' STORED AS TEXTFILE "
        f"LOCATION {literal(location)}"
    )


# ---------------------------------------------------------------- the backend


class AwsScorer:
    """The scorer capability on the aws target (``mlblueprints.backends.Scorer``)."""

    def __init__(self, uc: UseCase, rt: AwsRuntime):
        if uc.scoring is None or uc.training is None or uc.aws is None:
            raise ValueError(f"{uc.name}: scoring on aws needs the aws, training and scoring sections")
        self.uc, self.aws, self.rt = uc, uc.aws, rt
        self.table = uc.scoring.output_table

    # ------------------------------------------------------------ plan

    def _types(self, glue: Any, s3: Any, table: str) -> dict[str, str]:
        try:
            types = fa.gold_types(self.uc, table, glue, s3)
        except LookupError as exc:
            raise ScoringError(self.uc, f"scoring.rows: {exc}") from None
        return {k: fcore.normalize_type(t) for k, t in types.items()}

    def model_package(self, model: Mapping[str, Any]) -> dict[str, Any]:
        """The model package the registered version was registered as (its customer metadata
        names the MLflow model and version), checked: approved, and served by the image."""
        uc, s = self.uc, self.uc.scoring
        group = tr.model_package_group_name(uc)
        found = find_model_package(self.rt.client("sagemaker"), group, model["name"], model["version"])
        if found is None:
            raise ScoringError(
                uc,
                f"no model package in group {group} records {model['label']}: register it on aws "
                "(the training pattern does when it registers a version there) or pin a version that has one",
            )
        status = found.get("ModelApprovalStatus")
        if s is not None and s.sagemaker.require_approved and status != "Approved":
            raise ScoringError(
                uc,
                f"model package {found['ModelPackageArn']} ({model['label']}) is {status}: approve it "
                "(UpdateModelPackage ModelApprovalStatus=Approved) or set scoring.sagemaker.require_approved: false",
            )
        if model["model_format"] != "xgboost":
            raise ScoringError(
                uc,
                f"{model['label']} is a {model['model_format']} model; Batch Transform serves the package's image "
                "with its built-in XGBoost serving, which needs an xgboost booster (score it on the local target)",
            )
        return {"arn": found["ModelPackageArn"], "status": status, "group": group}

    def _ensure_table(self, glue: Any, columns: list[tuple[str, str]]) -> None:
        """Create the predictions table (Iceberg, Glue) when missing; an existing one must have
        the layout. boto3 by hand: the Amazon provider creates no Glue table (see
        ``mlblueprints.lakehouse.aws.ensure_tables``)."""
        aws = self.aws
        found = ats.glue_table(glue, aws.glue_database, self.table)
        if found is None:
            size = self.uc.lakehouse.target_file_size_mb * 1024 * 1024
            glue.create_table(
                **req.glue_iceberg_table_input(
                    aws, self.table, columns, "event_date", size, f"predictions of {self.uc.model_name}"
                )
            )
            log.info("created the predictions table %s.%s", aws.glue_database, self.table)
            return
        have = {
            c["Name"]: fcore.normalize_type(c["Type"])
            for c in (found.get("StorageDescriptor") or {}).get("Columns", [])
        }
        want = {c: fcore.normalize_type(t) for c, t in columns}
        bad = sorted(c for c in want if have and have.get(c) != want[c])
        if bad:
            raise ScoringError(
                self.uc,
                f"the predictions table {aws.glue_database}.{self.table} has another layout (columns {bad}: "
                f"{[have.get(c) for c in bad]} != {[want[c] for c in bad]}); set scoring.output_table to a new table",
            )

    def plan(self, lo: date, hi: date, model: dict[str, Any], run: RunInfo) -> ServiceCall:
        uc, aws = self.uc, self.aws
        most = uc.aws_settings.athena_max_partitions_per_write
        if (hi - lo).days + 1 > most:  # the MERGE writes one partition per event date
            raise ScoringError(
                uc,
                f"{(hi - lo).days + 1} event dates ({lo}..{hi}) in one run: Athena writes at most {most} partitions "
                f"per statement (aws.athena_max_partitions_per_write); score at most {most} days per run",
            )
        rows = uc.scoring_rows()
        glue, s3 = self.rt.client("glue"), self.rt.client("s3")
        types = self._types(glue, s3, rows["source"])
        core.check_rows(uc, rows, types)
        reads, view_cols = [], {}
        if rows["views"]:

            def fail(column: str | None, reason: str) -> Exception:
                return ScoringError(uc, f"scoring.rows: {reason}" + (f" (column {column!r})" if column else ""))

            try:
                reads, view_cols = ats.view_reads(uc, glue, s3, rows["views"], fail, "scoring_")
            except fcore.FeatureViewError as exc:
                raise ScoringError(uc, str(exc)) from None
            given = {c: types[c] for c in rows["columns"]}
            for d in view_cols.values():
                given.update(dict(ViewColumns.from_dict(d).features))
            what = f"the feature views {rows['views']} and the columns {rows['columns']} of {rows['source']}"
        else:
            given = {c: t for c, t in types.items() if c not in rows["keys"]}
            what = f"the columns of {rows['source']}"
        core.check_inputs(uc, model, given, what)
        package = self.model_package(model)
        key_types = [(k, types[k]) for k in rows["keys"]]
        self._ensure_table(glue, core.output_columns(model["task"], key_types))

        base = aws.s3_uri("_scoring", safe(run.run_id), f"try-{run.try_number}")
        partitioned = rows["event_time"] == uc.gold[rows["source"]].event_time
        where = interval_sql(rows, lo, hi, partitioned)
        source = fq(uc, rows["source"])
        count = (
            f"SELECT count(*) AS in_range, count(*) FILTER (WHERE NOT ({keyed_sql(rows['keys'])})) AS null_keys "
            f"FROM {source} WHERE {where}"
        )
        stmts = [Statement("scoring_count", to_trino(count), "select", fetch=True)]
        staged: dict[str, str] = {}
        in_rows = f"(SELECT * FROM {source} WHERE {where} AND {keyed_sql(rows['keys'])})"
        if rows["views"]:
            entities = [k for v in rows["views"] for k in uc.features[v].entity]
            need = dict.fromkeys([*rows["keys"], rows["event_time"], *rows["columns"], *entities])
            cols = ", ".join(ident(c) for c in need)
            stmts.append(
                unload_statement("scoring_rows", to_trino(f"SELECT {cols} FROM {in_rows} AS r"), f"{base}/rows/")
            )
            staged["rows"] = f"{base}/rows/"
            oldest = lo - timedelta(seconds=max(uc.features[v].ttl_seconds for v in rows["views"]) + 86400)
            for table, name, sql in reads:  # Feature Store's event_time is ISO text: prunable as text
                pruned = f"SELECT * FROM ({sql}) AS o WHERE event_time >= {literal(oldest.isoformat())}"
                stmts.append(unload_statement(name, to_trino(pruned), f"{base}/{table}/"))
                staged[table] = f"{base}/{table}/"
        else:
            body = csv_sql(rows["keys"], rows["event_time"], model["features"], f"{in_rows} AS r", null_as_empty=True)
            stmts.append(sr.unload_csv_statement("scoring_input", to_trino(body), f"{base}/input/"))
        inputs = [rows["source"], *(t for t, _, _ in reads)]
        state = {
            "range": [lo.isoformat(), hi.isoformat()],
            "model": {**model, "package": package},
            "rows": rows,
            "key_types": key_types,
            "row_types": {c: types[c] for c in types},
            "view_cols": view_cols,
            "reads": [[t, n] for t, n, _ in reads],
            "staged": staged,
            "input_s3_uri": f"{base}/input/",
            "before": {t: ats.metadata_location(glue, aws.glue_database, t) for t in inputs},
            "run": run.as_dict(),
            "started": time.time(),
        }
        return service.athena(stmts, CAPABILITY, "resume_plan", state)

    def resume_plan(self, state: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
        aws = self.aws
        glue, s3 = self.rt.client("glue"), self.rt.client("s3")
        queries = output["queries"]
        counted = self.rt.fetch_rows(queries["scoring_count"])[0]
        in_range, null_keys = int(counted["in_range"] or 0), int(counted["null_keys"] or 0)
        rows = state["rows"]
        query_of = {rows["source"]: queries.get("scoring_rows") or queries.get("scoring_input")}
        query_of.update({t: queries[n] for t, n in state["reads"]})
        snapshots = {}
        for t, before in state["before"].items():
            after = ats.metadata_location(glue, aws.glue_database, t)
            snapshots[t] = before if before and before == after else f"athena:{query_of[t]}"
        if rows["views"]:
            self._join_and_upload(state, s3)
        return {
            "range": state["range"],
            "model": state["model"],
            "rows": rows,
            "key_types": state["key_types"],
            "snapshots": snapshots,
            "source_queries": {t: q for t, q in query_of.items() if q},
            "rows_in": in_range - null_keys,
            "skipped_null_key": null_keys,
            "input_s3_uri": state["input_s3_uri"],
            "output_table": f"{aws.glue_database}.{self.table}",
            "target": "aws",
            "seconds": round(time.time() - float(state["started"]), 3),
        }

    def _join_and_upload(self, state: dict[str, Any], s3: Any) -> None:
        """The point-in-time join of the unloaded rows and offline stores (the training sets'
        builder), written as the job's CSV input and uploaded; the staged Parquet deleted."""
        uc, aws, rows = self.uc, self.aws, state["rows"]
        con = connect()
        con.execute(f"SET memory_limit = '{int(uc.scoring.memory_mb)}MB'")  # type: ignore[union-attr]
        with tempfile.TemporaryDirectory(dir=runtime.path("tmp")) as tmp:
            files: dict[str, list[tuple[str, str]]] = {}
            for name, uri in state["staged"].items():
                (Path(tmp) / name).mkdir()
                files[name] = s3io.download_prefix(s3, uri, Path(tmp) / name)
            if files["rows"]:
                src = f"SELECT * FROM read_parquet([{', '.join(literal(p) for _, p in files['rows'])}], union_by_name = true)"
            else:
                typed = state["row_types"]
                entities = [k for v in rows["views"] for k in uc.features[v].entity]
                need = dict.fromkeys([*rows["keys"], rows["event_time"], *rows["columns"], *entities])
                src = (
                    "SELECT "
                    + ", ".join(f"CAST(NULL AS {sql_type(typed[c])}) AS {ident(c)}" for c in need)
                    + " WHERE FALSE"
                )
            con.execute(f"CREATE OR REPLACE TEMP VIEW scoring_rows AS {src}")
            views = []
            for i, vname in enumerate(rows["views"]):
                cols = ViewColumns.from_dict(state["view_cols"][vname])
                vfiles = [p for _, p in files[fcore.offline_table(uc, vname)]]
                con.execute(f"CREATE OR REPLACE TEMP VIEW fv{i} AS {ats.view_relation_sql(cols, vfiles)}")
                views.append(fcore.PitView(vname, f"fv{i}", cols, uc.features[vname].ttl_seconds))
            pit = fcore.pit_sql("scoring_rows", rows["event_time"], None, [*rows["keys"], *rows["columns"]], views)
            body = csv_sql(rows["keys"], "event_time", state["model"]["features"], f"({pit}) AS r", null_as_empty=False)
            out = Path(tmp) / "input"
            con.execute(
                f"COPY ({body}) TO {literal(str(out))} (FORMAT csv, HEADER false, COMPRESSION gzip, "
                f"FILE_SIZE_BYTES {INPUT_FILE_BYTES}, FILENAME_PATTERN 'part-{{i}}')"
            )
            con.close()
            for p in sorted(out.glob("*")) if out.is_dir() else []:
                s3io.put_file(s3, p, state["input_s3_uri"] + p.name, aws, "application/gzip")
            for name, uri in state["staged"].items():
                s3io.delete_keys(s3, req.split_s3_uri(uri)[0], [k for k, _ in files[name]], uri)

    # ------------------------------------------------------------ score

    def score(self, planned: dict[str, Any], run: RunInfo) -> dict[str, Any] | ServiceCall:
        uc = self.uc
        m = planned["model"]
        if not self._listed(planned["input_s3_uri"]):
            # no row in the interval: no job to run (a transform job needs input); nothing scored
            log.info("no rows to score in %s..%s: no transform job", *planned["range"])
            return {"rows": 0, "batch_id": None, "job_name": None, "histogram": core.histogram_for(m["task"]).as_dict()}
        request = sr.transform_request(
            uc,
            job_name=sr.transform_job_name(uc, run.run_id, 1),  # the service task names each try's job
            model_package_arn=m["package"]["arn"],
            input_s3_uri=planned["input_s3_uri"],
            output_base_uri=self.aws.s3_uri("scoring", "output", safe(run.run_id)),
            key_count=len(planned["rows"]["keys"]),
            model=m,
            run=run.as_dict(),
            git_commit=run.git_commit,
        )
        return ServiceCall(service.SAGEMAKER_TRANSFORM, request, CAPABILITY, "resume_score", {"started": time.time()})

    def _listed(self, uri: str) -> list[str]:
        bucket, prefix = req.split_s3_uri(uri)
        pages = self.rt.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", []) if o["Size"] > 0]

    def _output_files(self, output_uri: str, job: str) -> list[str]:
        """The job's output lines, downloaded once per worker (``<runtime>/scoring/<use case>/<job>``)."""
        local = runtime.path("scoring", self.uc.name, job)
        done = local / "_complete"
        if not done.exists():
            for p in local.glob("*"):
                p.unlink()
            s3io.download_prefix(self.rt.client("s3"), output_uri, local, suffix=".csv")
            done.write_text(output_uri)
        return sorted(str(p) for p in local.glob("*.csv"))

    def _view(self, con: Any, planned: Mapping[str, Any], scored: Mapping[str, Any], name: str) -> None:
        keys = planned["rows"]["keys"]
        m = planned["model"]
        names = output_column_names(len(keys), m["task"])
        files = self._output_files(scored["output_s3_uri"], scored["job_name"]) if scored.get("job_name") else []
        if files:
            cols = "{" + ", ".join(f"{literal(c)}: 'VARCHAR'" for c in names) + "}"
            src = f"read_csv([{', '.join(literal(f) for f in files)}], header = false, delim = ',', quote = '', columns = {cols})"
        else:
            src = "(SELECT " + ", ".join(f"CAST(NULL AS VARCHAR) AS {ident(c)}" for c in names) + " WHERE FALSE)"
        parsed = parse_output_sql(src, planned["key_types"], m, planned["snapshots"], scored["scoring_run_id"])
        con.execute(f"CREATE OR REPLACE VIEW {ident(name)} AS {parsed}")

    def resume_score(self, state: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
        desc = output["Transform"]
        return {
            "job_name": desc["TransformJobName"],
            "how": output.get("how", "created"),
            "model_name": desc.get("ModelName"),
            "output_s3_uri": desc["TransformOutput"]["S3OutputPath"],
            "batch_id": desc["TransformJobName"],
            "seconds": round(time.time() - float(state["started"]), 3),
            "transform_seconds": _seconds(desc.get("TransformStartTime"), desc.get("TransformEndTime")),
        }

    # ------------------------------------------------------------ gate

    def gate(self, planned: dict[str, Any], scored: dict[str, Any], run: RunInfo) -> dict[str, Any]:
        """The job's output in the predictions' layout, validated; the figures the report shows."""
        from mlblueprints.quality.gx import GateFailed

        scored = {**scored, "scoring_run_id": run.run_id}
        m = planned["model"]
        started = time.time()
        con = connect()
        try:
            self._view(con, planned, scored, "predictions_staged")
            report = gate_view(self.uc, con, "predictions_staged", planned, run)
            stats = _stats(con, "predictions_staged", m)
        finally:
            con.close()
        quality = runtime.path("quality", self.uc.name)
        s3io.upload_dir(self.rt.client("s3"), self.aws, quality, self.aws.s3_uri("quality"), since=started - 1)
        if not report["success"]:
            raise GateFailed(report["summary"])
        return {**report, **stats}

    # ------------------------------------------------------------ commit

    def commit(
        self, planned: dict[str, Any], scored: dict[str, Any], gated: dict[str, Any], run: RunInfo
    ) -> ServiceCall:
        aws, m = self.aws, planned["model"]
        keys = planned["rows"]["keys"]
        names = output_column_names(len(keys), m["task"])
        lo, hi = planned["range"]
        columns = core.output_columns(m["task"], planned["key_types"])
        target = fq(self.uc, self.table)
        stmts = []
        if scored.get("job_name"):
            stage = f"scoring_stage_{hashlib.sha256(scored['job_name'].encode()).hexdigest()[:16]}"
            stmts.append(
                Statement(
                    "stage_table", stage_table_ddl(aws.glue_database, stage, names, scored["output_s3_uri"]), "ddl"
                )
            )
            relation = fq(self.uc, stage)
        else:  # no rows: the interval's predictions are replaced by none
            stage = None
            relation = "(SELECT " + ", ".join(f"CAST(NULL AS VARCHAR) AS {ident(c)}" for c in names) + " WHERE FALSE)"
        parsed = parse_output_sql(relation, planned["key_types"], m, planned["snapshots"], run.run_id)
        merge = merge_sql(target, parsed, keys, columns, lo, hi)
        stmts.append(Statement("merge_predictions", to_trino(merge), "merge", to_trino(parsed)))
        # a MERGE leaves delete files (merge-on-read): the interval's partitions are rewritten right
        # away, and snapshots older than the retention expired (the lakehouse's maintenance)
        days = _days(lo, hi)
        stmts += maintenance_statements(
            self.uc, self.table, "event_date", days, self.uc.lakehouse.snapshot_retention_days
        )
        if stage:
            stmts.append(Statement("drop_stage_table", f"DROP TABLE IF EXISTS `{aws.glue_database}`.`{stage}`", "ddl"))
        state = {
            "planned": {k: planned.get(k) for k in ("range", "model", "output_table", "snapshots", "input_s3_uri")},
            "rows": gated.get("rows", 0),
            "run": run.as_dict(),
        }
        return service.athena(stmts, CAPABILITY, "resume_commit", state)

    def resume_commit(self, state: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
        aws = self.aws
        glue, s3 = self.rt.client("glue"), self.rt.client("s3")
        planned, run = state["planned"], RunInfo(**state["run"])
        m = planned["model"]
        location = ats.metadata_location(glue, aws.glue_database, self.table)
        record = {
            "table": planned["output_table"],
            "metadata_location": location,
            "query_execution_ids": output["queries"],
            # the transform job's input: what the job scored, row for row (monitoring reads it)
            "input_s3_uri": planned.get("input_s3_uri"),
            "properties": run.snapshot_properties(
                step="scoring",
                range=planned["range"],
                model=m["name"],
                model_version=str(m["version"]),
                model_package=m["package"]["arn"],
                mlflow_run_id=m.get("mlflow_run_id") or "",
                input_snapshots=planned["snapshots"],
                rows=str(state["rows"]),
            ),
        }
        uri = aws.s3_uri("lineage", self.table, f"{safe(run.run_id)}__{run.try_number}__scoring.json")
        s3io.put_bytes(s3, json.dumps(record, indent=1, sort_keys=True).encode(), uri, aws, "application/json")
        return {
            "table": planned["output_table"],
            "range": planned["range"],
            "rows": state["rows"],
            "snapshot_id": location or f"athena:{output['queries']['merge_predictions']}",
            "model": m["name"],
            "version": m["version"],
            "lineage": uri,
        }

    # ------------------------------------------------------------ reads

    def predictions(self, entity: Sequence[str] | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The newest predictions (of one key) with their lineage, read through Athena."""
        from mlblueprints.aws import direct

        keys = self.uc.scoring_rows()["keys"]
        where = ""
        if entity:
            if len(entity) != len(keys):
                raise ScoringError(self.uc, f"--entity takes {len(keys)} value(s), one per key {keys}, comma-separated")
            where = "WHERE " + " AND ".join(f"CAST({ident(k)} AS VARCHAR) = {literal(v)}" for k, v in zip(keys, entity))
        sql = f"SELECT * FROM {fq(self.uc, self.table)} {where} ORDER BY event_time DESC LIMIT {int(limit)}"
        run = RunInfo.for_usecase(self.uc, run_id=f"cli__{time.time_ns()}")
        out = direct.run_athena(self.rt, self.uc, [Statement("predictions", to_trino(sql), "select", fetch=True)], run)
        return self.rt.fetch_rows(out["queries"]["predictions"])

    def where(self) -> list[str]:
        aws = self.aws
        return [
            f"predictions: Iceberg table {aws.glue_database}.{self.table} at {aws.s3_uri('warehouse', self.table)} (Glue)",
            f"lineage records: {aws.s3_uri('lineage', self.table)}",
            f"Data Docs (Great Expectations): {aws.s3_uri('quality', 'uncommitted/data_docs/local_site/index.html')}",
        ]


def _days(lo: str, hi: str) -> list[str]:
    first, last = date.fromisoformat(lo), date.fromisoformat(hi)
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def _seconds(start: Any, end: Any) -> float | None:
    try:
        return round((end - start).total_seconds(), 1)
    except (TypeError, AttributeError):
        return None


def _stats(con: Any, view: str, model: Mapping[str, Any]) -> dict[str, Any]:
    """Rows, the score histogram and the decisions of the validated predictions (the report's figures)."""
    hist = core.histogram_for(model["task"], model.get("target_range"))
    rows = 0
    for batch in con.sql(f"SELECT score FROM {ident(view)}").to_arrow_reader(100_000):
        hist.add(batch.column(0).to_numpy(zero_copy_only=False))
        rows += batch.num_rows
    out: dict[str, Any] = {"rows": rows, "histogram": hist.as_dict()}
    if model["task"] == "binary":
        out["flagged"] = int(con.execute(f"SELECT coalesce(sum(decision), 0) FROM {ident(view)}").fetchone()[0])
    elif model["task"] == "multiclass":
        out["decisions"] = dict(con.execute(f"SELECT decision, count(*) FROM {ident(view)} GROUP BY 1").fetchall())
    return out
