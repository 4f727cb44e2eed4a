"""The lakehouse run report: what one run did, as a table a person reads.

Rendered by the pattern's last step (which runs even when an upstream step failed) and written
with :func:`mlblueprints.core.reporting.write_run_report`; the text goes to the task log and to
the demo's output.
"""

from __future__ import annotations

from typing import Any

from mlblueprints.config import UseCase
from mlblueprints.core.reporting import Table
from mlblueprints.lakehouse import naming


def _verdict(g: dict[str, Any] | None) -> str:
    if g is None:
        return "NOT RUN / FAILED"
    if g.get("skipped"):
        return "skipped"
    return g.get("verdict", "?")


def render(uc: UseCase, run_id: str, dates: list[str], results: dict[str, Any], where: list[str]) -> str:
    """The report text; ``where`` are the lines saying where the backend keeps tables and reports."""
    rows = []
    reasons, files, warnings, docs = [], [], [], []
    for ds in uc.datasets:
        ing = results.get(f"ingest__{ds}") or {}
        sil = results.get(f"silver__{ds}") or {}
        gb = results.get(f"gate_bronze__{ds}")
        gs = results.get(f"gate_silver__{ds}")
        rows.append(
            (
                "bronze",
                naming.table_name(ds, "bronze"),
                ing.get("rows_landed"),
                ing.get("rows_landed"),
                None,
                None,
                _verdict(gb),
            )
        )
        rows.append(
            (
                "silver",
                naming.table_name(ds, "silver"),
                sil.get("rows_landed"),
                sil.get("rows_into_silver"),
                sil.get("quarantined"),
                sil.get("duplicates"),
                _verdict(gs),
            )
        )
        if sil.get("quarantine_reasons"):
            reasons.append(f"  {ds}: " + ", ".join(f"{k} {v}" for k, v in sil["quarantine_reasons"].items()))
        if ing.get("file_status"):
            files.append(f"  {ds}: " + ", ".join(f"{k} {v}" for k, v in sorted(ing["file_status"].items())))
        for f in ing.get("files", []):
            if f["status"] in ("rejected", "empty", "duplicate_file"):
                why = f.get("reason") or (f"same content as {f['duplicate_of']}" if f.get("duplicate_of") else "")
                files.append(f"    {f['status']}: {f['source_file']} ({why})")
        for w in ing.get("warnings", []):
            warnings.append(f"  {ds}: {w}")
        for g in (gb, gs):
            if g and g.get("docs_path"):
                docs.append(g["docs_path"])
            for f in (g or {}).get("failed_warning", []):
                from mlblueprints.quality.gx import describe_failure

                warnings.append(f"  gate {g['layer']} {g['table']}: {describe_failure(f)}")
    for g in uc.gold:
        gd = results.get(f"gold__{g}") or {}
        gg = results.get(f"gate_gold__{g}")
        rng = gd.get("recomputed")
        rows.append(("gold", g, None, gd.get("rows_written"), None, None, _verdict(gg)))
        if rng:
            files.append(f"  {g}: recomputed event dates {rng[0]} .. {rng[1]}")
        if gg and gg.get("docs_path"):
            docs.append(gg["docs_path"])
        for f in (gg or {}).get("failed_warning", []):
            from mlblueprints.quality.gx import describe_failure

            warnings.append(f"  gate gold {g}: {describe_failure(f)}")
    table = Table(("layer", "table", "rows in", "rows out", "quarantined", "duplicates", "gate"), right=(2, 3, 4, 5))
    for r in rows:
        table.add(*r)
    lines = [f"{uc.name}__lakehouse  run {run_id}  landing dates {', '.join(dates)}", "", table.render()]
    rec = results.get("reconcile")
    lines.append("")
    if rec is None:
        lines.append("reconciliation: NOT RUN / FAILED")
    else:
        n = sum(len(v) for v in rec["datasets"].values())
        lines.append(
            f"reconciliation: {'OK' if rec['ok'] else 'FAILED'} (landed = silver + quarantined + duplicates, {n} landing date(s) checked)"
        )
        for p in rec.get("problems", []):
            lines.append(f"  {p}")
    if reasons:
        lines += ["quarantine reasons:", *reasons]
    if files:
        lines += ["files:", *files]
    if warnings:
        lines += ["warnings:", *warnings]
    comp = results.get("compact") or {}
    if comp.get("tables"):
        done = {t: e for t, e in comp["tables"].items() if e.get("partitions_compacted")}
        lines.append(
            "compaction: "
            + (
                ", ".join(f"{t} {e['files_rewritten']} -> {e['files_written']} files" for t, e in done.items())
                or "nothing to compact"
            )
        )
    lines.append("")
    lines += [*where[:1], *(f"  {d}" for d in docs), *where[1:]]  # the gates' own pages under Data Docs
    return "\n".join(lines)
