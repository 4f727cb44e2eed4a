"""Find every report the patterns wrote under the runtime directory, without knowing the patterns.

What is read, and why nothing here names a pattern:

- ``runs/<usecase>/<pattern>/<run id>.json``: the run reports of
  :func:`mlblueprints.core.reporting.write_run_report` (``text``, ``tasks``, ``missing``), of any
  pattern that exists now or later; ``latest.txt`` beside them;
- the files a report names: every string in its task results that is an absolute path under the
  runtime directory (a gate's Data Docs page and results, a model, a plot) or an ``s3://`` URI;
- the MLflow runs a report names (any ``mlflow_run_id``): their artifacts, located through the
  tracking DB's ``runs.artifact_uri`` (SQLite, read-only; MLflow itself is not imported);
- the Great Expectations Data Docs site of each use case under ``quality/<usecase>/``.

Pure: no Airflow, no web framework.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

IMAGE = (".png", ".svg", ".jpg", ".jpeg", ".gif", ".webp")
MAX_ARTIFACTS = 200  # per report: a run that names thousands of files is listed in part


@dataclass
class Artifact:
    label: str  # where the report names it: ``<task>.<key>`` or ``mlflow <run id>``
    path: str  # absolute local path, or an s3:// URI
    exists: bool
    rel: str | None = None  # path relative to the runtime directory (what the file route serves)

    is_dir: bool = False

    @property
    def kind(self) -> str:
        if self.path.startswith("s3://"):
            return "s3"
        if self.is_dir:
            return "dir"
        suffix = Path(self.path).suffix.lower()
        if suffix in (".html", ".htm"):
            return "html"
        if suffix in IMAGE:
            return "image"
        if suffix == ".json":
            return "json"
        if suffix in (".txt", ".log", ".md", ".yaml", ".yml", ".csv", ".sql", ".py"):
            return "text"
        return "file"


@dataclass
class Report:
    usecase: str
    pattern: str
    name: str  # the JSON file's name
    path: Path
    mtime: float
    run_id: str = ""
    text: str = ""
    missing_steps: list[str] = field(default_factory=list)
    tasks: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)
    error: str | None = None  # the report could not be read: why, in one line

    @property
    def missing_files(self) -> list[Artifact]:
        return [a for a in self.artifacts if not a.exists and a.kind != "s3"]


@dataclass
class Pattern:
    name: str
    reports: list[Report]  # newest first (summaries: no artifacts)
    latest_text: str | None


@dataclass
class UseCase:
    name: str
    patterns: list[Pattern]
    data_docs: list[Artifact]


def _inside(home: Path, p: Path) -> str | None:
    """``p`` relative to ``home`` when it resolves inside it (symlinks followed), else None."""
    try:
        return p.resolve().relative_to(home.resolve()).as_posix()
    except (ValueError, OSError):
        return None


def safe_file(home: Path, rel: str) -> Path | None:
    """The file ``rel`` names under ``home``; None for anything outside it or not a file."""
    if not rel or "\x00" in rel:
        return None
    p = home / rel
    inside = _inside(home, p)
    return p.resolve() if inside is not None and p.is_file() else None


def usecases(home: Path) -> list[UseCase]:
    runs = home / "runs"
    names = sorted({p.name for p in runs.iterdir() if p.is_dir()} if runs.is_dir() else set())
    out = []
    for uc in names:
        patterns = []
        for pdir in sorted(p for p in (runs / uc).iterdir() if p.is_dir()):
            reports = sorted(
                (_summary(uc, pdir.name, f) for f in pdir.glob("*.json")), key=lambda r: r.mtime, reverse=True
            )
            latest = pdir / "latest.txt"
            patterns.append(
                Pattern(pdir.name, reports, latest.read_text(errors="replace") if latest.is_file() else None)
            )
        out.append(UseCase(uc, patterns, data_docs(home, uc)))
    return out


def data_docs(home: Path, usecase: str) -> list[Artifact]:
    base = home / "quality" / usecase
    if not base.is_dir():
        return []
    return [
        Artifact("Data Docs", str(p), True, _inside(home, p))
        for p in sorted(base.glob("**/data_docs/*/index.html"))
        if _inside(home, p) is not None
    ]


def _summary(usecase: str, pattern: str, f: Path) -> Report:
    with contextlib.suppress(OSError):
        return Report(usecase, pattern, f.name, f, f.stat().st_mtime, run_id=f.stem)
    return Report(usecase, pattern, f.name, f, 0.0, run_id=f.stem)


def load(home: Path, usecase: str, pattern: str, name: str) -> Report | None:
    """One run report with the files it names; None when there is no such report."""
    if any(part in ("", ".", "..") or "/" in part for part in (usecase, pattern, name)) or not name.endswith(".json"):
        return None
    f = home / "runs" / usecase / pattern / name
    if _inside(home, f) is None or not f.is_file():
        return None
    r = _summary(usecase, pattern, f)
    try:
        payload = json.loads(f.read_text(encoding="utf-8"))
        if not isinstance(payload, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        r.error = f"{f.name} cannot be read as a run report: {exc}"
        return r
    r.run_id = str(payload.get("run_id") or f.stem)
    r.text = str(payload.get("text") or "")
    r.missing_steps = [str(s) for s in payload.get("missing") or []]
    tasks = payload.get("tasks")
    r.tasks = tasks if isinstance(tasks, dict) else {}
    r.artifacts = artifacts(home, r.tasks)
    return r


def artifacts(home: Path, tasks: dict[str, Any]) -> list[Artifact]:
    """The files the task results name, then the artifacts of the MLflow runs they name."""
    found: dict[str, Artifact] = {}
    mlflow_runs: list[str] = []

    def walk(value: Any, label: str) -> None:
        if len(found) >= MAX_ARTIFACTS:
            return
        if isinstance(value, dict):
            for k, v in value.items():
                if k == "mlflow_run_id" and isinstance(v, str) and v not in mlflow_runs:
                    mlflow_runs.append(v)
                walk(v, f"{label}.{k}" if label else str(k))
        elif isinstance(value, list):
            for i, v in enumerate(value[:MAX_ARTIFACTS]):
                walk(v, f"{label}[{i}]")
        elif isinstance(value, str) and value not in found:
            if value.startswith("s3://") and len(value) > 5:
                found[value] = Artifact(label, value, True)
            elif value.startswith("/") and "\n" not in value and len(value) < 4096:
                p = Path(value)
                rel = _inside(home, p)
                if rel is not None:  # only the runtime directory's own files are served
                    is_dir = p.is_dir()
                    found[value] = Artifact(label, value, is_dir or p.is_file(), rel, is_dir)

    walk(tasks, "")
    out = list(found.values())
    for run_id in mlflow_runs:
        out += mlflow_artifacts(home, run_id)
    return out[:MAX_ARTIFACTS]


def mlflow_artifacts(home: Path, run_id: str) -> list[Artifact]:
    """The artifact files of one MLflow run, where the tracking DB under the runtime says they are."""
    db = home / "mlflow" / "mlflow.db"
    root: Path | None = None
    if db.is_file():
        with contextlib.suppress(sqlite3.Error):
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                row = con.execute("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
            finally:
                con.close()
            if row and row[0]:
                uri = urlparse(row[0])
                if uri.scheme in ("", "file"):
                    root = Path(unquote(uri.path))
    label = f"mlflow run {run_id}"
    if root is None or _inside(home, root) is None:  # no tracking DB here, or the run is not in it
        return [Artifact(label, f"{db} (no run {run_id} with local artifacts)", False)] if db.is_file() else []
    if not root.is_dir():
        return [Artifact(label, str(root), False, _inside(home, root))]
    return [
        Artifact(f"{label}: {p.relative_to(root).as_posix()}", str(p), True, _inside(home, p))
        for p in sorted(root.rglob("*"))[:MAX_ARTIFACTS]
        if p.is_file() and _inside(home, p) is not None
    ]


def listing(home: Path, rel: str, limit: int = 50) -> list[tuple[str, str]]:
    """(name relative to the directory, path relative to home) of the files under a directory."""
    base = home / rel
    if _inside(home, base) is None or not base.is_dir():
        return []
    out = []
    for p in sorted(base.rglob("*")):
        inside = _inside(home, p)
        if p.is_file() and inside is not None:
            out.append((p.relative_to(base).as_posix(), inside))
            if len(out) >= limit:
                break
    return out
