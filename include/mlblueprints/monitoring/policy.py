"""The alert policy: whether a window's signals raise a drift alert, given the decisions before it.

Pure (no I/O): the monitoring step reads the history from the decisions table and writes the
decision back. The rules, in order:

1. a window with fewer rows than ``alert.min_rows`` decides nothing (and neither starts nor breaks
   a streak): too few rows for the tests to mean anything;
2. a window decided before (a rerun) keeps its decision, so a rerun never emits a second alert;
3. the window's *firing* signals are the policy's signals that are true in it;
4. the streak is the number of consecutive decided windows up to this one with a firing signal
   (windows ordered by their end date); an alert needs ``streak >= alert.consecutive``;
5. cooldown: no alert when one was raised for a window ending less than ``alert.cooldown_days``
   days (event time) before this one's end - at most one retrain per cooldown period.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any


@dataclass(frozen=True)
class Decision:
    window_start: str
    window_end: str
    rows: int
    decided: bool  # False: under the minimum sample size
    fired: bool  # the alert is raised
    signals: list[str]  # the policy's signals true in this window
    drifted_columns: list[str]
    streak: int
    reason: str
    rerun_of: str | None = None  # the run whose decision a rerun keeps
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _d(x: Any) -> date:
    return x if isinstance(x, date) else date.fromisoformat(str(x)[:10])


def decide(
    window: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    *,
    signals: Sequence[str],
    consecutive: int,
    cooldown_days: int,
    min_rows: int,
) -> Decision:
    """The decision for ``window`` (``window_start``, ``window_end``, ``rows``, ``signals``: every
    signal's truth in the window, ``drifted_columns``), given the earlier decisions ``history``
    (dicts as :meth:`Decision.as_dict` gives, plus ``run_id``)."""
    lo, hi = str(window["window_start"]), str(window["window_end"])
    rows = int(window["rows"])
    drifted = list(window.get("drifted_columns") or [])
    truth = dict(window.get("signals") or {})
    firing = [s for s in signals if truth.get(s)]
    base = {"window_start": lo, "window_end": hi, "rows": rows, "drifted_columns": drifted}

    same = [h for h in history if str(h["window_start"]) == lo and str(h["window_end"]) == hi and h.get("decided")]
    if same:
        prev = same[-1]
        return Decision(
            **base,
            decided=True,
            fired=bool(prev["fired"]),
            signals=list(prev.get("signals") or []),
            streak=int(prev.get("streak") or 0),
            reason=f"window decided before (run {prev.get('run_id')}): {prev.get('reason')}; not decided again",
            rerun_of=str(prev.get("run_id")),
        )
    if rows < min_rows:
        return Decision(
            **base,
            decided=False,
            fired=False,
            signals=firing,
            streak=0,
            reason=f"{rows} rows in the window, fewer than alert.min_rows ({min_rows}): nothing decided",
        )
    earlier = sorted(
        (h for h in history if h.get("decided") and _d(h["window_end"]) < _d(hi)),
        key=lambda h: (_d(h["window_end"]), _d(h["window_start"])),
    )
    if not firing:
        return Decision(**base, decided=True, fired=False, signals=[], streak=0, reason="no signal fired")
    streak = 1
    for h in reversed(earlier):
        if not h.get("signals"):
            break
        streak += 1
    what = ", ".join(firing) + (f" (drifted: {', '.join(drifted)})" if drifted else "")
    if streak < consecutive:
        return Decision(
            **base,
            decided=True,
            fired=False,
            signals=firing,
            streak=streak,
            reason=f"{what}: {streak} consecutive window(s) of the {consecutive} alert.consecutive asks for",
        )
    alerts = [h for h in earlier if h.get("fired")]
    if alerts:
        last = alerts[-1]
        gap = (_d(hi) - _d(last["window_end"])).days
        if gap < cooldown_days:
            return Decision(
                **base,
                decided=True,
                fired=False,
                signals=firing,
                streak=streak,
                reason=f"{what}: cooldown - an alert was raised for the window ending {last['window_end']}, "
                f"{gap} day(s) before this one (alert.cooldown_days: {cooldown_days})",
            )
    return Decision(
        **base,
        decided=True,
        fired=True,
        signals=firing,
        streak=streak,
        reason=f"{what}: alert ({streak} consecutive window(s))",
    )
