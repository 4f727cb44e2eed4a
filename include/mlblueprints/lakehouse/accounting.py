"""Row accounting, the same for both targets: every landed row is in exactly one place.

Per data set and landing date, ``rows in Bronze = rows in Silver + quarantined + duplicates``;
a landed file rejected as a whole fails the run too when ``lakehouse.on_rejected_file`` is
``fail``. The engines count rows in their committed tables and hand the counts here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlblueprints.config import UseCase
from mlblueprints.lakehouse import naming

KINDS = (naming.BRONZE, naming.SILVER, naming.QUARANTINE, naming.DUPLICATES)


def reconcile_counts(
    uc: UseCase,
    counts: Mapping[str, Mapping[str, Mapping[str, int]]],
    ingest_summaries: list[dict[str, Any]],
) -> dict[str, Any]:
    """``counts[dataset][landing_date][kind]`` -> the reconciliation report.

    The report has ``ok``, ``problems`` (one readable line each), ``datasets`` (a row per landing
    date with the four counts and the difference) and ``rejected_files``.
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
    for ing in ingest_summaries:
        for f in ing.get("rejected_files", []):
            msg = f"{ing['dataset']}: file {f['source_file']} rejected: {f['reason']}"
            report["rejected_files"].append(msg)
            if uc.lakehouse.on_rejected_file == "fail":
                report["ok"] = False
                report["problems"].append(msg)
    return report


def landing_dates_to_check(silver_summary: dict[str, Any]) -> list[str]:
    """The landing dates a Silver run changed: its own and those whose rows it superseded."""
    return sorted({*silver_summary["landing_dates"], *silver_summary.get("superseded_landing_dates", [])})
