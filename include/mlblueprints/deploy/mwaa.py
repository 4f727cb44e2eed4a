"""The Amazon MWAA bundle and its upload.

``build(root, out)`` writes ``dist/mwaa/``::

    dags/              the DAG files, use cases (YAML, SQL, training scripts), the quality suites
                       under dags/expectations/, constraints.txt, and the .airflowignore
    plugins.zip        the mlblueprints package (vendored: MWAA puts the plugins folder on
                       sys.path) and the Airflow plugins of plugins/
    requirements.txt   --constraint line + the aws worker set (requirements/aws-worker.in)
    startup.sh         sets MLB_HOME on the container's writable disk and where dags/ holds things
    bundle.json        Airflow and Python versions, git commit, sha256 of every file

``upload(...)`` puts the bundle into the environment's S3 bucket (versioning on, as MWAA
requires) and ``update_environment_request(...)`` names the new object versions of plugins.zip,
requirements.txt and startup.sh. The request builders are pure; :func:`deploy` runs them with
boto3 clients.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.deploy import bundle
from mlblueprints.deploy import requirements as reqs

MWAA_HOME = "/usr/local/airflow"  # AIRFLOW_HOME on MWAA's images; dags/ and plugins/ are synced below it
CONSTRAINTS_NAME = "constraints.txt"
RUNTIME_DIR = "/tmp/mlblueprints"  # MLB_HOME on a container's writable disk
ARTIFACTS = ("plugins.zip", "requirements.txt", "startup.sh")


class DeployError(RuntimeError):
    """A deployment that cannot go ahead; the message says why in one line."""


def requirements_text(root: Path, airflow_version: str) -> str:
    lines = [
        f"# mlblueprints on Amazon MWAA, Apache Airflow {airflow_version}, Python {reqs.PYTHON_TARGET}.",
        "# The constraints are the project's own (dags/constraints.txt, pins of everything the image's",
        "# Airflow does not bring): Apache's constraints file for this version pins pandas 3 and",
        "# pyiceberg 0.11, which the worker set cannot use. MWAA's essential constraints still apply.",
        f'--constraint "{MWAA_HOME}/dags/{CONSTRAINTS_NAME}"',
        *reqs.top_level(root),
    ]
    return "\n".join(lines) + "\n"


def startup_text(commit: str) -> str:
    return f"""#!/bin/sh
# Run by MWAA on every scheduler, worker and web server container before Airflow starts; its
# exports stay in the environment of the Airflow processes.
export MLB_PROJECT_ROOT="${{AIRFLOW_HOME:-{MWAA_HOME}}}"
export MLB_USECASES_DIR="$MLB_PROJECT_ROOT/dags/usecases"
export MLB_EXPECTATIONS_DIR="$MLB_PROJECT_ROOT/dags/expectations"
# the runtime directory (DuckDB spill, Data Docs before upload, run reports): the container's
# writable disk; everything that must outlive a task goes to S3
export MLB_HOME="{RUNTIME_DIR}"
mkdir -p "$MLB_HOME"
# lineage: the commit the bundle was built from (the image has no .git)
export MLB_GIT_COMMIT="{commit}"
"""


def _zip(dst: Path, trees: Mapping[str, Path]) -> None:
    """A zip with fixed timestamps, so that the same sources give the same bytes (and MWAA sees
    no new object version when nothing changed)."""
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for prefix, src in trees.items():
            if not src.is_dir():
                continue
            for f in bundle.files(src):
                info = zipfile.ZipInfo(str(Path(prefix, f.relative_to(src))), date_time=(2020, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, f.read_bytes())


def build(root: Path, out: Path, airflow_version: str = reqs.AIRFLOW_TARGET) -> Path:
    """Write the bundle into ``out`` (replaced whole); return ``out``."""
    worker = root / reqs.WORKER_TXT
    if not worker.is_file():
        raise DeployError(f"{worker} is missing: run `make requirements`")
    targeted = reqs.header_field(worker.read_text(), "airflow")
    if targeted != airflow_version:
        raise DeployError(
            f"{worker.relative_to(root)} was generated for Airflow {targeted}, not {airflow_version}: "
            f"run `make requirements AIRFLOW_TARGET={airflow_version}`"
        )
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    bundle.dag_files(root, out / "dags", expectations_inside=True)
    shutil.copy2(worker, out / "dags" / CONSTRAINTS_NAME)
    _zip(out / "plugins.zip", {"mlblueprints": root / "include" / "mlblueprints", "": root / "plugins"})
    (out / "requirements.txt").write_text(requirements_text(root, airflow_version))
    commit = runtime.git_commit()
    startup = out / "startup.sh"
    startup.write_text(startup_text(commit))
    startup.chmod(0o755)
    manifest = {
        "airflow_version": airflow_version,
        "python_version": reqs.PYTHON_TARGET,
        "git_commit": commit,
        "files": {str(f.relative_to(out)): bundle.sha256(f) for f in bundle.files(out)},
    }
    (out / "bundle.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return out


# ---------------------------------------------------------------- upload (pure request builders)


def _key(prefix: str, name: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{name}" if prefix else name


def put_object_requests(bundle_dir: Path, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
    """One PutObject per bundle file (``Body`` is the local path; the caller opens it)."""
    out = []
    for f in bundle.files(bundle_dir):
        rel = f.relative_to(bundle_dir).as_posix()
        if rel == "bundle.json":
            continue
        out.append({"Bucket": bucket, "Key": _key(prefix, rel), "Body": f, "ChecksumAlgorithm": "SHA256"})
    return out


def stale_dag_keys(existing: list[str], requests: list[dict[str, Any]], prefix: str = "") -> list[str]:
    """Keys under the environment's dags/ that the bundle no longer has (a removed DAG file
    would otherwise stay on MWAA forever)."""
    dags = _key(prefix, "dags/")
    keep = {r["Key"] for r in requests}
    return sorted(k for k in existing if k.startswith(dags) and k not in keep)


def update_environment_request(
    name: str, prefix: str, versions: Mapping[str, str], airflow_version: str | None = None
) -> dict[str, Any]:
    """UpdateEnvironment naming the new object versions; ``airflow_version`` only to upgrade."""
    req: dict[str, Any] = {
        "Name": name,
        "DagS3Path": _key(prefix, "dags"),
        "PluginsS3Path": _key(prefix, "plugins.zip"),
        "PluginsS3ObjectVersion": versions["plugins.zip"],
        "RequirementsS3Path": _key(prefix, "requirements.txt"),
        "RequirementsS3ObjectVersion": versions["requirements.txt"],
        "StartupScriptS3Path": _key(prefix, "startup.sh"),
        "StartupScriptS3ObjectVersion": versions["startup.sh"],
    }
    if airflow_version:
        req["AirflowVersion"] = airflow_version
    return req


def check_environment(env: Mapping[str, Any], bucket: str, airflow_version: str, upgrade: bool) -> None:
    """The environment must read from ``bucket`` and run the bundle's Airflow (or be upgraded)."""
    arn = env.get("SourceBucketArn", "")
    if arn.rsplit(":", 1)[-1] != bucket:
        raise DeployError(f"environment {env.get('Name')} reads from {arn or 'no bucket'}, not s3 bucket {bucket}")
    running = env.get("AirflowVersion")
    if running != airflow_version and not upgrade:
        raise DeployError(
            f"environment {env.get('Name')} runs Airflow {running}; the bundle is for {airflow_version} "
            "(rebuild with AIRFLOW_TARGET, or pass --upgrade to move the environment)"
        )


@dataclass
class Deployed:
    bucket: str
    versions: dict[str, str] = field(default_factory=dict)  # key -> VersionId
    deleted: list[str] = field(default_factory=list)
    update_request: dict[str, Any] | None = None


def deploy(
    bundle_dir: Path,
    bucket: str,
    *,
    environment: str | None = None,
    prefix: str = "",
    upgrade: bool = False,
    s3: Any,
    mwaa: Any | None = None,
) -> Deployed:
    """Upload the bundle (and delete dags/ keys it no longer has); with ``environment``, check
    it and send UpdateEnvironment with the new object versions."""
    manifest_path = bundle_dir / "bundle.json"
    if not manifest_path.is_file():
        raise DeployError(f"no bundle at {bundle_dir}: run `make mwaa-bundle` first")
    manifest = json.loads(manifest_path.read_text())
    for rel, digest in manifest["files"].items():
        if bundle.sha256(bundle_dir / rel) != digest:
            raise DeployError(f"{bundle_dir / rel} changed after the bundle was built: run `make mwaa-bundle` again")
    status = s3.get_bucket_versioning(Bucket=bucket).get("Status")
    if status != "Enabled":
        raise DeployError(f"s3 bucket {bucket} has versioning {status or 'never enabled'}; MWAA requires it enabled")
    env = None
    if environment:
        if mwaa is None:
            raise DeployError("an MWAA client is needed to update an environment")
        env = mwaa.get_environment(Name=environment)["Environment"]
        check_environment(env, bucket, manifest["airflow_version"], upgrade)
    out = Deployed(bucket)
    requests = put_object_requests(bundle_dir, bucket, prefix)
    for req in requests:
        with Path(req["Body"]).open("rb") as body:
            resp = s3.put_object(**{**req, "Body": body})
        out.versions[req["Key"]] = resp.get("VersionId", "")
    existing = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=_key(prefix, "dags/")):
        existing += [o["Key"] for o in page.get("Contents", [])]
    out.deleted = stale_dag_keys(existing, requests, prefix)
    for i in range(0, len(out.deleted), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in out.deleted[i : i + 1000]]})
    if env is not None:
        versions = {name: out.versions[_key(prefix, name)] for name in ARTIFACTS}
        target = manifest["airflow_version"] if env.get("AirflowVersion") != manifest["airflow_version"] else None
        out.update_request = update_environment_request(env["Name"], prefix, versions, target)
        mwaa.update_environment(**out.update_request)
    return out


def deploy_with_boto3(bundle_dir: Path, bucket: str, *, region: str | None = None, **kwargs: Any) -> Deployed:
    import boto3

    session = boto3.session.Session(
        region_name=region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    )
    mwaa = session.client("mwaa") if kwargs.get("environment") else None
    return deploy(bundle_dir, bucket, s3=session.client("s3"), mwaa=mwaa, **kwargs)
