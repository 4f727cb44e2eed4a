"""The SageMaker endpoint requests of the promotion pattern on aws (``mlblueprints.aws.serving``),
checked against botocore's service models (types, required members, ranges, enums and the
``pattern`` of every string SageMaker and CloudWatch check server side), and the use-case
checks of what SageMaker's deployment guardrails refuse."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import yaml
from test_training_requests import _SESSION, COMMIT, SM_MODEL
from test_training_requests import validate as _validate

from helpers import ROOT
from mlblueprints.aws import serving as sv
from mlblueprints.aws.training import SAGEMAKER_NAME_MAX, SAGEMAKER_NAME_RE
from mlblueprints.config import UseCase, UseCaseError, load_usecase

pytestmark = [pytest.mark.aws]

PACKAGE = "arn:aws:sagemaker:eu-west-1:123456789012:model-package/fraud-detection/3"


def _uc(canary=None, sagemaker=None, name=None) -> UseCase:
    data = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    data["target"] = "aws"
    if name:
        data["name"] = name
    if canary is not None:
        data["promotion"]["canary"] = canary
    if sagemaker is not None:
        data["promotion"]["sagemaker"] = sagemaker
    return UseCase.model_validate(data)


CW_MODEL = _SESSION.get_service_model("cloudwatch")


def validate(operation: str, params: dict) -> None:
    _validate(SM_MODEL, operation, params)


def _cw(operation: str, params: dict) -> None:
    _validate(CW_MODEL, operation, params)


def test_model_config_and_endpoint_are_valid_with_capture_kms_and_one_variant_name():
    uc = _uc(sagemaker={"subnets": ["subnet-1"], "security_group_ids": ["sg-1"]})
    model = sv.create_model_request(uc, version=3, model_package_arn=PACKAGE, git_commit=COMMIT, run_id="r1")
    validate("CreateModel", model)
    assert model["PrimaryContainer"] == {"ModelPackageName": PACKAGE} and model["EnableNetworkIsolation"] is True
    assert model["VpcConfig"] == {"Subnets": ["subnet-1"], "SecurityGroupIds": ["sg-1"]}
    config = sv.create_endpoint_config_request(uc, version=3, model_name=model["ModelName"])
    validate("CreateEndpointConfig", config)
    dc = config["DataCaptureConfig"]
    assert dc["KmsKeyId"] == uc.aws.kms_key_arn == config["KmsKeyId"]
    assert dc["DestinationS3Uri"] == sv.capture_prefix(uc, config["EndpointConfigName"])
    assert [o["CaptureMode"] for o in dc["CaptureOptions"]] == ["Input", "Output"]
    other = sv.create_endpoint_config_request(uc, version=4, model_name="m4")
    # every config the same variant name (a blue/green update requires it), its own capture prefix
    assert other["ProductionVariants"][0]["VariantName"] == config["ProductionVariants"][0]["VariantName"]
    assert other["DataCaptureConfig"]["DestinationS3Uri"] != dc["DestinationS3Uri"]
    validate("CreateEndpoint", sv.create_endpoint_request(uc, config_name=config["EndpointConfigName"]))
    # NVMe instance storage takes no volume key
    nvme = _uc(sagemaker={"instance_type": "ml.m5d.large"})
    assert "KmsKeyId" not in sv.create_endpoint_config_request(nvme, version=3, model_name="m")


def test_names_are_hashes_of_the_requests_and_fit_sagemakers_limits():
    uc = _uc(name="a_very_long_use_case_name_" + "x" * 60)
    a = sv.create_model_request(uc, version=12, model_package_arn=PACKAGE, git_commit=COMMIT, run_id="r1")
    b = sv.create_model_request(uc, version=12, model_package_arn=PACKAGE, git_commit="other", run_id="r2")
    assert a["ModelName"] == b["ModelName"], "the run and commit are tags, not what the model is"
    c = sv.create_model_request(uc, version=12, model_package_arn=PACKAGE + "0", git_commit=COMMIT, run_id="r1")
    assert c["ModelName"] != a["ModelName"]
    for name in (a["ModelName"], sv.endpoint_name(uc), *sv.alarm_names(uc).values()):
        assert len(name) <= 255
    for name in (a["ModelName"], sv.endpoint_name(uc)):
        assert len(name) <= SAGEMAKER_NAME_MAX and SAGEMAKER_NAME_RE.match(name), name
    assert sv.create_endpoint_config_request(uc, version=12, model_name="m")["EndpointConfigName"].endswith(
        "-v12-" + sv.create_endpoint_config_request(uc, version=12, model_name="m")["EndpointConfigName"][-10:]
    )


@pytest.mark.parametrize(
    ("canary", "routing"),
    [
        (
            {"weight": 0.1, "bake_seconds": 300},
            {"Type": "CANARY", "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}, "WaitIntervalInSeconds": 300},
        ),
        (
            {"steps": [0.25, 0.5, 0.75], "bake_seconds": 120},
            {
                "Type": "LINEAR",
                "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 25},
                "WaitIntervalInSeconds": 120,
            },
        ),
    ],
)
def test_update_endpoint_is_a_blue_green_update_rolled_back_on_the_alarms(canary, routing):
    uc = _uc(canary=canary)
    alarms = list(sv.alarm_names(uc).values())
    request = sv.update_endpoint_request(uc, config_name="fraud-detection-v4-0123456789", alarms=alarms)
    validate("UpdateEndpoint", request)
    policy = request["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"] == routing
    assert [a["AlarmName"] for a in request["DeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"]] == alarms
    validate("UpdateEndpoint", sv.replace_endpoint_request(uc, config_name="fraud-detection-v3-0123456789"))


def test_alarms_watch_each_guardrail_and_the_published_metric_matches_its_alarm():
    uc = _uc()
    g = uc.promotion.guardrails
    reqs = {a["AlarmName"]: a for a in sv.alarm_requests(uc)}
    for a in reqs.values():
        _cw("PutMetricAlarm", a)
    names = sv.alarm_names(uc)
    rate = reqs[names["error_rate"]]
    assert rate["Threshold"] == g.max_error_rate
    assert [m["Id"] for m in rate["Metrics"] if m.get("ReturnData")] == ["rate"]
    assert {m["MetricStat"]["Metric"]["MetricName"] for m in rate["Metrics"] if "MetricStat" in m} == {
        "Invocation5XXErrors",
        "Invocations",
    }
    lat = reqs[names["p99_latency_ms"]]
    assert lat["ExtendedStatistic"] == "p99" and lat["Threshold"] == g.max_p99_latency_ms * 1000  # microseconds
    shift = reqs[names["score_shift_psi"]]
    put = sv.score_shift_metric_request(uc, 0.31, datetime(2026, 1, 2, tzinfo=UTC))
    _cw("PutMetricData", put)
    [datum] = put["MetricData"]
    assert (put["Namespace"], datum["MetricName"], datum["Dimensions"]) == (
        shift["Namespace"],
        shift["MetricName"],
        shift["Dimensions"],
    )
    assert shift["Threshold"] == g.score_shift.threshold
    validate("UpdateModelPackage", sv.approval_request(PACKAGE, False, "x" * 5000))


@pytest.mark.parametrize(
    ("canary", "sagemaker", "field"),
    [
        ({"steps": [0.1, 0.5]}, None, "promotion.canary.steps"),  # LINEAR moves equal steps
        ({"steps": [0.6, 0.9]}, None, "promotion.canary.steps"),  # at most half the capacity
        ({"weight": 0.1, "bake_seconds": 2.5}, None, "promotion.canary.bake_seconds"),
        (None, {"instance_type": "ml.inf1.xlarge"}, "promotion.sagemaker.instance_type"),
    ],
)
def test_what_sagemakers_guardrails_refuse_is_refused_by_the_config_naming_the_field(
    canary, sagemaker, field, tmp_path
):
    data = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    data["target"] = "aws"
    data["gold"]["transaction_features"]["sql"] = str(
        ROOT / "dags/usecases/sql/fraud_detection/transaction_features.sql"
    )
    if canary is not None:
        data["promotion"]["canary"] = canary
    if sagemaker is not None:
        data["promotion"]["sagemaker"] = sagemaker
    path = tmp_path / "fraud_detection.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UseCaseError) as e:
        load_usecase(path)
    [line] = e.value.lines
    assert line.startswith(f"{path}: {field}: "), line
    data["target"] = "local"  # the local endpoint moves weights itself: nothing to refuse
    path.write_text(yaml.safe_dump(data))
    load_usecase(path)


def test_the_variant_weights_form_is_two_named_variants_in_one_config_and_a_weights_update():
    uc = _uc(canary={"steps": [0.1, 0.5], "bake_seconds": 60}, sagemaker={"canary_mode": "variant_weights"})
    pairs = [("champion", "model-v3", 0.9), ("challenger", "model-v4", 0.1)]
    config = sv.create_endpoint_config_request(uc, version=4, model_name="", variants=pairs)
    validate("CreateEndpointConfig", config)
    assert [
        (v["VariantName"], v["ModelName"], v["InitialVariantWeight"]) for v in config["ProductionVariants"]
    ] == pairs
    # the name does not depend on the weights: the next step moves them on the same config
    other = sv.create_endpoint_config_request(
        uc, version=4, model_name="", variants=[("champion", "model-v3", 0.5), ("challenger", "model-v4", 0.5)]
    )
    assert other["EndpointConfigName"] == config["EndpointConfigName"]
    request = sv.weights_request(uc, {"champion": 0.5, "challenger": 0.5})
    validate("UpdateEndpointWeightsAndCapacities", request)
    assert request["DesiredWeightsAndCapacities"] == [
        {"VariantName": "champion", "DesiredWeight": 0.5},
        {"VariantName": "challenger", "DesiredWeight": 0.5},
    ]


class _FakeSageMaker:
    """DescribeEndpoint answers in turn; what the canary asks of the models and configs is there."""

    def __init__(self, describes):
        self.describes = list(describes)
        self.updates = []

    def describe_endpoint(self, EndpointName):  # noqa: N803 (boto3's names)
        return self.describes.pop(0) if len(self.describes) > 1 else self.describes[0]

    def describe_model(self, ModelName):  # noqa: N803
        return {}

    def describe_endpoint_config(self, EndpointConfigName):  # noqa: N803
        return {}

    def update_endpoint(self, **kw):
        self.updates.append(kw)


def test_a_canary_waits_for_another_runs_update_and_then_refuses_the_config_it_left(monkeypatch):
    """The endpoint is updating to a config that is neither the champion's nor the challenger's (a
    superseded run's canary): the canary waits for SageMaker to finish it, then refuses in one line
    naming the config the endpoint serves - it never starts an update over another one."""
    from mlblueprints.errors import PermanentError
    from mlblueprints.serving import aws as sa

    uc = _uc()
    other = "fraud-detection-v9-0123456789"
    sm = _FakeSageMaker(
        [
            {
                "EndpointStatus": "Updating",
                "EndpointConfigName": "blue",
                "PendingDeploymentSummary": {"EndpointConfigName": other},
            },
            {
                "EndpointStatus": "Updating",
                "EndpointConfigName": "blue",
                "PendingDeploymentSummary": {"EndpointConfigName": other},
            },
            {"EndpointStatus": "InService", "EndpointConfigName": other},
        ]
    )

    class Runtime:
        def client(self, service):
            return sm

    ep = sa.AwsEndpoint(uc, Runtime())
    monkeypatch.setattr(sa.AwsEndpoint, "POLL_SECONDS", 0.0)
    monkeypatch.setattr(ep, "config_for", lambda version, run_id, git_commit="": f"config-v{version}")
    monkeypatch.setattr(ep, "_package", lambda v: f"arn:aws:sagemaker:eu-west-1:123456789012:model-package/g/{v}")
    monkeypatch.setattr(ep, "deployments", lambda: type("H", (), {"deployment": lambda self, r: None})())
    with pytest.raises(PermanentError, match=f"serves {other}, neither the champion's config"):
        ep.canary(None, 4, 3, "run-1")
    assert sm.updates == [] and sm.describes == [sm.describes[-1]]


def _ClientError(code):  # noqa: N802 (what boto3 raises)
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "not found"}}, "Describe")


def test_the_endpoint_update_runs_what_is_left_and_a_retried_task_does_not_update_twice():
    """run_endpoint_update (the Airflow task's; the state machine sends the same requests natively):
    creates only what does not exist, updates once - a retry finding its update under way waits for
    it, one finding it ended sends nothing - runs the during work, then polls until the update
    ended, at most MaxPolls times (a permanent error: no retry)."""
    from mlblueprints.aws.direct import run_endpoint_update

    class Sm:
        def __init__(self, status, config, pending=None):
            self.calls, self.status, self.config, self.pending = [], status, config, pending
            self.changed = datetime(2025, 12, 31, tzinfo=UTC)  # before the deployment started
            self.models, self.configs = {"m-old"}, set()

        def describe_model(self, ModelName):  # noqa: N803
            if ModelName not in self.models:
                raise _ClientError("ValidationException")

        def describe_endpoint_config(self, EndpointConfigName):  # noqa: N803
            if EndpointConfigName not in self.configs:
                raise _ClientError("ValidationException")

        def create_model(self, **kw):
            self.calls.append(("CreateModel", kw["ModelName"]))

        def create_endpoint_config(self, **kw):
            self.calls.append(("CreateEndpointConfig", kw["EndpointConfigName"]))

        def update_endpoint(self, **kw):
            self.calls.append(("UpdateEndpoint", kw["EndpointConfigName"]))
            self.status, self.pending = "Updating", kw["EndpointConfigName"]

        def describe_endpoint(self, EndpointName):  # noqa: N803
            self.calls.append(("DescribeEndpoint", self.status))
            d = {"EndpointStatus": self.status, "EndpointConfigName": self.config, "LastModifiedTime": self.changed}
            if self.status == "Updating":
                d["PendingDeploymentSummary"] = {"EndpointConfigName": self.pending}
                polls = sum(1 for c in self.calls if c[0] == "DescribeEndpoint")
                if polls >= 3:  # SageMaker finishes the update
                    self.status, self.config = "InService", self.pending
            return d

    request = {
        "EndpointName": "ep",
        "Model": {"ModelName": "m-new"},
        "EndpointConfig": {"EndpointConfigName": "green"},
        "Update": {"EndpointName": "ep", "EndpointConfigName": "green"},
        "StartedAt": "2026-01-01T00:00:00+00:00",
        "PollSeconds": 0,
        "MaxPolls": 10,
    }
    sm = Sm("InService", "blue")
    out = run_endpoint_update(sm, request, lambda: {"sent": 1}, sleep=lambda s: None)
    assert out["During"] == {"sent": 1} and out["Endpoint"]["EndpointConfigName"] == "green"
    made = [c for c in sm.calls if c[0] != "DescribeEndpoint"]
    assert made == [("CreateModel", "m-new"), ("CreateEndpointConfig", "green"), ("UpdateEndpoint", "green")]
    # a retried task: the model and config exist, the update is under way
    sm = Sm("Updating", "blue", pending="green")
    sm.models.add("m-new")
    sm.configs.add("green")
    out = run_endpoint_update(sm, request, lambda: None, sleep=lambda s: None)
    assert [c for c in sm.calls if c[0] != "DescribeEndpoint"] == []
    assert (out["Endpoint"]["EndpointStatus"], out["Endpoint"]["EndpointConfigName"]) == ("InService", "green")
    # a retried task whose update ended - promoted (on green), or rolled back (on blue, changed
    # since the deployment started) - sends nothing again
    for config, changed in (
        ("green", datetime(2025, 12, 31, tzinfo=UTC)),
        ("blue", datetime(2026, 1, 1, 0, 5, tzinfo=UTC)),
    ):
        sm = Sm("InService", config)
        sm.models.add("m-new")
        sm.configs.add("green")
        sm.changed = changed
        out = run_endpoint_update(sm, request, lambda: None, sleep=lambda s: None)
        assert [c for c in sm.calls if c[0] != "DescribeEndpoint"] == [] and out["Endpoint"][
            "EndpointConfigName"
        ] == config
    # an update that never ends is an error after MaxPolls
    sm = Sm("Updating", "blue", pending="other")
    sm.describe_endpoint = lambda EndpointName: {"EndpointStatus": "Updating", "EndpointConfigName": "blue"}  # noqa: N803
    sm.update_endpoint = lambda **kw: None
    with pytest.raises(Exception, match="still Updating after 10 polls"):
        run_endpoint_update(sm, {**request, "Model": None, "EndpointConfig": None}, lambda: None, sleep=lambda s: None)
