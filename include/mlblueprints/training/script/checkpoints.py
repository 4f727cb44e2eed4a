"""Atomic, self-validating training checkpoints in one directory (part of the training script).

Layout of the checkpoint directory (SageMaker syncs it to ``CheckpointConfig.S3Uri``)::

    ckpt-00000040/model.ubj       the booster after 40 boosting rounds (XGBoost UBJSON)
    ckpt-00000040/manifest.json   rounds, sha256 and size of model.ubj, data and params fingerprints
    ckpt-00000041/...
    .lock                         held (flock) by the one training process using the directory
    .tmp-* / .trash-*             a write or a delete in progress (or left by a killed process)

A checkpoint is written into a ``.tmp-*`` directory (files fsynced, then the directory), renamed
to ``ckpt-<rounds:08d>`` in one ``os.rename`` and the parent directory is fsynced, so a reader
never sees a ``ckpt-*`` directory without its manifest. Deletions rename to ``.trash-*`` first.
On S3 the files are synced one by one, so a ``ckpt-*`` prefix downloaded after a Spot
interruption can still be partial: a checkpoint is only used when its manifest parses, its
model's size and sha256 match the manifest and its fingerprints match the current run.

Standard library only: this directory is uploaded alone as the SageMaker job's source dir.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

FORMAT = "mlblueprints-xgboost-checkpoint/1"
MODEL_FILE = "model.ubj"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"
_NAME_RE = re.compile(r"^ckpt-(\d{8})$")


class CheckpointDirBusy(RuntimeError):
    """Another process holds the checkpoint directory's lock."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checkpoint_name(rounds: int) -> str:
    return f"ckpt-{rounds:08d}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not fsync directories
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory and a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write_file(tmp, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Checkpoint:
    """One valid checkpoint found on disk (its model bytes already checked against the manifest)."""

    def __init__(self, path: Path, rounds: int, model: bytes, manifest: dict[str, Any]):
        self.path = path
        self.rounds = rounds
        self.model = model
        self.manifest = manifest

    def __repr__(self) -> str:
        return f"Checkpoint({self.path.name}, rounds={self.rounds})"


class CheckpointStore:
    """The checkpoints of one training run: what it may resume from and what it writes.

    ``data_fingerprint`` and ``params_fingerprint`` identify the run; a checkpoint whose
    fingerprints differ is *foreign* and never resumed from. ``keep`` is how many of this run's
    checkpoints survive each write (the newest); everything else named ``ckpt-*`` in the
    directory (older ones, corrupt ones, foreign ones) is deleted once this run has written a
    checkpoint of its own. One process uses the directory at a time (:meth:`lock`).
    """

    def __init__(
        self,
        directory: Path,
        data_fingerprint: str,
        params_fingerprint: str,
        *,
        keep: int = 2,
        log: Callable[[str], None] = print,
    ):
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.dir = Path(directory)
        self.data_fingerprint = data_fingerprint
        self.params_fingerprint = params_fingerprint
        self.keep = keep
        self.log = log
        self.good: set[str] = set()  # names of checkpoints known valid for this run
        self.count = 0  # checkpoints written by this process
        self.seconds = 0.0  # time spent writing (and pruning) them
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ directory housekeeping

    def lock(self, wait_seconds: float = 60.0) -> None:
        """Take an exclusive lock on the directory (waits for a dying predecessor to let go)."""
        import fcntl

        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(self.dir / LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise CheckpointDirBusy(
                        f"checkpoint directory {self.dir} is locked by another training process"
                    ) from None
                time.sleep(0.2)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def clean_stale(self) -> int:
        """Remove ``.tmp-*`` and ``.trash-*`` entries a killed process left behind."""
        n = 0
        if not self.dir.is_dir():
            return 0
        for p in sorted(self.dir.iterdir()):
            if p.name.startswith((".tmp-", ".trash-")):
                self.log(f"checkpoint: removing {p.name} (left by an interrupted write or delete)")
                self._remove(p, rename_first=False)
                n += 1
        return n

    def _remove(self, path: Path, rename_first: bool = True) -> None:
        target = path
        if rename_first:
            target = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
            try:
                os.rename(path, target)
            except FileNotFoundError:
                return
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            try:
                target.unlink()
            except FileNotFoundError:
                pass

    def names(self) -> list[tuple[int, Path]]:
        """``(rounds, path)`` of every ``ckpt-*`` entry, newest (most rounds) first."""
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.iterdir():
            m = _NAME_RE.match(p.name)
            if m:
                out.append((int(m.group(1)), p))
        return sorted(out, key=lambda t: -t[0])

    # ------------------------------------------------------------------ reading

    def check(self, path: Path, max_rounds: int | None = None) -> tuple[Checkpoint | None, str]:
        """Validate one checkpoint directory: ``(checkpoint, "ok")`` or ``(None, reason)``."""
        m = _NAME_RE.match(path.name)
        if not m or not path.is_dir():
            return None, "not a checkpoint directory"
        rounds = int(m.group(1))
        try:
            manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, "partial: no manifest"
        except (OSError, ValueError) as exc:
            return None, f"corrupt: manifest does not parse ({exc.__class__.__name__})"
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            return None, f"foreign: manifest format is not {FORMAT}"
        if manifest.get("rounds") != rounds:
            return None, f"corrupt: manifest says {manifest.get('rounds')!r} rounds, directory name {rounds}"
        if manifest.get("data_fingerprint") != self.data_fingerprint:
            return None, "foreign: written for other training data"
        if manifest.get("params_fingerprint") != self.params_fingerprint:
            return None, "foreign: written for other parameters"
        if max_rounds is not None and rounds > max_rounds:
            return None, f"beyond this run: {rounds} rounds > num_boost_round {max_rounds}"
        try:
            model = (path / manifest.get("model_file", MODEL_FILE)).read_bytes()
        except OSError:
            return None, "partial: model file missing"
        if len(model) != manifest.get("model_bytes"):
            return None, f"corrupt: model file has {len(model)} bytes, manifest says {manifest.get('model_bytes')}"
        if sha256_bytes(model) != manifest.get("model_sha256"):
            return None, "corrupt: model sha256 does not match the manifest"
        return Checkpoint(path, rounds, model, manifest), "ok"

    def candidates(self, max_rounds: int | None = None) -> Iterator[Checkpoint]:
        """Valid checkpoints of this run, newest first; every skipped one is logged with its reason."""
        for _, path in self.names():
            ckpt, reason = self.check(path, max_rounds)
            if ckpt is None:
                self.log(f"checkpoint: skipping {path.name}: {reason}")
                continue
            yield ckpt

    def mark_good(self, ckpt: Checkpoint) -> None:
        self.good.add(ckpt.path.name)

    # ------------------------------------------------------------------ writing

    def write(self, rounds: int, model: bytes, extra: dict[str, Any] | None = None) -> Path:
        """Write the checkpoint of ``rounds`` atomically, then keep only the newest ``keep``."""
        t0 = time.perf_counter()
        self.dir.mkdir(parents=True, exist_ok=True)
        name = checkpoint_name(rounds)
        final = self.dir / name
        tmp = self.dir / f".tmp-{name}-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir()
        manifest = {
            "format": FORMAT,
            "rounds": rounds,
            "model_file": MODEL_FILE,
            "model_bytes": len(model),
            "model_sha256": sha256_bytes(model),
            "data_fingerprint": self.data_fingerprint,
            "params_fingerprint": self.params_fingerprint,
            "written_at": time.time(),
            **(extra or {}),
        }
        _write_file(tmp / MODEL_FILE, model)
        _write_file(tmp / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True).encode())
        _fsync_dir(tmp)
        if final.exists():  # the same round again (a rerun that made no progress): replace it
            self._remove(final)
        os.rename(tmp, final)
        _fsync_dir(self.dir)
        self.good.add(name)
        self.count += 1
        self.prune()
        self.seconds += time.perf_counter() - t0
        return final

    def prune(self) -> list[str]:
        """Keep this run's newest ``keep`` checkpoints; delete every other ``ckpt-*`` entry."""
        entries = self.names()
        mine = [(r, p) for r, p in entries if p.name in self.good]
        keep = {p.name for _, p in mine[: self.keep]}
        removed = []
        for _, p in entries:
            if p.name not in keep:
                self._remove(p)
                self.good.discard(p.name)
                removed.append(p.name)
        return removed
