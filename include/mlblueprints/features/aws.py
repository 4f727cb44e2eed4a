"""Feature materialization on the aws target: SageMaker Feature Store, fed from Athena.

A materialization of a view for the event dates [lo, hi]:

1. reads the Gold table's columns from the Glue Data Catalog and checks the view against them
   (:func:`core.resolve_columns`: a missing column or a type that cannot be stored fails here,
   naming the view and the column);
2. creates the view's feature group if it does not exist and waits until it is ``Created``; an
   existing group must have the same features with the same Feature Store types (a type change
   means a new ``version``, hence a new group); its offline store table must be in Glue;
3. runs Athena statements (:func:`materialize_statements`): the history goes to the offline
   store as files - the batch (:func:`core.batch_sql` over Gold) INSERTed into the offline
   store's Iceberg table, by windows of at most 100 event dates - and a check counts the batch
   and the rows of this write the offline store holds; the newest row per entity is UNLOADed
   (Parquet, KMS) for the online store; the offline table is compacted and vacuumed;
4. in the worker: fails unless the offline store holds the whole batch (so the view's Asset,
   which a training run waits for, is emitted only then), and sends the newest row per entity to
   the online store (PutRecord, ``TargetStores=["OnlineStore"]``) in parallel, retrying
   throttling and 5xx errors with exponential backoff and jitter; a record that still fails
   fails the task.

Why not PutRecord for the history: Feature Store buffers offline writes and lands them in S3
"within 15 minutes", so an Asset emitted when PutRecord returns points at an offline store that
does not hold the batch yet; and one call per row is hours and a cost per row at millions of
rows. An Athena INSERT is one commit per window, visible when the statement ends.

Differences from the local target (``features.local``), both due to Feature Store itself:

* the offline store is append-only: a rerun of a range appends its rows again (with a newer
  ``write_time``). Readers dedupe by (record identifier, ``event_time``), keeping the newest
  ``write_time`` / ``api_invocation_time`` - the offline rows of an entity and instant are then
  the last run's;
* the online store keeps a record until a newer event time (or its TTL) replaces it: an entity
  whose newest row disappears from Gold, or moves to an earlier time, keeps the newer value it
  had online (the local store re-resolves or deletes it). Writing an older range again never
  replaces a newer online value;
* event times are kept to the millisecond (Feature Store's ``yyyy-MM-ddTHH:mm:ss.SSSZ``).

:class:`AwsFeatureStore` is the backend: its ``materialize`` does 1-2 and returns the Athena
statements of 3 as a :class:`~mlblueprints.core.service.ServiceCall`; ``resume_materialize``
does 4. Its clients come from the injected :class:`~mlblueprints.aws.session.AwsRuntime`.
"""

from __future__ import annotations

import logging
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.aws import featurestore as fsreq
from mlblueprints.aws import requests as req
from mlblueprints.aws import s3io
from mlblueprints.aws.s3io import error_code
from mlblueprints.aws.session import AwsRuntime
from mlblueprints.config import UseCase
from mlblueprints.core import service
from mlblueprints.core.naming import safe
from mlblueprints.core.service import ServiceCall, Statement
from mlblueprints.features import core
from mlblueprints.features.core import FeatureViewError, ViewColumns
from mlblueprints.lakehouse.aws import chunk_name, date_windows, fq, maintenance_statements, unload_statement
from mlblueprints.lakehouse.sqlgen import ident, literal, sql_type, to_trino
from mlblueprints.lineage import RunInfo

log = logging.getLogger(__name__)

POLL_SECONDS = 10.0  # between DescribeFeatureGroup calls while a new group is being created
BACKOFF_BASE_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 20.0
# Feature Store's own 5xx errors, plus throttling; botocore's standard retry conditions add theirs
RETRYABLE_CODES = frozenset({"ThrottlingException", "ServiceUnavailable", "InternalFailure"})
FETCH_ROWS = 10_000
# the columns Feature Store adds to every offline-store row
WRITE_TIME, API_TIME, IS_DELETED = "write_time", "api_invocation_time", "is_deleted"


class OfflineStoreIncomplete(RuntimeError):
    """The offline store does not hold the whole batch just written: no Asset is emitted."""


def offline_table_location(uc: UseCase, view: str, glue: Any) -> str | None:
    """The Glue ``metadata_location`` of a view's offline store (the Iceberg table Feature Store
    registers with the feature group); a missing table fails with what to do."""
    aws = uc.aws_settings
    table = core.offline_table(uc, view)
    try:
        t = glue.get_table(DatabaseName=aws.glue_database, Name=table)["Table"]
    except glue.exceptions.EntityNotFoundException:
        raise FeatureViewError(
            uc,
            view,
            None,
            f"the offline store table {aws.glue_database}.{table} of feature group {core.feature_group_name(uc, view)} "
            "is not in the Glue Data Catalog (the group must be created with its Glue table)",
        ) from None
    return (t.get("Parameters") or {}).get("metadata_location")


class PutRecordError(RuntimeError):
    """A record Feature Store did not accept (after its retries); names the record."""

    def __init__(self, feature_group: str, record_id: str, attempts: int, error: BaseException):
        self.feature_group = feature_group
        self.record_id = record_id
        self.attempts = attempts
        self.error = error
        code = error_code(error) or type(error).__name__
        super().__init__(
            f"PutRecord to feature group {feature_group} failed for record {record_id!r} "
            f"after {attempts} attempt(s): {code}: {error}"
        )


# ---------------------------------------------------------------- clients, errors, retries


def clients(rt: AwsRuntime, uc: UseCase, workers: int | None = None) -> tuple[Any, Any]:
    """(sagemaker, sagemaker-featurestore-runtime) clients of the runtime.

    The runtime client does not retry by itself (:func:`put_records` does, per record, with
    the use case's ``max_attempts``) and has a connection per worker thread.
    """
    from botocore.config import Config

    n = workers or uc.aws_settings.feature_store.put_record_workers
    fs = rt.client(
        "sagemaker-featurestore-runtime",
        Config(retries={"total_max_attempts": 1, "mode": "standard"}, max_pool_connections=max(10, n + 2)),
    )
    return rt.client("sagemaker"), fs


def is_retryable(exc: BaseException) -> bool:
    """Throttling, Feature Store's 5xx errors, and what botocore's standard retry mode retries
    (transient error codes, HTTP 500/502/503/504, connection errors)."""
    from botocore.exceptions import ClientError
    from botocore.retries.standard import (
        OrRetryChecker,
        RetryContext,
        ThrottledRetryableChecker,
        TransientRetryableChecker,
    )

    if isinstance(exc, ClientError):
        if error_code(exc) in RETRYABLE_CODES:
            return True
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if status >= 500 or status == 429:
            return True
        ctx = RetryContext(attempt_number=1, parsed_response=exc.response)
    else:
        ctx = RetryContext(attempt_number=1, caught_exception=exc)
    return OrRetryChecker([TransientRetryableChecker(), ThrottledRetryableChecker()]).is_retryable(ctx)


def backoff_seconds(attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Delay before attempt ``attempt + 1``: exponential, capped, with jitter (half fixed, half random)."""
    cap = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
    return cap / 2 + rng() * cap / 2


def _call(fn: Callable[..., Any], kwargs: dict[str, Any], max_attempts: int, sleep: Callable[[float], None]) -> Any:
    """One API call with the retries of :func:`put_records` (for calls other than PutRecord)."""
    attempt = 1
    while True:
        try:
            return fn(**kwargs)
        except Exception as exc:
            if attempt >= max_attempts or not is_retryable(exc):
                raise
            sleep(backoff_seconds(attempt))
            attempt += 1


# ---------------------------------------------------------------- schema


_GLUE_TYPES = {"long": "bigint", "integer": "int", "timestamptz": "timestamp", "string": "string"}


def gold_types(uc: UseCase, gold: str, glue: Any, s3: Any = None) -> dict[str, str]:
    """Column -> type of a Gold table as the Glue Data Catalog reports it (GetTable).

    Glue lists an Iceberg table's columns in its StorageDescriptor (Athena keeps them in step
    with every commit). When it does not, and ``s3`` is given, the schema is read from the
    table's current Iceberg metadata (``Parameters.metadata_location``). Raises
    ``LookupError`` when the table (or any column of it) cannot be found.
    """
    aws = uc.aws_settings
    try:
        table = glue.get_table(DatabaseName=aws.glue_database, Name=gold)["Table"]
    except glue.exceptions.EntityNotFoundException:
        raise LookupError(
            f"Gold table {aws.glue_database}.{gold} is not in the Glue Data Catalog (run the {uc.name}__lakehouse DAG first)"
        ) from None
    sd = table.get("StorageDescriptor") or {}
    columns = [*sd.get("Columns", []), *table.get("PartitionKeys", [])]
    location = (table.get("Parameters") or {}).get("metadata_location")
    if not columns and location and s3 is not None:
        columns = _iceberg_columns(s3, location)
    out: dict[str, str] = {}
    for c in columns:
        t = str(c.get("Type", "")).strip().lower()
        out[c["Name"]] = _GLUE_TYPES.get(t, t)
    if not out:
        raise LookupError(f"Gold table {aws.glue_database}.{gold} has no columns in the Glue Data Catalog")
    return out


def _iceberg_columns(s3: Any, metadata_location: str) -> list[dict[str, str]]:
    """Top-level columns of an Iceberg table's current schema, from its metadata JSON."""
    import json

    bucket, key = req.split_s3_uri(metadata_location)
    meta = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    schemas = meta.get("schemas") or [meta.get("schema", {})]
    current = meta.get("current-schema-id", schemas[0].get("schema-id"))
    schema = next((sc for sc in schemas if sc.get("schema-id") == current), schemas[-1])
    return [
        {"Name": f["name"], "Type": f["type"] if isinstance(f["type"], str) else f["type"].get("type", "struct")}
        for f in schema.get("fields", [])
    ]


def view_columns(uc: UseCase, view: str, glue: Any, s3: Any = None) -> ViewColumns:
    """The view's typed columns, checked against its Gold table in Glue."""
    try:
        types = gold_types(uc, uc.features[view].source, glue, s3)
    except LookupError as exc:
        raise FeatureViewError(uc, view, None, str(exc)) from None
    return core.resolve_columns(uc, view, types)


# ---------------------------------------------------------------- feature group


def check_feature_group(uc: UseCase, view: str, cols: ViewColumns, described: Mapping[str, Any]) -> None:
    """An existing feature group must hold the view's features with the same types and stores."""
    v = uc.features[view]
    name = described.get("FeatureGroupName", core.feature_group_name(uc, view))
    bump = f"bump features.{view}.version to start a new feature group"
    rid = fsreq.record_identifier_name(uc, view)
    if described.get("RecordIdentifierFeatureName") != rid:
        raise FeatureViewError(
            uc,
            view,
            rid,
            f"feature group {name} is keyed on {described.get('RecordIdentifierFeatureName')!r}, the view on {rid!r}; {bump}",
        )
    if described.get("EventTimeFeatureName") != fsreq.EVENT_TIME:
        raise FeatureViewError(
            uc,
            view,
            fsreq.EVENT_TIME,
            f"feature group {name} has event time {described.get('EventTimeFeatureName')!r}; {bump}",
        )
    have = {d["FeatureName"]: d["FeatureType"] for d in described.get("FeatureDefinitions", [])}
    types = fsreq.feature_types(cols)
    for d in fsreq.feature_definitions(uc, view, cols):
        f, want = d["FeatureName"], d["FeatureType"]
        if f not in have:
            raise FeatureViewError(uc, view, f, f"feature group {name} has no such feature; {bump}")
        if have[f] != want:
            raise FeatureViewError(
                uc,
                view,
                f,
                f"type changed: feature group {name} holds {have[f]}, Gold now gives {types[f]} ({want}); {bump}",
            )
    if "online" in v.stores and not (described.get("OnlineStoreConfig") or {}).get("EnableOnlineStore"):
        raise FeatureViewError(uc, view, None, f"feature group {name} has no online store; {bump}")
    if "offline" in v.stores and not described.get("OfflineStoreConfig"):
        raise FeatureViewError(uc, view, None, f"feature group {name} has no offline store; {bump}")


def ensure_feature_group(
    sm: Any,
    uc: UseCase,
    view: str,
    cols: ViewColumns,
    wait_seconds: float,
    poll: float = POLL_SECONDS,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Create the view's feature group unless it exists; wait until it is ``Created``.

    An existing group is checked against the view first (:func:`check_feature_group`). A group
    created concurrently by another run (``ResourceInUse``) is waited for like our own. Raises
    ``RuntimeError`` with the service's ``FailureReason`` when creation fails, ``TimeoutError``
    after ``wait_seconds``.
    """
    request = fsreq.create_feature_group_request(uc, view, cols)
    name = request["FeatureGroupName"]
    created = False
    try:
        desc: dict[str, Any] | None = sm.describe_feature_group(FeatureGroupName=name)
    except sm.exceptions.ResourceNotFound:
        desc = None
    checked = desc is not None
    if checked:
        check_feature_group(uc, view, cols, desc)  # before waiting: a changed view fails at once
    else:
        try:
            sm.create_feature_group(**request)
            created = True
            log.info("feature group %s: creating", name)
        except sm.exceptions.ResourceInUse:
            log.info("feature group %s: created concurrently, waiting for it", name)
    deadline = time.monotonic() + wait_seconds
    while True:
        if desc is None or desc.get("FeatureGroupStatus") == "Creating":
            if desc is not None:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{uc.name}: features.{view}: feature group {name} is still Creating after {wait_seconds:.0f} s"
                    )
                sleep(poll)
            desc = sm.describe_feature_group(FeatureGroupName=name)
            continue
        status = desc.get("FeatureGroupStatus")
        if status == "Created":
            break
        reason = desc.get("FailureReason") or "no reason given"
        raise RuntimeError(f"{uc.name}: features.{view}: feature group {name} is {status}: {reason}")
    if not checked:  # ours, or one a concurrent run created
        check_feature_group(uc, view, cols, desc)
    return {"name": name, "arn": desc.get("FeatureGroupArn"), "created": created, "status": desc["FeatureGroupStatus"]}


# ---------------------------------------------------------------- PutRecord


def put_records(
    fs_runtime: Any,
    requests: Iterable[dict[str, Any]],
    workers: int,
    max_attempts: int,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """PutRecord every request, ``workers`` at a time, each up to ``max_attempts`` times.

    Throttling and 5xx errors are retried with exponential backoff and jitter
    (:func:`is_retryable`); any other error, or a record that exhausts its attempts, stops the
    sending and raises :class:`PutRecordError` naming the record identifier (the first feature
    of a request from :func:`fsreq.put_record_request`). ``requests`` may be a generator: at
    most ``4 * workers`` requests are in memory at a time. Returns ``sent`` (records accepted),
    ``retried`` (attempts repeated) and ``seconds``.
    """
    started = time.perf_counter()
    counts = {"sent": 0, "retried": 0}
    lock = threading.Lock()
    stop = threading.Event()

    def send(request: dict[str, Any]) -> None:
        attempt = 1
        while not stop.is_set():
            try:
                fs_runtime.put_record(**request)
            except Exception as exc:
                if attempt >= max_attempts or not is_retryable(exc):
                    raise PutRecordError(
                        request.get("FeatureGroupName", "?"), fsreq.record_id_of(request), attempt, exc
                    ) from exc
                with lock:
                    counts["retried"] += 1
                sleep(backoff_seconds(attempt))
                attempt += 1
                continue
            with lock:
                counts["sent"] += 1
            return

    failures: list[BaseException] = []

    def collect(done: Iterable[Future[None]]) -> None:
        for f in done:
            exc = f.exception() if not f.cancelled() else None
            if exc is not None:
                failures.append(exc)
                stop.set()

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="put-record") as pool:
        pending: set[Future[None]] = set()
        try:
            for request in requests:
                if stop.is_set():
                    break
                pending.add(pool.submit(send, request))
                if len(pending) >= 4 * max(1, workers):
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    collect(done)
            done, pending = wait(pending)
            collect(done)
        except BaseException:
            stop.set()
            for f in pending:
                f.cancel()
            raise
    if failures:
        raise failures[0]
    return {**counts, "seconds": round(time.perf_counter() - started, 3)}


# ---------------------------------------------------------------- materialize


def staging_uri(uc: UseCase, view: str, run: RunInfo) -> str:
    """S3 prefix the batch is unloaded to: unique per run and try (UNLOAD needs an empty prefix)."""
    return (
        uc.aws_settings.s3_uri("_features", core.offline_table(uc, view), safe(f"{run.run_id}__{run.try_number}")) + "/"
    )


def _rows(con: Any, sql: str) -> Iterator[dict[str, Any]]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    while True:
        chunk = cur.fetchmany(FETCH_ROWS)
        if not chunk:
            return
        for r in chunk:
            yield dict(zip(names, r))


def _text_sql(expr: str, type_: str, *, event_time: bool = False) -> str:
    """Trino: a value as Feature Store's String feature holds it - the same text as
    :func:`fsreq.value_as_string` (dates ``YYYY-MM-DD``, timestamps ISO-8601 UTC with ``Z``,
    milliseconds for the event time, else micro- or milliseconds when the value has them)."""
    if type_ == "timestamp":
        ms = f"date_diff('millisecond', date_trunc('second', {expr}), {expr})"
        us = f"date_diff('microsecond', date_trunc('second', {expr}), {expr})"
        ms_part = f"concat('.', lpad(CAST({ms} AS varchar), 3, '0'))"
        if event_time:
            frac = f"CASE WHEN {ms} = 0 THEN '' ELSE {ms_part} END"
        else:
            us_part = f"concat('.', lpad(CAST({us} AS varchar), 6, '0'))"
            frac = f"CASE WHEN {us} = 0 THEN '' WHEN {us} % 1000 = 0 THEN {ms_part} ELSE {us_part} END"
        text = f"concat(date_format({expr}, '%Y-%m-%dT%H:%i:%s'), {frac}, 'Z')"
    elif type_ == "boolean":
        text = f"CASE WHEN {expr} THEN '1' ELSE '0' END"
    else:  # string, date, integers: their text is the cast
        text = f"CAST({expr} AS varchar)"
    return f"CASE WHEN {expr} IS NULL THEN NULL ELSE {text} END"


def _offline_value_sql(name: str, type_: str, expr: str) -> str:
    """Trino: a feature as the offline store's column holds it (Feature Store's types: String ->
    string, Integral -> bigint, Fractional -> double; a non-finite double is null, as PutRecord
    cannot store it either)."""
    kind = fsreq.FEATURE_TYPE[type_]
    if kind == "Integral":
        if type_ == "boolean":
            return f"CASE WHEN {expr} IS NULL THEN NULL WHEN {expr} THEN 1 ELSE 0 END"
        return f"CAST({expr} AS bigint)"
    if kind == "Fractional":
        return f"CASE WHEN is_finite(CAST({expr} AS double)) THEN CAST({expr} AS double) END"
    return _text_sql(expr, type_, event_time=name == fsreq.EVENT_TIME)


def offline_insert_sql(uc: UseCase, view: str, cols: ViewColumns, lo: date, hi: date, write_time: datetime) -> str:
    """INSERT the batch of [lo, hi] into the view's offline store (the Iceberg table Feature Store
    registered in Glue), one row per batch row with Feature Store's own columns: ``write_time``
    and ``api_invocation_time`` are this materialization's write time, ``is_deleted`` false."""
    v = uc.features[view]
    batch = to_trino(core.batch_sql(cols, fq(uc, v.source), uc.gold[v.source].primary_key, lo, hi))
    types = fsreq.feature_types(cols)
    exprs = []
    for name in fsreq.feature_names(cols):
        if name == core.RECORD_ID:
            parts = [_text_sql(f"b.{ident(k)}", t) for k, t in cols.entity]
            exprs.append("concat(" + ", '#', ".join(parts) + ")")
        else:
            exprs.append(_offline_value_sql(name, types[name], f"b.{ident(name)}"))
    stamp = f"TIMESTAMP {literal(write_time.strftime('%Y-%m-%d %H:%M:%S.%f'))}"
    names = [*fsreq.feature_names(cols), WRITE_TIME, API_TIME, IS_DELETED]
    return (
        f"INSERT INTO {fq(uc, core.offline_table(uc, view))} ({', '.join(ident(n) for n in names)}) "
        f"SELECT {', '.join(exprs)}, {stamp}, {stamp}, FALSE FROM ({batch}) AS b"
    )


def materialize_statements(
    uc: UseCase, view: str, cols: ViewColumns, lo: date, hi: date, target: str, write_time: datetime
) -> list[Statement]:
    """A view's materialization as Athena statements, in order:

    * ``features_skipped_<view>``: the rows the batch leaves out (:func:`core.skipped_sql`);
    * (offline store) ``features_offline_<view>``: the batch (:func:`core.batch_sql`) INSERTed
      into the offline store's Iceberg table, one statement per window of at most
      ``aws.athena_max_partitions_per_write`` event dates (the table has a partition per event
      day), then ``features_check_<view>``: how many rows the batch has and how many of this
      write the offline store holds - the step emits the view's Asset only when they are equal;
    * (online store) ``features_unload_<view>``: the newest row per entity UNLOADed (ZSTD
      Parquet) for the worker to PutRecord into the online store;
    * (offline store) compaction of the offline table and VACUUM with the configured retention.
    """
    v = uc.features[view]
    aws = uc.aws_settings
    source = fq(uc, v.source)
    batch = core.batch_sql(cols, source, uc.gold[v.source].primary_key, lo, hi)
    skipped = to_trino(core.skipped_sql(cols, source, lo, hi))
    out = [Statement(f"features_skipped_{view}", skipped, "select", skipped, fetch=True)]
    if "offline" in v.stores:
        table = core.offline_table(uc, view)
        windows = date_windows(lo, hi, aws.athena_max_partitions_per_write)
        for k, (w_lo, w_hi) in enumerate(windows):
            sql = offline_insert_sql(uc, view, cols, w_lo, w_hi, write_time)
            out.append(Statement(chunk_name(f"features_offline_{view}", k, len(windows)), sql, "insert"))
        stamp = f"TIMESTAMP {literal(write_time.strftime('%Y-%m-%d %H:%M:%S.%f'))}"
        check = to_trino(
            f"SELECT (SELECT count(*) FROM ({batch}) AS b) AS batch_rows, "
            f"(SELECT count(*) FROM {fq(uc, table)} WHERE {ident(WRITE_TIME)} = {stamp} "
            f"AND {ident(API_TIME)} = {stamp}) AS offline_rows"
        )
        out.append(Statement(f"features_check_{view}", check, "select", check, fetch=True))
    else:
        count = to_trino(f"SELECT count(*) AS batch_rows FROM ({batch}) AS b")
        out.append(Statement(f"features_check_{view}", count, "select", count, fetch=True))
    if "online" in v.stores:
        out.append(unload_statement(f"features_unload_{view}", to_trino(core.latest_sql(cols, f"({batch})")), target))
    if "offline" in v.stores:
        retention = aws.feature_store.offline_snapshot_retention_days or uc.lakehouse.snapshot_retention_days
        # Feature Store partitions the offline table by a transform of the event-time string,
        # which Athena cannot take as an OPTIMIZE predicate (only partition columns): the whole
        # table is compacted; BIN_PACK rewrites only its small files (and those with deletes).
        out += maintenance_statements(uc, core.offline_table(uc, view), None, None, retention)
    return out


# ---------------------------------------------------------------- online reads


def _as_of_naive(as_of: datetime | None) -> datetime:
    ts = as_of or datetime.now(UTC)
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo else ts


def get_online_features(
    uc: UseCase,
    view: str,
    keys: Sequence[Any],
    as_of: datetime | None = None,
    rt: AwsRuntime | None = None,
    *,
    fs: Any = None,
    cols: ViewColumns | None = None,
    max_attempts: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[dict[str, Any] | None]:
    """Online values of ``view`` for ``keys`` (scalars, or tuples for composite keys), in order.

    The same contract as the local store: a dict of the entity keys, ``event_time`` (naive UTC)
    and the features, typed as in Gold; ``None`` for an entity the store does not know or whose
    value is older than the view's TTL at ``as_of`` (default: now). Reads with BatchGetRecord,
    100 identifiers per call, retrying throttling and unprocessed identifiers. ``rt`` defaults
    to a boto3 runtime of the use case's region; ``cols`` (else read from Glue) and ``fs`` save
    calls on a hot path.
    """
    aws = uc.aws_settings
    keys = list(keys)
    if not keys:
        return []
    if rt is None and (fs is None or cols is None):
        from mlblueprints.aws.session import boto3_runtime

        rt = boto3_runtime(uc)
    if cols is None:
        cols = view_columns(uc, view, rt.client("glue"), rt.client("s3"))  # type: ignore[union-attr]
    if fs is None:
        _, fs = clients(rt, uc, workers=1)  # type: ignore[arg-type]
    attempts = max_attempts or aws.feature_store.max_attempts
    types = fsreq.feature_types(cols)
    found: dict[str, dict[str, Any]] = {}
    for request in fsreq.batch_get_record_requests(uc, view, keys, fsreq.feature_names(cols)):
        attempt = 1
        while True:
            resp = _call(fs.batch_get_record, request, attempts, sleep)
            for rec in resp.get("Records", []):
                found[rec["RecordIdentifierValueAsString"]] = {
                    f["FeatureName"]: fsreq.value_from_string(
                        f.get("ValueAsString"), types.get(f["FeatureName"], "string")
                    )
                    for f in rec.get("Record", [])
                }
            errors = resp.get("Errors") or []
            if errors:
                e = errors[0]
                raise RuntimeError(
                    f"{uc.name}: features.{view}: BatchGetRecord failed for record "
                    f"{e.get('RecordIdentifierValueAsString')!r}: {e.get('ErrorCode')}: {e.get('ErrorMessage')} "
                    f"({len(errors)} error(s))"
                )
            unprocessed = resp.get("UnprocessedIdentifiers") or []
            if not unprocessed:
                break
            if attempt >= attempts:
                raise RuntimeError(
                    f"{uc.name}: features.{view}: BatchGetRecord left identifiers unprocessed after {attempt} attempts"
                )
            sleep(backoff_seconds(attempt))
            attempt += 1
            request = {"Identifiers": unprocessed}
    cutoff = _as_of_naive(as_of) - timedelta(seconds=uc.features[view].ttl_seconds)
    names = [*cols.entity_names, fsreq.EVENT_TIME, *cols.feature_names]
    out: list[dict[str, Any] | None] = []
    for k in keys:
        rec = found.get(fsreq.record_identifier(uc, view, k))
        if rec is None or rec.get(fsreq.EVENT_TIME) is None or rec[fsreq.EVENT_TIME] < cutoff:
            out.append(None)
        else:
            out.append({n: rec.get(n) for n in names})
    return out


# ---------------------------------------------------------------- the backend


class AwsFeatureStore:
    """The feature store capability on the aws target (``mlblueprints.backends.FeatureStore``):
    SageMaker Feature Store fed from Athena; training sets built in the worker from UNLOADs
    (:mod:`mlblueprints.features.aws_training_set`).

    boto3 by hand for Feature Store: the Amazon provider has no operator or hook for feature
    groups (Create/DescribeFeatureGroup) nor for the ``sagemaker-featurestore-runtime`` API
    (PutRecord, BatchGetRecord). The Athena statements go through the provider's operator."""

    CAPABILITY = "features"

    def __init__(self, uc: UseCase, rt: AwsRuntime):
        self.uc = uc
        self.aws = uc.aws_settings
        self.rt = rt

    def materialize(self, view: str, lo: date, hi: date, run: RunInfo) -> ServiceCall:
        """Check the view against Gold, ensure its feature group and its offline table (module
        docstring, 1-2) and return the Athena statements of 3; :meth:`resume_materialize` does 4."""
        uc = self.uc
        glue = self.rt.client("glue")
        cols = view_columns(uc, view, glue, self.rt.client("s3"))
        sm, _ = clients(self.rt, uc)
        group = ensure_feature_group(sm, uc, view, cols, self.aws.feature_store.wait_seconds, POLL_SECONDS)
        if "offline" in uc.features[view].stores:
            offline_table_location(uc, view, glue)  # Feature Store registered it with the group
        target = staging_uri(uc, view, run)
        write_time = datetime.now(UTC).replace(tzinfo=None)
        state = {
            "view": view,
            "range": [lo.isoformat(), hi.isoformat()],
            "cols": cols.as_dict(),
            "group": group,
            "target": target,
            "write_time": write_time.isoformat(),
            "run": run.as_dict(),
            "started": time.time(),
        }
        stmts = materialize_statements(uc, view, cols, lo, hi, target, write_time)
        return service.athena(stmts, self.CAPABILITY, "resume_materialize", state, view=view)

    def resume_materialize(self, state: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
        """Returns the same counts as the local target: ``rows_in`` (Gold rows of the range, plus
        those without an event time), ``skipped_null_key``, ``skipped_null_event_time``,
        ``collapsed_duplicates`` (rows sharing an entity and instant with the one kept),
        ``offline_rows`` (history rows written to the offline store), ``online_entities`` (newest
        record per entity sent); ``rows_in`` is the sum of the four.

        Raises :class:`OfflineStoreIncomplete` when the offline store does not hold every row of
        the batch: the step then fails and emits no Asset, so nothing downstream (a training set)
        reads an offline store without the batch."""
        import duckdb

        uc, view = self.uc, state["view"]
        v = uc.features[view]
        opts = self.aws.feature_store
        cols = ViewColumns.from_dict(state["cols"])
        run = RunInfo(**state["run"])
        lo, hi = state["range"]
        target = state["target"]
        s3 = self.rt.client("s3")
        _, fs = clients(self.rt, uc)
        queries = output["queries"]
        counts = self.rt.fetch_rows(queries[f"features_skipped_{view}"])
        null_key, null_et, total = (int(x or 0) for x in list(counts[0].values())[:3]) if counts else (0, 0, 0)
        [check] = self.rt.fetch_rows(queries[f"features_check_{view}"]) or [{}]
        batch_rows = int(check.get("batch_rows") or 0)
        collapsed = total - null_key - null_et - batch_rows
        if collapsed < 0:
            raise RuntimeError(
                f"{uc.name}: features.{view}: the batch has {batch_rows} rows but Gold only "
                f"{total - null_key - null_et} usable ones: Gold changed while materializing; rerun the step"
            )
        offline: dict[str, Any] = {}
        if "offline" in v.stores:
            held = int(check.get("offline_rows") or 0)
            table = core.offline_table(uc, view)
            if held != batch_rows:
                raise OfflineStoreIncomplete(
                    f"{uc.name}: features.{view}: the offline store {self.aws.glue_database}.{table} holds {held} of "
                    f"the batch's {batch_rows} rows written at {state['write_time']}; the view's Asset is not "
                    "emitted (rerun the step: a new try writes the batch again and readers keep the newest write)"
                )
            offline = {
                "table": f"{self.aws.glue_database}.{table}",
                "rows": held,
                "write_time": state["write_time"],
                "metadata_location": offline_table_location(uc, view, self.rt.client("glue")),
            }
        puts: dict[str, Any] = {}
        entities = 0
        files: list[tuple[str, str]] = []
        if "online" in v.stores:
            with tempfile.TemporaryDirectory(dir=runtime.path("tmp")) as tmp:
                files = s3io.download_prefix(s3, target, Path(tmp))
                con = duckdb.connect()
                typed = [*cols.entity, (fsreq.EVENT_TIME, "timestamp"), *cols.features, ("event_date", "date")]
                if files:
                    paths = ", ".join(literal(p) for _, p in files)
                    src = f"SELECT * FROM read_parquet([{paths}], union_by_name = true)"
                else:  # nothing in the range: an empty, typed batch
                    src = (
                        "SELECT "
                        + ", ".join(f"CAST(NULL AS {sql_type(t)}) AS {ident(c)}" for c, t in typed)
                        + " WHERE FALSE"
                    )
                con.execute(f"CREATE VIEW latest AS {src}")
                entities = con.execute("SELECT count(*) FROM latest").fetchone()[0]
                online = (
                    fsreq.put_record_request(uc, view, cols, r, [fsreq.ONLINE_STORE])
                    for r in _rows(con, "SELECT * FROM latest")
                )
                puts["online"] = put_records(fs, online, opts.put_record_workers, opts.max_attempts)
                con.close()
            s3io.delete_keys(s3, req.split_s3_uri(target)[0], [k for k, _ in files], target)
        group = state["group"]
        log.info(
            "features.%s [%s, %s] -> %s: %d Gold rows, %d history rows offline, %d entities online (%d+%d skipped, %d collapsed)",
            view,
            lo,
            hi,
            group["name"],
            total,
            batch_rows if "offline" in v.stores else 0,
            entities,
            null_key,
            null_et,
            collapsed,
        )
        return {
            "view": view,
            "target": "aws",
            "range": [lo, hi],
            "rows_in": int(total),
            "skipped_null_key": int(null_key),
            "skipped_null_event_time": int(null_et),
            "collapsed_duplicates": int(collapsed),
            "offline_rows": int(batch_rows) if "offline" in v.stores else 0,
            "online_entities": int(entities),
            "offline": offline,
            "offline_snapshot_id": offline.get("metadata_location"),
            "feature_group": group["name"],
            "feature_group_arn": group["arn"],
            "feature_group_created": group["created"],
            "staging_uri": target,
            "statements": list(queries),
            "put_record": puts,
            "run_id": run.run_id,
            "try_number": run.try_number,
            "git_commit": run.git_commit,
            "config_hash": run.config_hash,
            "seconds": round(time.time() - float(state["started"]), 3),
        }

    def check_view(self, view: str) -> str | None:
        try:
            view_columns(self.uc, view, self.rt.client("glue"), self.rt.client("s3"))
        except FeatureViewError as exc:
            return str(exc)
        return None

    def get_online_features(self, view: str, keys: Sequence[Any], as_of: Any = None) -> list[dict[str, Any] | None]:
        return get_online_features(self.uc, view, keys, None if as_of == "watermark" else as_of, self.rt)

    def build_training_set(self, name: str, run: RunInfo, job_dir: Path) -> ServiceCall:
        from mlblueprints.features import aws_training_set

        return aws_training_set.prepare(self.uc, self.rt, name, run, job_dir)

    def resume_training_set(self, state: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
        from mlblueprints.features import aws_training_set

        return aws_training_set.finish(self.uc, self.rt, state, output)

    def describe(self, view: str) -> dict[str, Any]:
        """Where the view's stores are (no AWS call)."""
        group = core.feature_group_name(self.uc, view)
        return {
            "target": "aws",
            "store": group,
            "where": [f"Online store of {view}: SageMaker Feature Store feature group {group}"],
        }
