"""What every benchmark here shares: progress lines, the machine's facts, and steps measured in
fresh subprocesses.

A benchmark script runs each measured step as ``<script> _step <name> <params.json>
<result.json>`` in a new interpreter (:class:`StepRunner`), so that a step's peak RSS is its own
process's high-water mark (``ru_maxrss`` from ``os.wait4``) and imports are paid outside the
step's clock. The child side is :func:`run_child_step`: it times the step function, adds CPU and
memory figures and writes the result JSON the parent reads back.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    """A progress line on stderr (the tables go to stdout)."""
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mb(kb: float) -> str:
    return f"{kb / 1024:,.0f} MB"


def vm_hwm_kb() -> int:
    """Peak resident set size of this process so far (kB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_facts(*packages: str, **extra: Any) -> dict[str, Any]:
    """CPUs, memory, platform, Python, the versions of ``packages`` and the load average now."""
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    facts: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    facts.update({p: version(p) for p in packages})
    facts.update(extra)
    facts["loadavg_start"] = os.getloadavg()
    return facts


def duckdb_settings() -> dict[str, str]:
    """The DuckDB threads and memory limit the runtime uses (``mlblueprints.core.duck``)."""
    t = os.environ.get("MLB_DUCKDB_THREADS")
    m = os.environ.get("MLB_DUCKDB_MEMORY")
    return {
        "threads": t or str(max(1, os.cpu_count() or 1)),
        "threads_source": "MLB_DUCKDB_THREADS" if t else "default (cpu count)",
        "memory_limit": m or "2GB",
        "memory_source": "MLB_DUCKDB_MEMORY" if m else "default",
    }


# ---------------------------------------------------------------------- child side


class Profile:
    """Seconds and counts per SQL statement (by label) and per wrapped call, and time stamps
    of phases (printed to the step's log as they happen)."""

    def __init__(self, top_sql: int = 25) -> None:
        self.sql: dict[str, list[float]] = {}
        self.calls: dict[str, list[float]] = {}
        self.phases: list[tuple[str, int]] = []
        self.top_sql = top_sql

    def stamp(self, event: str) -> None:
        ns = time.perf_counter_ns()
        self.phases.append((event, ns))
        print(f"@@mlb-bench {event} {ns}", flush=True)

    def add(self, bucket: dict[str, list[float]], key: str, seconds: float) -> None:
        entry = bucket.setdefault(key, [0.0, 0])
        entry[0] += seconds
        entry[1] += 1

    def wrap(self, owner: Any, attr: str, name: str, stamp: str | None = None) -> None:
        """Time every call of ``owner.attr`` under ``name`` (and stamp ``<stamp>_begin/_end``)."""
        fn = getattr(owner, attr)
        prof = self

        def timed(*a: Any, **k: Any) -> Any:
            if stamp:
                prof.stamp(f"{stamp}_begin")
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                prof.add(prof.calls, name, time.perf_counter() - t)
                if stamp:
                    prof.stamp(f"{stamp}_end")

        setattr(owner, attr, timed)

    def summary(self) -> dict[str, Any]:
        def rows(bucket: dict[str, list[float]]) -> list[dict[str, Any]]:
            out = [{"what": k, "seconds": round(v[0], 4), "count": v[1]} for k, v in bucket.items()]
            return sorted(out, key=lambda r: -r["seconds"])

        return {"sql": rows(self.sql)[: self.top_sql], "calls": rows(self.calls), "phases": self.phases}


class TimedConnection:
    """A DuckDB connection whose ``execute``/``sql`` calls are timed under ``label(sql)``;
    everything else is forwarded."""

    def __init__(self, con: Any, prof: Profile, label: Callable[[Any], str]) -> None:
        self._con = con
        self._prof = prof
        self._label = label

    def _timed(self, method: str, sql: Any, *a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return getattr(self._con, method)(sql, *a, **k)
        finally:
            self._prof.add(self._prof.sql, self._label(sql), time.perf_counter() - t)

    def execute(self, sql: Any, *a: Any, **k: Any) -> Any:
        return self._timed("execute", sql, *a, **k)

    def sql(self, sql: Any, *a: Any, **k: Any) -> Any:
        return self._timed("sql", sql, *a, **k)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def run_child_step(
    name: str, result_path: str, fn: Callable[[], Any], import_seconds: float, profile: Any = None
) -> None:
    """Run ``fn`` (the step, its imports already done) and write its result with the step's wall
    and CPU seconds, the import time and the RSS before and after (``profile.summary()`` too)."""
    rss_before = vm_hwm_kb()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    user, system = ru1.ru_utime - ru0.ru_utime, ru1.ru_stime - ru0.ru_stime
    result = {
        "step": name,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(user + system, 3),
        "user_seconds": round(user, 3),
        "system_seconds": round(system, 3),
        "import_seconds": round(import_seconds, 3),
        "rss_after_imports_kb": rss_before,
        "rss_peak_self_kb": vm_hwm_kb(),
        "out": out,
        "profile": profile.summary() if profile is not None else {},
    }
    Path(result_path).write_text(json.dumps(result, indent=1, default=str))


# ---------------------------------------------------------------------- parent side


class StepRunner:
    """Runs ``<script> _step <name> ...`` in fresh subprocesses under ``work/steps`` (params,
    result and log of each kept there) with ``env`` and ``MLB_HOME`` set."""

    def __init__(self, script: Path, work: Path, env: dict[str, str], home: Path | None = None) -> None:
        self.script = Path(script)
        self.work = work
        self.env = env
        self.home = home
        self.n = 0

    def spawn(
        self, name: str, params: dict[str, Any] | None = None, home: Path | None = None
    ) -> tuple[subprocess.Popen[bytes], Path, Path, float]:
        self.n += 1
        d = self.work / "steps"
        d.mkdir(parents=True, exist_ok=True)
        base = d / f"{self.n:03d}-{name}"
        pp, rp, lp = base.with_suffix(".params.json"), base.with_suffix(".result.json"), base.with_suffix(".log")
        pp.write_text(json.dumps(params or {}, default=str))
        where = home or self.home
        if where is None:
            raise BenchError(f"step {name}: no MLB_HOME given")
        env = {**os.environ, **self.env, "MLB_HOME": str(where)}
        with lp.open("w") as lf:
            proc = subprocess.Popen(
                [sys.executable, str(self.script), "_step", name, str(pp), str(rp)],
                stdout=lf,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(PROJECT),
            )
        return proc, rp, lp, time.perf_counter()

    @staticmethod
    def finish(name: str, proc: Any, rp: Path, lp: Path, started: float, status: int, ru: Any) -> dict[str, Any]:
        """The child's result plus its process wall time, CPU time and peak RSS (from wait4)."""
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        if proc.returncode != 0 or not rp.exists():
            raise BenchError(f"step {name} exited with {proc.returncode}; log {lp}:\n{lp.read_text()[-4000:]}")
        res = json.loads(rp.read_text())
        res.update(
            process_seconds=round(wall, 3),
            process_cpu_seconds=round(ru.ru_utime + ru.ru_stime, 3),
            peak_rss_kb=ru.ru_maxrss,
            log=str(lp),
        )
        return res

    def step(self, name: str, params: dict[str, Any] | None = None, home: Path | None = None) -> dict[str, Any]:
        """Run one step in a fresh subprocess and wait for it."""
        proc, rp, lp, started = self.spawn(name, params, home)
        _, status, ru = os.wait4(proc.pid, 0)
        return self.finish(name, proc, rp, lp, started, status, ru)


@contextmanager
def recorded(results: dict[str, Any], work: Path, args: Any) -> Iterator[None]:
    """Around a benchmark's body: the end load average and elapsed seconds into ``results``,
    the JSON written (``args.json``) even when the body fails, and the work directory removed
    after a success (kept on failure, with ``--keep`` or a given ``--workdir``)."""
    t = time.perf_counter()
    ok = False
    try:
        yield
        ok = True
    finally:
        results["loadavg_end"] = os.getloadavg()
        results["elapsed_seconds"] = round(time.perf_counter() - t, 1)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        if not ok:
            log(f"failed; step logs and data kept in {work}")
        elif not getattr(args, "keep", False) and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def finish(text: str, results: dict[str, Any], args: Any) -> int:
    """A benchmark's end: the table with the total time printed, and written to ``--txt``."""
    text += f"\ntotal benchmark time {results['elapsed_seconds']:.0f} s" + (f"; JSON: {args.json}" if args.json else "")
    print(text)
    if args.txt:
        Path(args.txt).write_text(text + "\n")
    return 0
