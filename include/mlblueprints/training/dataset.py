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
    last = con.execute("SELECT max(event_date) FROM ts").fetchall()[0][0]
    holdout_start: date = last - timedelta(days=t.holdout_days - 1)
    cols = ", ".join(f"CAST({ident(f)} AS DOUBLE) AS {ident(f)}" for f in feats)
    ids = [c for c in ts.labels.columns if c not in feats]
    order = ", ".join(ident(c) for c in ["event_time", *ids])
    (job_dir / "train").mkdir(parents=True, exist_ok=True)
    (job_dir / "holdout").mkdir(parents=True, exist_ok=True)
    cut = f"DATE {literal(holdout_start.isoformat())}"
    con.execute(
        f"COPY (SELECT {cols}, CAST({ident(label)} AS INTEGER) AS {ident(label)} FROM ts "
        f"WHERE event_date < {cut} ORDER BY {order}) TO '{job_dir / 'train' / 'train.parquet'}' (FORMAT parquet)"
    )
    idcols = "".join(f"{ident(c)}, " for c in ids)
    con.execute(
        f"COPY (SELECT {idcols}event_time, {cols}, CAST({ident(label)} AS INTEGER) AS {ident(label)} FROM ts "
        f"WHERE event_date >= {cut} ORDER BY {order}) TO '{job_dir / 'holdout' / 'holdout.parquet'}' (FORMAT parquet)"
    )
    stats = con.execute(
        f"SELECT event_date < {cut} AS train, count(*), sum({ident(label)}), min(event_date), max(event_date) "
        "FROM ts GROUP BY ALL ORDER BY 1 DESC"
    ).fetchall()
    con.close()
    out: dict[str, Any] = {"holdout_start": holdout_start.isoformat(), "features": feats, "label": label}
    for is_train, n, pos, lo, hi in stats:
        key = "train" if is_train else "holdout"
        out[key] = {"rows": int(n), "positives": int(pos or 0), "from": lo.isoformat(), "to": hi.isoformat()}
    if "train" not in out:
        raise TrainingDataError(
            f"{uc.name}: the training set spans {out['holdout']['from']}..{out['holdout']['to']}, "
            f"no day is left for training before the {t.holdout_days}-day holdout"
        )
    return out


def read_holdout(job_dir: Path) -> Any:
    import pandas as pd

    return pd.read_parquet(job_dir / "holdout" / "holdout.parquet")
