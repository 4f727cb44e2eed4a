"""The four DORA metrics of a use case's model deployments, from its deployment history (pure).

Over the deployments that started in the ``days`` before ``now``:

* deployment frequency - versions that reached production (promoted, or first) per day and per week;
* lead time for changes - from the version's git commit to its promotion (median, and the
  slowest); deployments whose commit time is unknown are left out, and counted;
* change failure rate - canaries rolled back over canaries decided (promoted + rolled back): the
  share of changes that failed in production traffic;
* time to restore - from the start of a failed canary to the end of its rollback, when the
  champion serves all traffic again (median, and the slowest).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

LIVE = ("promoted", "first")


def _t(v: str | None) -> datetime | None:
    if not v:
        return None
    t = datetime.fromisoformat(v)
    return t if t.tzinfo else t.replace(tzinfo=datetime.now().astimezone().tzinfo)


def dora(deployments: Sequence[Mapping[str, Any]], now: datetime, days: int = 30) -> dict[str, Any]:
    since = now - timedelta(days=days)
    rows = [d for d in deployments if (_t(d["started_at"]) or now) >= since]
    live = [d for d in rows if d["outcome"] in LIVE]
    failed = [d for d in rows if d["outcome"] == "rolled_back"]
    decided = [d for d in rows if d["outcome"] in ("promoted", "rolled_back")]
    lead = []
    for d in live:
        c, f = _t(d.get("committed_at")), _t(d.get("finished_at"))
        if c and f:
            lead.append((f - c).total_seconds())
    restore = []
    for d in failed:
        s, f = _t(d["started_at"]), _t(d.get("finished_at"))
        if s and f:
            restore.append((f - s).total_seconds())
    return {
        "window_days": days,
        "deployments": len(rows),
        "deployment_frequency_per_day": len(live) / days,
        "deployment_frequency_per_week": len(live) * 7 / days,
        "lead_time_seconds_median": statistics.median(lead) if lead else None,
        "lead_time_seconds_max": max(lead) if lead else None,
        "lead_time_unknown": len(live) - len(lead),
        "change_failure_rate": len(failed) / len(decided) if decided else None,
        "time_to_restore_seconds_median": statistics.median(restore) if restore else None,
        "time_to_restore_seconds_max": max(restore) if restore else None,
    }


def duration(seconds: float | None) -> str:
    """``3d 4h``, ``2h 05m``, ``4m 10s``, ``12.3s`` (or ``-``)."""
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m:02d}m"
    return f"{m}m {s:02d}s"
