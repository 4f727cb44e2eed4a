"""Read-only summary of a use case's feature stores for people (``mlblueprints features show``)."""

from __future__ import annotations

from mlblueprints.backends import backend_for
from mlblueprints.config import UseCase
from mlblueprints.core.reporting import Table, fmt


def features_text(uc: UseCase) -> str:
    table = Table(
        (
            "view",
            "version",
            "ttl",
            "offline rows",
            "snapshots",
            "online entities",
            "newest event",
            "last range / store",
        ),
        right=(3, 4, 5),
        indent="  ",
    )
    notes: list[str] = []
    for view, v in uc.features.items():
        d = backend_for(uc, "features", view=view).describe(view)
        table.add(
            view,
            str(v.version),
            v.ttl,
            fmt(d.get("offline_rows")),
            fmt(d.get("snapshots")),
            fmt(d.get("online_entities")),
            str(d.get("watermark") or "-"),
            str(d.get("last_range") or d.get("store") or "-"),
        )
        for line in d.get("where", []):
            if line not in notes:
                notes.append(line)
    return "\n".join([f"Feature views of {uc.name}:", table.render(), *notes])
