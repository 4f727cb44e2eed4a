"""The run report: what one lakehouse run did, as a table a person reads and a JSON file.

Written by the DAG's last task (which runs even when an upstream task failed) to
``<runtime>/runs/<usecase>/lakehouse/<run_id>.json``; the text goes to the task log and to the
demo's output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.config import UseCase
from mlblueprints.lakehouse import naming


def _fmt(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) else ("-" if n is None else str(n))


def _verdict(g: dict[str, Any] | None) -> str:
    if g is None:
        return "NOT RUN / FAILED"
    if g.get("skipped"):
        return "skipped"
    return g.get("verdict", "?")


def render(uc: UseCase, run_id: str, dates: list[str], results: dict[str, Any]) -> str:
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
    header = ("layer", "table", "rows in", "rows out", "quarantined", "duplicates", "gate")
    table = [header] + [(r[0], r[1], _fmt(r[2]), _fmt(r[3]), _fmt(r[4]), _fmt(r[5]), r[6]) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    lines = [f"{uc.name}__lakehouse  run {run_id}  landing dates {', '.join(dates)}", ""]
    for row in table:
        lines.append(
            "  ".join(
                str(v).ljust(w) if i < 2 or i == 6 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths))
            )
        )
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
    lines.append(
        f"Data Docs (Great Expectations): {runtime.home() / 'quality' / uc.name / 'uncommitted/data_docs/local_site/index.html'}"
    )
    for d in docs:
        lines.append(f"  {d}")
    lines.append(
        f"Iceberg warehouse: {runtime.home() / 'warehouse'} (SQLite catalog: warehouse/catalog.db, namespace {uc.name})"
    )
    lines.append(f"Quarantine: table {uc.name}.<dataset>_quarantine; duplicates: {uc.name}.<dataset>_duplicates")
    return "\n".join(lines)


def write_run_report(
    uc: UseCase, run_id: str, dates: list[str], results: dict[str, Any]
) -> tuple[Path, str, list[str]]:
    """Write the JSON report and return (path, text, tasks that produced no result)."""
    missing = sorted(t for t, v in results.items() if v is None)
    text = render(uc, run_id, dates, results)
    safe = "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in run_id)
    path = runtime.path("runs", uc.name, "lakehouse") / f"{safe}.json"
    path.write_text(
        json.dumps(
            {
                "usecase": uc.name,
                "run_id": run_id,
                "landing_dates": dates,
                "missing": missing,
                "tasks": results,
                "text": text,
            },
            indent=1,
            default=str,
        )
    )
    (path.parent / "latest.txt").write_text(text + "\n")
    return path, text, missing
