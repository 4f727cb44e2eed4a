"""DuckDB connections of the local target (and of the aws target's in-worker steps)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mlblueprints import runtime

if TYPE_CHECKING:
    import duckdb


def connect() -> duckdb.DuckDBPyConnection:
    """A DuckDB connection sized for the machine: bounded memory, spilling under the runtime dir.

    ``MLB_DUCKDB_THREADS`` (default: every core) and ``MLB_DUCKDB_MEMORY`` (default 2GB) size it.
    """
    import duckdb

    con = duckdb.connect(config={"preserve_insertion_order": True})
    threads = int(os.environ.get("MLB_DUCKDB_THREADS") or max(1, os.cpu_count() or 1))
    memory = os.environ.get("MLB_DUCKDB_MEMORY", "2GB")
    con.execute(f"SET threads = {threads}")
    con.execute(f"SET memory_limit = '{memory}'")
    con.execute(f"SET temp_directory = '{runtime.path('tmp', 'duckdb')}'")
    return con
