"""The promotion DAG on the aws target through dag.test() under moto, botocore validating: the
canary is a SageMaker blue/green update with deployment guardrails.

The champion is the version the training DAG on aws registers (``test_training_dag_aws``'s
world). Two challengers are registered beside it as the registry would: an MLflow version of the
same run and a model package of its own in the group - one with the champion's booster (a good
challenger), one whose booster's ``base_score`` was moved (its scores shifted: a bad one).

moto has no UpdateEndpoint and its InvokeEndpoint answers canned bodies, so ``EndpointTwin``
stands in for the SageMaker endpoint, from only what it was sent: UpdateEndpoint (validated by
botocore) starts the blue/green update it names - the green fleet takes the CANARY share of
requests for ``WaitIntervalInSeconds``, then SageMaker checks the alarms of
``AutoRollbackConfiguration`` (the twin evaluates each alarm's definition as CloudWatch would:
the score-shift alarm on the datapoints the bake published to moto's CloudWatch, the 5xx rate and
latency alarms on the invocations the twin answered) and either moves the endpoint to the new
config or leaves it on the old (rolled back, the alarm set to ALARM); InvokeEndpoint scores the CSV
row with the booster in the archive of the model package behind the serving fleet's model and
writes SageMaker's data capture (JSON Lines, ``eventMetadata.inferenceId``) under that config's
``DestinationS3Uri``.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import boto3
import botocore.session
import numpy as np
import pytest
import yaml
from botocore.validate import validate_parameters
from moto_world import ACCOUNT, REGION
from test_training_dag_aws import BUCKET, NAME, dag_world, lake  # noqa: F401 (fixtures)

from mlblueprints.aws import requests as req
from mlblueprints.aws import serving as sv

pytestmark = [pytest.mark.aws, pytest.mark.slow]

moto = pytest.importorskip("moto")


def _validate(service: str, operation: str, params: dict) -> None:
    model = botocore.session.get_session().get_service_model(service)
    validate_parameters(params, model.operation_model(operation).input_shape)


def _epoch(t: datetime) -> float:
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


class EndpointTwin:
    """The SageMaker endpoint behind moto (module docstring)."""

    def __init__(self):
        self.sent: dict[str, list[dict]] = {
            k: []
            for k in (
                "CreateModel",
                "CreateEndpointConfig",
                "CreateEndpoint",
                "UpdateEndpoint",
                "UpdateEndpointWeightsAndCapacities",
            )
        }
        self.updates: dict[str, dict] = {}  # endpoint -> the blue/green update in progress
        self.answered: list[dict] = []  # every invocation: config, status, latency (us), id, score
        self.boosters: dict[str, object] = {}
        self.buffer: list[tuple[str, str, dict]] = []  # (capture uri, variant, event)
        self.lock = threading.RLock()
        self.counter = 0
        self.wrr: dict[str, float] = {}

    def install(self, monkeypatch) -> EndpointTwin:
        from moto.sagemaker.responses import SageMakerResponse
        from moto.sagemakerruntime.responses import SageMakerRuntimeResponse

        twin = self

        def keep(action, method):
            def handler(self):
                twin.sent[action].append(json.loads(self.body))
                return method(self)

            return handler

        for action, attr in (
            ("CreateModel", "create_model"),
            ("CreateEndpointConfig", "create_endpoint_config"),
            ("CreateEndpoint", "create_endpoint"),
            ("UpdateEndpointWeightsAndCapacities", "update_endpoint_weights_and_capacities"),
        ):
            monkeypatch.setattr(SageMakerResponse, attr, keep(action, getattr(SageMakerResponse, attr)))
        describe = SageMakerResponse.describe_endpoint

        def describe_endpoint(self):
            twin.progress(self._backend(), json.loads(self.body)["EndpointName"])
            return describe(self)

        def update_endpoint(self):
            params = json.loads(self.body)
            twin.sent["UpdateEndpoint"].append(params)
            return 200, {}, json.dumps(twin.update(self._backend(), params))

        def invoke_endpoint(self):
            return twin.invoke(self)

        monkeypatch.setattr(SageMakerResponse, "_backend", lambda self: self.sagemaker_backend, raising=False)
        monkeypatch.setattr(SageMakerResponse, "describe_endpoint", describe_endpoint)
        monkeypatch.setattr(SageMakerResponse, "update_endpoint", update_endpoint, raising=False)
        monkeypatch.setattr(SageMakerRuntimeResponse, "invoke_endpoint", invoke_endpoint)
        return self

    # ---- UpdateEndpoint and its blue/green progress

    def update(self, backend, params: dict) -> dict:
        _validate("sagemaker", "UpdateEndpoint", params)
        with self.lock:
            ep = backend.endpoints[params["EndpointName"]]
            new = backend.describe_endpoint_config(params["EndpointConfigName"])
            old_variants = {v["VariantName"] for v in ep.production_variants}
            if params.get("DeploymentConfig"):  # SageMaker refuses guardrails on a renamed variant
                assert {v["VariantName"] for v in new["ProductionVariants"]} == old_variants, (
                    "a blue/green update with deployment guardrails keeps the variant name"
                )
            ep.endpoint_status = "Updating"
            ep.last_modified_time = datetime.now(UTC)
            self.updates[ep.endpoint_name] = {
                "t0": time.monotonic(),
                "at": datetime.now(UTC),
                "params": params,
                "blue": ep.endpoint_config_name,
            }
            return {"EndpointArn": ep.arn}

    def _routing(self, u: dict) -> tuple[float, float]:
        """(green share now, total wait) of update ``u``."""
        dc = u["params"].get("DeploymentConfig")
        if not dc:
            return 1.0, 0.0
        r = dc["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
        wait = r["WaitIntervalInSeconds"]
        elapsed = time.monotonic() - u["t0"]
        if r["Type"] == "CANARY":
            return r["CanarySize"]["Value"] / 100, wait
        step = r["LinearStepSize"]["Value"]
        steps = math.ceil(100 / step)
        return min(1.0, (1 + int(elapsed // wait)) * step / 100), wait * steps

    def progress(self, backend, name: str) -> None:
        self.flush()
        with self.lock:
            u = self.updates.get(name)
            if u is None:
                return
            _, wait = self._routing(u)
            if time.monotonic() - u["t0"] < wait:
                return
            ep = backend.endpoints[name]
            dc = u["params"].get("DeploymentConfig") or {}
            fired = [
                a["AlarmName"]
                for a in dc.get("AutoRollbackConfiguration", {}).get("Alarms", [])
                if self._breaching(a["AlarmName"], u)
            ]
            if fired:
                from moto.cloudwatch.models import cloudwatch_backends

                cw = cloudwatch_backends[ACCOUNT][REGION]
                for a in fired:
                    cw.set_alarm_state(a, "Threshold Crossed: the canary's datapoints", None, "ALARM")
                ep.failure_reason = f"Rolled back: alarm(s) {', '.join(fired)} in ALARM"
            else:
                new = backend.describe_endpoint_config(u["params"]["EndpointConfigName"])
                ep.endpoint_config_name = u["params"]["EndpointConfigName"]
                ep.production_variants = ep._process_production_variants(new["ProductionVariants"])
                ep.data_capture_config = new.get("DataCaptureConfig")
            ep.endpoint_status = "InService"
            ep.last_modified_time = datetime.now(UTC)
            del self.updates[name]

    def _breaching(self, alarm_name: str, u: dict) -> bool:
        """The alarm's definition evaluated on the update's data, as CloudWatch would."""
        from moto.cloudwatch.models import MetricDatum, cloudwatch_backends

        cw = cloudwatch_backends[ACCOUNT][REGION]
        alarm = cw.alarms[alarm_name]
        green = [a for a in self.answered if a["config"] == u["params"]["EndpointConfigName"]]
        if alarm.metric_data_queries:  # the 5xx rate: metric math over the green fleet's invocations
            value = sum(a["status"] >= 500 for a in green) / len(green) if green else 0.0
        elif alarm.namespace == sv.SAGEMAKER_NAMESPACE and alarm.metric_name == "ModelLatency":
            lat = sorted(a["latency_us"] for a in green)
            value = lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)] if lat else None
        else:
            points = [
                m.value
                for m in cw.metric_data
                if isinstance(m, MetricDatum)
                and m.namespace == alarm.namespace
                and m.name == alarm.metric_name
                and _epoch(m.timestamp) >= _epoch(u["at"])
            ]
            value = max(points) if points else None
        return value is not None and value > float(alarm.threshold)

    # ---- InvokeEndpoint

    def _booster(self, config: str, variant: str | None = None):
        if (config, variant) not in self.boosters:
            import xgboost as xgb

            sm = boto3.client("sagemaker", region_name=REGION)
            cfg = sm.describe_endpoint_config(EndpointConfigName=config)
            [pv] = [v for v in cfg["ProductionVariants"] if variant in (None, v["VariantName"])][:1]
            model = sm.describe_model(ModelName=pv["ModelName"])
            pkg = sm.describe_model_package(ModelPackageName=model["PrimaryContainer"]["ModelPackageName"])
            bucket, key = req.split_s3_uri(pkg["InferenceSpecification"]["Containers"][0]["ModelDataUrl"])
            raw = boto3.client("s3", region_name=REGION).get_object(Bucket=bucket, Key=key)["Body"].read()
            with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
                [member] = [m for m in tar.getmembers() if m.isfile()]
                booster = xgb.Booster()
                booster.load_model(bytearray(tar.extractfile(member).read()))
            self.boosters[config, variant] = (booster, cfg, pv["VariantName"])
        return self.boosters[config, variant]

    def _pick(self, variants: list[dict]) -> str:
        """Smooth weighted round robin over the variants' current weights (SageMaker routes by
        weight; any exact split serves the test)."""
        weights = {v["VariantName"]: float(v.get("CurrentWeight") or 0.0) for v in variants}
        total = sum(weights.values())
        for n, w in weights.items():
            self.wrr[n] = self.wrr.get(n, 0.0) + w
        best = max(weights, key=lambda n: self.wrr[n])
        self.wrr[best] -= total
        return best

    def invoke(self, response):
        from moto.sagemaker.models import sagemaker_backends

        name = response.path.split("/")[2]
        backend = sagemaker_backends[ACCOUNT][REGION]
        with self.lock:
            ep = backend.endpoints[name]
            config, variant = ep.endpoint_config_name, None
            u = self.updates.get(name)
            if u is not None:
                share, _ = self._routing(u)
                self.counter += 1
                if math.floor(self.counter * share) > math.floor((self.counter - 1) * share):
                    config = u["params"]["EndpointConfigName"]
            elif len(ep.production_variants) > 1:  # the variant-weights form
                variant = self._pick(ep.production_variants)
        booster, cfg, variant = self._booster(config, variant)
        body = response.body.decode() if isinstance(response.body, bytes) else response.body
        t = time.perf_counter()
        x = np.array([[float(v) if v != "" else np.nan for v in body.split(",")]])
        score = float(booster.inplace_predict(x)[0])
        latency_us = (time.perf_counter() - t) * 1e6
        rid = response.headers.get("X-Amzn-SageMaker-Inference-Id")
        out = repr(score)
        with self.lock:
            self.answered.append(
                {
                    "config": config,
                    "variant": variant,
                    "status": 200,
                    "latency_us": latency_us,
                    "id": rid,
                    "score": score,
                }
            )
            dc = cfg["DataCaptureConfig"]
            event = {
                "captureData": {
                    "endpointInput": {
                        "observedContentType": "text/csv",
                        "mode": "INPUT",
                        "data": body,
                        "encoding": "CSV",
                    },
                    "endpointOutput": {
                        "observedContentType": "text/csv",
                        "mode": "OUTPUT",
                        "data": out,
                        "encoding": "CSV",
                    },
                },
                "eventMetadata": {
                    "eventId": str(uuid.uuid4()),
                    "inferenceId": rid,
                    "inferenceTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                },
                "eventVersion": "0",
            }
            self.buffer.append((dc["DestinationS3Uri"], variant, event, name, dc["KmsKeyId"]))
            if len(self.buffer) >= 200:
                self.flush()
        return (
            200,
            {
                "Content-Type": "text/csv",
                "x-Amzn-Invoked-Production-Variant": variant,
            },
            out,
        )

    def flush(self) -> None:
        """The captured events to S3, one object per fleet, as SageMaker writes them (SSE-KMS)."""
        with self.lock:
            buf, self.buffer = self.buffer, []
        groups: dict[tuple, list] = {}
        for dest, variant, event, name, kms in buf:
            groups.setdefault((dest, variant, name, kms), []).append(event)
        s3 = boto3.client("s3", region_name=REGION)
        for (dest, variant, name, kms), events in groups.items():
            now = datetime.now(UTC)
            bucket, prefix = req.split_s3_uri(dest)
            key = f"{prefix}/{name}/{variant}/{now:%Y/%m/%d/%H}/{now:%M-%S-%f}-{uuid.uuid4()}.jsonl"
            body = "\n".join(json.dumps(e) for e in events).encode()
            s3.put_object(Bucket=bucket, Key=key, Body=body, ServerSideEncryption="aws:kms", SSEKMSKeyId=kms)


def _register_challenger(uc, version: int, *, shift_base_score: float | None) -> int:
    """A new MLflow version of the champion's run and a model package of its own: the champion's
    archive, or (``shift_base_score``) one whose booster scores are shifted."""
    import xgboost as xgb

    from mlblueprints.aws import training as tr
    from mlblueprints.registry import local as registry
    from mlblueprints.registry.aws import find_model_package

    client = registry.client(uc)
    mv = client.get_model_version(uc.model_name, str(version))
    new = client.create_model_version(uc.model_name, mv.source, run_id=mv.run_id, tags=dict(mv.tags))
    sm = boto3.client("sagemaker", region_name=REGION)
    s3 = boto3.client("s3", region_name=REGION)
    pkg = find_model_package(sm, tr.model_package_group_name(uc), uc.model_name, version)
    [container] = pkg["InferenceSpecification"]["Containers"]
    url = container["ModelDataUrl"]
    if shift_base_score is not None:
        bucket, key = req.split_s3_uri(url)
        raw = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            [member] = [m for m in tar.getmembers() if m.isfile()]
            booster = xgb.Booster()
            booster.load_model(bytearray(tar.extractfile(member).read()))
        booster.set_param({"base_score": shift_base_score})
        model_bytes = bytes(booster.save_raw("ubj"))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            info = tarfile.TarInfo(member.name)
            info.size = len(model_bytes)
            tar.addfile(info, io.BytesIO(model_bytes))
        key = key.replace("model.tar.gz", f"shifted-v{new.version}.tar.gz")
        s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
        url = f"s3://{bucket}/{key}"
    meta = dict(pkg["CustomerMetadataProperties"], mlflow_version=str(new.version))
    sm.create_model_package(
        ModelPackageGroupName=pkg["ModelPackageGroupName"],
        ModelPackageDescription=f"challenger v{new.version}",
        InferenceSpecification={
            "Containers": [dict(container, ModelDataUrl=url)],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["text/csv"],
        },
        ModelApprovalStatus="PendingManualApproval",
        CustomerMetadataProperties=meta,
    )
    return int(new.version)


def _set(
    path: Path,
    canary: dict | None = None,
    mode: str = "blue_green",
    guardrails: dict | None = None,
    sagemaker: dict | None = None,
):
    from mlblueprints.config import load_usecase

    data = yaml.safe_load(path.read_text())
    data["target"] = "aws"
    data.pop("explainability", None)  # challengers straight from the registry
    data["promotion"].update(
        canary=canary or {"weight": 0.3, "bake_seconds": 10},
        traffic={"replay": True, "rate_per_second": 300, "max_requests": 3000, "clients": 2},
        sagemaker={"publish_seconds": 1, "alarm_period_seconds": 10, "canary_mode": mode, **(sagemaker or {})},
    )
    data["promotion"]["guardrails"]["min_requests"] = 100
    data["promotion"]["guardrails"].update(guardrails or {})
    path.write_text(yaml.safe_dump(data))
    return load_usecase(path)


def _run(dag_id: str, conf: dict | None = None):
    from mlblueprints.airflow import localrun

    dr = localrun.get_dag(dag_id).test(run_conf=conf or {})
    return dr, {ti.task_id: ti for ti in dr.get_task_instances()}


@pytest.fixture
def endpoint_world(dag_world, monkeypatch):  # noqa: F811 (the training test's fixture)
    from mlblueprints.serving.aws import AwsEndpoint

    monkeypatch.setattr(AwsEndpoint, "POLL_SECONDS", 0.2)
    # moto's UpdateModelPackage drops the customer metadata a request does not name; SageMaker
    # keeps it (the request's properties are added to it)
    from moto.sagemaker import models as sm_models

    update = sm_models.SageMakerModelBackend.update_model_package

    def keep_metadata(self, model_package_arn, **kw):
        name = self.model_package_name_mapping.get(model_package_arn, model_package_arn)
        kept = self.model_packages[name].customer_metadata_properties or {}
        kw["customer_metadata_properties"] = dict(kept, **(kw.get("customer_metadata_properties") or {}))
        return update(self, model_package_arn=model_package_arn, **kw)

    monkeypatch.setattr(sm_models.SageMakerModelBackend, "update_model_package", keep_metadata)
    twin = EndpointTwin().install(monkeypatch)
    import os

    return {**dag_world, "twin": twin, "path": Path(os.environ["MLB_USECASES_DIR"]) / f"{NAME}.yaml"}


def test_promotion_dag_on_aws_canaries_by_blue_green_update_and_rolls_back_on_the_alarm(endpoint_world, lake, capsys):  # noqa: F811
    from mlblueprints.registry import local as registry

    twin, kms = endpoint_world["twin"], endpoint_world["kms"]
    dr, tis = _run(f"{NAME}__training")
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    champion = tis["register"].xcom_pull(task_ids="register")["version"]
    # the bake is bounded by time and the moto server answers slower on a loaded machine: the
    # shift is published from 100 scores a side, against a bound their sampling noise stays far
    # below (PSI about 0.13) and the shifted model far above
    uc = _set(
        endpoint_world["path"],
        sagemaker={"publish_min_scores": 100},
        guardrails={"score_shift": {"method": "psi", "threshold": 0.5}},
    )
    sm = boto3.client("sagemaker", region_name=REGION)
    cw = boto3.client("cloudwatch", region_name=REGION)
    name = sv.endpoint_name(uc)

    # ---- the first version: the endpoint is created serving it, its package approved
    dr, tis = _run(f"{NAME}__promotion", {"version": champion})
    res = {t: ti.xcom_pull(task_ids=t) for t, ti in tis.items()}
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    assert res["deploy"]["first"] is True
    [create] = twin.sent["CreateEndpoint"]
    _validate("sagemaker", "CreateEndpoint", create)
    [cfg1] = twin.sent["CreateEndpointConfig"]
    _validate("sagemaker", "CreateEndpointConfig", cfg1)
    assert create["EndpointConfigName"] == cfg1["EndpointConfigName"] and create["EndpointName"] == name
    dc = cfg1["DataCaptureConfig"]
    assert dc["KmsKeyId"] == kms == cfg1["KmsKeyId"] and dc["InitialSamplingPercentage"] == 100
    assert dc["DestinationS3Uri"] == f"s3://{BUCKET}/fraud/serving/capture/{cfg1['EndpointConfigName']}"
    assert cfg1["ProductionVariants"][0]["VariantName"] == "AllTraffic"
    [model1] = twin.sent["CreateModel"]
    _validate("sagemaker", "CreateModel", model1)
    assert model1["EnableNetworkIsolation"] is True and "ModelPackageName" in model1["PrimaryContainer"]
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"
    assert str(registry.client(uc).get_model_version_by_alias(uc.model_name, "champion").version) == str(champion)

    def approval(version: int) -> str:
        from mlblueprints.aws import training as tr
        from mlblueprints.registry.aws import find_model_package

        return find_model_package(sm, tr.model_package_group_name(uc), uc.model_name, version)["ModelApprovalStatus"]

    assert approval(champion) == "Approved"

    # ---- a good challenger: SageMaker's canary holds, the endpoint moves, alias and package follow
    good = _register_challenger(uc, champion, shift_base_score=None)
    # a try killed during its bake left the blue/green update it started running; the next run
    # adopts it (no second update), bakes and decides
    from mlblueprints.backends import backend_for

    killed = backend_for(uc, "endpoint")
    green = killed.config_for(good, "killed-run")
    sm.update_endpoint(**sv.update_endpoint_request(uc, config_name=green, alarms=list(sv.alarm_names(uc).values())))
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "Updating"
    dr, tis = _run(f"{NAME}__promotion", {"version": good})
    res = {t: ti.xcom_pull(task_ids=t) for t, ti in tis.items()}
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    [update] = twin.sent["UpdateEndpoint"]  # the killed try's, adopted
    _validate("sagemaker", "UpdateEndpoint", update)
    policy = update["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"] == {
        "Type": "CANARY",
        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 30},
        "WaitIntervalInSeconds": 10,
    }
    alarms = [a["AlarmName"] for a in update["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"]]
    assert alarms == list(sv.alarm_names(uc).values()) and len(alarms) == 3
    for a in sv.alarm_requests(uc):
        _validate("cloudwatch", "PutMetricAlarm", a)
    described = {a["AlarmName"]: a for a in cw.describe_alarms(AlarmNames=alarms)["MetricAlarms"]}
    assert set(described) == set(alarms)
    assert described[f"{name}-mlb-p99-latency"]["Threshold"] == 100_000.0  # 100 ms, in microseconds
    assert green == update["EndpointConfigName"]
    assert sm.describe_endpoint(EndpointName=name)["EndpointConfigName"] == green, res["bake.finish"]
    [bake] = res["bake.finish"]["bakes"]
    assert res["bake.finish"]["passed"] is True and res["decide"]["outcome"] == "promoted"
    # the prepare task handed the update to the service task with nothing left to create or start:
    # the killed try made the model and config and started the update; the service task sent the
    # traffic while it waited for the update to end
    handed = res["bake.prepare"]["request"]
    assert handed["Model"] is None and handed["EndpointConfig"] is None and handed["Update"] is None
    served = res["bake.sagemaker_endpoint"]
    assert served["Endpoint"]["EndpointConfigName"] == green and served["During"]["sent"]["requests"] > 200
    assert bake["generation"] > 0 and bake["sent"] == served["During"]["sent"]  # the endpoint's last change
    # the challenger's share of what was answered during the canary is the canary's share
    during = [a for a in twin.answered if a["config"] in (green, cfg1["EndpointConfigName"])]
    assert bake["answered"]["challenger"] >= uc.promotion.guardrails.min_requests
    assert 0.2 < bake["challenger_share"] < 0.45, bake
    shift = next(v for v in bake["verdicts"] if v["guardrail"] == "score_shift_psi")
    assert shift["ok"] is True and shift["value"] < 0.5  # the same booster: sampling noise only
    assert str(registry.client(uc).get_model_version_by_alias(uc.model_name, "champion").version) == str(good)
    assert str(registry.client(uc).get_model_version_by_alias(uc.model_name, "previous").version) == str(champion)
    assert approval(good) == "Approved"
    assert len(during) > 200

    # ---- a shifted challenger: the bake publishes its score shift, the alarm fires, SageMaker rolls back
    bad = _register_challenger(uc, good, shift_base_score=0.7)
    dr, tis = _run(f"{NAME}__promotion", {"version": bad})
    res = {t: ti.xcom_pull(task_ids=t) for t, ti in tis.items()}
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    assert len(twin.sent["UpdateEndpoint"]) == 2
    # the service task made the challenger's model and config and started the update (the
    # requests the state machine's native integrations send: tests/statemachines)
    handed = res["bake.prepare"]["request"]
    assert handed["Update"] == twin.sent["UpdateEndpoint"][-1]
    assert handed["Model"] == twin.sent["CreateModel"][-1]
    assert handed["EndpointConfig"] == twin.sent["CreateEndpointConfig"][-1]
    assert sm.describe_endpoint(EndpointName=name)["EndpointConfigName"] == green  # still the champion's
    assert res["bake.finish"]["passed"] is False and res["decide"]["outcome"] == "rolled_back"
    [tripped] = res["bake.finish"]["tripped"]
    assert tripped.startswith(f"score_shift_psi: CloudWatch alarm {name}-mlb-score-shift in ALARM"), tripped
    [bake] = res["bake.finish"]["bakes"]
    shift = next(v for v in bake["verdicts"] if v["guardrail"] == "score_shift_psi")
    assert shift["ok"] is False and shift["value"] > 0.5
    published = cw.get_metric_statistics(
        Namespace=sv.METRIC_NAMESPACE,
        MetricName="ScoreShiftPSI",
        Dimensions=sv.score_shift_dimensions(uc),
        StartTime=datetime(2020, 1, 1, tzinfo=UTC),
        EndTime=datetime(2100, 1, 1, tzinfo=UTC),
        Period=60,
        Statistics=["Maximum"],
    )["Datapoints"]
    assert max(p["Maximum"] for p in published) > 0.5
    assert str(registry.client(uc).get_model_version_by_alias(uc.model_name, "champion").version) == str(good)
    assert approval(bad) == "Rejected"
    assert registry.client(uc).get_model_version(uc.model_name, str(bad)).tags.get("mlb.rejected")

    # ---- the history on S3 (SSE-KMS) and the report
    rows = backend_for(uc, "endpoint").deployments().deployments()
    assert [(d["version"], d["outcome"]) for d in rows] == [
        (champion, "first"),
        (good, "promoted"),
        (bad, "rolled_back"),
    ]
    s3 = boto3.client("s3", region_name=REGION)
    for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="fraud/serving/deployments/")["Contents"]:
        head = s3.head_object(Bucket=BUCKET, Key=o["Key"])
        assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == kms
    report = json.loads(Path(res["report"]["report"]).read_text())
    assert "ROLLED BACK" in report["text"] and name in report["text"]
    # the history and DORA metrics read from S3 by the CLI, as locally
    from mlblueprints import cli

    capsys.readouterr()
    assert cli.main(["deployments", NAME]) == 0
    out = capsys.readouterr().out
    assert "rolled_back" in out and "promoted" in out and "change failure rate    50 %" in out, out
    # the rerun of a decided promotion does not deploy it again (rejected): nothing made or updated
    made = {k: len(v) for k, v in twin.sent.items()}
    dr, tis = _run(f"{NAME}__promotion", {"version": bad})
    assert tis["target"].xcom_pull(task_ids="target")["refused"]
    assert {k: len(v) for k, v in twin.sent.items()} == made and made["UpdateEndpoint"] == 2


def test_the_variant_weights_form_shifts_traffic_by_weights_and_judges_each_variant_on_what_it_answered(
    endpoint_world,
    lake,  # noqa: F811
):
    """``canary_mode: variant_weights``: champion and challenger as two production variants of one
    config, the challenger's share set per linear step by UpdateEndpointWeightsAndCapacities, each
    step judged on the requests the bake sent as each variant answered them (the variant from
    ``InvokedProductionVariant``): a good challenger promoted through both steps, a shifted one
    rolled back at the first; the endpoint ends on one variant, the champion's."""
    from mlblueprints.registry import local as registry

    twin = endpoint_world["twin"]
    dr, tis = _run(f"{NAME}__training")
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    champion = tis["register"].xcom_pull(task_ids="register")["version"]
    # the steps are bounded by time, and the moto server answers slower on a loaded machine: a step
    # may get fewer requests, so fewer are asked for, and the shift is judged against a bound the
    # sampling noise of a hundred scores stays far below (PSI about 0.1) and the shifted model far above
    uc = _set(
        endpoint_world["path"],
        canary={"steps": [0.2, 0.5], "bake_seconds": 5},
        mode="variant_weights",
        guardrails={"min_requests": 50, "score_shift": {"method": "psi", "threshold": 0.5}},
    )
    sm = boto3.client("sagemaker", region_name=REGION)
    name = sv.endpoint_name(uc)
    dr, _ = _run(f"{NAME}__promotion", {"version": champion})
    assert dr.state == "success"

    good = _register_challenger(uc, champion, shift_base_score=None)
    dr, tis = _run(f"{NAME}__promotion", {"version": good})
    res = {t: ti.xcom_pull(task_ids=t) for t, ti in tis.items()}
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    assert res["decide"]["outcome"] == "promoted" and twin.sent["UpdateEndpoint"]
    two = [c for c in twin.sent["CreateEndpointConfig"] if len(c["ProductionVariants"]) == 2]
    [config] = two
    _validate("sagemaker", "CreateEndpointConfig", config)
    assert {v["VariantName"] for v in config["ProductionVariants"]} == {"champion", "challenger"}
    weights = twin.sent["UpdateEndpointWeightsAndCapacities"]
    for w in weights:
        _validate("sagemaker", "UpdateEndpointWeightsAndCapacities", w)
    shares = [{d["VariantName"]: d["DesiredWeight"] for d in w["DesiredWeightsAndCapacities"]} for w in weights]
    assert shares[-1] == {"champion": 0.5, "challenger": 0.5}
    bakes = res["bake.finish"]["bakes"]
    assert [b["share"] for b in bakes] == [0.2, 0.5]
    for b in bakes:
        # each step's requests were answered by the challenger at its share (smooth weights: within
        # a few requests, the router's state carried over from the step before)
        answered = b["answered"]
        assert answered["challenger"] >= uc.promotion.guardrails.min_requests
        assert abs(b["challenger_share"] - b["share"]) <= 4 / sum(answered.values()), b
        assert {v["guardrail"]: v["ok"] for v in b["verdicts"]}["error_rate"] is True
    assert sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]["VariantName"] == "AllTraffic"
    assert str(registry.client(uc).get_model_version_by_alias(uc.model_name, "champion").version) == str(good)

    bad = _register_challenger(uc, good, shift_base_score=0.7)
    dr, tis = _run(f"{NAME}__promotion", {"version": bad})
    res = {t: ti.xcom_pull(task_ids=t) for t, ti in tis.items()}
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    assert res["decide"]["outcome"] == "rolled_back"
    # stopped at the first step whose shift was judged: the first, unless a loaded machine sent it
    # fewer than 100 challenger requests (then not judged there, said so, and the next step judges it)
    *early, last = res["bake.finish"]["bakes"]
    assert res["bake.finish"]["tripped"][0].startswith("score_shift_psi ") and last["share"] in (0.2, 0.5)
    for b in early:
        assert {v["guardrail"]: v["ok"] for v in b["verdicts"]}["score_shift_psi"] is None, b
    ep = sm.describe_endpoint(EndpointName=name)
    [variant] = ep["ProductionVariants"]
    served = sm.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])["ProductionVariants"][0]
    tags = sm.list_tags(ResourceArn=sm.describe_model(ModelName=served["ModelName"])["ModelArn"])["Tags"]
    assert {t["Key"]: t["Value"] for t in tags}["mlblueprints:model-version"] == str(good)
    assert str(registry.client(uc).get_model_version_by_alias(uc.model_name, "champion").version) == str(good)
