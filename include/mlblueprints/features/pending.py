"""Which event dates the feature views have not materialized yet (local target).

On a scheduler, each Gold commit's Asset event carries the event dates it recomputed, and
queued events are merged into one feature run. Run by hand (``mlblueprints features run``),
after one lakehouse run or a backfill of many, the run must cover everything Gold recomputed
since the views last read it - not only what the last Gold commit recomputed.

Every offline-store commit of a view records the Gold snapshot it read
(``mlb.source-snapshots``) and every Gold commit the event dates it recomputed
(``mlb.recomputed``). The pending range of a view is the union of the ranges of the Gold
commits after the one it read; a view that never read Gold (or whose Gold snapshot has been
expired since) gets the whole range of event dates Gold holds. Materializing a range is
idempotent, so covering more than needed costs time, never correctness.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

from pyiceberg.table.snapshots import ancestors_of

from mlblueprints.config import UseCase
from mlblueprints.features import core
from mlblueprints.lakehouse import iceberg, naming


def _props(snapshot: Any) -> dict[str, str]:
    return dict(snapshot.summary.additional_properties) if snapshot is not None and snapshot.summary else {}


def _last_read(uc: UseCase, view: str) -> int | None:
    """The Gold snapshot id the view's newest offline commit read (None: never, or no offline store)."""
    if "offline" not in uc.features[view].stores:
        return None
    table = iceberg.load(iceberg.catalog(), naming.identifier(uc, core.offline_table(uc, view)))
    if table is None:
        return None
    source = uc.features[view].source
    for snap in ancestors_of(table.current_snapshot(), table.metadata):
        read = _props(snap).get("mlb.source-snapshots")
        if read:
            sid = json.loads(read).get(source)
            return int(sid) if sid is not None else None
    return None


def _to_date(value: Any) -> date | None:
    if value is None:
        return None
    if isinstance(value, date):
        return value
    if isinstance(value, int):  # identity partitions on DATE columns are days since the epoch
        return date(1970, 1, 1) + timedelta(days=value)
    return date.fromisoformat(str(value)[:10])


def _whole_range(gold: Any) -> tuple[date, date] | None:
    days = [d for d in (_to_date(k) for k in iceberg.partition_files(gold)) if d is not None]
    return (min(days), max(days)) if days else None


def pending_range(uc: UseCase, views: list[str] | None = None) -> tuple[date, date] | None:
    """The event dates [lo, hi] to materialize so that ``views`` (default: all) are up to date
    with Gold; None when there is nothing new (or no Gold table yet)."""
    los: list[date] = []
    his: list[date] = []
    for view in views or list(uc.features):
        gold = iceberg.load(iceberg.catalog(), naming.identifier(uc, uc.features[view].source))
        if gold is None or gold.current_snapshot() is None:
            continue
        read = _last_read(uc, view)
        found = False
        ranges = []
        for snap in ancestors_of(gold.current_snapshot(), gold.metadata):
            if read is not None and snap.snapshot_id == read:
                found = True
                break
            rng = _props(snap).get("mlb.recomputed")
            if rng:
                lo, hi = json.loads(rng)
                ranges.append((date.fromisoformat(lo), date.fromisoformat(hi)))
        if not found:  # never materialized, or the snapshot it read has expired: everything
            whole = _whole_range(gold)
            ranges = [whole] if whole else ranges
        for lo, hi in ranges:
            los.append(lo)
            his.append(hi)
    return (min(los), max(his)) if los else None
