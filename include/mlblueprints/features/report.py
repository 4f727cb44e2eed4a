"""The run report of ``<usecase>__features``: per view what was materialized, store sizes, and one
online lookup. Written to ``<runtime>/runs/<usecase>/features/<run_id>.json`` (and ``latest.txt``)
by the DAG's last task, which runs even when a view failed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.config import UseCase


def _fmt(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) else ("-" if n is None else str(n))


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def sample_lookup(uc: UseCase, view: str) -> tuple[Any, dict[str, Any] | None] | None:
    """The entity with the newest value in the local online store, and what a lookup returns for
    it at the store's watermark (None when the view has no local online store)."""
    if uc.view_target(view) != "local" or "online" not in uc.features[view].stores:
        return None
    from mlblueprints.features.online import OnlineReader

    try:
        reader = OnlineReader(uc, view)
    except LookupError:
        return None
    row = (
        reader._con()
        .execute(
            f'SELECT {", ".join(chr(34) + k + chr(34) for k in reader.keys)} FROM "{reader.table}" '
            "ORDER BY event_time DESC LIMIT 1"
        )
        .fetchone()
    )
    if row is None:
        return None
    key = row[0] if len(row) == 1 else tuple(row)
    return key, reader.get([key], as_of=reader.watermark())[0]


def render(uc: UseCase, run_id: str, results: dict[str, Any], errors: dict[str, str] | None = None) -> str:
    plan = results.get("plan") or {}
    rng = plan.get("range") or ["?", "?"]
    header = (
        "view",
        "target",
        "rows in",
        "offline rows",
        "skipped",
        "entities (batch)",
        "online entities",
        "online store",
    )
    rows, lookups, notes = [], [], []
    for view in uc.features:
        out = results.get(f"materialize__{view}")
        if out is None:
            rows.append((view, uc.view_target(view), "FAILED", "", "", "", "", ""))
            if (errors or {}).get(f"materialize__{view}"):
                notes.append(f"  {view}: FAILED: {errors[f'materialize__{view}']}")
            continue
        if out.get("skipped"):
            rows.append((view, uc.view_target(view), "skipped", "", "", "", "", ""))
            continue
        stats = (out.get("online") or {}).get("stats") or {}
        skipped = out["skipped_null_key"] + out["skipped_null_event_time"]
        rows.append(
            (
                view,
                out["target"],
                _fmt(out["rows_in"]),
                _fmt(out["offline_rows"]),
                _fmt(skipped),
                _fmt(out["online_entities"]),
                _fmt(stats.get("entities")),
                _size(stats.get("table_bytes") or stats.get("file_bytes")) if stats else out.get("feature_group", "-"),
            )
        )
        if out["collapsed_duplicates"]:
            notes.append(
                f"  {view}: {out['collapsed_duplicates']:,} Gold rows shared an entity and instant with another; "
                "the one with the greatest Gold primary key was kept"
            )
        if out["skipped_null_key"] or out["skipped_null_event_time"]:
            notes.append(
                f"  {view}: skipped {out['skipped_null_key']:,} row(s) with a null entity key and "
                f"{out['skipped_null_event_time']:,} with a null event time"
            )
        if out.get("offline_table"):
            notes.append(f"  {view}: offline table {out['offline_table']} snapshot {out.get('offline_snapshot_id')}")
        sample = sample_lookup(uc, view)
        if sample is not None:
            key, value = sample
            shown = {k: (v.isoformat(sep=" ") if hasattr(v, "isoformat") else v) for k, v in (value or {}).items()}
            lookups.append(f"  get_online_features({view!r}, [{key!r}]) -> {shown}")
    table = [header] + rows
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    lines = [
        f"{uc.name}__features  run {run_id}  event dates {rng[0]} .. {rng[1]} (from {plan.get('source', '?')})",
        "",
    ]
    for r in table:
        lines.append(
            "  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
        )
    if notes:
        lines += ["", *notes]
    if lookups:
        lines += ["", "online lookup (as of the store's newest event time):", *lookups]
    lines.append("")
    if any(uc.view_target(v) == "local" for v in uc.features):
        lines.append(f"Online store (SQLite): {runtime.home() / 'online' / (uc.name + '.sqlite')}")
    for v in uc.features:
        if uc.view_target(v) == "aws":
            from mlblueprints.features.core import feature_group_name

            lines.append(f"Online store of {v}: SageMaker Feature Store feature group {feature_group_name(uc, v)}")
    lines.append(f"  try: mlblueprints features get {uc.name} <view> <key> --as-of watermark")
    return "\n".join(lines)


def write_features_report(
    uc: UseCase, run_id: str, results: dict[str, Any], errors: dict[str, str] | None = None
) -> tuple[Path, str, list[str]]:
    missing = sorted(t for t, v in results.items() if v is None)
    text = render(uc, run_id, results, errors)
    safe = "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in run_id)
    path = runtime.path("runs", uc.name, "features") / f"{safe}.json"
    path.write_text(
        json.dumps(
            {"usecase": uc.name, "run_id": run_id, "missing": missing, "tasks": results, "text": text},
            indent=1,
            default=str,
        )
    )
    (path.parent / "latest.txt").write_text(text + "\n")
    return path, text, missing
