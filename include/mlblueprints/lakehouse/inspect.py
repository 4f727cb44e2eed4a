"""Read-only views of the local lakehouse for people: table sizes, quarantine samples."""

from __future__ import annotations

from mlblueprints.config import UseCase
from mlblueprints.core.duck import connect
from mlblueprints.core.reporting import Table
from mlblueprints.lakehouse import iceberg, naming


def _tables(uc: UseCase) -> list[str]:
    names = []
    for ds in uc.datasets:
        names += [naming.table_name(ds, k) for k in ("bronze", "bronze_files", "silver", "quarantine", "duplicates")]
    from mlblueprints.features import core

    names += list(uc.gold)
    names += [core.offline_table(uc, v) for v in uc.features]  # views held on aws have none here
    return names + [core.training_table(t) for t in uc.training_sets]


def tables_text(uc: UseCase) -> str:
    cat = iceberg.catalog()
    table = Table(("table", "rows", "files", "MB", "snapshots", "location"), right=(1, 2, 3, 4), indent="  ")
    for name in _tables(uc):
        t = iceberg.load(cat, naming.identifier(uc, name))
        if t is None:
            continue
        snap = t.current_snapshot()
        summary = snap.summary if snap else None
        total = int(summary.get("total-records", 0)) if summary else 0
        files = int(summary.get("total-data-files", 0)) if summary else 0
        size = int(summary.get("total-files-size", 0)) if summary else 0
        table.add(
            naming.identifier(uc, name),
            total,
            files,
            f"{size / 1e6:.1f}",
            len(t.snapshots()),
            str(iceberg.data_dir(t).parent),
        )
    return "Iceberg tables (SQLite catalog):\n" + table.render()


def quarantine_text(uc: UseCase, dataset: str, limit: int = 20, reason: str | None = None) -> str:
    t = iceberg.load(iceberg.catalog(), naming.identifier(uc, naming.table_name(dataset, naming.QUARANTINE)))
    if t is None:
        return f"no quarantine table for {dataset} yet"
    con = connect()
    iceberg.register_view(con, "q", t)
    where = "WHERE _reason_code = $reason" if reason else ""
    params = {"reason": reason} if reason else {}
    counts = con.execute(
        f"SELECT _reason_code, _reason_column, COUNT(*) FROM q {where} GROUP BY ALL ORDER BY 3 DESC", params
    ).fetchall()
    cur = con.execute(
        f"SELECT * FROM q {where} ORDER BY _landing_date, _source_file, _line_number LIMIT {int(limit)}", params
    )
    names = [d[0] for d in cur.description]
    sample = [dict(zip(names, r)) for r in cur.fetchall()]
    out = [f"{naming.identifier(uc, naming.table_name(dataset, naming.QUARANTINE))}:"]
    for code, col, n in counts:
        out.append(f"  {code:<18} {col or '-':<20} {n:>8,}")
    out.append("")
    for r in sample:
        col = r["_reason_column"]
        what = f"{col}={r[col]!r}" if col else f"raw: {(r['_raw_record'] or '')[:80]}"
        out.append(f"  {r['_source_file']}:{r['_line_number']}  {r['_reason_code']}  {what}  ({r['_reason_detail']})")
    return "\n".join(out)
