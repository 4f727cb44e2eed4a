"""A runtime directory (``MLB_HOME``) can be moved or copied as a whole.

The Iceberg tables record paths relative to it (see :mod:`mlblueprints.lakehouse.iceberg`).
MLflow records absolute artifact URIs in its SQLite database (experiments, runs, logged models,
model versions); a moved or copied directory would go on writing artifacts into the old place.
:func:`check_home` notices the move (the directory records where it was last used, in
``.mlb-home``) and rewrites those URIs, once, before anything runs. Nothing here imports a heavy
library.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from mlblueprints import runtime

log = logging.getLogger(__name__)

MARKER = ".mlb-home"
_checked: set[str] = set()


def check_home(home: Path | None = None) -> Path | None:
    """Record where the runtime directory is; when it was moved or copied since it was last
    used, rewrite the absolute paths its MLflow database holds. Returns the old location when it
    moved. Cheap after the first call per process."""
    h = (home or runtime.home()).resolve()
    if str(h) in _checked:
        return None
    marker = h / MARKER
    try:
        previous = marker.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        previous = None
    moved = Path(previous) if previous and previous != str(h) else None
    if moved is not None:
        n = rewrite_mlflow(h, moved)
        log.warning("runtime directory moved from %s to %s: %d MLflow path(s) rewritten", moved, h, n)
    if previous != str(h):
        tmp = marker.with_name(MARKER + ".tmp")
        tmp.write_text(str(h) + "\n", encoding="utf-8")
        tmp.replace(marker)
    _checked.add(str(h))
    return moved


def rewrite_mlflow(home: Path, old: Path) -> int:
    """Replace ``old`` by ``home`` in every text value of the MLflow database under ``home``
    (``file://`` URIs and plain paths); one transaction. Returns the number of values changed."""
    db = home / "mlflow" / "mlflow.db"
    if not db.exists():
        return 0
    pairs = [(old.as_uri() + "/", home.as_uri() + "/"), (str(old) + "/", str(home) + "/")]
    con = sqlite3.connect(str(db), timeout=60, isolation_level=None)
    changed = 0
    try:
        con.execute("BEGIN IMMEDIATE")
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            q = '"' + table.replace('"', '""') + '"'
            cols = [
                r[1] for r in con.execute(f"PRAGMA table_info({q})") if "CHAR" in r[2].upper() or "TEXT" in r[2].upper()
            ]
            for col in cols:
                c = '"' + col.replace('"', '""') + '"'
                for before, after in pairs:
                    cur = con.execute(
                        f"UPDATE {q} SET {c} = REPLACE({c}, ?, ?) WHERE instr({c}, ?) > 0", (before, after, before)
                    )
                    changed += cur.rowcount
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        con.close()
    return changed
