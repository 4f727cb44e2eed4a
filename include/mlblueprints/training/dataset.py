"""From a training-set snapshot to the files a training job reads and the holdout it is judged on.

The split is by time: label events of the last ``holdout_days`` days (by the label's
``event_date``) are the holdout, everything before is training data. Both are read from one
Iceberg snapshot of ``ts_<name>`` (pinned by id), so a retry, a resumed job and the evaluation
all see the same rows. On the aws target the training set is one Parquet file (written by the
training-set task, kept on S3 under a content-addressed key): :func:`split_parquet` splits it the
same way.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

from mlblueprints.config import UseCase
from mlblueprints.core.duck import connect
from mlblueprints.errors import PermanentError
from mlblueprints.features import core
from mlblueprints.lakehouse import iceberg, naming
from mlblueprints.lakehouse.sqlgen import ident, literal


class TrainingDataError(PermanentError, ValueError):
    """The training set cannot be split into a training and a holdout part."""


def _snapshot_view(con: Any, uc: UseCase, snapshot_id: int) -> None:
    name = uc.training.training_set  # type: ignore[union-attr]
    table = iceberg.load(iceberg.catalog(), naming.identifier(uc, core.training_table(name)))
    if table is None:
        raise LookupError(f"{uc.name}: training set {name} has not been built")
    files = iceberg.snapshot_files(table, snapshot_id)
    if not files:
        raise LookupError(f"{uc.name}: training set {name} snapshot {snapshot_id} is empty")
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW ts AS SELECT * FROM read_parquet([{', '.join(literal(f) for f in files)}])"
    )


def split(uc: UseCase, snapshot_id: int, job_dir: Path) -> dict[str, Any]:
    """Write ``<job_dir>/train/train.parquet`` (features + label) and
    ``<job_dir>/holdout/holdout.parquet`` (ids, event time, features, label) from the Iceberg
    snapshot ``snapshot_id`` of the training set."""
    con = connect()
    _snapshot_view(con, uc, snapshot_id)
    return _split(con, uc, job_dir)


def split_parquet(uc: UseCase, path: Path, job_dir: Path) -> dict[str, Any]:
    """:func:`split` of a training set held in one Parquet file (the aws target's)."""
    if not Path(path).is_file():
        raise LookupError(f"{uc.name}: training set file {path} does not exist")
    con = connect()
    con.execute(f"CREATE OR REPLACE TEMP VIEW ts AS SELECT * FROM read_parquet({literal(str(path))})")
    return _split(con, uc, job_dir)


def _split(con: Any, uc: UseCase, job_dir: Path) -> dict[str, Any]:
    """The split of the training set the temp view ``ts`` holds; closes ``con``."""
    t = uc.training
    if t is None:
        raise ValueError(f"{uc.name}: the use case has no training section")
    ts = uc.training_sets[t.training_set]
    label = ts.labels.label
    feats = uc.model_features()
    target = label_expr(uc, label)
    bad = con.execute(
        f"SELECT count(*) FILTER (WHERE {ident(label)} IS NOT NULL AND ({target}) IS NULL), "
        f"list(DISTINCT CAST({ident(label)} AS VARCHAR)) FILTER (WHERE {ident(label)} IS NOT NULL AND ({target}) IS NULL) "
        "FROM ts"
    ).fetchall()[0]
    if bad[0]:
        raise TrainingDataError(
            f"{uc.name}: {bad[0]} label event(s) have a {label!r} that is not a {_what(uc)}: "
            f"{sorted(bad[1])[:5]} (fix the Gold data, or the training.task / training.classes)"
        )
    last = con.execute("SELECT max(event_date) FROM ts").fetchall()[0][0]
    if last is None:
        raise TrainingDataError(f"{uc.name}: the training set {t.training_set!r} has no label events")
    holdout_start: date = last - timedelta(days=t.holdout_days - 1)
    cols = ", ".join(f"CAST({ident(f)} AS DOUBLE) AS {ident(f)}" for f in feats)
    ids = [c for c in ts.labels.columns if c not in feats]
    order = ", ".join(ident(c) for c in ["event_time", *ids])
    (job_dir / "train").mkdir(parents=True, exist_ok=True)
    (job_dir / "holdout").mkdir(parents=True, exist_ok=True)
    cut = f"DATE {literal(holdout_start.isoformat())}"
    y = f"({target}) AS {ident(label)}"
    con.execute(
        f"COPY (SELECT {cols}, {y} FROM ts "
        f"WHERE event_date < {cut} ORDER BY {order}) TO '{job_dir / 'train' / 'train.parquet'}' (FORMAT parquet)"
    )
    idcols = "".join(f"{ident(c)}, " for c in ids)
    con.execute(
        f"COPY (SELECT {idcols}event_time, {cols}, {y} FROM ts "
        f"WHERE event_date >= {cut} ORDER BY {order}) TO '{job_dir / 'holdout' / 'holdout.parquet'}' (FORMAT parquet)"
    )
    stats = con.execute(
        f"SELECT event_date < {cut} AS train, count(*), sum({target}), min(event_date), max(event_date), "
        f"min({target}), max({target}) FROM ts GROUP BY ALL ORDER BY 1 DESC"
    ).fetchall()
    con.close()
    out: dict[str, Any] = {
        "holdout_start": holdout_start.isoformat(),
        "features": feats,
        "label": label,
        "task": t.task,
    }
    if t.task == "multiclass":
        out["classes"] = uc.label_classes()
    for is_train, n, pos, lo, hi, ymin, ymax in stats:
        key = "train" if is_train else "holdout"
        out[key] = {"rows": int(n), "from": lo.isoformat(), "to": hi.isoformat()}
        if t.task == "binary":
            out[key]["positives"] = int(pos or 0)
        elif t.task == "regression":
            out[key]["label_range"] = [float(ymin), float(ymax)]
    if "train" not in out:
        raise TrainingDataError(
            f"{uc.name}: the training set spans {out['holdout']['from']}..{out['holdout']['to']}, "
            f"no day is left for training before the {t.holdout_days}-day holdout"
        )
    return out


def label_expr(uc: UseCase, label: str) -> str:
    """The label as the training job takes it (NULL where it is not a valid value of the task):
    0/1 for binary (booleans, integers 0/1, text 0/1/true/false), the class index in
    ``training.classes`` order for multiclass, a DOUBLE for regression."""
    t = uc.training
    if t is None:
        raise ValueError(f"{uc.name}: the use case has no training section")
    c = ident(label)
    text = f"lower(trim(CAST({c} AS VARCHAR)))"
    if t.task == "binary":
        return f"CASE WHEN {text} IN ('1', 'true', '1.0') THEN 1 WHEN {text} IN ('0', 'false', '0.0') THEN 0 END"
    if t.task == "multiclass":
        classes = uc.label_classes() or []
        whens = " ".join(f"WHEN CAST({c} AS VARCHAR) = {literal(v)} THEN {i}" for i, v in enumerate(classes))
        return f"CASE {whens} END"
    return f"TRY_CAST({c} AS DOUBLE)"


def _what(uc: UseCase) -> str:
    t = uc.training
    if t is None:
        return "label"
    if t.task == "binary":
        return "binary label (0/1 or true/false)"
    if t.task == "multiclass":
        return f"class of training.classes {uc.label_classes()}"
    return "number"


def read_holdout(job_dir: Path) -> Any:
    import pandas as pd

    return pd.read_parquet(job_dir / "holdout" / "holdout.parquet")
