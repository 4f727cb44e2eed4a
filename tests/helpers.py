"""Shared test helpers: run the DAG for landing days, read tables with pyiceberg's own reader."""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from mlblueprints.config import UseCase, load_usecase
from mlblueprints.lakehouse import iceberg, naming

ROOT = Path(__file__).resolve().parents[1]


def fraud_usecase() -> UseCase:
    return load_usecase(ROOT / "dags" / "usecases" / "fraud_detection.yaml")


@contextmanager
def runtime_home(home: Path):
    """Point the runtime at ``home`` for the duration (session fixtures cannot use monkeypatch)."""
    old = os.environ.get("MLB_HOME")
    os.environ["MLB_HOME"] = str(home)
    try:
        yield home
    finally:
        if old is None:
            os.environ.pop("MLB_HOME", None)
        else:
            os.environ["MLB_HOME"] = old


def read_table(uc: UseCase, name: str) -> pd.DataFrame:
    """A whole table through pyiceberg's reader (independent of the DuckDB path under test)."""
    t = iceberg.load(iceberg.catalog(), naming.identifier(uc, name))
    if t is None:
        return pd.DataFrame()
    return t.scan().to_arrow().to_pandas()


def table_fingerprint(uc: UseCase, name: str, drop: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
    """Every row of a table as sorted tuples (order-free comparison of contents)."""
    df = read_table(uc, name)
    if df.empty:
        return []
    df = df.drop(columns=[c for c in drop if c in df.columns])
    df = df[sorted(df.columns)]
    rows = [tuple(None if pd.isna(v) else v for v in row) for row in df.itertuples(index=False, name=None)]
    return sorted(rows, key=repr)


def all_tables(uc: UseCase) -> list[str]:
    out = []
    for ds in uc.datasets:
        out += [naming.table_name(ds, k) for k in ("bronze", "bronze_files", "silver", "quarantine", "duplicates")]
    return out + list(uc.gold)


def run_days(dag: Any, days: list[date], conf: dict | None = None) -> list[Any]:
    from mlblueprints.airflow import localrun

    return [localrun.run_dag(dag, d, conf) for d in days]
