"""The two dependency sets, generated from what the project resolves:

``requirements/local.txt``
    the full local environment, exported from ``uv.lock`` (Python 3.11, Airflow included): every
    package pinned, so it needs no constraints file.
``requirements/aws-worker.txt``
    what an Airflow worker on the aws target needs (``requirements/aws-worker.in``), resolved for
    the managed images' Python (3.12) together with the targeted Airflow version, with the
    lock's versions wherever they install on 3.12. Only the packages that the image's Airflow
    does not bring are pinned: the image's own packages (Airflow, the Amazon provider, boto3,
    SQLAlchemy, FastAPI, pydantic, ...) are left to the image, so installing the set never moves
    them.

Apache's constraints file of Airflow 3.3.1 for Python 3.12 pins ``pandas==3.0.5`` (Evidently 0.7
does not import on pandas 3) and ``pyiceberg==0.11.1`` (the lakehouse needs 0.12): the worker set
cannot install under it. The MWAA bundle therefore ships ``aws-worker.txt`` as its own
constraints file in ``dags/`` and names it in the ``--constraint`` line of its requirements, the
way MWAA documents overriding constraints; MWAA's essential constraints (Airflow, Flask, Celery,
SQLAlchemy) still apply and this file pins none of them.

Run with ``python -m mlblueprints.deploy.requirements`` (``make requirements``); needs uv and
the package index. Nothing here runs at import time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import tempfile
from pathlib import Path

from mlblueprints import runtime

AIRFLOW_TARGET = "3.3.1"
"""The Airflow version the managed targets run: MWAA's newest (3.3.1; it also offers 3.2.1 and
3.0.6) and Astro Runtime's 3.3 line. ``make requirements AIRFLOW_TARGET=...`` changes it."""
PYTHON_TARGET = "3.12"
PLATFORM = "x86_64-manylinux_2_28"
# what an MWAA or Astro image installs before the user's requirements
IMAGE_PACKAGES = ("apache-airflow=={version}", "apache-airflow-providers-amazon[aiobotocore]")
# lock pins that do not install on Python 3.12 beside Airflow (sagemaker's importlib-metadata<7)
NOT_ON_312 = frozenset({"importlib-metadata"})
# worker packages that are another distribution of a locked one: the worker gets the lock's release
SAME_RELEASE_AS = {"xgboost-cpu": "xgboost"}
WORKER_IN = Path("requirements", "aws-worker.in")
WORKER_TXT = Path("requirements", "aws-worker.txt")
LOCAL_TXT = Path("requirements", "local.txt")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)(\[[^\]]*\])?==([^\s;#]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a requirements text, by canonical name."""
    out = {}
    for line in text.splitlines():
        m = _PIN.match(line.strip())
        if m:
            out[canonical(m[1])] = m[3]
    return out


def header_field(text: str, field: str) -> str | None:
    """A ``# field: value`` line of a generated file's header."""
    m = re.search(rf"^# {re.escape(field)}: (.+)$", text, re.M)
    return m[1].strip() if m else None


def _uv(uv: str, *args: str, cwd: Path) -> str:
    out = subprocess.run([uv, *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"uv {' '.join(args[:2])} failed:\n{out.stderr[-4000:]}")
    return out.stdout


def _compile(uv: str, root: Path, lines: list[str], constraints: dict[str, str] | None = None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp, "in.txt")
        req.write_text("\n".join(lines) + "\n")
        args = ["pip", "compile", str(req), "--python-version", PYTHON_TARGET, "--python-platform", PLATFORM]
        args += ["--no-header", "--no-annotate", "--quiet", "--output-file", str(Path(tmp, "out.txt"))]
        if constraints:
            c = Path(tmp, "constraints.txt")
            c.write_text("".join(f"{k}=={v}\n" for k, v in sorted(constraints.items())))
            args += ["--constraint", str(c)]
        _uv(uv, *args, cwd=root)
        return Path(tmp, "out.txt").read_text()


def lock_pins(uv: str, root: Path) -> dict[str, str]:
    return pins(
        _uv(uv, "export", "--frozen", "--no-hashes", "--no-header", "--no-emit-project", "--no-annotate", cwd=root)
    )


def worker_set(uv: str, root: Path, airflow_version: str) -> tuple[dict[str, str], dict[str, str]]:
    """(pins of the worker set outside the image's packages, pins of the image's packages)."""
    image = pins(_compile(uv, root, [p.format(version=airflow_version) for p in IMAGE_PACKAGES]))
    lock = lock_pins(uv, root)
    prefer = {k: v for k, v in lock.items() if k not in image and k not in NOT_ON_312}
    prefer.update({alias: lock[name] for alias, name in SAME_RELEASE_AS.items() if name in lock})
    wanted = [line for line in (root / WORKER_IN).read_text().splitlines() if line.strip() and not line.startswith("#")]
    resolved = pins(_compile(uv, root, [f"apache-airflow=={airflow_version}", *wanted], prefer))
    return {k: v for k, v in resolved.items() if k not in image}, image


def render_worker(worker: dict[str, str], airflow_version: str) -> str:
    lines = [
        "# GENERATED by `make requirements` from requirements/aws-worker.in and uv.lock; do not edit.",
        "# The aws worker set: what the image's Airflow does not bring, pinned. Airflow's own packages",
        "# are the image's and are not pinned here (installing this set never moves them).",
        f"# airflow: {airflow_version}",
        f"# python: {PYTHON_TARGET}",
        *(f"{k}=={v}" for k, v in sorted(worker.items())),
    ]
    return "\n".join(lines) + "\n"


def render_local(uv: str, root: Path) -> str:
    body = _uv(
        uv,
        "export",
        "--frozen",
        "--no-dev",
        "--no-hashes",
        "--no-header",
        "--no-emit-project",
        "--no-annotate",
        cwd=root,
    )
    head = [
        "# GENERATED by `make requirements` from uv.lock; do not edit.",
        "# The full local set (Python 3.11, Airflow included): every package pinned, no constraints file needed.",
        "# python: 3.11",
    ]
    return "\n".join(head) + "\n" + body


def generate(root: Path, uv: str, airflow_version: str = AIRFLOW_TARGET) -> list[Path]:
    worker, _ = worker_set(uv, root, airflow_version)
    (root / WORKER_TXT).write_text(render_worker(worker, airflow_version))
    (root / LOCAL_TXT).write_text(render_local(uv, root))
    return [root / WORKER_TXT, root / LOCAL_TXT]


def top_level(root: Path) -> list[str]:
    """The requirement lines of ``aws-worker.in`` (what a requirements.txt names)."""
    return [line for line in (root / WORKER_IN).read_text().splitlines() if line.strip() and not line.startswith("#")]


def find_python(version: str = PYTHON_TARGET) -> str | None:
    """An interpreter of ``version`` on this machine: ``$PYTHON312`` (for 3.12), ``python3.12``
    on PATH when it runs, pyenv's installed versions, the one ``make python312`` installs into
    ``.tools/python``, then uv's. None when there is none."""
    import glob
    import shutil

    candidates = []
    env = os.environ.get("PYTHON" + version.replace(".", ""))
    if env:
        candidates.append(env)
    if shutil.which(f"python{version}"):
        candidates.append(shutil.which(f"python{version}") or "")
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"), reverse=True)
    tools = runtime.project_root() / ".tools" / "python"
    candidates += sorted(glob.glob(f"{tools}/cpython-{version}.*/bin/python{version}"), reverse=True)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["uv", "python", "find", version], capture_output=True, text=True, timeout=30)
        if out.returncode == 0:
            candidates.append(out.stdout.strip())
    for c in candidates:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if out.returncode == 0 and out.stdout.strip() == version:
                return c
    return None


def _python_main(version: str) -> int:
    """``python -m mlblueprints.deploy.requirements --find-python``: print the interpreter or fail."""
    py = find_python(version)
    if py is None:
        return 1
    print(py)
    return 0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--airflow", default=os.environ.get("AIRFLOW_TARGET") or AIRFLOW_TARGET)
    p.add_argument("--uv", default=os.environ.get("UV") or "uv")
    p.add_argument("--find-python", metavar="VERSION", help="print an interpreter of VERSION (exit 1 if none)")
    a = p.parse_args(argv)
    if a.find_python:
        raise SystemExit(_python_main(a.find_python))
    for path in generate(runtime.project_root(), a.uv, a.airflow):
        print(path)


if __name__ == "__main__":
    main()
