"""The local endpoint's state: one SQLite file per use case, ``<runtime>/serving/<usecase>.sqlite``.

* ``variants``: what the endpoint serves - per variant (``champion``, ``challenger``), the model
  version, its traffic weight and the registry alias it was deployed from. Whoever changes it
  (``mlblueprints serve``, the promotion pattern) does so in one transaction and bumps
  ``generation``; the running endpoint notices within its poll interval, loads what is new next
  to what it serves, and swaps in one step, so a request is answered by the old set or the new.
* ``deployments``: the deployment history - per promotion run, the version, the one it replaces,
  its git commit and when that was made, start and end, the outcome and why, the traffic shares
  and every guardrail's verdict (``mlblueprints deployments`` and the DORA metrics read it);
* ``capture``: the data capture of the endpoint, as SageMaker's endpoint data capture keeps it:
  per sampled request, its time, variant, model version, status, latency, the request and the
  response (JSON). Errors are always kept.

WAL mode: the endpoint writes captures while a reader (the promotion pattern's guardrails, a
test) reads them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.config import UseCase

SCHEMA = """
CREATE TABLE IF NOT EXISTS variants (
  variant TEXT PRIMARY KEY, version INTEGER NOT NULL, weight REAL NOT NULL, alias TEXT,
  updated_at TEXT NOT NULL, updated_by TEXT);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS capture (
  id INTEGER PRIMARY KEY AUTOINCREMENT, at_us INTEGER NOT NULL, request_id TEXT, generation INTEGER,
  variant TEXT, version INTEGER, status INTEGER NOT NULL, latency_ms REAL, records INTEGER, request TEXT,
  response TEXT);
CREATE INDEX IF NOT EXISTS capture_generation ON capture (generation, id);
CREATE TABLE IF NOT EXISTS deployments (
  id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, version INTEGER NOT NULL,
  previous_version INTEGER, git_commit TEXT, committed_at TEXT, started_at TEXT NOT NULL,
  finished_at TEXT, outcome TEXT NOT NULL, reason TEXT, shares TEXT, guardrails TEXT);
"""
IN_PROGRESS = "in_progress"
# how a deployment ended: the challenger became the champion (promoted; first: there was no
# champion to canary against), was rolled back, or a newer promotion replaced it before it ended
OUTCOMES = ("promoted", "first", "rolled_back", "superseded")


def state_path(uc: UseCase | str) -> Path:
    name = uc if isinstance(uc, str) else uc.name
    return runtime.path("serving") / f"{name}.sqlite"


class DeploymentState:
    """Reader and writer of one use case's endpoint state (one connection per thread)."""

    def __init__(self, uc: UseCase | str, path: Path | None = None):
        self.path = path or state_path(uc)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._con().executescript(SCHEMA)

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(str(self.path), timeout=60, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode = WAL")
            con.execute("PRAGMA synchronous = NORMAL")
            con.execute("PRAGMA busy_timeout = 60000")
            self._local.con = con
        return con

    # ------------------------------------------------------------------ variants

    def generation(self) -> int:
        row = self._con().execute("SELECT v FROM meta WHERE k = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def variants(self) -> list[dict[str, Any]]:
        cur = self._con().execute(
            "SELECT variant, version, weight, alias, updated_at, updated_by FROM variants ORDER BY weight DESC, variant"
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def set_variants(self, variants: Sequence[Mapping[str, Any]], by: str) -> int:
        """Replace the served variants (``variant``, ``version``, ``weight``, ``alias``) in one
        transaction; returns the new generation."""
        if not variants or not any(float(v["weight"]) > 0 for v in variants):
            raise ValueError("an endpoint serves at least one variant with a positive weight")
        names = [v["variant"] for v in variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names repeat: {names}")
        now = now_iso()
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute("DELETE FROM variants")
            con.executemany(
                "INSERT INTO variants VALUES (?, ?, ?, ?, ?, ?)",
                [(v["variant"], int(v["version"]), float(v["weight"]), v.get("alias"), now, by) for v in variants],
            )
            gen = self.generation() + 1
            con.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (str(gen),))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return gen

    # ------------------------------------------------------------------ deployments

    def deployments(self) -> list[dict[str, Any]]:
        cur = self._con().execute("SELECT * FROM deployments ORDER BY id")
        cols = [d[0] for d in cur.description]
        out = []
        for r in cur.fetchall():
            d = dict(zip(cols, r))
            for k in ("shares", "guardrails"):
                d[k] = json.loads(d[k]) if d[k] else None
            out.append(d)
        return out

    def deployment(self, run_id: str) -> dict[str, Any] | None:
        """The deployment a promotion run started (a rerun finds its own)."""
        return next((d for d in reversed(self.deployments()) if d["run_id"] == run_id), None)

    def start_deployment(
        self, run_id: str, version: int, previous: int | None, commit: str | None, committed_at: str | None
    ) -> dict[str, Any]:
        """The run's deployment (the one it started before, on a rerun); a deployment of another
        run still in progress is marked superseded (its run was killed or is being replaced)."""
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            row = con.execute(
                "SELECT id FROM deployments WHERE run_id = ? AND outcome = ? ORDER BY id DESC LIMIT 1",
                (run_id, IN_PROGRESS),
            ).fetchone()
            now = now_iso()
            con.execute(
                "UPDATE deployments SET outcome = 'superseded', finished_at = ?, reason = ? "
                "WHERE outcome = ? AND run_id != ?",
                (now, f"replaced by the promotion run {run_id}", IN_PROGRESS, run_id),
            )
            if row is None:
                con.execute(
                    "INSERT INTO deployments (run_id, version, previous_version, git_commit, committed_at, started_at, "
                    "outcome) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (run_id, version, previous, commit, committed_at, now, IN_PROGRESS),
                )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        d = self.deployment(run_id)
        assert d is not None
        return d

    def finish_deployment(
        self, deployment_id: int, outcome: str, reason: str, shares: Sequence[float], guardrails: Any
    ) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        self._con().execute(
            "UPDATE deployments SET outcome = ?, reason = ?, finished_at = ?, shares = ?, guardrails = ? WHERE id = ?",
            (outcome, reason, now_iso(), json.dumps(list(shares)), json.dumps(guardrails, default=str), deployment_id),
        )

    # ------------------------------------------------------------------ capture

    def add_captures(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Rows of (at_us, request_id, generation, variant, version, status, latency_ms, records,
        request, response)."""
        con = self._con()
        con.execute("BEGIN")
        try:
            con.executemany(
                "INSERT INTO capture (at_us, request_id, generation, variant, version, status, latency_ms, records, "
                "request, response) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def captures(
        self, after_id: int = 0, generation: int | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Captured requests with ``id > after_id`` (answered while ``generation`` was served),
        oldest first; request and response decoded."""
        where, params = "id > ?", [after_id]
        if generation is not None:
            where += " AND generation = ?"
            params.append(generation)
        sql = f"SELECT * FROM capture WHERE {where} ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        cur = self._con().execute(sql, params)
        cols = [d[0] for d in cur.description]
        out = []
        for r in cur.fetchall():
            d = dict(zip(cols, r))
            for k in ("request", "response"):
                if d[k] is not None:
                    try:
                        d[k] = json.loads(d[k])
                    except ValueError:
                        pass  # a request that was not JSON is kept as it came
            out.append(d)
        return out

    def last_capture_id(self) -> int:
        row = self._con().execute("SELECT max(id) FROM capture").fetchone()
        return int(row[0] or 0)


def now_iso() -> str:
    """The time a deployment starts or ends, as its history keeps it (UTC, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class CaptureWriter:
    """Captures queued by the request path and written by one thread in batches (a request never
    waits for the disk). :meth:`close` writes what is queued."""

    def __init__(self, state: DeploymentState, interval: float = 0.2):
        self.state = state
        self.interval = interval
        self._queue: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    def put(self, row: tuple[Any, ...]) -> None:
        with self._lock:
            self._queue.append(row)

    def flush(self) -> int:
        with self._lock:
            rows, self._queue = self._queue, []
        if rows:
            try:
                self.state.add_captures(rows)
            except BaseException:
                with self._lock:  # kept for the next try, in order
                    self._queue[:0] = rows
                raise
        return len(rows)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except sqlite3.Error:  # a locked or full disk: keep the rows, try again next interval
                time.sleep(self.interval)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()
