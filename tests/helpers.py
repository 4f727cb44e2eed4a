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
def env_var(name: str, value: Path | str):
    """Set an environment variable for the duration (session fixtures cannot use monkeypatch)."""
    old = os.environ.get(name)
    os.environ[name] = str(value)
    try:
        yield value
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def usecases_dir(directory: Path):
    """Point the use-case loader at ``directory`` for the duration."""
    return env_var("MLB_USECASES_DIR", directory)


def runtime_home(home: Path):
    """Point the runtime at ``home`` for the duration."""
    return env_var("MLB_HOME", home)


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
