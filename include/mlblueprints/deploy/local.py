"""The local Airflow UI in one command: ``mlblueprints up`` (``make up``) starts the Airflow 3
API server (UI and REST API), scheduler, DAG processor and triggerer on the runtime directory's
SQLite metadata DB - the DB the demo and the CLI use - and ``mlblueprints down`` stops them.

Laptop-sized: the LocalExecutor runs at most ``AIRFLOW__CORE__PARALLELISM`` tasks (4, from
:func:`mlblueprints.runtime.airflow_env`) instead of its 32 default workers, one API server
worker, loopback only unless ``--host`` says otherwise. SQLite takes one writer at a time; with
4 task slots and Airflow 3's tasks writing through the API server, that is enough (a
PostgreSQL would only be needed for more parallel tasks).

Each component is a process group of its own (its children - API server workers, executor
workers, task supervisors - with it); the groups are recorded in ``<AIRFLOW_HOME>/up.json``
and ``down`` ends exactly those groups, first with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from mlblueprints import runtime

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
USER = "admin"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"


class UpError(RuntimeError):
    """The stack cannot start (or did not become healthy); the message says why."""


def _airflow_home() -> Path:
    return Path(runtime.airflow_env()["AIRFLOW_HOME"])


def state_file() -> Path:
    return _airflow_home() / "up.json"


def stack_env(port: int, host: str) -> dict[str, str]:
    """The environment of every component: the runtime's Airflow settings plus the API server's
    address (the executor's tasks reach the Execution API there) and the simple auth manager."""
    env = {**os.environ, **runtime.airflow_env()}
    url = f"http://{host}:{port}"
    env.update(
        {
            "AIRFLOW__API__HOST": host,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
        }
    )
    return env


def password() -> str | None:
    """The admin password the simple auth manager generated (kept in AIRFLOW_HOME)."""
    path = _airflow_home() / "simple_auth_manager_passwords.json.generated"
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text()).get(USER)
    return None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (a zombie counts: see :func:`group_members`)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_members(pgids: list[int]) -> list[int]:
    """Live processes (not zombies) in the given process groups."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgid = fields[0], int(fields[2])
        if pgid in pgids and state != "Z":
            out.append(int(proc.name))
    return out


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


@dataclass
class Stack:
    host: str
    port: int
    pids: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    seconds_to_healthy: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def processes(self) -> list[int]:
        return group_members(list(self.pids.values()))

    def describe(self) -> str:
        procs = self.processes()
        lines = [
            f"Airflow UI: {self.url}",
            f"login: {USER} / {password() or '(see ' + str(_airflow_home() / 'simple_auth_manager_passwords.json.generated') + ')'}",
            f"ML reports: {self.url}/mlblueprints/reports/ (also under Browse in the UI)",
            f"healthy after {self.seconds_to_healthy:.0f} s; {len(procs)} processes, {rss_mb(procs):,.0f} MB resident",
            f"DAG folder {runtime.project_root() / 'dags'}; metadata DB and logs under {_airflow_home()}",
            "new DAGs start paused: switch one on in the UI, or trigger it; `make down` stops everything",
        ]
        return "\n".join(lines)

    def save(self) -> None:
        state_file().write_text(
            json.dumps({"host": self.host, "port": self.port, "pids": self.pids, "started": self.started})
        )

    @classmethod
    def load(cls) -> Stack | None:
        try:
            d = json.loads(state_file().read_text())
        except (OSError, ValueError):
            return None
        return cls(d["host"], int(d["port"]), {k: int(v) for k, v in d["pids"].items()}, d.get("started", 0.0))


def health(url: str, timeout: float = 5) -> dict | None:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=timeout) as r:
            return json.loads(r.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def _healthy(h: dict | None) -> bool:
    if not h:
        return False
    parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return all((h.get(p) or {}).get("status") == "healthy" for p in parts)


def _log_tail(path: Path, n: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    return ""


def up(port: int = 8080, host: str = "127.0.0.1", timeout: float = 180) -> Stack:
    """Migrate the DB, start the four components, wait until the health endpoint says every one
    is healthy; on failure stop what started and raise :class:`UpError` with the logs' tails."""
    running = Stack.load()
    if running and any(pid_alive(p) for p in running.pids.values()):
        raise UpError(f"already running at {running.url} (pids {sorted(running.pids.values())}); `make down` first")
    from mlblueprints.airflow import localrun

    localrun.setup()  # the runtime's DB, migrated; stuck dag.test() runs of killed processes marked failed
    env = stack_env(port, host)
    logs = _airflow_home() / "logs" / "up"
    logs.mkdir(parents=True, exist_ok=True)
    stack = Stack(host, port, started=time.time())
    try:
        for comp in COMPONENTS:
            log = (logs / f"{comp}.log").open("ab")
            proc = subprocess.Popen(
                [sys.executable, "-m", "airflow", comp],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: down() ends it with its children
                cwd=_airflow_home(),
            )
            log.close()
            stack.pids[comp] = proc.pid
        stack.save()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if _healthy(health(stack.url)):
                stack.seconds_to_healthy = time.time() - stack.started
                return stack
            dead = [c for c, pid in stack.pids.items() if not pid_alive(pid) or _zombie(pid)]
            if dead:
                raise UpError(f"{', '.join(dead)} exited:\n" + "\n".join(_log_tail(logs / f"{c}.log") for c in dead))
            time.sleep(1)
        raise UpError(
            f"not healthy after {timeout:.0f} s ({health(stack.url)}); logs in {logs}:\n"
            + _log_tail(logs / "api-server.log")
        )
    except BaseException:
        stop(stack)
        raise


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return False


def stop(stack: Stack, grace: float = 30) -> list[str]:
    """End the stack's process groups: SIGTERM, then SIGKILL what is left after ``grace``."""
    pgids = list(stack.pids.values())
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and group_members(pgids):
        _reap(pgids)
        time.sleep(0.5)
    killed = group_members(pgids)
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    _reap(pgids)
    with contextlib.suppress(FileNotFoundError):
        state_file().unlink()
    lines = [f"stopped {comp} (process group {pid})" for comp, pid in stack.pids.items()]
    if killed:
        lines.append(f"{len(killed)} process(es) did not stop within {grace:.0f} s and were killed")
    return lines


def _reap(pids: list[int]) -> None:
    for pid in pids:  # our own children: collect their exit status so they do not linger as zombies
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def down() -> list[str]:
    stack = Stack.load()
    if stack is None:
        return [f"nothing to stop (no {state_file()})"]
    return stop(stack)
