"""Row accounting, the same for both targets: every landed row is in exactly one place.

Per data set and landing date, ``rows in Bronze = rows in Silver + quarantined + duplicates``;
per ingested file, ``records counted in the file = its rows in Bronze`` (when the engine can
count them); a landed file rejected as a whole fails the run too when
``lakehouse.on_rejected_file`` is ``fail``, and the message says how to retry it or set it
aside. The engines count rows in their committed tables and hand the counts here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mlblueprints.config import UseCase
from mlblueprints.lakehouse import naming

KINDS = (naming.BRONZE, naming.SILVER, naming.QUARANTINE, naming.DUPLICATES)


def reconcile_counts(
    uc: UseCase,
    counts: Mapping[str, Mapping[str, Mapping[str, int]]],
    ingest_summaries: list[dict[str, Any]],
    file_counts: Mapping[str, list[tuple[str, str, int, int]]] | None = None,
    advice: Callable[[str, str], str] | None = None,
) -> dict[str, Any]:
    """``counts[dataset][landing_date][kind]`` -> the reconciliation report.

    ``advice(source_file, landing_date)`` says what to do about a rejected file on the backend's
    target (default :func:`rename_aside`).

    ``file_counts[dataset]`` lists, per ingested file, (landing date, source file, records the
    ingest step counted in the file, its rows in Bronze). The report has ``ok``, ``problems``
    (one readable line each), ``datasets`` (a row per landing date with the four counts and the
    difference), ``files_checked`` and ``rejected_files``.
    """
    report: dict[str, Any] = {"datasets": {}, "ok": True, "problems": [], "rejected_files": []}
    for dataset, by_date in counts.items():
        rows = []
        for d in sorted(by_date):
            c = by_date[d]
            landed, kept, q, dup = (int(c.get(k, 0)) for k in KINDS)
            diff = landed - (kept + q + dup)
            rows.append(
                {
                    "landing_date": d,
                    "landed": landed,
                    "silver": kept,
                    "quarantined": q,
                    "duplicates": dup,
                    "difference": diff,
                }
            )
            if diff:
                report["ok"] = False
                report["problems"].append(
                    f"{dataset} {d}: landed {landed} != silver {kept} + quarantined {q} + duplicates {dup} "
                    f"({'missing' if diff > 0 else 'extra'} {abs(diff)} row(s))"
                )
        report["datasets"][dataset] = rows
    report["files_checked"] = 0
    for dataset, files in (file_counts or {}).items():
        for landing, source, records, rows_in_bronze in files:
            report["files_checked"] += 1
            if records != rows_in_bronze:
                report["ok"] = False
                report["problems"].append(
                    f"{dataset} {landing}: file {source} holds {records} record(s) but Bronze has "
                    f"{rows_in_bronze} row(s) of it ({'missing' if records > rows_in_bronze else 'extra'} "
                    f"{abs(records - rows_in_bronze)})"
                )
    for ing in ingest_summaries:
        for f in ing.get("rejected_files", []):
            msg = f"{ing['dataset']}: file {f['source_file']} rejected: {f['reason']}"
            report["rejected_files"].append(msg)
            if uc.lakehouse.on_rejected_file == "fail":
                report["ok"] = False
                day = f.get("landing_date") or (
                    f["source_file"].split("/")[-2] if f["source_file"].count("/") >= 2 else "<date>"
                )
                report["problems"].append(f"{msg}. {(advice or rename_aside)(f['source_file'], day)}")
    return report


def rename_aside(source_file: str, landing_date: str) -> str:
    """What to do about a rejected file on any target: fix it, or rename it aside (``_*`` files are not read)."""
    return (
        f"Fix the file and rerun landing date {landing_date}, or set it aside by renaming it with a leading '_' "
        "(files named _* are not read), then rerun"
    )


def landing_dates_to_check(silver_summary: dict[str, Any]) -> list[str]:
    """The landing dates a Silver run changed: its own and those whose rows it superseded."""
    return sorted({*silver_summary["landing_dates"], *silver_summary.get("superseded_landing_dates", [])})
