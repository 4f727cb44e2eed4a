"""The run report of ``<usecase>__features``: per view what was materialized, store sizes, and one
online lookup (written with :func:`mlblueprints.core.reporting.write_run_report`)."""

from __future__ import annotations

from typing import Any

from mlblueprints.config import UseCase
from mlblueprints.core.reporting import Table, size


def render(
    uc: UseCase,
    run_id: str,
    results: dict[str, Any],
    described: dict[str, dict[str, Any]],
    errors: dict[str, str] | None = None,
) -> str:
    """The report text. ``described`` is each view's backend ``describe()``; ``errors`` why a
    failed view cannot be materialized (its definition against Gold), where known."""
    plan = results.get("plan") or {}
    rng = plan.get("range") or ["?", "?"]
    table = Table(
        ("view", "target", "rows in", "offline rows", "skipped", "entities (batch)", "online entities", "online store"),
        right=(2, 3, 4, 5, 6, 7),
    )
    lookups, notes, where = [], [], []
    for view in uc.features:
        d = described.get(view) or {}
        for line in d.get("where", []):
            if line not in where:
                where.append(line)
        out = results.get(f"materialize__{view}")
        if out is None:
            table.add(view, d.get("target", "?"), "FAILED", "", "", "", "", "")
            if (errors or {}).get(view):
                notes.append(f"  {view}: FAILED: {errors[view]}")
            continue
        if out.get("skipped"):
            table.add(view, d.get("target", "?"), "skipped", "", "", "", "", "")
            continue
        stats = d.get("online_stats") or {}
        table.add(
            view,
            out.get("target", d.get("target", "?")),
            out["rows_in"],
            out["offline_rows"],
            out["skipped_null_key"] + out["skipped_null_event_time"],
            out["online_entities"],
            stats.get("entities"),
            size(stats.get("table_bytes") or stats.get("file_bytes")) if stats else out.get("feature_group", "-"),
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
        if d.get("sample_lookup"):
            key, value = d["sample_lookup"]
            shown = {k: (v.isoformat(sep=" ") if hasattr(v, "isoformat") else v) for k, v in (value or {}).items()}
            lookups.append(f"  get_online_features({view!r}, [{key!r}]) -> {shown}")
    lines = [
        f"{uc.name}__features  run {run_id}  event dates {rng[0]} .. {rng[1]} (from {plan.get('source', '?')})",
        "",
        table.render(),
    ]
    if notes:
        lines += ["", *notes]
    if lookups:
        lines += ["", "online lookup (as of the store's newest event time):", *lookups]
    lines += ["", *where, f"  try: mlblueprints features get {uc.name} <view> <key> --as-of watermark"]
    return "\n".join(lines)
