"""What every aws test shares: the moto world, and the twins that answer what moto does not run.

The fixtures (``moto_world``, ``sagemaker_like_aws``) are made available by ``conftest.py``.

* :func:`moto_world`: in-process moto (``mock_aws``: the tests' own boto3 clients) plus a
  ``ThreadedMotoServer`` on loopback behind the Airflow AWS connection (``endpoint_url``), both on
  one state. The provider's deferrable operators wait in triggers that use aiobotocore, which
  in-process moto cannot answer; the server answers them over real HTTP. botocore validates every
  request either way.
* :class:`AthenaTwin`: Athena runs no SQL under moto. The twin answers each StartQueryExecution
  from DuckDB over tables a test registers (built by the local target): an UNLOAD writes Parquet
  under its (empty) target prefix, SSE-KMS; a SELECT gets its rows as query results. Statements
  that write (MERGE, INSERT, DELETE, OPTIMIZE) are recorded only.
* :class:`FeatureStoreTwin`: moto does not implement ``sagemaker-featurestore-runtime``; requests
  built by real boto3 clients (validated against the service model) are answered in memory.
* :func:`sagemaker_like_aws`: moto's feature groups patched where moto differs from SageMaker.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import duckdb
import pytest
import sqlglot
from botocore.awsrequest import AWSResponse
from botocore.validate import validate_parameters

from mlblueprints.aws import featurestore as fsreq
from mlblueprints.aws import requests as req

moto = pytest.importorskip("moto")
from moto import mock_aws  # noqa: E402
from moto.athena.models import AthenaBackend, QueryResults  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

REGION = "eu-west-1"
UNLOAD = re.compile(r"^\s*UNLOAD\s*\((?P<body>.*)\)\s*TO\s*'(?P<target>s3://[^']+)'", re.S | re.I)


@dataclass
class MotoWorld:
    home: Path
    tmp: Path
    endpoint_url: str
    made: dict[str, Any] = field(default_factory=dict)

    def bucket(self, name: str) -> str:
        boto3.client("s3", region_name=REGION).create_bucket(
            Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        return name

    def kms_key(self, description: str = "test") -> str:
        return boto3.client("kms", region_name=REGION).create_key(Description=description)["KeyMetadata"]["Arn"]

    def workgroup(self, bucket: str, name: str = "mlblueprints") -> None:
        boto3.client("athena", region_name=REGION).create_work_group(
            Name=name, Configuration={"ResultConfiguration": {"OutputLocation": f"s3://{bucket}/athena/"}}
        )


def moto_world_fixture(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("MLB_ATHENA_POLL_SECONDS", "0")
    monkeypatch.setenv("MLB_SAGEMAKER_POLL_SECONDS", "0")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("MLB_HOME", str(home))
    with mock_aws():
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            url = f"http://{host}:{port}"
            conn = {"conn_type": "aws", "extra": {"region_name": REGION, "endpoint_url": url}}
            monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(conn))
            yield MotoWorld(home=home, tmp=tmp_path, endpoint_url=url)
        finally:
            server.stop()


class AthenaTwin:
    """Answers StartQueryExecution from DuckDB (see the module docstring). Register the tables a
    test's statements read as views of ``self.con`` in schema ``database``."""

    def __init__(self, database: str, tmp: Path, kms: str = "", con: duckdb.DuckDBPyConnection | None = None):
        self.database = database
        self.tmp = tmp
        self.kms = kms
        self.con = con or duckdb.connect()
        self.con.execute(f'CREATE SCHEMA IF NOT EXISTS "{database}"')
        self.executions: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def install(self, monkeypatch) -> AthenaTwin:
        original = AthenaBackend.start_query_execution
        twin = self

        def start_query_execution(self, query, context, config, workgroup, execution_parameters):
            exec_id = original(self, query, context, config, workgroup, execution_parameters)
            twin.answer(self, exec_id, query, context, config, workgroup)
            return exec_id

        monkeypatch.setattr(AthenaBackend, "start_query_execution", start_query_execution)
        return self

    @staticmethod
    def duck(trino_sql: str) -> str:
        return sqlglot.transpile(trino_sql, read="trino", write="duckdb")[0]

    @staticmethod
    def text(v: Any) -> str | None:
        if v is None:
            return None
        if isinstance(v, list):
            return "[" + ", ".join(str(x) for x in v) + "]"
        return v.isoformat() if hasattr(v, "isoformat") else str(v)

    def answer(self, backend: Any, exec_id: str, query: str, context: Any, config: Any, workgroup: str) -> None:
        with self.lock:
            self.executions.append({"query": query, "context": context, "config": config, "workgroup": workgroup})
            m = UNLOAD.match(query)
            head = query.lstrip().split(None, 1)[0].upper()
            if m:  # Athena writes the rows as Parquet under the (empty) target prefix
                sqlglot.parse_one(m["body"], read="trino", error_level=sqlglot.ErrorLevel.RAISE)
                bucket, key = req.split_s3_uri(m["target"])
                s3 = boto3.client("s3", region_name=REGION)
                assert s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) == 0, (
                    "UNLOAD needs an empty prefix"
                )
                out = self.tmp / f"unload-{exec_id}.parquet"
                self.con.execute(f"COPY ({self.duck(m['body'])}) TO '{out}' (FORMAT parquet)")
                s3.upload_file(
                    str(out),
                    bucket,
                    f"{key}{exec_id}_0",
                    ExtraArgs={"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms},
                )
            elif head in ("SELECT", "WITH"):
                sqlglot.parse_one(query, read="trino", error_level=sqlglot.ErrorLevel.RAISE)
                cur = self.con.execute(self.duck(query))
                cols = [d[0] for d in cur.description]
                header = {"Data": [{"VarCharValue": c} for c in cols]}
                data = [
                    {"Data": [{"VarCharValue": self.text(v)} if v is not None else {} for v in r]}
                    for r in cur.fetchall()
                ]
                backend.query_results[exec_id] = QueryResults(
                    rows=[header, *data], column_info=[{"Name": c, "Type": "varchar"} for c in cols]
                )


class FeatureStoreTwin:
    """sagemaker-featurestore-runtime in memory, behind real boto3 clients.

    A client validates every request against botocore's service model before this sees it; it
    validates once more (so a client built with validation off would still be caught), keeps
    every PutRecord, and answers BatchGetRecord from its online store (a record replaces the
    stored one when its event time is at least as new). ``faults`` maps a record identifier to
    error codes returned on its next attempts (throttling, 5xx)."""

    STATUS = {"ThrottlingException": 400, "ServiceUnavailable": 503, "InternalFailure": 500, "ValidationError": 400}
    SERVICE = "sagemaker-featurestore-runtime"

    def __init__(self):
        self.lock = threading.Lock()
        self.puts: list[dict] = []
        self.offline: list[dict] = []
        self.online: dict[tuple[str, str], dict[str, str]] = {}
        self.batch_gets: list[dict] = []
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.failed_attempts = 0

    def attach(self, session_or_client: Any) -> Any:
        """Answer the Feature Store runtime requests of a boto3 session's clients (or of one client)."""
        events = session_or_client.meta.events if hasattr(session_or_client, "meta") else session_or_client.events
        events.register(f"before-parameter-build.{self.SERVICE}", self._keep_params)
        events.register(f"before-call.{self.SERVICE}", self._answer)
        return session_or_client

    @staticmethod
    def _keep_params(params, context, **_):
        context["twin_params"] = copy.deepcopy(params)

    def _answer(self, model, context, **_):
        params = context["twin_params"]
        validate_parameters(params, model.input_shape)
        if model.name == "PutRecord":
            rid = params["Record"][0]["ValueAsString"]
            with self.lock:
                if self.faults.get(rid):
                    code = self.faults[rid].pop(0)
                    self.failed_attempts += 1
                    return self._error(code)
                self.puts.append(params)
                record = {f["FeatureName"]: f["ValueAsString"] for f in params["Record"]}
                if "OfflineStore" in params["TargetStores"]:
                    self.offline.append(record)
                if "OnlineStore" in params["TargetStores"]:
                    key = (params["FeatureGroupName"], rid)
                    old = self.online.get(key)
                    if old is None or fsreq.parse_iso_utc(record["event_time"]) >= fsreq.parse_iso_utc(
                        old["event_time"]
                    ):
                        self.online[key] = record
            return AWSResponse(None, 200, {}, None), {"ResponseMetadata": {"HTTPStatusCode": 200}}
        if model.name == "BatchGetRecord":
            with self.lock:
                self.batch_gets.append(params)
            records = []
            for ident in params["Identifiers"]:
                group = ident["FeatureGroupName"]
                for rid in ident["RecordIdentifiersValueAsString"]:
                    rec = self.online.get((group, rid))
                    if rec is None:
                        continue
                    names = ident.get("FeatureNames") or list(rec)
                    records.append(
                        {
                            "FeatureGroupName": group,
                            "RecordIdentifierValueAsString": rid,
                            "Record": [{"FeatureName": n, "ValueAsString": rec[n]} for n in names if n in rec],
                        }
                    )
            parsed = {"Records": records, "Errors": [], "UnprocessedIdentifiers": []}
            return AWSResponse(None, 200, {}, None), {**parsed, "ResponseMetadata": {"HTTPStatusCode": 200}}
        raise AssertionError(f"unexpected Feature Store call {model.name}")

    def _error(self, code: str):
        status = self.STATUS.get(code, 400)
        return AWSResponse(None, status, {}, None), {
            "Error": {"Code": code, "Message": f"twin says {code}"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }


def patch_moto_like_sagemaker(monkeypatch) -> None:
    """Patch moto's feature groups where moto differs from SageMaker: it drops
    ``OnlineStoreConfig`` and ``Description``, and raises ``KeyError`` (not ``ResourceNotFound``)
    from DescribeFeatureGroup of an unknown group."""
    from moto.sagemaker import models as sm_models
    from moto.sagemaker.exceptions import ResourceNotFound
    from moto.sagemaker.responses import SageMakerResponse

    describe_backend = sm_models.SageMakerModelBackend.describe_feature_group

    def describe_feature_group(self, feature_group_name):
        try:
            return describe_backend(self, feature_group_name)
        except KeyError:
            raise ResourceNotFound(f"Resource Not Found: FeatureGroup {feature_group_name} does not exist") from None

    create_response = SageMakerResponse.create_feature_group

    def create_feature_group(self):
        out = create_response(self)
        arn = next(
            fg
            for fg in self.sagemaker_backend.feature_groups
            if fg.endswith("/" + self._get_param("FeatureGroupName").lower())
        )
        group = self.sagemaker_backend.feature_groups[arn]
        group.online_store_config = self._get_param("OnlineStoreConfig")
        group.description = self._get_param("Description")
        return out

    describe_group = sm_models.FeatureGroup.describe

    def describe(self):
        out = describe_group(self)
        for key, attr in (("OnlineStoreConfig", "online_store_config"), ("Description", "description")):
            if getattr(self, attr, None) is not None:
                out[key] = getattr(self, attr)
        return out

    monkeypatch.setattr(sm_models.SageMakerModelBackend, "describe_feature_group", describe_feature_group)
    monkeypatch.setattr(SageMakerResponse, "create_feature_group", create_feature_group)
    monkeypatch.setattr(sm_models.FeatureGroup, "describe", describe)


def run_direct(uc: Any, rt: Any, value: Any, run: Any) -> Any:
    """Run a backend's result to completion without Airflow (service calls run synchronously with
    the runtime's clients, as :mod:`mlblueprints.aws.direct` does)."""
    from mlblueprints.aws import direct
    from mlblueprints.core import service
    from mlblueprints.core.context import StepContext

    ctx = StepContext(uc=uc, run=run, runtime_factory=lambda: rt)
    return service.complete(ctx, value, direct.runner(rt, uc, run))
