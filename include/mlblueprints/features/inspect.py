"""Read-only summary of a use case's feature stores for people (``mlblueprints features show``)."""

from __future__ import annotations

from mlblueprints.config import UseCase
from mlblueprints.features import core
from mlblueprints.lakehouse import iceberg, naming


def features_text(uc: UseCase) -> str:
    from mlblueprints.features.online import OnlineStore, store_path

    rows = [("view", "version", "ttl", "offline rows", "snapshots", "online entities", "newest event", "last range")]
    path = store_path(uc)
    store = OnlineStore(path, readonly=True) if path.exists() else None
    for view, v in uc.features.items():
        if uc.view_target(view) != "local":
            rows.append((view, str(v.version), v.ttl, "(aws)", "", "", "", core.feature_group_name(uc, view)))
            continue
        t = iceberg.load(iceberg.catalog(), naming.identifier(uc, core.offline_table(uc, view)))
        snap = t.current_snapshot() if t is not None else None
        total = int(snap.summary.get("total-records", 0)) if snap and snap.summary else 0
        stats = {}
        if store is not None and store.stored_types(core.online_table(uc, view)) is not None:
            stats = store.stats(core.online_table(uc, view))
        rows.append(
            (
                view,
                str(v.version),
                v.ttl,
                f"{total:,}" if t is not None else "-",
                str(len(t.snapshots())) if t is not None else "-",
                f"{stats['entities']:,}" if stats else "-",
                str(stats.get("watermark") or "-"),
                str(stats.get("last_range") or "-"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = [f"Feature views of {uc.name}:"]
    for r in rows:
        out.append(
            "  " + "  ".join(x.ljust(w) if i in (0, 7) else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths)))
        )
    out.append(
        f"online store: {path}"
        + (
            f" ({sum(p.stat().st_size for p in path.parent.glob(path.name + '*')) / 1e6:.1f} MB)"
            if path.exists()
            else " (not created yet)"
        )
    )
    out.append(f"offline stores: Iceberg tables {uc.name}.{core.OFFLINE_PREFIX}<view>_v<version>")
    return "\n".join(out)
