"""The aws target of the training pattern as seen from a task: Athena, SageMaker Training, Model Registry.

:class:`AwsTraining` has the three steps the ``<usecase>__training`` DAG delegates on the aws
target. The requests themselves are built by the pure functions of ``mlblueprints.aws.training``
(shared with the state machines); this module runs them from the task, with the Airflow AWS
connection of the use case.

``training_set`` - the point-in-time join runs in the worker, with the same SQL as locally
    (:func:`mlblueprints.features.core.pit_sql` in DuckDB). Its inputs are UNLOADed by Athena
    (through ``AthenaOperator``, results encrypted with the use case's KMS key) to an S3 prefix
    unique per run and try, downloaded and deleted again:

    * the label events: the columns the set needs from the Gold table
      ``training_sets.<name>.labels.source``;
    * each feature view's offline store: the Glue table ``fv_<view>_v<n>`` SageMaker Feature
      Store registers, which is append-only, so it is deduplicated per (record identifier,
      ``event_time``) keeping the newest ``write_time`` (then ``api_invocation_time``); a record
      whose newest write is a deletion (``is_deleted``) is left out. Its String / Integral /
      Fractional columns are cast back to the view's types in the worker.

    The result is written as one Parquet file under the job directory and uploaded (SSE-KMS) to
    ``<prefix>/training-sets/<name>/<run id>/ts_<name>-<sha256[:16]>.parquet``: the key is
    content-addressed, so the object never changes once written. Lineage:

    * ``snapshot_id`` and ``s3_uri`` are that object's S3 URI (``sha256`` its digest): what the
      later tasks (and the training job) read, and what the model package records;
    * ``source_snapshots`` maps each Glue table read to its Iceberg **metadata location** (the
      ``metadata_location`` Glue holds: the table's exact state) as it was before and still was
      after the UNLOAD; when Glue has none, or a commit landed while the query ran (so the version
      read is not known from the catalog alone), the value is ``athena:<query execution id>``.
      ``source_queries`` always maps each table to its UNLOAD's query execution id.

``train`` - splits the set by time (:func:`mlblueprints.training.dataset.split_parquet`), uploads
    the train split (the ``train`` channel, one prefix per run and training-set content) and the
    code archive of ``mlblueprints/training/script/`` (reproducible ``.tar.gz``, content-addressed,
    SSE-KMS, tagged with the git commit), then runs the Amazon provider's
    ``SageMakerTrainingOperator`` inside the task: managed Spot, ``CheckpointConfig`` per run and
    training-set content (a retry resumes from the checkpoints of the try before), KMS on volume
    and output, network isolation, the job name unique per try
    (:func:`~mlblueprints.aws.training.training_job_name`). A try first looks for the jobs of the
    earlier tries of its run on the same training data: a Completed one is adopted (its model
    is used, nothing is trained twice); one still running is waited for. Afterwards it downloads
    ``ModelArtifacts.S3ModelArtifacts`` into ``<job dir>/try-<n>/model/``, where the DAG's
    target-agnostic ``evaluate`` task finds ``model.ubj`` (written from the booster file of the
    archive, e.g. the serving layout's ``xgboost-model``, when the archive has no ``model.ubj``).
    Spot savings (:func:`~mlblueprints.aws.training.spot_savings`) are in the returned metrics.
    The holdout split is uploaded beside the train split, so :meth:`AwsTraining.ensure_local` can
    restore model and holdout on a worker that did not run ``train``.

``register_model_package`` - creates the use case's model package group unless it exists, uploads
    the evaluation as the ModelQuality statistics (Model Monitor's ``binary_classification_metrics``
    layout, plus the full evaluation under ``mlblueprints``; SSE-KMS) and creates a model package
    version with the configured approval status and the lineage as customer metadata. Its
    ``ClientToken`` is a hash of the request, so a retried register task gets the package its
    first try made.

Settings read from the environment (tests set them small): ``MLB_SAGEMAKER_POLL_SECONDS``
(seconds between DescribeTrainingJob calls, default 30), ``MLB_SAGEMAKER_PRINT_LOG`` (tail the
job's CloudWatch log into the task log, default 1).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from airflow.sdk import get_current_context

from mlblueprints import runtime
from mlblueprints.airflow.aws_engine import AwsLakehouse
from mlblueprints.aws import featurestore as fsreq
from mlblueprints.aws import requests as req
from mlblueprints.aws import training as tr
from mlblueprints.config import UseCase
from mlblueprints.features import core
from mlblueprints.features.core import TrainingSetError, ViewColumns
from mlblueprints.lakehouse.sqlgen import ident, literal, sql_type
from mlblueprints.training import SCRIPT_DIR

log = logging.getLogger(__name__)

PUT_OBJECT_MAX_BYTES = 100 * 1024 * 1024  # larger files go through upload_file (multipart)
MODEL_FILE = "model.ubj"  # what the evaluate task loads from model_dir
META_FILE = "model_meta.json"  # the script's, in /opt/ml/model
METRICS_FILE = "training_metrics.json"  # the script's, in /opt/ml/output/data
# booster files the training script may leave in /opt/ml/model (serving layout first)
BOOSTER_FILES = ("xgboost-model", "model.json", "model.bin", "model.xgb")
# the columns Feature Store adds to every offline-store row
WRITE_TIME, API_TIME, IS_DELETED = "write_time", "api_invocation_time", "is_deleted"
RUNNING = ("InProgress", "Stopping")


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _q(name: str) -> str:
    return ident(name)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return (response or {}).get("Error", {}).get("Code", "") if isinstance(response, dict) else ""


# ---------------------------------------------------------------- SQL (DuckDB dialect, sent as Trino)


def labels_sql(source: str, columns: list[str], label_time: str, label: str) -> str:
    """The label events the point-in-time join needs from the Gold table ``source``."""
    cols = ", ".join(_q(c) for c in columns)
    return f"SELECT {cols} FROM {source} WHERE {_q(label_time)} IS NOT NULL AND {_q(label)} IS NOT NULL"


def offline_store_sql(uc: UseCase, view: str, cols: ViewColumns, source: str) -> str:
    """A view's Feature Store offline store, deduplicated: per (record identifier, event_time)
    the newest write (``write_time``, then ``api_invocation_time``); rows whose newest write is
    a deletion are left out. Columns: the feature group's features (raw Feature Store types)."""
    rid = fsreq.record_identifier_name(uc, view)
    select = ", ".join(_q(n) for n in fsreq.feature_names(cols))
    order = f"{_q(WRITE_TIME)} DESC NULLS LAST, {_q(API_TIME)} DESC NULLS LAST"
    return (
        f"SELECT {select} FROM (SELECT {select}, {_q(IS_DELETED)}, row_number() OVER "
        f"(PARTITION BY {_q(rid)}, {_q(fsreq.EVENT_TIME)} ORDER BY {order}) AS _mlb_newest FROM {source}) AS w "
        f"WHERE _mlb_newest = 1 AND NOT coalesce({_q(IS_DELETED)}, FALSE)"
    )


def _typed_from_store(name: str, type_: str) -> str:
    """A Feature Store column (String / Integral / Fractional) back in the view's type."""
    c = _q(name)
    if type_ == "boolean":
        return f"CAST({c} AS BIGINT) <> 0 AS {c}"
    if type_ in ("timestamp", "date", "int", "bigint", "double", "float", "string"):
        return f"CAST({c} AS {sql_type(type_)}) AS {c}"
    return c


def view_relation_sql(cols: ViewColumns, files: list[str]) -> str:
    """The offline rows of a view in the layout ``pit_sql`` joins: entity keys, ``event_time``
    (TIMESTAMP, from Feature Store's ISO-8601 text), features in the view's types."""
    exprs = [_typed_from_store(k, t) for k, t in cols.entity]
    exprs.append(f"CAST({_q(fsreq.EVENT_TIME)} AS TIMESTAMP) AS event_time")
    exprs += [_typed_from_store(f, t) for f, t in cols.features]
    if files:
        src = f"read_parquet([{', '.join(literal(p) for p in files)}], union_by_name = true)"
        return f"SELECT {', '.join(exprs)} FROM {src}"
    typed = [*cols.entity, ("event_time", "timestamp"), *cols.features]
    return "SELECT " + ", ".join(f"CAST(NULL AS {sql_type(t)}) AS {_q(c)}" for c, t in typed) + " WHERE FALSE"


# ---------------------------------------------------------------- files


def source_archive(script_dir: Path) -> tuple[bytes, str]:
    """The training code as a reproducible ``.tar.gz`` (``train.py`` at the root, sorted members,
    no timestamps or owners, no caches) and its sha256: the same code gives the same bytes."""
    script_dir = Path(script_dir)
    if not (script_dir / tr.ENTRY_POINT).is_file():
        raise FileNotFoundError(f"the training code has no {tr.ENTRY_POINT} at its root: {script_dir}")
    buf = io.BytesIO()
    with (
        gzip.GzipFile(filename="", fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for p in sorted(script_dir.rglob("*")):
            rel = p.relative_to(script_dir)
            if not p.is_file() or p.suffix in (".pyc", ".pyo"):
                continue
            if any(part == "__pycache__" or part.startswith(".") for part in rel.parts):
                continue
            info = tarfile.TarInfo(rel.as_posix())
            info.size = p.stat().st_size
            info.mode = 0o755 if os.access(p, os.X_OK) else 0o644
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with p.open("rb") as f:
                tar.addfile(info, f)
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def _extract(archive: Path, dest: Path) -> None:
    """Extract a job's ``.tar.gz`` into ``dest`` (replaced whole: write to a sibling, then rename)."""
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(tmp, filter="data")  # no absolute paths, no '..', no devices
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def _put_file(s3: Any, path: Path, uri: str, aws: Any, content_type: str) -> None:
    """Upload a local file, SSE-KMS with the use case's key."""
    bucket, key = req.split_s3_uri(uri)
    extra = {**req.s3_put_kms(aws), "ContentType": content_type}
    if path.stat().st_size <= PUT_OBJECT_MAX_BYTES:
        with path.open("rb") as f:
            s3.put_object(Bucket=bucket, Key=key, Body=f, **extra)
    else:  # multipart; BucketKeyEnabled is not an upload_file argument (the bucket's setting applies)
        extra.pop("BucketKeyEnabled", None)
        s3.upload_file(str(path), bucket, key, ExtraArgs=extra)


def _exists(s3: Any, uri: str) -> bool:
    bucket, key = req.split_s3_uri(uri)
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def model_quality_statistics(ev: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    """The evaluation as a model package's ModelQuality statistics: Model Monitor's
    ``binary_classification_metrics`` layout (what SageMaker Studio shows) for the metrics it
    names, and the whole evaluation (PR-AUC, calibration error, threshold, gate) under
    ``mlblueprints``."""
    c = ev["candidate"]
    rows, pos = int(c.get("rows", 0)), int(c.get("positives", 0))
    neg = rows - pos
    tp = round(c["recall"] * pos)
    fp = round(c["fpr"] * neg)

    def m(v: float) -> dict[str, Any]:
        return {"value": float(v), "standard_deviation": "NaN"}

    return {
        "version": 0.0,
        "dataset": {"item_count": rows, "evaluation_time": ev.get("holdout")},
        "binary_classification_metrics": {
            "confusion_matrix": {"0": {"0": neg - fp, "1": fp}, "1": {"0": pos - tp, "1": tp}},
            "recall": m(c["recall"]),
            "precision": m(c["precision"]),
            "false_positive_rate": m(c["fpr"]),
            "auc": m(c["roc_auc"]),
        },
        "mlblueprints": {
            "candidate": c,
            "champion": ev.get("champion"),
            "champion_version": ev.get("champion_version"),
            "decision": ev.get("decision"),
            "holdout": ev.get("holdout"),
            "training_job_name": trained.get("job_name"),
        },
    }


# ---------------------------------------------------------------- the task side


class AwsTraining:
    """Training-pattern steps on the aws target, bound to the running task."""

    script_dir: Path = SCRIPT_DIR

    def __init__(self, uc: UseCase):
        if uc.aws is None or uc.training is None:
            raise ValueError(f"{uc.name}: training on the aws target needs the aws and training sections")
        self.uc = uc
        self.aws = uc.aws
        self.t = uc.training
        self.lakehouse = AwsLakehouse(uc)
        self.poll_seconds = int(float(os.environ.get("MLB_SAGEMAKER_POLL_SECONDS", "30")))
        self.print_log = os.environ.get("MLB_SAGEMAKER_PRINT_LOG", "1").lower() not in ("0", "false", "no")

    def session(self) -> Any:
        hook = AwsBaseHook(aws_conn_id=self.aws.aws_conn_id, region_name=self.aws.region)
        return hook.get_session(region_name=self.aws.region)

    def _client(self, session: Any, service: str) -> Any:
        return session.client(service, region_name=self.aws.region)

    # ------------------------------------------------------------ training set

    def _glue_table(self, glue: Any, name: str) -> dict[str, Any] | None:
        try:
            return glue.get_table(DatabaseName=self.aws.glue_database, Name=name)["Table"]
        except glue.exceptions.EntityNotFoundException:
            return None

    def _metadata_location(self, glue: Any, name: str) -> str | None:
        table = self._glue_table(glue, name)
        return ((table or {}).get("Parameters") or {}).get("metadata_location")

    def training_set(self, run: Any) -> dict[str, Any]:
        """Build the training set (see the module docstring); the same keys as
        ``features.local.build_training_set`` plus ``s3_uri``, ``sha256``, ``local_path`` and
        ``source_queries``. ``table`` is the set's name ``ts_<name>`` (on aws it is a Parquet
        object, not a table); ``snapshot_id`` is its S3 URI."""
        from mlblueprints.airflow.training import job_dir
        from mlblueprints.features import aws as fa
        from mlblueprints.lakehouse.aws import Statement, fq
        from mlblueprints.lakehouse.local import connect
        from mlblueprints.lakehouse.sqlgen import to_trino

        started = time.perf_counter()
        uc, aws = self.uc, self.aws
        name = self.t.training_set
        ts = uc.training_sets[name]
        rt = self.lakehouse.runtime()
        glue, s3 = self._client(rt.session, "glue"), self._client(rt.session, "s3")

        # the same checks as the local builder, against the Glue Data Catalog
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
        view_cols: dict[str, ViewColumns] = {}
        for vname in ts.features:
            cols = fa.view_columns(uc, vname, glue, s3)
            table = core.offline_table(uc, vname)
            glue_table = self._glue_table(glue, table)
            if glue_table is None:
                raise TrainingSetError(
                    uc,
                    name,
                    None,
                    f"feature view {vname!r} has no offline store table {aws.glue_database}.{table} "
                    f"in the Glue Data Catalog yet (materialize it first)",
                )
            have = {c["Name"] for c in (glue_table.get("StorageDescriptor") or {}).get("Columns", [])}
            for c in [*fsreq.feature_names(cols), WRITE_TIME, API_TIME, IS_DELETED]:
                if have and c not in have:
                    raise TrainingSetError(
                        uc,
                        name,
                        c,
                        f"the offline store {aws.glue_database}.{table} of feature view {vname!r} has no such column",
                    )
            view_cols[vname] = cols
            reads.append((table, f"training_set_{table}", offline_store_sql(uc, vname, cols, fq(uc, table))))

        safe_try = _safe(f"{run.run_id}__{run.try_number}")
        before = {table: self._metadata_location(glue, table) for table, _, _ in reads}
        queries: dict[str, str] = {}
        staged: dict[str, str] = {}
        for table, stmt_name, sql in reads:
            body = to_trino(sql)
            target = aws.s3_uri("_training", core.training_table(name), safe_try, table) + "/"
            unload = Statement(
                stmt_name,
                f"UNLOAD ({body}) TO {literal(target)} WITH (format = 'PARQUET', compression = 'ZSTD')",
                "unload",
                body,
            )
            queries[table] = rt.run_query(unload)
            staged[table] = target
        sources: dict[str, str] = {}
        for table, _, _ in reads:
            after = self._metadata_location(glue, table)
            if before[table] and before[table] == after:
                sources[table] = before[table]
            else:
                if before[table]:
                    log.warning("%s changed while it was read (%s -> %s)", table, before[table], after)
                sources[table] = f"athena:{queries[table]}"

        jd = job_dir(uc, run.run_id)
        out_dir = jd / "training_set"
        out_dir.mkdir(parents=True, exist_ok=True)
        local_path = out_dir / f"{core.training_table(name)}.parquet"
        con = connect()
        with tempfile.TemporaryDirectory(dir=runtime.path("tmp")) as tmp:
            files: dict[str, list[tuple[str, str]]] = {}
            for table, _, _ in reads:
                d = Path(tmp) / table
                d.mkdir()
                files[table] = fa._download(s3, staged[table], d)
            lfiles = [p for _, p in files[ts.labels.source]]
            if lfiles:
                lsrc = f"SELECT * FROM read_parquet([{', '.join(literal(p) for p in lfiles)}], union_by_name = true)"
            else:
                lsrc = (
                    "SELECT "
                    + ", ".join(f"CAST(NULL AS {sql_type(ltypes[c])}) AS {_q(c)}" for c in label_cols)
                    + " WHERE FALSE"
                )
            con.execute(f"CREATE OR REPLACE TEMP VIEW labels AS {lsrc}")
            views = []
            for i, vname in enumerate(ts.features):
                table = core.offline_table(uc, vname)
                cols = view_cols[vname]
                con.execute(
                    f"CREATE OR REPLACE TEMP VIEW fv{i} AS {view_relation_sql(cols, [p for _, p in files[table]])}"
                )
                views.append(
                    core.PitView(name=vname, relation=f"fv{i}", cols=cols, ttl_seconds=uc.features[vname].ttl_seconds)
                )
            sql = core.pit_sql("labels", label_time, ts.labels.label, ts.labels.columns, views)
            order = ["event_time", *dict.fromkeys(k for v in views for k in v.cols.entity_names), *ts.labels.columns]
            sql = f"SELECT * FROM ({sql}) ORDER BY {', '.join(_q(c) for c in order)}"
            partial = local_path.with_name(local_path.name + ".partial")
            con.execute(f"COPY ({sql}) TO {literal(str(partial))} (FORMAT parquet, COMPRESSION zstd)")
            os.replace(partial, local_path)
        con.execute(f"CREATE OR REPLACE TEMP VIEW written AS SELECT * FROM read_parquet({literal(str(local_path))})")
        rows, positives = con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE {_q(ts.labels.label)} = 1) FROM written"
        ).fetchone()
        coverage = {
            v.name: con.execute(
                f"SELECT avg(CASE WHEN {_q(v.name + '__feature_time')} IS NULL THEN 0 ELSE 1 END) FROM written"
            ).fetchone()[0]
            for v in views
        }
        con.close()

        sha = _sha256_file(local_path)
        s3_uri = aws.s3_uri("training-sets", name, _safe(run.run_id), f"{core.training_table(name)}-{sha[:16]}.parquet")
        if not _exists(s3, s3_uri):  # content-addressed: an object under this key holds these bytes
            _put_file(s3, local_path, s3_uri, aws, "application/x-parquet")
        for table, target in staged.items():
            fa._delete(s3, target, [k for k, _ in files[table]])
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
            "seconds": round(time.perf_counter() - started, 3),
            "s3_uri": s3_uri,
            "sha256": sha,
            "local_path": str(local_path),
            "target": "aws",
        }
        log.info("training set %s: %s rows (%s positive) -> %s", name, out["rows"], out["positives"], s3_uri)
        return out

    # ------------------------------------------------------------ train

    def _training_set_file(self, ts: dict[str, Any], jd: Path, s3: Any) -> Path:
        """The training set under the job dir; downloaded again when this worker does not have
        it (another worker ran the training-set task) or it is not the one ``ts`` names."""
        local = Path(ts.get("local_path") or jd / "training_set" / f"{core.training_table(ts['training_set'])}.parquet")
        if local.is_file() and _sha256_file(local) == ts["sha256"]:
            return local
        local = jd / "training_set" / f"{core.training_table(ts['training_set'])}.parquet"
        local.parent.mkdir(parents=True, exist_ok=True)
        bucket, key = req.split_s3_uri(ts["s3_uri"])
        partial = local.with_name(local.name + ".partial")
        s3.download_file(bucket, key, str(partial))
        got = _sha256_file(partial)
        if got != ts["sha256"]:
            raise RuntimeError(f"{ts['s3_uri']} has sha256 {got}, the training-set task wrote {ts['sha256']}")
        os.replace(partial, local)
        return local

    @staticmethod
    def _describe(hook: Any, name: str) -> dict[str, Any] | None:
        try:
            return hook.describe_training_job(name)
        except Exception as exc:
            # what SageMaker answers for an unknown job (the provider's operators test the same)
            if _error_code(exc) == "ValidationException":
                return None
            raise

    def _wait(self, hook: Any, name: str) -> dict[str, Any]:
        try:
            return hook.check_status(name, "TrainingJobStatus", hook.describe_training_job, self.poll_seconds)
        except Exception as exc:  # failed or stopped: the caller decides
            log.warning("training job %s did not complete: %s", name, exc)
            return hook.describe_training_job(name)

    def earlier_job(self, hook: Any, run: Any, train_s3_uri: str) -> dict[str, Any] | None:
        """The job of an earlier try of this run on the same training data that completed (after
        waiting for it when it is still running), newest try first; None when there is none."""
        for k in range(int(run.try_number) - 1, 0, -1):
            name = tr.training_job_name(self.uc, run.run_id, k)
            desc = self._describe(hook, name)
            if desc is None:
                continue
            channels = {c["ChannelName"]: c for c in desc.get("InputDataConfig", [])}
            uri = channels.get(tr.TRAIN_CHANNEL, {}).get("DataSource", {}).get("S3DataSource", {}).get("S3Uri")
            if uri != train_s3_uri:
                continue
            if desc["TrainingJobStatus"] in RUNNING:
                log.info("training job %s of try %d is still running: waiting for it", name, k)
                desc = self._wait(hook, name)
            if desc["TrainingJobStatus"] == "Completed":
                log.info("adopting training job %s of try %d (same training data, completed)", name, k)
                return desc
        return None

    def _run_job(self, request: dict[str, Any], run: Any) -> tuple[dict[str, Any], str]:
        """Run (or find) the training job; returns its DescribeTrainingJob answer and how it was
        obtained: ``created``, ``existing`` (this try's job existed) or ``adopted`` (an earlier try's)."""
        import copy

        from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook
        from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTrainingOperator

        aws = self.aws
        hook = SageMakerHook(aws_conn_id=aws.aws_conn_id, region_name=aws.region)
        train_uri = request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
        adopted = self.earlier_job(hook, run, train_uri)
        if adopted is not None:
            return adopted, "adopted"
        name = request["TrainingJobName"]
        existing = self._describe(hook, name)
        how = "existing" if existing is not None else "created"
        if existing is None:
            op = SageMakerTrainingOperator(
                task_id=f"{run.task_id}__sagemaker",
                config=copy.deepcopy(request),
                wait_for_completion=True,
                print_log=self.print_log,
                check_interval=self.poll_seconds,
                check_if_job_exists=False,  # the name is ours (unique per try); never rename it
                deferrable=False,
                aws_conn_id=aws.aws_conn_id,
                region_name=aws.region,
            )
            log.info("creating SageMaker training job %s", name)
            op.execute(get_current_context())
        elif existing["TrainingJobStatus"] in RUNNING:
            log.info("training job %s exists (a rerun of this try): waiting for it", name)
            self._wait(hook, name)
        desc = hook.describe_training_job(name)
        if desc["TrainingJobStatus"] != "Completed":
            raise RuntimeError(
                f"training job {name} ended {desc['TrainingJobStatus']}: {desc.get('FailureReason') or 'no reason given'}"
                " (the retry starts a new job that resumes from the checkpoints)"
            )
        return desc, how

    def _fetch_model(self, s3: Any, desc: dict[str, Any], try_dir: Path) -> tuple[Path, dict[str, Any], dict]:
        """Download and extract the job's model (and its output data, when there is any);
        returns (model_dir, meta, metrics written by the script)."""
        import xgboost as xgb

        model_uri = desc["ModelArtifacts"]["S3ModelArtifacts"]
        model_dir = try_dir / "model"
        output_dir = try_dir / "output"
        try_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=runtime.path("tmp")) as tmp:
            archive = Path(tmp) / "model.tar.gz"
            s3.download_file(*req.split_s3_uri(model_uri), str(archive))
            _extract(archive, model_dir)
            output_uri = model_uri.rsplit("/", 1)[0] + "/output.tar.gz"  # /opt/ml/output/data
            if _exists(s3, output_uri):
                out_archive = Path(tmp) / "output.tar.gz"
                s3.download_file(*req.split_s3_uri(output_uri), str(out_archive))
                _extract(out_archive, output_dir)
        booster = xgb.Booster()
        if not (model_dir / MODEL_FILE).is_file():
            found = next((model_dir / f for f in BOOSTER_FILES if (model_dir / f).is_file()), None)
            if found is None:
                raise RuntimeError(
                    f"{model_uri} holds no booster ({MODEL_FILE} or one of {', '.join(BOOSTER_FILES)}): "
                    f"{sorted(p.name for p in model_dir.iterdir())}"
                )
            booster.load_model(str(found))
            booster.save_model(str(model_dir / MODEL_FILE))
        else:
            booster.load_model(str(model_dir / MODEL_FILE))

        def read(fname: str) -> dict[str, Any] | None:
            for d in (model_dir, output_dir):
                if (d / fname).is_file():
                    return json.loads((d / fname).read_text())
            return None

        meta = read(META_FILE) or {
            "rounds": booster.num_boosted_rounds(),
            "resumed_from_round": None,
            "source": "booster (the archive has no model_meta.json)",
        }
        return model_dir, meta, read(METRICS_FILE) or {}

    def train(self, ts: dict[str, Any], job_dir: Path, hyperparameters: dict[str, Any], run: Any) -> dict[str, Any]:
        """Split, upload, run the SageMaker training job, fetch its model (module docstring).
        Returns what the local ``train`` task returns, plus the S3 URIs involved."""
        from mlblueprints.training import dataset

        started = time.perf_counter()
        uc, aws = self.uc, self.aws
        jd = Path(job_dir)
        session = self.session()
        s3 = self._client(session, "s3")

        path = self._training_set_file(ts, jd, s3)
        data = dataset.split_parquet(uc, path, jd)
        data_key = f"{_safe(run.run_id)}/{ts['sha256'][:16]}"  # per run and training-set content
        train_s3_uri = aws.s3_uri("training", "data", data_key, tr.TRAIN_CHANNEL) + "/"
        _put_file(s3, jd / "train" / "train.parquet", train_s3_uri + "train.parquet", aws, tr.TRAIN_CONTENT_TYPE)
        # the holdout too: the evaluate task may run on another worker (see ensure_local)
        holdout_s3_uri = aws.s3_uri("training", "data", data_key, "holdout", "holdout.parquet")
        _put_file(s3, jd / "holdout" / "holdout.parquet", holdout_s3_uri, aws, tr.TRAIN_CONTENT_TYPE)

        code, code_sha = source_archive(self.script_dir)
        key = tr.source_archive_key(uc, code_sha)
        s3.put_object(Body=code, **tr.s3_put_source_request(uc, key, run.git_commit))
        source_s3_uri = f"s3://{aws.bucket}/{key}"

        name = tr.training_job_name(uc, run.run_id, run.try_number)
        checkpoint_s3_uri = tr.checkpoint_s3_uri(uc, f"{run.run_id}#{ts['sha256'][:16]}")
        request = tr.create_training_job_request(
            uc,
            job_name=name,
            train_s3_uri=train_s3_uri,
            source_s3_uri=source_s3_uri,
            output_s3_uri=tr.output_s3_uri(uc),
            checkpoint_s3_uri=checkpoint_s3_uri,
            hyperparameters=hyperparameters,
            git_commit=run.git_commit,
            run=run.as_dict(),
        )
        desc, how = self._run_job(request, run)
        job = desc["TrainingJobName"]
        model_dir, meta, script_metrics = self._fetch_model(s3, desc, jd / f"try-{run.try_number}")
        savings = tr.spot_savings(desc)
        final = {m["MetricName"]: m["Value"] for m in desc.get("FinalMetricDataList") or [] if "Value" in m}
        metrics = {**script_metrics, "final_metric_data": final, "spot_savings": savings}
        log.info(
            "training job %s (%s): %s; Spot saved %.0f%% (%s of %s s billed)",
            job,
            how,
            desc["TrainingJobStatus"],
            100 * savings["savings_fraction"],
            savings["billable_seconds"],
            savings["training_seconds"],
        )
        return {
            "job_name": job,
            "try_number": int(run.try_number),
            "model_dir": str(model_dir),
            "meta": meta,
            "metrics": metrics,
            "seconds": round(time.perf_counter() - started, 3),
            "data": data,
            "job_dir": str(jd),
            "job": how,
            "training_job_arn": desc.get("TrainingJobArn"),
            "model_data_url": desc["ModelArtifacts"]["S3ModelArtifacts"],
            "train_s3_uri": train_s3_uri,
            "holdout_s3_uri": holdout_s3_uri,
            "source_s3_uri": source_s3_uri,
            "checkpoint_s3_uri": checkpoint_s3_uri,
        }

    def ensure_local(self, trained: dict[str, Any]) -> None:
        """Put the model and the holdout of ``trained`` (the train task's result) back under its
        job dir when this worker does not have them: on MWAA / Celery the evaluate and register
        tasks may run on another worker than train did."""
        model_dir = Path(trained["model_dir"])
        holdout = Path(trained["job_dir"]) / "holdout" / "holdout.parquet"
        if (model_dir / MODEL_FILE).is_file() and holdout.is_file():
            return
        s3 = self._client(self.session(), "s3")
        if not (model_dir / MODEL_FILE).is_file():
            desc = {"ModelArtifacts": {"S3ModelArtifacts": trained["model_data_url"]}}
            self._fetch_model(s3, desc, model_dir.parent)
        if not holdout.is_file():
            holdout.parent.mkdir(parents=True, exist_ok=True)
            partial = holdout.with_name(holdout.name + ".partial")
            s3.download_file(*req.split_s3_uri(trained["holdout_s3_uri"]), str(partial))
            os.replace(partial, holdout)

    # ------------------------------------------------------------ model registry

    def _ensure_group(self, sm: Any, git_commit: str) -> str:
        request = tr.create_model_package_group_request(self.uc, git_commit=git_commit)
        name = request["ModelPackageGroupName"]

        def exists() -> bool:
            try:
                sm.describe_model_package_group(ModelPackageGroupName=name)
                return True
            except Exception as exc:  # an unknown group is a ValidationException
                if _error_code(exc) in ("ValidationException", "ResourceNotFound"):
                    return False
                raise

        if not exists():
            try:
                sm.create_model_package_group(**request)
                log.info("created model package group %s", name)
            except Exception:
                if not exists():  # not a concurrent creation: a real error
                    raise
        return name

    def register_model_package(
        self, ts: dict[str, Any], trained: dict[str, Any], ev: dict[str, Any], registered: dict[str, Any], run: Any
    ) -> dict[str, Any]:
        """A model package version of the registered candidate (module docstring)."""
        uc, aws = self.uc, self.aws
        session = self.session()
        sm, s3 = self._client(session, "sagemaker"), self._client(session, "s3")
        group = self._ensure_group(sm, run.git_commit)

        metrics_uri = aws.s3_uri("training", "evaluation", _safe(run.run_id), f"{trained['job_name']}.json")
        bucket, key = req.split_s3_uri(metrics_uri)
        body = json.dumps(model_quality_statistics(ev, trained), indent=1, sort_keys=True, default=str)
        s3.put_object(Bucket=bucket, Key=key, Body=body.encode(), ContentType="application/json", **req.s3_put_kms(aws))

        lin = registered.get("lineage") or {}
        metadata = {
            "git_commit": lin.get("git_commit", run.git_commit),
            "config_hash": lin.get("config_hash", run.config_hash),
            "dag_id": lin.get("dag_id"),
            "run_id": lin.get("run_id", run.run_id),
            "training_job_name": trained["job_name"],
            "train_try_number": trained["try_number"],
            "training_set_uri": ts["s3_uri"],
            "training_set_sha256": ts["sha256"],
            "source_snapshots": ts["source_snapshots"],
            "gate": lin.get("gate"),
            "compared_with": lin.get("compared_with"),
            "mlflow_model": registered.get("model_name"),
            "mlflow_version": registered.get("version"),
            "mlflow_run_id": registered.get("mlflow_run_id"),
        }
        primary = self.t.gate.primary_metric
        request = tr.create_model_package_request(
            uc,
            model_data_url=trained["model_data_url"],
            image_uri=tr.framework_image_uri(uc, "inference"),
            metrics_s3_uri=metrics_uri,
            approval_status=self.t.sagemaker.approval_status,
            description=(
                f"{uc.model_name} from run {run.run_id}: {primary} {ev['candidate'][primary]:.4f}, "
                f"gate passed against {ev['decision'].get('against')}"
            ),
            customer_metadata=metadata,
        )
        arn = sm.create_model_package(**request)["ModelPackageArn"]
        log.info("model package %s (%s) in group %s", arn, request["ModelApprovalStatus"], group)
        return {
            "arn": arn,
            "group": group,
            "approval_status": request["ModelApprovalStatus"],
            "metrics_s3_uri": metrics_uri,
            "client_token": request["ClientToken"],
        }
