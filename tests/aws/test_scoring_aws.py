"""The scoring DAG on the aws target through dag.test() under moto (in process), botocore validating.

The model is the one the training DAG on aws registers (``test_training_dag_aws``'s world: Gold
and the views' offline stores of the local target behind the Athena twin, the real training
script's archive at the job's ``ModelArtifacts``), promoted and its model package approved. Then
``<usecase>__scoring`` runs as Airflow runs it:

* Athena (the twin, DuckDB) UNLOADs the interval's rows and the offline stores; the worker joins
  them with the training sets' point-in-time builder and uploads the job's CSV input;
* CreateModel and CreateTransformJob go to moto, whose requests are kept as sent and validated
  against botocore's service model. moto marks the job Completed and runs nothing, so the job's
  output is made here as SageMaker's XGBoost container makes it: the booster of the model
  package's archive (``ModelDataUrl``) predicts the features ``InputFilter`` selects from each
  input line, the prediction is joined to the line (``JoinSource`` Input) and ``OutputFilter``
  keeps its fields; the file lands as ``<input>.out`` under ``S3OutputPath``, SSE-KMS;
* the twin runs the commit's statements: the external table over the output, the MERGE by key
  into the predictions table (an Iceberg table the scorer created through Glue), the OPTIMIZE of
  the interval, the DROP.

Checked against independent computations: the local target's training set (the same rows' features
as the point-in-time builder gave them for training), the booster's own ``predict``.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import os
import re
import tarfile
from pathlib import Path

import boto3
import botocore.session
import numpy as np
import pytest
from botocore.validate import validate_parameters
from moto_world import REGION
from test_training_dag_aws import BUCKET, DB, HI, LO, NAME, PREFIX, dag_world, lake  # noqa: F401 (fixtures)

from mlblueprints.aws import requests as req
from mlblueprints.aws import scoring as sr
from mlblueprints.core.naming import safe

pytestmark = [pytest.mark.aws, pytest.mark.slow]

moto = pytest.importorskip("moto")

FILTER = re.compile(r"^\$\[(?P<body>[^\]]*)\]$")


def select(fields: list[str], jsonpath: str) -> list[str]:
    """The fields a Batch Transform filter keeps of a CSV record (``$[a:]``, ``$[a:b]``,
    ``$[i,j,-1]``: the JSONPath subset SageMaker documents for CSV)."""
    m = FILTER.match(jsonpath)
    assert m, f"not a filter SageMaker takes for CSV: {jsonpath!r}"
    body = m["body"]
    if ":" in body:
        a, b = body.split(":", 1)
        return fields[int(a) if a else None : int(b) if b else None]
    return [fields[int(i)] for i in body.split(",")]


class TransformTwin:
    """What the Batch Transform job would write, for the requests moto accepted (module docstring)."""

    def __init__(self, kms: str):
        self.kms = kms
        self.sent: dict[str, list[dict]] = {"CreateModel": [], "CreateTransformJob": []}
        self.inputs: dict[str, list[list[str]]] = {}  # job -> the input records it read

    def install(self, monkeypatch) -> TransformTwin:
        from moto.sagemaker.responses import SageMakerResponse

        twin = self
        create_model = SageMakerResponse.create_model
        create_job = SageMakerResponse.create_transform_job

        def keep_model(self):
            twin.sent["CreateModel"].append(json.loads(self.body))
            return create_model(self)

        def run_job(self):
            twin.sent["CreateTransformJob"].append(json.loads(self.body))
            out = create_job(self)
            twin.transform(twin.sent["CreateTransformJob"][-1])
            return out

        monkeypatch.setattr(SageMakerResponse, "create_model", keep_model)
        monkeypatch.setattr(SageMakerResponse, "create_transform_job", run_job)
        return self

    def _booster(self, model_name: str):
        import xgboost as xgb

        [model] = [m for m in self.sent["CreateModel"] if m["ModelName"] == model_name]
        sm = boto3.client("sagemaker", region_name=REGION)
        package = sm.describe_model_package(ModelPackageName=model["PrimaryContainer"]["ModelPackageName"])
        [container] = package["InferenceSpecification"]["Containers"]
        bucket, key = req.split_s3_uri(container["ModelDataUrl"])
        body = boto3.client("s3", region_name=REGION).get_object(Bucket=bucket, Key=key)["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            # the container loads every file of the model dir as a booster: there must be one only
            [member] = [m for m in tar.getmembers() if m.isfile()]
            assert member.name == "xgboost-model", member.name
            raw = tar.extractfile(member).read()
        booster = xgb.Booster()
        booster.load_model(bytearray(raw))
        return booster

    def transform(self, job: dict) -> None:
        s3 = boto3.client("s3", region_name=REGION)
        booster = self._booster(job["ModelName"])
        src = job["TransformInput"]
        assert src["SplitType"] == "Line" and src["ContentType"] == "text/csv" and src["CompressionType"] == "Gzip"
        bucket, prefix = req.split_s3_uri(src["DataSource"]["S3DataSource"]["S3Uri"])
        out_bucket, out_prefix = req.split_s3_uri(job["TransformOutput"]["S3OutputPath"])
        proc = job["DataProcessing"]
        assert proc["JoinSource"] == "Input"
        records: list[list[str]] = []
        for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
            text = gzip.decompress(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()).decode()
            lines = [line.split(",") for line in text.splitlines() if line]
            records += lines
            x = np.array(
                [[float(v) if v != "" else np.nan for v in select(r, proc["InputFilter"])] for r in lines],
                dtype=np.float32,
            )
            preds = booster.inplace_predict(x) if len(x) else []
            joined = [select([*r, repr(float(p))], proc["OutputFilter"]) for r, p in zip(lines, preds)]
            s3.put_object(
                Bucket=out_bucket,
                Key=f"{out_prefix.rstrip('/')}/{o['Key'].rsplit('/', 1)[1]}.out",
                Body=("\n".join(",".join(r) for r in joined) + "\n").encode(),
                ServerSideEncryption="aws:kms",
                SSEKMSKeyId=job["TransformOutput"]["KmsKeyId"],
            )
        self.inputs[job["TransformJobName"]] = records


@pytest.fixture
def scoring_world(dag_world, monkeypatch):  # noqa: F811 (the training test's fixture)
    """The training DAG's world plus the transform twin; the predictions table's MERGE key."""
    import yaml

    from mlblueprints.config import load_usecase

    twin = TransformTwin(dag_world["kms"]).install(monkeypatch)
    dag_world["athena"].merge_keys["predictions"] = ("transaction_id",)
    path = Path(os.environ["MLB_USECASES_DIR"]) / f"{NAME}.yaml"
    data = yaml.safe_load(path.read_text())
    data["scoring"]["quality"] = "fraud_detection/predictions.scoring"  # the shipped use case's suite
    path.write_text(yaml.safe_dump(data))
    return {**dag_world, "uc": load_usecase(path), "transform": twin}


def _validate(operation: str, params: dict) -> None:
    model = botocore.session.get_session().get_service_model("sagemaker")
    validate_parameters(params, model.operation_model(operation).input_shape)


def _run(dag_id: str, conf: dict | None = None):
    from mlblueprints.airflow import localrun

    dr = localrun.get_dag(dag_id).test(run_conf=conf or {})
    tis = {ti.task_id: ti for ti in dr.get_task_instances()}
    return dr, tis


def _refusal(home, dr) -> str:
    """The failed plan's one line, as the run report names it."""
    [report] = [
        r
        for r in (json.loads(p.read_text()) for p in (home / "runs" / NAME / "scoring").glob("*.json"))
        if r["run_id"] == dr.run_id
    ]
    assert report["missing"] == ["commit", "gate", "plan", "score"]
    [line] = [ln.strip() for ln in report["text"].split("failed steps:", 1)[1].splitlines() if ln.strip()]
    assert line.startswith("plan: ScoringError: ")
    assert "Traceback" not in line
    return line


def test_scoring_dag_on_aws_under_moto(scoring_world, lake):  # noqa: F811
    from mlblueprints.backends import backend_for

    uc, kms = scoring_world["uc"], scoring_world["kms"]
    twin = scoring_world["transform"]
    s3 = boto3.client("s3", region_name=REGION)
    sm = boto3.client("sagemaker", region_name=REGION)
    conf = {"event_dates": [LO.isoformat(), HI.isoformat()]}

    dr, tis = _run(f"{NAME}__training")
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    registered = tis["register"].xcom_pull(task_ids="register")
    version, package_arn = registered["version"], registered["model_package"]["arn"]

    # ---- no champion yet: the plan refuses with one line naming what to do
    dr, tis = _run(f"{NAME}__scoring", conf)
    assert dr.state == "failed" and tis["plan.prepare"].state == "failed"
    assert f"no champion for model {uc.model_name}: promote a version" in _refusal(scoring_world["home"], dr)
    assert not twin.sent["CreateTransformJob"]

    # ---- a champion whose package no one approved: refused, naming the package
    backend_for(uc, "registry").promote(version)
    dr, tis = _run(f"{NAME}__scoring", conf)
    assert dr.state == "failed" and tis["plan.prepare"].state == "failed"
    refused = _refusal(scoring_world["home"], dr)
    assert f"model package {package_arn} ({uc.model_name} v{version}) is PendingManualApproval" in refused

    # the metadata is given again: moto's UpdateModelPackage drops what the request leaves out
    meta = sm.describe_model_package(ModelPackageName=package_arn)["CustomerMetadataProperties"]
    sm.update_model_package(
        ModelPackageArn=package_arn, ModelApprovalStatus="Approved", CustomerMetadataProperties=meta
    )
    dr, tis = _run(f"{NAME}__scoring", conf)
    states = {t: ti.state for t, ti in tis.items()}
    assert dr.state == "success", states
    services = ["plan.prepare", "plan.athena", "plan.finish", "score.prepare", "score.sagemaker_transform"]
    services += ["score.finish", "commit.prepare", "commit.athena", "commit.finish"]
    assert states == dict.fromkeys([*services, "gate", "report"], "success")
    res = {t.removesuffix(".finish"): ti.xcom_pull(task_ids=t) for t, ti in tis.items()}
    planned, scored, committed = res["plan"], res["score"], res["commit"]

    # ---- CreateModel: from the approved package, the role, isolation, lineage tags
    [model] = twin.sent["CreateModel"]
    _validate("CreateModel", model)
    name = sr.transform_job_name(uc, dr.run_id, 1)
    assert name != sr.transform_job_name(uc, dr.run_id, 2) and len(name) <= 63
    assert model["ModelName"] == name
    assert model["PrimaryContainer"] == {"ModelPackageName": package_arn}
    assert model["ExecutionRoleArn"] == (uc.scoring.sagemaker.role_arn or uc.aws.iam_role_arn)  # the transform role
    assert model["EnableNetworkIsolation"] is True and "VpcConfig" not in model
    tags = {t["Key"]: t["Value"] for t in model["Tags"]}
    assert tags["mlblueprints:run-id"] == dr.run_id and tags["mlblueprints:try-number"] == "1"
    assert tags["mlblueprints:model"] == uc.model_name and tags["mlblueprints:model-version"] == str(version)

    # ---- CreateTransformJob: every field the issue names
    [job] = twin.sent["CreateTransformJob"]
    _validate("CreateTransformJob", job)
    s = uc.scoring.sagemaker
    assert job["TransformJobName"] == job["ModelName"] == name == scored["job_name"]
    assert job["BatchStrategy"] == "MultiRecord" and job["MaxPayloadInMB"] == s.max_payload_mb
    assert job["ModelClientConfig"] == {
        "InvocationsTimeoutInSeconds": s.invocation_timeout_seconds,
        "InvocationsMaxRetries": s.invocation_max_retries,
    }
    assert job["TransformInput"] == {
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": planned["input_s3_uri"]}},
        "ContentType": "text/csv",
        "CompressionType": "Gzip",
        "SplitType": "Line",
    }
    assert planned["input_s3_uri"].startswith(f"s3://{BUCKET}/{PREFIX}/_scoring/")
    assert job["TransformOutput"] == {
        "S3OutputPath": f"s3://{BUCKET}/{PREFIX}/scoring/output/{safe(dr.run_id)}/{name}/",
        "Accept": "text/csv",
        "AssembleWith": "Line",
        "KmsKeyId": kms,
    }
    assert job["TransformResources"] == {"InstanceType": s.instance_type, "InstanceCount": 1, "VolumeKmsKeyId": kms}
    assert job["DataProcessing"] == {"InputFilter": "$[2:]", "JoinSource": "Input", "OutputFilter": "$[0,1,-1]"}
    assert "Environment" not in job  # a binary model: the container's default output, the probability
    assert {t["Key"]: t["Value"] for t in job["Tags"]} == tags

    # ---- the job's input: SSE-KMS, hex keys, and the training set's features for the same rows
    bucket, prefix = req.split_s3_uri(planned["input_s3_uri"])
    for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
        head = s3.head_object(Bucket=bucket, Key=o["Key"])
        assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == kms
    feats = uc.model_features()
    records = twin.inputs[name]
    expected = lake["expected"].set_index("transaction_id")
    assert len(records) == planned["rows_in"] == len(expected) > 1000
    got = {bytes.fromhex(r[0]).decode(): r for r in records}
    assert len(got) == len(records)
    for tid, r in list(got.items())[:: max(1, len(got) // 500)]:
        want = expected.loc[tid, feats].to_numpy(dtype=float)
        have = np.array([float(v) if v != "" else np.nan for v in r[2:]])
        np.testing.assert_array_equal(have, want, err_msg=tid)  # no train/serve skew, to the bit

    # ---- the predictions table: one row per input row, the booster's own predict, the lineage
    import xgboost as xgb

    con = scoring_world["athena"].con
    rows = con.execute(
        f"SELECT transaction_id, score, decision, threshold, model_name, model_version, mlflow_run_id, "
        f'input_snapshots, scoring_run_id, event_date, event_time FROM {DB}."predictions"'
    ).fetchall()
    assert len(rows) == len(records) == committed["rows"] == scored.get("rows", len(records))
    booster = twin._booster(name)
    ids = [r[0] for r in rows]
    x = expected.loc[ids, feats].to_numpy(np.float64)
    own = booster.predict(xgb.DMatrix(x, feature_names=feats))
    score = np.array([r[1] for r in rows])
    assert np.abs(score - own).max() <= 1e-6  # the text the container writes, read back
    threshold = planned["model"]["threshold"]
    assert {r[3] for r in rows} == {threshold}
    assert all(r[2] == int(r[1] >= threshold) for r in rows)
    assert {(r[4], r[5], r[6], r[8]) for r in rows} == {
        (uc.model_name, version, registered["mlflow_run_id"], dr.run_id)
    }
    snapshots = json.loads(rows[0][7])
    assert snapshots == planned["snapshots"] and set(snapshots) >= {"transaction_features"}
    assert {str(r[9]) for r in rows} == {LO.isoformat(), HI.isoformat()}

    # ---- the commit: stage table, MERGE, OPTIMIZE of the interval, DROP; the lineage record
    queries = [e["query"] for e in scoring_world["athena"].executions if not e.get("failed")]
    assert any(q.startswith("MERGE INTO") and '"predictions"' in q for q in queries)
    kept = [(m["op"], m.get("partitions")) for m in scoring_world["athena"].maintenance if m["table"] == "predictions"]
    assert kept == [("optimize", 2), ("alter", None), ("vacuum", None)]  # the interval's two dates, then expiry
    assert any(q.startswith("DROP TABLE IF EXISTS") for q in queries)
    assert not [e for e in scoring_world["athena"].executions if e.get("failed")]
    lin = json.loads(s3.get_object(Bucket=BUCKET, Key=req.split_s3_uri(committed["lineage"])[1])["Body"].read())
    assert lin["properties"]["mlb.model-package"] == package_arn
    assert lin["properties"]["mlb.run-id"] == dr.run_id and lin["properties"]["mlb.rows"] == str(len(records))

    # ---- a rerun of the interval replaces it: the same rows, the new run's id
    before = sorted((r[0], r[1]) for r in rows)
    dr2, tis2 = _run(f"{NAME}__scoring", conf)
    assert dr2.state == "success", {t: ti.state for t, ti in tis2.items()}
    again = con.execute(f'SELECT transaction_id, score, scoring_run_id FROM {DB}."predictions"').fetchall()
    assert sorted((r[0], r[1]) for r in again) == before
    assert {r[2] for r in again} == {dr2.run_id}


def test_transform_requests_for_a_try_and_a_vpc(scoring_world):
    """Each try's model, job and output prefix are named for the try; a VPC as configured."""
    from mlblueprints.config import parse_usecase

    uc = scoring_world["uc"]
    model = {"name": uc.model_name, "version": 3, "task": "binary"}
    config = sr.transform_request(
        uc,
        job_name=sr.transform_job_name(uc, "r1", 1),
        model_package_arn="arn:aws:sagemaker:eu-west-1:123456789012:model-package/g/3",
        input_s3_uri=f"s3://{BUCKET}/in/",
        output_base_uri=f"s3://{BUCKET}/out",
        key_count=1,
        model=model,
        run={"run_id": "r1", "try_number": 1},
        git_commit="abc",
    )
    second = sr.request_for_try(copy.deepcopy(config), sr.transform_job_name(uc, "r1", 2), 2)
    name2 = sr.transform_job_name(uc, "r1", 2)
    assert second["Model"]["ModelName"] == second["Transform"]["ModelName"] == name2
    assert second["Transform"]["TransformJobName"] == name2
    assert second["Transform"]["TransformOutput"]["S3OutputPath"] == f"s3://{BUCKET}/out/{name2}/"
    assert {t["Key"]: t["Value"] for t in second["Transform"]["Tags"]}["mlblueprints:try-number"] == "2"
    for op, body in (("CreateModel", second["Model"]), ("CreateTransformJob", second["Transform"])):
        _validate(op, body)

    data = json.loads(json.dumps(uc.model_dump(mode="json", exclude_none=True)))
    data["scoring"]["sagemaker"].update(
        subnets=["subnet-0a1b2c3d"], security_group_ids=["sg-0a1b2c3d"], network_isolation=False
    )
    data["scoring"]["sagemaker"]["instance_type"] = "ml.c5d.xlarge"  # NVMe storage: no volume key
    vpc_uc = parse_usecase(data)
    req_ = sr.transform_request(
        vpc_uc,
        job_name="j",
        model_package_arn="arn:aws:sagemaker:eu-west-1:123456789012:model-package/g/3",
        input_s3_uri=f"s3://{BUCKET}/in/",
        output_base_uri=f"s3://{BUCKET}/out",
        key_count=2,
        model={**model, "task": "multiclass"},
        run={"run_id": "r1", "try_number": 1},
        git_commit="abc",
    )
    _validate("CreateModel", req_["Model"])
    _validate("CreateTransformJob", req_["Transform"])
    assert req_["Model"]["VpcConfig"] == {"Subnets": ["subnet-0a1b2c3d"], "SecurityGroupIds": ["sg-0a1b2c3d"]}
    assert req_["Model"]["EnableNetworkIsolation"] is False
    assert "VolumeKmsKeyId" not in req_["Transform"]["TransformResources"]
    assert req_["Transform"]["DataProcessing"]["OutputFilter"] == "$[0,1,2,-2,-1]"
    assert req_["Transform"]["Environment"] == {"SAGEMAKER_INFERENCE_OUTPUT": "predicted_label,probability"}
    # the filters select what the docstring says from a record: keys, time, then the outputs
    record = ["6b31", "6d32", "2024-03-01 00:00:00", "1.5", "2.5", "3", "0.9"]
    assert select(record, req_["Transform"]["DataProcessing"]["InputFilter"]) == ["1.5", "2.5", "3", "0.9"]
    assert select([*record, "2", "0.7"], req_["Transform"]["DataProcessing"]["OutputFilter"]) == [
        "6b31",
        "6d32",
        "2024-03-01 00:00:00",
        "2",
        "0.7",
    ]
