"""The Astro project in ``astro/``: the files kept in the repository there (Dockerfile,
packages.txt, airflow_settings.yaml, .astro/ with the DAG integrity test `astro dev parse`
runs) plus what :func:`assemble` copies in from the repository (dags/, include/mlblueprints,
plugins/, expectations/) and the requirements (the aws worker set, pinned for the image's
Python and Airflow). ``astro dev start`` in that folder builds and runs it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from mlblueprints.deploy import bundle
from mlblueprints.deploy import requirements as reqs
from mlblueprints.deploy.mwaa import DeployError

IMAGE = "astrocrpublic.azurecr.io/runtime"
KEPT = ("Dockerfile", "packages.txt", "airflow_settings.yaml", ".dockerignore", ".gitignore", ".astro")
ASSEMBLED = ("dags", "include", "plugins", "expectations", "requirements.txt")


def requirements_text(worker: str, airflow_version: str, runtime_tag: str) -> str:
    head = [
        f"# mlblueprints on Astro Runtime {runtime_tag} (Apache Airflow {airflow_version}, Python {reqs.PYTHON_TARGET}).",
        "# The aws worker set, every package the image's Airflow does not bring pinned (a pinned set",
        "# needs no constraints file); Airflow's own packages are the image's. Written by `make astro`",
        "# from requirements/aws-worker.txt.",
    ]
    body = [line for line in worker.splitlines() if line and not line.startswith("#")]
    return "\n".join(head + body) + "\n"


def dockerfile_text(text: str, airflow_version: str, runtime_tag: str) -> str:
    text, n = re.subn(r"^FROM \S+$", f"FROM {IMAGE}:{runtime_tag}", text, count=1, flags=re.M)
    text, m = re.subn(r"^ARG AIRFLOW_TARGET=\S+$", f"ARG AIRFLOW_TARGET={airflow_version}", text, count=1, flags=re.M)
    if not (n and m):
        raise DeployError("astro/Dockerfile has lost its FROM or ARG AIRFLOW_TARGET line")
    return text


def assemble(root: Path, out: Path, airflow_version: str = reqs.AIRFLOW_TARGET, runtime_tag: str = "3.3-2") -> Path:
    worker = root / reqs.WORKER_TXT
    if not worker.is_file():
        raise DeployError(f"{worker} is missing: run `make requirements`")
    text = worker.read_text()
    if reqs.header_field(text, "airflow") != airflow_version:
        raise DeployError(
            f"{reqs.WORKER_TXT} was generated for Airflow {reqs.header_field(text, 'airflow')}, not {airflow_version}: "
            f"run `make requirements AIRFLOW_TARGET={airflow_version}`"
        )
    template = root / "astro"
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() != template.resolve():
        for name in KEPT:
            src = template / name
            if src.is_dir():
                shutil.copytree(src, out / name, dirs_exist_ok=True)
            elif src.is_file():
                shutil.copy2(src, out / name)
    for name in ASSEMBLED:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    bundle.dag_files(root, out / "dags", expectations_inside=False)
    bundle.copy_tree(root / "include" / "mlblueprints", out / "include" / "mlblueprints")
    bundle.copy_tree(root / "plugins", out / "plugins")
    bundle.copy_tree(root / "expectations", out / "expectations")
    (out / "requirements.txt").write_text(requirements_text(text, airflow_version, runtime_tag))
    docker = out / "Dockerfile"
    docker.write_text(dockerfile_text(docker.read_text(), airflow_version, runtime_tag))
    return out
