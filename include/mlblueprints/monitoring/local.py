"""Monitoring on the local target: the window's rows rebuilt from exactly what its scoring run read,
the reference from the version's training set snapshot, the history in two Iceberg tables.

* :func:`window` reads the predictions of the window (the predictions table, rows of the
  monitored version), rebuilds their features from the snapshots the scoring run pinned (the
  ``input_snapshots`` of each prediction, through the scoring pattern's own SQL) and joins the
  label where it has landed since (the rows' Gold table as it is now);
* :func:`reference` reads the version's training set at the snapshot its lineage records (or, for
  ``reference.source: window``, the scoring rows of the fixed event dates) and scores it with the
  version the way scoring does;
* :func:`write` replaces the window's rows of the monitoring table and appends the decision to
  ``<output_table>_decisions`` (a rerun of a window replaces its metric rows and keeps its first
  decision, see ``policy``).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.config import UseCase
from mlblueprints.core.duck import connect
from mlblueprints.errors import PermanentError
from mlblueprints.lakehouse import iceberg, naming
from mlblueprints.lakehouse.local import on_storage_errors, table_properties
from mlblueprints.lakehouse.sqlgen import ident, literal
from mlblueprints.lineage import RunInfo
from mlblueprints.monitoring import core

log = logging.getLogger(__name__)

_ARROW = {"string": "string", "bigint": "int64", "int": "int32", "double": "float64", "boolean": "bool"}


def _arrow_schema(cols: list[tuple[str, str]]) -> Any:
    import pyarrow as pa

    def typ(t: str) -> Any:
        if t == "date":
            return pa.date32()
        if t == "timestamp":
            return pa.timestamp("us")
        return pa.type_for_alias(_ARROW[t])

    return pa.schema([pa.field(n, typ(t)) for n, t in cols])


def tables(uc: UseCase) -> tuple[str, str]:
    """The identifiers of the monitoring table and of its decisions table."""
    m = uc.monitoring
    if m is None:
        raise PermanentError(f"{uc.name}: the use case has no monitoring section")
    return naming.identifier(uc, m.output_table), naming.identifier(uc, f"{m.output_table}_decisions")


def _predictions(uc: UseCase) -> Any:
    from mlblueprints.scoring.local import output_table

    t = iceberg.load(iceberg.catalog(), naming.identifier(uc, output_table(uc)))
    if t is None:
        raise PermanentError(f"{uc.name}: monitoring: no predictions table yet (run {uc.name}__scoring first)")
    return t


def score_frame(uc: UseCase, model: Mapping[str, Any], frame: Any) -> Any:
    """``frame`` with the version's ``score`` column, computed as the scoring pattern computes it."""
    import numpy as np

    from mlblueprints.scoring import core as scoring_core
    from mlblueprints.scoring.local import load_model

    feats = list(model["features"])
    x = frame[feats].to_numpy(dtype=np.float32)
    loaded = load_model(uc, model)
    raw = loaded.raw.inplace_predict(x) if loaded.flavor == "xgboost" else loaded.scores(x)
    scores, _ = scoring_core.decide(model["task"], raw, model.get("threshold") or 0.5, model.get("classes"))
    out = frame.copy()
    out[core.SCORE] = scores
    return out


@on_storage_errors
def reference(uc: UseCase, model: Mapping[str, Any]) -> tuple[Any, str]:
    """The reference rows of the version (features and score) and a description of them."""
    m = uc.monitoring
    assert m is not None
    feats = list(model["features"])
    if m.reference.source == "window":
        lo, hi = m.reference.start, m.reference.end
        assert lo is not None and hi is not None
        frame = _scoring_rows(uc, model, lo, hi)
        what = f"the scoring rows of {lo}..{hi}"
    else:
        ident_, snap = model.get("training_set"), model.get("training_set_snapshot_id")
        t = iceberg.load(iceberg.catalog(), str(ident_)) if ident_ else None
        if t is None or snap is None or t.snapshot_by_id(int(snap)) is None:
            raise PermanentError(
                f"{uc.model_name} version {model['version']}: its training set {ident_} at snapshot {snap} is gone "
                "(expired?): set monitoring.reference to a window of scored event dates"
            )
        frame = t.scan(snapshot_id=int(snap), selected_fields=tuple(feats)).to_pandas()
        what = f"training set {ident_} at snapshot {snap}"
    if frame.empty:
        raise PermanentError(f"{uc.name}: monitoring: the reference ({what}) has no rows")
    return score_frame(uc, model, frame), what


def _scoring_rows(uc: UseCase, model: Mapping[str, Any], lo: date, hi: date) -> Any:
    from mlblueprints.scoring import local as scoring

    run = RunInfo.for_usecase(uc, run_id="monitoring-reference")
    planned = scoring.plan(uc, lo, hi, dict(model), run)
    con = connect()
    try:
        return con.execute(scoring.scoring_sql(uc, con, planned)).df()
    finally:
        con.close()


@on_storage_errors
def window(uc: UseCase, lo: date, hi: date, model: Mapping[str, Any]) -> tuple[Any, Any, str | None]:
    """The window's predictions by ``model``'s version with their features (as scored), and the
    labelled ones (with the label column) when the label has landed; and the label column."""
    from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, LessThanOrEqual

    from mlblueprints.scoring import local as scoring

    rows = uc.scoring_rows()
    keys, feats = rows["keys"], list(model["features"])
    preds = _predictions(uc)
    flt = And(
        And(GreaterThanOrEqual("event_date", lo.isoformat()), LessThanOrEqual("event_date", hi.isoformat())),
        EqualTo("model_version", int(model["version"])),
    )
    con = connect()
    try:
        iceberg.register_view(con, "window_predictions", preds, row_filter=flt)
        pinned = [r[0] for r in con.execute("SELECT DISTINCT input_snapshots FROM window_predictions").fetchall()]
        parts = []
        for i, snaps in enumerate(pinned):
            planned = {
                "range": [lo.isoformat(), hi.isoformat()],
                "rows": rows,
                "snapshots": {k: v for k, v in json.loads(snaps).items()},
                "model": {"features": feats},
            }
            con.execute(f"CREATE OR REPLACE TEMP VIEW window_rows_{i} AS {scoring.scoring_sql(uc, con, planned)}")
            on = " AND ".join(f"p.{ident(k)} = r.{ident(k)}" for k in keys)
            parts.append(
                f"SELECT {', '.join(f'p.{ident(k)}' for k in keys)}, p.event_date, p.score, "
                f"{', '.join(f'r.{ident(f)}' for f in feats)} FROM window_predictions p JOIN window_rows_{i} r ON {on} "
                f"WHERE p.input_snapshots = {literal(snaps)}"
            )
        if not parts:
            return empty_window(keys, feats), None, None
        frame = con.execute(" UNION ALL ".join(parts)).df()
        labels, label = _labels(uc, con, rows, frame, keys)
        return frame, labels, label
    finally:
        con.close()


def empty_window(keys: list[str], feats: list[str]) -> Any:
    import pandas as pd

    return pd.DataFrame({c: pd.Series(dtype="float64") for c in [*keys, core.SCORE, *feats]})


def _labels(uc: UseCase, con: Any, rows: Mapping[str, Any], frame: Any, keys: list[str]) -> tuple[Any, str | None]:
    """The window's rows whose label has landed in the rows' Gold table (as it is now)."""
    t = uc.training
    assert t is not None
    ts = uc.training_sets[rows["training_set"]]
    if ts.labels.source != rows["source"] or frame.empty:
        return None, None
    label = ts.labels.label
    gold = iceberg.load(iceberg.catalog(), naming.identifier(uc, rows["source"]))
    if gold is None:
        return None, label
    lo, hi = str(frame["event_date"].min())[:10], str(frame["event_date"].max())[:10]
    from pyiceberg.expressions import And, GreaterThanOrEqual, LessThanOrEqual

    prune = None
    if rows["event_time"] == uc.gold[rows["source"]].event_time:
        prune = And(GreaterThanOrEqual("event_date", lo), LessThanOrEqual("event_date", hi))
    iceberg.register_view(con, "window_gold", gold, **({"row_filter": prune} if prune is not None else {}))
    con.register("window_frame", frame)
    on = " AND ".join(f"f.{ident(k)} = g.{ident(k)}" for k in keys)
    got = con.execute(
        f"SELECT f.{ident(core.SCORE)}, CAST(g.{ident(label)} AS DOUBLE) AS {ident(label)} "
        f"FROM window_frame f JOIN window_gold g ON {on} WHERE g.{ident(label)} IS NOT NULL"
    ).df()
    return got, label


# ------------------------------------------------------------------ the history


def _ensure(uc: UseCase) -> tuple[Any, Any]:
    cat = iceberg.catalog()
    metrics_id, decisions_id = tables(uc)
    props = table_properties(uc)
    mt = iceberg.ensure_table(cat, metrics_id, _arrow_schema(core.TABLE_COLUMNS), "window_end", props)
    dt = iceberg.ensure_table(cat, decisions_id, _arrow_schema(core.DECISION_COLUMNS), None, props)
    return mt, dt


@on_storage_errors
def history(uc: UseCase) -> list[dict[str, Any]]:
    """Every decision so far, oldest first (``signals`` and ``drifted_columns`` decoded)."""
    _, decisions_id = tables(uc)
    t = iceberg.load(iceberg.catalog(), decisions_id)
    if t is None or t.current_snapshot() is None:
        return []
    df = t.scan().to_pandas().sort_values(["decided_at"])
    out = []
    for r in df.to_dict("records"):
        r["signals"] = json.loads(r["signals"] or "[]")
        r["drifted_columns"] = json.loads(r["drifted_columns"] or "[]")
        r["window_start"], r["window_end"] = str(r["window_start"])[:10], str(r["window_end"])[:10]
        out.append(r)
    return out


@on_storage_errors
def write(
    uc: UseCase, ident_: Mapping[str, Any], rows: list[dict[str, Any]], decision: Mapping[str, Any], run: RunInfo
) -> dict[str, Any]:
    """Replace the window's metric rows (same version and window) and, unless the window was
    decided before, append its decision. ``ident_``: usecase, model_name, model_version,
    window_start, window_end."""
    import pyarrow as pa
    from pyiceberg.expressions import And, EqualTo

    mt, dt = _ensure(uc)
    lo, hi = date.fromisoformat(str(ident_["window_start"])), date.fromisoformat(str(ident_["window_end"]))
    full = core.metric_rows(ident_, lo, hi, rows, run.run_id)
    table = pa.Table.from_pylist(full, schema=_arrow_schema(core.TABLE_COLUMNS))
    replace = And(
        And(EqualTo("window_start", lo.isoformat()), EqualTo("window_end", hi.isoformat())),
        EqualTo("model_version", int(ident_["model_version"])),
    )
    props = run.snapshot_properties(step="monitoring", window=[lo.isoformat(), hi.isoformat()])
    with warnings.catch_warnings():  # the window's first run has nothing to replace
        warnings.filterwarnings("ignore", message="Delete operation did not match any records")
        with mt.transaction() as tx:
            tx.delete(replace, snapshot_properties={k: str(v) for k, v in props.items()})
            tx.append(table, snapshot_properties={k: str(v) for k, v in props.items()})
    appended = False
    if not decision.get("rerun_of"):
        d = core.decision_row(ident_, lo, hi, decision, run.run_id, datetime.now(UTC).replace(tzinfo=None))
        dt.append(pa.Table.from_pylist([d], schema=_arrow_schema(core.DECISION_COLUMNS)))
        appended = True
    mt.refresh()
    return {"table": tables(uc)[0], "rows_written": len(full), "decision_recorded": appended}


@on_storage_errors
def metrics(uc: UseCase, last: int = 10) -> Any:
    """The metric rows of the ``last`` windows, newest first."""
    metrics_id, _ = tables(uc)
    t = iceberg.load(iceberg.catalog(), metrics_id)
    if t is None or t.current_snapshot() is None:
        import pandas as pd

        return pd.DataFrame(columns=[c for c, _ in core.TABLE_COLUMNS])
    df = t.scan().to_pandas()
    ends = sorted(df["window_end"].unique())[-last:]
    return df[df["window_end"].isin(ends)].sort_values(
        ["window_end", "column", "metric"], ascending=[False, True, True]
    )


def report_dir(uc: UseCase, lo: str, hi: str) -> Path:
    return runtime.path("monitoring", uc.name, f"{lo}_{hi}")


class LocalMonitor:
    """The monitoring capability on the local target (see ``mlblueprints.backends``)."""

    def __init__(self, uc: UseCase):
        self.uc = uc

    def reference(self, model: dict[str, Any]) -> tuple[Any, str]:
        return reference(self.uc, model)

    def window(self, lo: date, hi: date, model: dict[str, Any]) -> tuple[Any, Any, str | None]:
        return window(self.uc, lo, hi, model)

    def history(self) -> list[dict[str, Any]]:
        return history(self.uc)

    def write(
        self, ident_: dict[str, Any], rows: list[dict[str, Any]], decision: dict[str, Any], run: RunInfo
    ) -> dict[str, Any]:
        return write(self.uc, ident_, rows, decision, run)

    def publish(self, ident_: dict[str, Any], rows: list[dict[str, Any]], decision: dict[str, Any]) -> dict[str, Any]:
        """Local: the monitoring table is the only sink (aws also puts the metrics to CloudWatch)."""
        return {}

    def report_dir(self, lo: str, hi: str) -> Path:
        return report_dir(self.uc, lo, hi)

    def metrics(self, last: int = 10) -> Any:
        return metrics(self.uc, last)

    def where(self) -> list[str]:
        metrics_id, decisions_id = tables(self.uc)
        return [
            f"monitoring table: {metrics_id}, decisions: {decisions_id}",
            f"reports: {runtime.home() / 'monitoring' / self.uc.name}/<window>/",
        ]
