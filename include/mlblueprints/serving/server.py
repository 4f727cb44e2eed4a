"""Starting and stopping the local endpoint: in the foreground (``mlblueprints serve <usecase>``),
or as a background process the promotion pattern and ``serve --background`` start, found again
through ``<runtime>/serving/<usecase>.json`` (pid, port, start time) and logging to
``<runtime>/serving/<usecase>.log``.

``python -m mlblueprints.serving.server <usecase.yaml> [--port N]`` is the process itself.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.config import UseCase
from mlblueprints.deploy.local import pid_alive


class EndpointError(RuntimeError):
    """The endpoint could not be started or reached (one line saying why)."""


def _files(uc: UseCase) -> tuple[Path, Path]:
    d = runtime.path("serving")
    return d / f"{uc.name}.json", d / f"{uc.name}.log"


def url(uc: UseCase, port: int | None = None) -> str:
    assert uc.promotion is not None
    e = uc.promotion.endpoint
    host = f"[{e.host}]" if ":" in e.host else e.host
    return f"http://{host}:{port or e.port}"


def ping(base: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """The endpoint's /ping answer when it is healthy, else None."""
    try:
        with urllib.request.urlopen(f"{base}/ping", timeout=timeout) as r:  # noqa: S310 - loopback http only
            return json.loads(r.read()) if r.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _port_free(host: str, port: int) -> bool:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def status(uc: UseCase) -> dict[str, Any] | None:
    """The background endpoint of ``uc`` (pid, port, url, health), or None when none runs."""
    info_file, _ = _files(uc)
    if not info_file.exists():
        return None
    try:
        info = json.loads(info_file.read_text())
    except ValueError:
        return None
    if not pid_alive(int(info["pid"])):
        info_file.unlink(missing_ok=True)
        return None
    info["health"] = ping(info["url"])
    return info


def start(uc: UseCase, usecase_file: Path, port: int | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """Start ``uc``'s endpoint as a background process (or find the one running) and wait until
    it answers /ping. Raises :class:`EndpointError` saying why it did not come up."""
    assert uc.promotion is not None
    running = status(uc)
    if running is not None:
        if running["health"] is None:
            ok = _wait(running["url"], int(running["pid"]), timeout)
            if not ok:
                raise EndpointError(f"{uc.name}: the endpoint (pid {running['pid']}) runs but is not healthy")
            running["health"] = ok
        return running
    e = uc.promotion.endpoint
    port = port or e.port
    if not _port_free(e.host, port):
        raise EndpointError(
            f"{uc.name}: port {port} on {e.host} is taken by another process (promotion.endpoint.port, or --port)"
        )
    info_file, log_file = _files(uc)
    with log_file.open("ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own module, our interpreter
            [sys.executable, "-m", "mlblueprints.serving.server", str(usecase_file), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C of the caller does not reach it; stop() does
            env={**os.environ, runtime.ENV_HOME: str(runtime.home())},
        )
    base = url(uc, port)
    info = {"pid": proc.pid, "port": port, "url": base, "started_at": time.time(), "log": str(log_file)}
    tmp = info_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(info_file)
    health = _wait(base, proc.pid, timeout, proc)
    if health is None:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-5:]
        stop(uc)
        raise EndpointError(f"{uc.name}: the endpoint did not become healthy in {timeout:.0f}s: " + " | ".join(tail))
    return {**info, "health": health}


def _wait(base: str, pid: int, timeout: float, proc: Any = None) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok = ping(base)
        if ok is not None:
            return ok
        if (proc is not None and proc.poll() is not None) or not pid_alive(pid):
            return None
        time.sleep(0.2)
    return None


def stop(uc: UseCase, timeout: float = 15.0) -> bool:
    """Stop ``uc``'s background endpoint (SIGTERM: uvicorn finishes the requests in flight, the
    capture is written); True when one was running."""
    info_file, _ = _files(uc)
    if not info_file.exists():
        return False
    try:
        pid = int(json.loads(info_file.read_text())["pid"])
    except (ValueError, KeyError):
        info_file.unlink(missing_ok=True)
        return False
    was = pid_alive(pid)
    if was:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
            try:  # reap it when it is our child
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    info_file.unlink(missing_ok=True)
    return was


def serve(uc: UseCase, port: int | None = None) -> None:
    """Run the endpoint in this process until interrupted."""
    import uvicorn

    from mlblueprints.serving.endpoint import create_app

    assert uc.promotion is not None
    e = uc.promotion.endpoint
    uvicorn.run(
        create_app(uc),
        host=e.host,
        port=port or e.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
    )


def main(argv: list[str] | None = None) -> int:
    import logging

    from mlblueprints.config import load_usecase

    p = argparse.ArgumentParser(prog="python -m mlblueprints.serving.server")
    p.add_argument("usecase_file", type=Path)
    p.add_argument("--port", type=int, default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(load_usecase(a.usecase_file), a.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
