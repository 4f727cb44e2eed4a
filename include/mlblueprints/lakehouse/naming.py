"""Names shared by both targets and by the DAGs: tables, Assets, run directories.

Pure and light (no heavy imports): the DAG factories import it at parse time.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta

from mlblueprints.config import UseCase

BRONZE, BRONZE_FILES, SILVER, QUARANTINE, DUPLICATES = (
    "bronze",
    "bronze_files",
    "silver",
    "quarantine",
    "duplicates",
)


def table_name(dataset: str, kind: str) -> str:
    """``transactions`` + ``silver`` -> ``transactions_silver``."""
    return f"{dataset}_{kind}"


def identifier(uc: UseCase, table: str) -> str:
    """Iceberg identifier ``<namespace>.<table>``; the namespace is the Glue database on aws."""
    return f"{uc.namespace}.{table}"


def asset_uri(uc: UseCase, table: str) -> str:
    """The Airflow Asset URI of a lakehouse table (the same string for both targets' DAGs)."""
    return uc.warehouse_uri(table)


def asset_name(uc: UseCase, table: str) -> str:
    return f"{uc.name}.{table}"


def landing_dates(start: datetime | date, end: datetime | date | None) -> list[date]:
    """Landing dates of a data interval: each day in [start, end); the start day alone when the
    interval is empty (a manual run with a zero-length interval)."""
    s = start.date() if isinstance(start, datetime) else start
    if end is None:
        return [s]
    e = end.date() if isinstance(end, datetime) else end
    if isinstance(end, datetime) and (end.hour or end.minute or end.second or end.microsecond):
        e = e + timedelta(days=1)
    days = (e - s).days
    return [s + timedelta(days=i) for i in range(days)] if days > 0 else [s]


def shift(d: date, days: int) -> date:
    """``d`` + ``days``, clamped to the calendar's ends (9999-12-31 + 7 days is 9999-12-31)."""
    try:
        return d + timedelta(days=days)
    except OverflowError:
        return date.max if days > 0 else date.min


def gold_date_range(touched: Iterable[date], lookback_days: int) -> tuple[date, date] | None:
    """Event dates whose Gold rows a change on ``touched`` dates can affect: a row's features
    look back ``lookback_days``, so a change on day d affects days d .. d + lookback_days."""
    t = sorted(set(touched))
    if not t:
        return None
    return t[0], shift(t[-1], lookback_days)


def gold_driving_inputs(uc: UseCase, gold: str) -> list[str]:
    """The inputs of a Gold table whose new event dates decide what Gold recomputes: the
    event-partitioned ones. An unpartitioned input (``partition_by: none``, reference data such as
    customers or policies) is read whole by every recompute, and a change to it applies to the Gold
    rows recomputed from then on: it does not rewrite history by itself."""
    g = uc.gold[gold]
    driving = [i for i in g.inputs if uc.datasets[i].partition_column is not None]
    return driving or list(g.inputs)
