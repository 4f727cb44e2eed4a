"""The MWAA bundle (what it holds) and its upload under moto: S3 objects and their versions, and
the UpdateEnvironment request (moto has no MWAA backend: botocore's Stubber checks the request
against the MWAA service model and answers GetEnvironment)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from mlblueprints.deploy import mwaa
from mlblueprints.deploy import requirements as reqs

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "mlb-mwaa-source"
REGION = "eu-west-1"
PREFIX = "env1"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return mwaa.build(ROOT, tmp_path_factory.mktemp("b") / "mwaa")


def test_bundle_holds_what_mwaa_needs(bundle):
    dags = bundle / "dags"
    for name in ("lakehouse.py", "features.py", "training.py", "usecase_errors.py", "_mlblueprints_path.py"):
        assert (dags / name).read_bytes() == (ROOT / "dags" / name).read_bytes()
    for yaml in (ROOT / "dags" / "usecases").glob("*.yaml"):
        assert (dags / "usecases" / yaml.name).read_bytes() == yaml.read_bytes()
    suites = sorted(p.relative_to(ROOT / "expectations") for p in (ROOT / "expectations").rglob("*.json"))
    assert (
        suites
        and sorted(p.relative_to(dags / "expectations") for p in (dags / "expectations").rglob("*.json")) == suites
    )
    ignore = (dags / ".airflowignore").read_text().splitlines()
    assert {"_mlblueprints_path.py", "usecases/", "expectations/"} <= set(ignore)
    assert not list(bundle.rglob("__pycache__"))

    with zipfile.ZipFile(bundle / "plugins.zip") as z:
        names = set(z.namelist())
    package = {
        f"mlblueprints/{p.relative_to(ROOT / 'include' / 'mlblueprints').as_posix()}"
        for p in (ROOT / "include" / "mlblueprints").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert package <= names
    assert "mlblueprints/aws/sagemaker_images.json" in names  # data files of the package come along
    plugins = {
        p.relative_to(ROOT / "plugins").as_posix()
        for p in (ROOT / "plugins").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert plugins and plugins <= names

    req = (bundle / "requirements.txt").read_text().splitlines()
    constraint = [line for line in req if line.startswith("--constraint")]
    assert constraint == ['--constraint "/usr/local/airflow/dags/constraints.txt"']
    assert [line for line in req if line and not line.startswith(("#", "--"))] == reqs.top_level(ROOT)
    assert not any(
        line.split("[")[0].split("=")[0].split(">")[0]
        in ("apache-airflow", "sagemaker", "xgboost", "mlflow", "shap", "numba")
        for line in req
    )
    constraints = (dags / "constraints.txt").read_text()
    assert constraints == (ROOT / reqs.WORKER_TXT).read_text()
    assert reqs.header_field(constraints, "airflow") == reqs.AIRFLOW_TARGET

    startup = (bundle / "startup.sh").read_text()
    assert 'export MLB_HOME="/tmp/mlblueprints"' in startup and 'mkdir -p "$MLB_HOME"' in startup
    assert 'MLB_EXPECTATIONS_DIR="$MLB_PROJECT_ROOT/dags/expectations"' in startup
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["airflow_version"] == reqs.AIRFLOW_TARGET and manifest["python_version"] == "3.12"
    assert set(manifest["files"]) >= {"plugins.zip", "requirements.txt", "startup.sh", "dags/lakehouse.py"}


def test_same_sources_give_the_same_plugins_zip(bundle, tmp_path):
    again = mwaa.build(ROOT, tmp_path / "again")
    assert (again / "plugins.zip").read_bytes() == (bundle / "plugins.zip").read_bytes()


def test_bundle_refuses_requirements_of_another_airflow(tmp_path):
    with pytest.raises(mwaa.DeployError, match="generated for Airflow .* not 3.0.6"):
        mwaa.build(ROOT, tmp_path / "x", "3.0.6")


def _env(version: str = reqs.AIRFLOW_TARGET, bucket: str = BUCKET) -> dict:
    return {
        "Environment": {
            "Name": "mlb-prod",
            "AirflowVersion": version,
            "SourceBucketArn": f"arn:aws:s3:::{bucket}",
            "DagS3Path": f"{PREFIX}/dags",
            "Status": "AVAILABLE",
        }
    }


@pytest.fixture
def aws(monkeypatch):
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield s3, boto3.client("mwaa", region_name=REGION)


def _latest_versions(s3) -> dict[str, str]:
    out = {}
    for v in s3.list_object_versions(Bucket=BUCKET)["Versions"]:
        if v["IsLatest"]:
            out[v["Key"]] = v["VersionId"]
    return out


def test_deploy_uploads_and_updates_the_environment(aws, bundle, tmp_path):
    s3, client = aws
    # a DAG file the environment has from an older bundle, which this one no longer ships
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/dags/old_pattern.py", Body=b"# gone")
    stub = Stubber(client)
    stub.add_response("get_environment", _env(), {"Name": "mlb-prod"})
    stub.add_response("update_environment", {"Arn": "arn:aws:airflow:eu-west-1:123456789012:environment/mlb-prod"})
    with stub:
        done = mwaa.deploy(bundle, BUCKET, environment="mlb-prod", prefix=PREFIX, s3=s3, mwaa=client)
        stub.assert_no_pending_responses()

    # every file is there, byte for byte, and the recorded versions are the latest ones
    latest = _latest_versions(s3)
    for rel in json.loads((bundle / "bundle.json").read_text())["files"]:
        if rel == "bundle.json":
            continue
        body = s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{rel}")["Body"].read()
        assert body == (bundle / rel).read_bytes(), rel
        assert done.versions[f"{PREFIX}/{rel}"] == latest[f"{PREFIX}/{rel}"]
    assert done.deleted == [f"{PREFIX}/dags/old_pattern.py"]
    assert f"{PREFIX}/dags/old_pattern.py" not in latest  # a delete marker on top, the old version kept
    assert done.update_request == {
        "Name": "mlb-prod",
        "DagS3Path": f"{PREFIX}/dags",
        "PluginsS3Path": f"{PREFIX}/plugins.zip",
        "PluginsS3ObjectVersion": latest[f"{PREFIX}/plugins.zip"],
        "RequirementsS3Path": f"{PREFIX}/requirements.txt",
        "RequirementsS3ObjectVersion": latest[f"{PREFIX}/requirements.txt"],
        "StartupScriptS3Path": f"{PREFIX}/startup.sh",
        "StartupScriptS3ObjectVersion": latest[f"{PREFIX}/startup.sh"],
    }


def test_a_second_deploy_names_the_new_versions(aws, bundle, tmp_path):
    s3, client = aws
    mwaa.deploy(bundle, BUCKET, prefix=PREFIX, s3=s3)  # upload only: no environment touched
    first = _latest_versions(s3)
    # the requirements change: rebuild into a copy with one more line
    import shutil

    changed = tmp_path / "mwaa"
    shutil.copytree(bundle, changed)
    req = changed / "requirements.txt"
    req.write_text(req.read_text() + "tabulate\n")
    manifest = json.loads((changed / "bundle.json").read_text())
    manifest["files"]["requirements.txt"] = mwaa.bundle.sha256(req)
    (changed / "bundle.json").write_text(json.dumps(manifest))

    stub = Stubber(client)
    stub.add_response("get_environment", _env(), {"Name": "mlb-prod"})
    expected = None

    def capture(params, **_):
        nonlocal expected
        expected = params

    client.meta.events.register("provide-client-params.mwaa.UpdateEnvironment", capture)
    stub.add_response("update_environment", {"Arn": "arn:aws:airflow:eu-west-1:123456789012:environment/mlb-prod"})
    with stub:
        done = mwaa.deploy(changed, BUCKET, environment="mlb-prod", prefix=PREFIX, s3=s3, mwaa=client)
    second = _latest_versions(s3)
    assert second[f"{PREFIX}/requirements.txt"] != first[f"{PREFIX}/requirements.txt"]
    assert expected["RequirementsS3ObjectVersion"] == second[f"{PREFIX}/requirements.txt"]
    assert expected["PluginsS3ObjectVersion"] == second[f"{PREFIX}/plugins.zip"]
    assert done.update_request == expected
    versions = [v for v in s3.list_object_versions(Bucket=BUCKET, Prefix=f"{PREFIX}/requirements.txt")["Versions"]]
    assert len(versions) == 2


def test_deploy_checks_before_uploading(aws, bundle, tmp_path):
    s3, client = aws
    stub = Stubber(client)
    stub.add_response("get_environment", _env(version="3.2.1"), {"Name": "mlb-prod"})
    with stub, pytest.raises(mwaa.DeployError, match="runs Airflow 3.2.1; the bundle is for 3.3.1"):
        mwaa.deploy(bundle, BUCKET, environment="mlb-prod", prefix=PREFIX, s3=s3, mwaa=client)
    assert "Versions" not in s3.list_object_versions(Bucket=BUCKET)  # nothing uploaded

    stub = Stubber(client)
    stub.add_response("get_environment", _env(bucket="someone-elses"), {"Name": "mlb-prod"})
    with stub, pytest.raises(mwaa.DeployError, match="reads from arn:aws:s3:::someone-elses"):
        mwaa.deploy(bundle, BUCKET, environment="mlb-prod", prefix=PREFIX, s3=s3, mwaa=client)

    stub = Stubber(client)
    stub.add_response("get_environment", _env(version="3.2.1"), {"Name": "mlb-prod"})
    stub.add_response("update_environment", {"Arn": "arn:aws:airflow:eu-west-1:123456789012:environment/mlb-prod"})
    with stub:
        done = mwaa.deploy(bundle, BUCKET, environment="mlb-prod", prefix=PREFIX, upgrade=True, s3=s3, mwaa=client)
    assert done.update_request["AirflowVersion"] == reqs.AIRFLOW_TARGET

    s3.create_bucket(Bucket="unversioned", CreateBucketConfiguration={"LocationConstraint": REGION})
    with pytest.raises(mwaa.DeployError, match="versioning never enabled; MWAA requires it enabled"):
        mwaa.deploy(bundle, "unversioned", s3=s3)
    (tmp_path / "edited").mkdir()
    import shutil

    shutil.copytree(bundle, tmp_path / "edited" / "b")
    (tmp_path / "edited" / "b" / "startup.sh").write_text("echo changed\n")
    with pytest.raises(mwaa.DeployError, match="changed after the bundle was built"):
        mwaa.deploy(tmp_path / "edited" / "b", BUCKET, s3=s3)


def test_cli_deploy_mwaa_uploads(aws, bundle, capsys):
    from mlblueprints.cli import main

    s3, _ = aws
    assert main(["deploy", "mwaa", "--bucket", BUCKET, "--bundle", str(bundle), "--region", REGION]) == 0
    out = capsys.readouterr().out
    assert f"to s3://{BUCKET}/" in out and "plugins.zip version" in out
    assert "plugins.zip" in _latest_versions(s3)
    assert main(["deploy", "mwaa", "--bucket", BUCKET, "--bundle", str(bundle.parent / "nothing")]) == 1
    assert "run `make mwaa-bundle` first" in capsys.readouterr().err
