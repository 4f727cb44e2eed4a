"""Batch scoring on the local target: DuckDB streams the rows, the model predicts each record
batch, pyarrow stages the predictions, one Iceberg commit replaces the interval.

* :func:`plan` checks the rows against the model (every feature given, with a number type, with
  the type it was trained on) and pins what the run reads: the snapshot of the rows' Gold table
  and of each feature view's offline store. It counts the rows of the interval.
* :func:`score` builds the scoring rows from exactly those snapshots - the point-in-time join of
  :func:`mlblueprints.features.core.pit_sql`, the one training sets are built with, or the rows'
  own columns - and reads them as Arrow record batches of ``scoring.batch_size`` rows. Each batch
  is predicted (XGBoost's ``inplace_predict`` on a float32 matrix; other flavors through
  :meth:`~mlblueprints.training.models.Model.scores`) and written at once as Parquet under a fresh
  directory of the predictions table, one file series per event date: nothing is visible yet, and
  memory holds one batch whatever the interval's size (DuckDB's own memory is capped by
  ``scoring.memory_mb`` and spills to disk beyond it).
* :func:`gate` runs Great Expectations on the staged files.
* :func:`commit` deletes the interval's predictions and adds the staged files in one Iceberg
  transaction: a rerun replaces the interval, never duplicates it, and a kill at any point before
  the commit leaves the table as it was (the staged files are orphans the lakehouse's cleanup
  removes). A commit that already landed (a retry after the task died) is recognised by the batch
  id on the snapshot.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.config import UseCase
from mlblueprints.core.duck import connect
from mlblueprints.errors import PermanentError
from mlblueprints.features import core as fcore
from mlblueprints.features import local as fl
from mlblueprints.lakehouse import iceberg, naming
from mlblueprints.lakehouse.local import on_storage_errors, table_properties, target_file_size
from mlblueprints.lakehouse.sqlgen import ident, literal
from mlblueprints.lineage import RunInfo
from mlblueprints.scoring import core
from mlblueprints.scoring.core import ScoringError
from mlblueprints.scoring.gate import gate_view

log = logging.getLogger(__name__)

_ARROW_TYPES = {
    "string": "string",
    "int": "int32",
    "bigint": "int64",
    "double": "float64",
    "date": "date32",
    "timestamp": "timestamp[us]",
    "boolean": "bool",
}


def _types(table: Any) -> dict[str, str]:
    return {k: fcore.normalize_type(t) for k, t in fl.iceberg_types(table).items()}


def _source(uc: UseCase, table: str) -> Any:
    t = iceberg.load(iceberg.catalog(), naming.identifier(uc, table))
    if t is None:
        raise ScoringError(
            uc, f"scoring.rows: Gold table {table!r} does not exist yet (run {uc.name}__lakehouse first)"
        )
    return t


def output_table(uc: UseCase) -> str:
    if uc.scoring is None:
        raise ScoringError(uc, "the use case has no scoring section")
    return uc.scoring.output_table


def _trained_types(uc: UseCase, model: Mapping[str, Any]) -> dict[str, str]:
    """The column types of the training set the model was trained on (its snapshot), where it
    is still in the catalog; empty otherwise."""
    ident_ = model.get("training_set")
    snap = model.get("training_set_snapshot_id")
    if not ident_ or "." not in str(ident_):
        return {}
    t = iceberg.load(iceberg.catalog(), str(ident_))
    if t is None:
        return {}
    schema = t.schema()
    if snap is not None:
        s = t.snapshot_by_id(int(snap))
        if s is not None and s.schema_id is not None:
            schema = t.schemas().get(s.schema_id, schema)
    return {f.name: fcore.normalize_type(str(f.field_type)) for f in schema.fields}


def _missing_view(uc: UseCase) -> Any:
    def missing(view: str) -> Exception:
        return ScoringError(uc, f"scoring.rows: feature view {view!r} has no offline store yet (materialize it first)")

    return missing


@on_storage_errors
def plan(uc: UseCase, lo: date, hi: date, model: dict[str, Any], run: RunInfo) -> dict[str, Any]:
    """Check the rows against the model and pin the snapshots the run reads (module docstring)."""
    started = time.perf_counter()
    rows = uc.scoring_rows()
    src = _source(uc, rows["source"])
    types = _types(src)
    core.check_rows(uc, rows, types)
    con = connect()
    try:
        given: dict[str, str] = {c: types[c] for c in rows["columns"]}
        snapshots: dict[str, int | None] = {rows["source"]: iceberg.snapshot_id(src)}
        if rows["views"]:
            views, snaps = fl.register_pit_views(uc, con, rows["views"], _missing_view(uc), lo, hi + timedelta(days=1))
            for v in views:
                given.update(dict(v.cols.features))
            snapshots.update(snaps)
            what = f"the feature views {rows['views']} and the columns {rows['columns']} of {rows['source']}"
        else:
            given = {c: t for c, t in types.items() if c not in rows["keys"]}
            what = f"the columns of {rows['source']}"
        core.check_inputs(uc, model, given, what)
        core.check_trained_types(uc, model, _trained_types(uc, model), given)
        _register_rows(uc, con, rows, src, snapshots[rows["source"]], lo, hi)
        in_range, null_keys = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE "
            + " OR ".join(f"{ident(k)} IS NULL" for k in rows["keys"])
            + ") FROM rows_in_interval"
        ).fetchone()
    finally:
        con.close()
    return {
        "range": [lo.isoformat(), hi.isoformat()],
        "model": model,
        "rows": rows,
        "snapshots": snapshots,
        "rows_in": int(in_range) - int(null_keys),
        "skipped_null_key": int(null_keys),
        "output_table": naming.identifier(uc, output_table(uc)),
        "target": "local",
        "seconds": round(time.perf_counter() - started, 3),
    }


def _register_rows(
    uc: UseCase, con: Any, rows: Mapping[str, Any], src: Any, snapshot: int | None, lo: date, hi: date
) -> None:
    """``rows_in_interval``: the rows of the pinned Gold snapshot whose event time is in [lo, hi]
    (whole days, UTC); ``scoring_rows``: those with every key."""
    from pyiceberg.expressions import And, GreaterThanOrEqual, LessThanOrEqual

    et = rows["event_time"]
    end = hi + timedelta(days=1)
    prune = None
    if et == uc.gold[rows["source"]].event_time:  # Gold is partitioned by the event date of this time
        prune = And(GreaterThanOrEqual("event_date", lo.isoformat()), LessThanOrEqual("event_date", hi.isoformat()))
    where = f"{ident(et)} >= TIMESTAMP {literal(lo.isoformat())} AND {ident(et)} < TIMESTAMP {literal(end.isoformat())}"
    kw = {"row_filter": prune} if prune is not None else {}
    iceberg.register_view(con, "rows_in_interval", src, where=where, snapshot_id=snapshot, **kw)
    keyed = " AND ".join(f"{ident(k)} IS NOT NULL" for k in rows["keys"])
    con.execute(f"CREATE OR REPLACE TEMP VIEW scoring_rows AS SELECT * FROM rows_in_interval WHERE {keyed}")


def scoring_sql(uc: UseCase, con: Any, planned: Mapping[str, Any]) -> str:
    """Register the pinned inputs of a planned run on ``con``; the SQL of its scoring rows: the
    keys, ``event_time``, ``event_date`` and the model's features as DOUBLE, in model order.

    With feature views, the features are the point-in-time join training sets are built with
    (:func:`mlblueprints.features.core.pit_sql`): per view, the newest offline row of the entity
    at or before the row's event time, null when older than the view's TTL."""
    rows = planned["rows"]
    lo, hi = (date.fromisoformat(x) for x in planned["range"])
    src = _source(uc, rows["source"])
    _register_rows(uc, con, rows, src, planned["snapshots"].get(rows["source"]), lo, hi)
    feats = planned["model"]["features"]
    keys = rows["keys"]
    if rows["views"]:
        views, _ = fl.register_pit_views(
            uc, con, rows["views"], _missing_view(uc), lo, hi + timedelta(days=1), snapshots=planned["snapshots"]
        )
        relation = fcore.pit_sql("scoring_rows", rows["event_time"], None, [*keys, *rows["columns"]], views)
        time_col = "event_time"
    else:
        relation, time_col = "SELECT * FROM scoring_rows", rows["event_time"]
    cols = [ident(k) for k in keys]
    cols += [f"CAST({ident(time_col)} AS TIMESTAMP) AS event_time", f"CAST({ident(time_col)} AS DATE) AS event_date"]
    cols += [f"CAST({ident(f)} AS DOUBLE) AS {ident(f)}" for f in feats]
    return f"SELECT {', '.join(cols)} FROM ({relation}) AS r"


def load_model(uc: UseCase, model: Mapping[str, Any]) -> Any:
    """The registered version as a :class:`~mlblueprints.training.models.Model` (its own flavor)."""
    from mlblueprints.backends import backend_for
    from mlblueprints.registry.reference import ReferenceModel

    ref = ReferenceModel(model["name"], int(model["version"]), "scoring", model.get("mlflow_run_id"))
    m = backend_for(uc, "registry").load_reference(ref, model["task"], list(model["features"]))
    names = getattr(m.raw, "feature_names", None) if m.flavor == "xgboost" else None
    if names and list(names) != list(model["features"]):
        raise ScoringError(
            uc, f"{model['label']}: the booster's feature names {list(names)} are not {model['features']}"
        )
    return m


def _arrow_schema(task: str, key_types: Sequence[tuple[str, str]]) -> Any:
    import pyarrow as pa

    return pa.schema([(n, pa.type_for_alias(_ARROW_TYPES[t])) for n, t in core.output_columns(task, key_types)])


class _Writers:
    """Parquet files under ``location``, one folder per event date, each file cut at ``target``
    bytes; a batch is split by event date and written at once."""

    def __init__(self, location: Path, schema: Any, target: int):
        self.location, self.schema, self.target = location, schema, target
        self.open: dict[str, tuple[Any, Path]] = {}
        self.files = 0

    def write(self, table: Any) -> None:
        import numpy as np
        import pyarrow.compute as pc

        days = table.column("event_date")
        if pc.min_max(days)["min"] == pc.min_max(days)["max"]:
            self._write(str(days[0]), table)
            return
        d = days.to_numpy().astype("datetime64[D]").astype(np.int64)
        order = np.argsort(d, kind="stable")
        table, d = table.take(order), d[order]
        cuts = np.flatnonzero(np.diff(d)) + 1
        for a, b in zip([0, *cuts], [*cuts, len(d)]):
            part = table.slice(int(a), int(b - a))
            self._write(str(part.column("event_date")[0]), part)

    def _write(self, day: str, part: Any) -> None:
        import pyarrow.parquet as pq

        if day not in self.open:
            path = self.location / f"event_date={day}" / f"part-{uuid.uuid4().hex}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.open[day] = (pq.ParquetWriter(path, self.schema, compression="zstd"), path)
            self.files += 1
        writer, path = self.open[day]
        writer.write_table(part)
        if path.stat().st_size >= self.target:
            writer.close()
            del self.open[day]

    def close(self) -> None:
        for writer, _ in self.open.values():
            writer.close()
        self.open.clear()


def _ensure_output(uc: UseCase, planned: Mapping[str, Any], schema: Any) -> Any:
    table_name = output_table(uc)
    try:
        return iceberg.ensure_table(
            iceberg.catalog(),
            naming.identifier(uc, table_name),
            schema,
            "event_date",
            {**table_properties(uc), "mlb.predictions-of": uc.model_name, "mlb.task": planned["model"]["task"]},
        )
    except TypeError as exc:  # a column of another type: a table of another task or key
        raise ScoringError(
            uc,
            f"the predictions table {table_name!r} has another layout ({exc}); set scoring.output_table to a new table",
        ) from None


@on_storage_errors
def score(uc: UseCase, planned: Mapping[str, Any], run: RunInfo) -> dict[str, Any]:
    """Stream the planned rows through the model into staged Parquet files (module docstring)."""
    import numpy as np
    import pyarrow as pa

    s = uc.scoring
    if s is None:
        raise ScoringError(uc, "the use case has no scoring section")
    started = time.perf_counter()
    m = planned["model"]
    task, feats, keys = m["task"], list(m["features"]), planned["rows"]["keys"]
    model = load_model(uc, m)
    booster = model.raw if model.flavor == "xgboost" else None
    if booster is not None:
        booster.set_param({"nthread": max(1, os.cpu_count() or 1)})
    con = connect()
    con.execute(f"SET memory_limit = '{int(s.memory_mb)}MB'")
    sql = scoring_sql(uc, con, planned)
    key_types = [(k, _types(_source(uc, planned["rows"]["source"]))[k]) for k in keys]
    schema = _arrow_schema(task, key_types)
    table = _ensure_output(uc, planned, schema)
    location = iceberg.new_write_dir(table)
    writers = _Writers(location, schema, target_file_size(uc))
    hist = core.histogram_for(task, m.get("target_range"))
    consts = {
        "model_name": pa.scalar(m["name"], pa.string()),
        "model_version": pa.scalar(int(m["version"]), pa.int64()),
        "mlflow_run_id": pa.scalar(m.get("mlflow_run_id"), pa.string()),
        "input_snapshots": pa.scalar(json.dumps(planned["snapshots"], sort_keys=True), pa.string()),
        "scoring_run_id": pa.scalar(run.run_id, pa.string()),
        "threshold": pa.scalar(m.get("threshold"), pa.float64()),
    }
    rows = batches = flagged = 0
    decisions: dict[str, int] = {}
    predict_seconds = 0.0
    reader = con.sql(sql).to_arrow_reader(int(s.batch_size))
    try:
        for batch in reader:
            n = batch.num_rows
            if not n:
                continue
            x = np.empty((n, len(feats)), dtype=np.float32)
            for j, f in enumerate(feats):
                x[:, j] = batch.column(f).to_numpy(zero_copy_only=False)
            t = time.perf_counter()
            raw = booster.inplace_predict(x) if booster is not None else model.scores(x)
            predict_seconds += time.perf_counter() - t
            scores, decision = core.decide(task, raw, m.get("threshold"), m.get("classes"))
            cols: dict[str, Any] = {k: batch.column(k) for k in keys}
            cols["event_time"] = batch.column("event_time")
            cols["score"] = pa.array(scores, pa.float64())
            if task == "binary":
                cols["decision"] = pa.array(decision, pa.int32())
                flagged += int(decision.sum())
            elif task == "multiclass":
                cols["decision"] = pa.array(decision.tolist(), pa.string())
                for c, k in zip(*np.unique(decision.astype(str), return_counts=True)):
                    decisions[str(c)] = decisions.get(str(c), 0) + int(k)
            for name in (
                "threshold",
                "model_name",
                "model_version",
                "mlflow_run_id",
                "input_snapshots",
                "scoring_run_id",
            ):
                if name in schema.names:
                    cols[name] = pa.repeat(consts[name], n)
            cols["event_date"] = batch.column("event_date")
            writers.write(pa.table([cols[f.name] for f in schema], schema=schema))
            hist.add(scores)
            rows += n
            batches += 1
    finally:
        writers.close()
        reader.close()
        con.close()
    seconds = time.perf_counter() - started
    out: dict[str, Any] = {
        "staged": str(location),
        "batch_id": location.name,
        "rows": rows,
        "batches": batches,
        "files": writers.files,
        "histogram": hist.as_dict(),
        "seconds": round(seconds, 3),
        "predict_seconds": round(predict_seconds, 3),
        "rows_per_second": round(rows / seconds, 1) if seconds > 0 else None,
        "flavor": model.flavor,
    }
    if task == "binary":
        out["flagged"] = flagged
    if task == "multiclass":
        out["decisions"] = decisions
    log.info(
        "scored %s rows in %s batches (%.1f s, %.0f rows/s) -> staged %s",
        rows,
        batches,
        seconds,
        out["rows_per_second"] or 0,
        location,
    )
    return out


def _staged_files(scored: Mapping[str, Any]) -> list[str]:
    return sorted(str(p) for p in Path(scored["staged"]).rglob("*.parquet"))


def gate(uc: UseCase, planned: Mapping[str, Any], scored: Mapping[str, Any], run: RunInfo) -> dict[str, Any]:
    """Great Expectations on the staged predictions (nothing is committed before they pass)."""
    from mlblueprints.quality.gx import GateFailed

    files = _staged_files(scored)
    if not files and scored["rows"]:
        raise PermanentError(
            f"{uc.name}: scoring: the staged predictions in {scored['staged']} are gone; clear the score task"
        )
    con = connect()
    try:
        if files:
            con.execute(
                f"CREATE VIEW predictions_staged AS SELECT * FROM read_parquet([{', '.join(literal(f) for f in files)}])"
            )
        else:
            table = iceberg.load(iceberg.catalog(), planned["output_table"])
            iceberg.register_view(con, "predictions_staged", table, where="FALSE", temporary=False)
        report = gate_view(uc, con, "predictions_staged", planned, run)
    finally:
        con.close()
    if not report["success"]:
        raise GateFailed(report["summary"])
    return report


@on_storage_errors
def commit(uc: UseCase, planned: Mapping[str, Any], scored: Mapping[str, Any], run: RunInfo) -> dict[str, Any]:
    """One Iceberg transaction: the interval's predictions replaced by the staged files."""
    from pyiceberg.expressions import And, GreaterThanOrEqual, LessThanOrEqual

    lo, hi = planned["range"]
    table = iceberg.load(iceberg.catalog(), planned["output_table"])
    if table is None:
        raise PermanentError(
            f"{uc.name}: scoring: the predictions table {planned['output_table']} is gone; clear the score task"
        )
    snap = table.current_snapshot()
    props_now = dict(snap.summary.additional_properties) if snap is not None and snap.summary else {}
    m = planned["model"]
    if props_now.get("mlb.batch-id") == scored["batch_id"]:  # a retry after this commit landed
        log.info("batch %s is committed already (snapshot %s)", scored["batch_id"], snap.snapshot_id)
        out = {"snapshot_id": snap.snapshot_id, "files_written": scored["files"], "already": True}
    else:
        location = Path(scored["staged"])
        if not location.is_dir():
            raise PermanentError(
                f"{uc.name}: scoring: the staged predictions of batch {scored['batch_id']} are gone ({location}); "
                "clear the score task to score the interval again"
            )
        props = run.snapshot_properties(
            step="scoring",
            range=[lo, hi],
            model=m["name"],
            model_version=str(m["version"]),
            mlflow_run_id=m.get("mlflow_run_id") or "",
            input_snapshots=planned["snapshots"],
            batch_id=scored["batch_id"],
            rows=str(scored["rows"]),
        )
        out = iceberg.commit_files(
            table,
            location,
            replace=And(GreaterThanOrEqual("event_date", lo), LessThanOrEqual("event_date", hi)),
            snapshot_properties=props,
        )
    # upkeep: snapshots older than the retention expired, write dirs of killed runs removed (only
    # those older than an hour: a run in progress is never touched)
    table.refresh()
    expired = iceberg.expire_snapshots(table, older_than=timedelta(days=uc.lakehouse.snapshot_retention_days))
    orphans = iceberg.remove_orphan_files(table)
    return {
        "table": planned["output_table"],
        "range": [lo, hi],
        "rows": scored["rows"],
        "snapshot_id": out["snapshot_id"],
        "snapshots_expired": expired,
        "orphan_files_removed": orphans,
        "files": out.get("files_written"),
        "model": m["name"],
        "version": m["version"],
    }


def predictions(uc: UseCase, entity: Sequence[str] | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """The newest predictions (of one key, when ``entity`` gives its values) with their lineage."""
    table = iceberg.load(iceberg.catalog(), naming.identifier(uc, output_table(uc)))
    if table is None:
        raise ScoringError(
            uc,
            f"no predictions yet: table {output_table(uc)!r} does not exist (run mlblueprints scoring run {uc.name})",
        )
    keys = uc.scoring_rows()["keys"]
    con = connect()
    try:
        iceberg.register_view(con, "predictions", table)
        where = ""
        if entity:
            if len(entity) != len(keys):
                raise ScoringError(uc, f"--entity takes {len(keys)} value(s), one per key {keys}, comma-separated")
            where = "WHERE " + " AND ".join(f"CAST({ident(k)} AS VARCHAR) = {literal(v)}" for k, v in zip(keys, entity))
        cur = con.execute(
            f"SELECT * FROM predictions {where} ORDER BY event_time DESC, {', '.join(ident(k) for k in keys)} LIMIT {int(limit)}"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()


# ------------------------------------------------------------------ the backend


class LocalScorer:
    """The scorer capability on the local target (``mlblueprints.backends.Scorer``)."""

    def __init__(self, uc: UseCase):
        self.uc = uc

    def plan(self, lo: date, hi: date, model: dict[str, Any], run: RunInfo) -> dict[str, Any]:
        return plan(self.uc, lo, hi, model, run)

    def score(self, planned: dict[str, Any], run: RunInfo) -> dict[str, Any]:
        return score(self.uc, planned, run)

    def gate(self, planned: dict[str, Any], scored: dict[str, Any], run: RunInfo) -> dict[str, Any]:
        return gate(self.uc, planned, scored, run)

    def commit(
        self, planned: dict[str, Any], scored: dict[str, Any], gated: dict[str, Any], run: RunInfo
    ) -> dict[str, Any]:
        return commit(self.uc, planned, scored, run)

    def predictions(self, entity: Sequence[str] | None = None, limit: int = 20) -> list[dict[str, Any]]:
        return predictions(self.uc, entity, limit)

    def where(self) -> list[str]:
        uc = self.uc
        ident_ = naming.identifier(uc, output_table(uc))
        t = iceberg.load(iceberg.catalog(), ident_)
        location = iceberg.data_dir(t).parent if t is not None else runtime.home() / "warehouse"
        return [
            f"predictions: Iceberg table {ident_} at {location} (catalog {runtime.home() / 'warehouse' / 'catalog.db'})",
            f"read them: .venv/bin/mlblueprints predictions {uc.name} [--entity KEY]",
            f"Data Docs (Great Expectations): {runtime.home() / 'quality' / uc.name / 'uncommitted/data_docs/local_site/index.html'}",
        ]
