"""Drift alerting on the aws target (``mlblueprints.monitoring.aws``), botocore validating every
request, under moto:

* the requests are well-formed for the service models, and PutMetricData's batches stay within
  CloudWatch's limits as botocore encodes them (1,000 metrics, 1 MB);
* what CloudWatch would refuse (NaN, infinities, values beyond 2**360, two-week-old windows) is
  skipped and counted, and the signal metrics the alarms watch carry 1.0 / 0.0 as decided;
* ``ensure_alerting`` creates the queue, rule, target, queue policy and alarms, a second run
  changes nothing, and a signal the policy drops loses its alarm;
* the rule routes what it should: moto's EventBridge delivers the alarm event CloudWatch would put
  on the bus (moto's alarms evaluate nothing and put no event, so the test puts it) to the queue,
  and not an OK transition or another use case's alarm;
* the drift_alert Asset's watcher, rebuilt from its serialized form as the triggerer rebuilds it,
  reads the queue through the moto server (aiobotocore) and yields one event for the messages;
  the Amazon provider's trigger deletes the messages before it yields the event.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import botocore.session
import pytest
import yaml
from botocore.validate import validate_parameters
from moto_world import REGION

from mlblueprints.config import parse_usecase
from mlblueprints.monitoring import aws as ma

pytestmark = [pytest.mark.aws]

moto = pytest.importorskip("moto")
from moto import mock_aws  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 3, 5, 6, 30, tzinfo=UTC)


def usecase(target: str = "aws", **monitoring):
    data = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    data["target"] = target
    data["gold"]["transaction_features"]["sql"] = str(
        ROOT / "dags/usecases/sql/fraud_detection/transaction_features.sql"
    )
    data["monitoring"] = monitoring
    return parse_usecase(data)


@pytest.fixture
def uc():
    return usecase()


def row(column: str, signal: str, metric: str, statistic: float, version: int = 3, end: str = "2024-03-04") -> dict:
    return {
        "usecase": "fraud_detection",
        "model_name": "fraud_xgb",
        "model_version": version,
        "window_start": end,
        "window_end": end,
        "column": column,
        "signal": signal,
        "metric": metric,
        "statistic": statistic,
        "threshold": 0.1,
        "drifted": statistic is not None and statistic >= 0.1,
        "rows": 5000,
    }


def decision(signals: list[str], version: int = 3, end: str = "2024-03-04") -> dict:
    return {
        "fired": bool(signals),
        "signals": signals,
        "reason": ", ".join(signals) or "no drift",
        "drifted_columns": [],
        "window_start": end,
        "window_end": end,
        "model_version": version,
    }


WINDOW = [
    row("amount", "column_drift", "wasserstein", 0.31),
    row("merchant_category", "column_drift", "jensenshannon", 0.02),
    row("score", "prediction_drift", "wasserstein", 0.12),
    row("", "dataset_drift", "drifted_share", 0.25),
    row("amount", "data_quality", "null_share", 0.0),
    row("", "model_quality", "roc_auc", 0.91),
]


def validate(service: str, operation: str, params: dict) -> None:
    model = botocore.session.get_session().get_service_model(service)
    validate_parameters(params, model.operation_model(operation).input_shape)


# ---------------------------------------------------------------- pure: the requests


def test_every_request_is_valid_for_the_service_models(uc):
    for r in ma.metric_data_requests(uc, WINDOW, decision(["prediction_drift"]), now=NOW):
        validate("cloudwatch", "PutMetricData", r)
    for a in ma.alarm_requests(uc):
        validate("cloudwatch", "PutMetricAlarm", a)
    put_rule, put_targets = ma.rule_requests(uc)
    validate("events", "PutRule", put_rule)
    validate("events", "PutTargets", put_targets)
    create, attrs = ma.queue_requests(uc)
    validate("sqs", "CreateQueue", create)
    validate("sqs", "SetQueueAttributes", attrs)
    assert len(put_rule["EventPattern"]) <= 4096


def test_a_window_becomes_one_datum_per_row_and_two_per_signal(uc):
    datums, skipped = ma.metric_datums(uc, WINDOW, decision(["prediction_drift"]), now=NOW)
    assert skipped == {"not_finite": 0, "out_of_range": 0, "too_old": 0}
    per_row = [d for d in datums if not d["MetricName"].endswith("_fired")]
    assert [(d["MetricName"], d["Value"]) for d in per_row] == [(r["metric"], r["statistic"]) for r in WINDOW]
    dims = {(d["MetricName"], tuple((x["Name"], x["Value"]) for x in d["Dimensions"])) for d in per_row}
    assert ("wasserstein", (("ModelVersion", "3"), ("Signal", "column_drift"), ("Column", "amount"))) in dims
    # a dataset-level row has no Column dimension (CloudWatch refuses an empty value)
    assert ("drifted_share", (("ModelVersion", "3"), ("Signal", "dataset_drift"))) in dims
    # the window ends on 2024-03-04: its data are stamped 00:00 UTC of the day after
    assert {d["Timestamp"] for d in datums} == {"2024-03-05T00:00:00Z"}
    fired = {
        (d["MetricName"], tuple(x["Value"] for x in d.get("Dimensions", []))): d["Value"]
        for d in datums
        if d["MetricName"].endswith("_fired")
    }
    policy = uc.monitoring.signals(uc.training.task)
    assert policy == ["dataset_drift", "prediction_drift", "model_quality"]
    assert fired == {
        **{(f"{s}_fired", ("3",)): float(s == "prediction_drift") for s in policy},
        **{(f"{s}_fired", ()): float(s == "prediction_drift") for s in policy},
    }


def test_what_cloudwatch_refuses_is_skipped_and_counted(uc):
    bad = [
        row("a", "column_drift", "wasserstein", math.nan),
        row("b", "column_drift", "wasserstein", math.inf),
        row("c", "column_drift", "wasserstein", -math.inf),
        row("d", "column_drift", "psi", 2.0**361),
        row("e", "column_drift", "psi", None),
    ]
    datums, skipped = ma.metric_datums(uc, [*bad, *WINDOW], decision([]), now=NOW)
    assert skipped == {"not_finite": 4, "out_of_range": 1, "too_old": 0}
    assert len([d for d in datums if not d["MetricName"].endswith("_fired")]) == len(WINDOW)
    # a window more than two weeks old (a backfill): CloudWatch refuses the timestamps, nothing goes
    old = NOW - timedelta(days=20)
    datums, skipped = ma.metric_datums(uc, WINDOW, decision([], end=old.date().isoformat()), now=NOW)
    assert datums == [] and skipped["too_old"] == len(WINDOW) + 2 * 3
    assert ma.metric_data_requests(uc, WINDOW, decision([], end=old.date().isoformat()), now=NOW) == []


def test_a_window_ending_today_is_stamped_now_not_in_the_future(uc):
    today = NOW.date().isoformat()
    datums, _ = ma.metric_datums(uc, WINDOW, decision([], end=today), now=NOW)
    assert {d["Timestamp"] for d in datums} == {NOW.strftime("%Y-%m-%dT%H:%M:%SZ")}


def _body_sizes(requests: list[dict]) -> list[int]:
    """The size of each PutMetricData request as botocore encodes it, uncompressed (botocore
    gzips large bodies of this operation; the bound holds without that)."""
    from botocore.config import Config

    sizes: list[int] = []
    with mock_aws():
        cw = boto3.client("cloudwatch", region_name=REGION, config=Config(disable_request_compression=True))
        cw.meta.events.register(
            "request-created.cloudwatch.PutMetricData", lambda request, **_: sizes.append(len(request.body or b""))
        )
        for r in requests:
            cw.put_metric_data(**r)
    return sizes


def test_batches_stay_within_cloudwatchs_limits(uc):
    many = [row(f"c{i:04d}", "column_drift", "wasserstein", i / 1000) for i in range(2500)]
    requests = ma.metric_data_requests(uc, many, decision(["dataset_drift"]), now=NOW)
    assert [len(r["MetricData"]) for r in requests] == [1000, 1000, 506]
    sent = [d for r in requests for d in r["MetricData"]]
    assert [d["Dimensions"][2]["Value"] for d in sent[:2500]] == [f"c{i:04d}" for i in range(2500)]
    # columns with the longest names CloudWatch takes: bytes, not the count, cut the batches
    long = [row(f"{i:04d}" + "x" * 1100, "column_drift", "wasserstein", 0.5) for i in range(1500)]
    requests = ma.metric_data_requests(uc, long, decision([]), now=NOW)
    assert len(requests[0]["MetricData"]) < ma.MAX_DATUMS_PER_REQUEST
    assert sum(len(r["MetricData"]) for r in requests) == 1500 + 6
    assert all(len(d["Value"]) <= 1024 for r in requests for d0 in r["MetricData"] for d in d0.get("Dimensions", []))
    sizes = _body_sizes(requests)
    assert len(sizes) == len(requests) and max(sizes) < ma.MAX_REQUEST_BYTES, sizes


def test_alarms_follow_the_alert_policy(uc):
    alarms = ma.alarm_requests(usecase(alert={"consecutive": 3, "signals": ["dataset_drift", "data_quality"]}))
    assert [a["AlarmName"] for a in alarms] == [
        "mlb-fraud-detection-drift-dataset_drift",
        "mlb-fraud-detection-drift-data_quality",
    ]
    for a in alarms:
        assert a["EvaluationPeriods"] == a["DatapointsToAlarm"] == 3 and a["Period"] == 86_400
        assert a["Threshold"] == 1.0 and a["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        assert a["TreatMissingData"] == "notBreaching" and a["Statistic"] == "Maximum"
        assert "Dimensions" not in a  # the dimensionless signal metric: every model version
    # model quality is a signal of binary models only, and only while enabled
    off = usecase(model_quality={"enabled": False}, alert={"signals": ["dataset_drift"]})
    assert [a["MetricName"] for a in ma.alarm_requests(off)] == ["dataset_drift_fired"]


def test_more_consecutive_windows_than_an_alarm_evaluates_fail_at_parse_time():
    from mlblueprints.config import UseCaseError

    with pytest.raises(UseCaseError, match="monitoring.alert.consecutive"):
        usecase(alert={"consecutive": 8})
    usecase(alert={"consecutive": 7})
    usecase("local", alert={"consecutive": 30})  # no CloudWatch on the local target


def test_the_drift_alert_asset_watches_the_queue_only_on_aws_with_monitoring():
    from mlblueprints.core.naming import drift_alert_asset

    uc = usecase()
    assert drift_alert_asset(uc).watch == {
        "kind": "sqs",
        "name": "mlb-fraud-detection-drift-alerts",
        "queue_url": "https://sqs.eu-west-1.amazonaws.com/123456789012/mlb-fraud-detection-drift-alerts",
        "region": "eu-west-1",
        "aws_conn_id": "aws_default",
        "poll_seconds": 60,
    }
    assert drift_alert_asset(usecase("local")).watch is None
    assert drift_alert_asset(uc.model_copy(update={"monitoring": None})).watch is None
    # the watch is not part of the Asset's identity (the same Asset on every target)
    assert drift_alert_asset(uc) == drift_alert_asset(usecase("local"))


def test_names_match_the_stack():
    template = (ROOT / "infra/mlblueprints.yaml").read_text()
    assert 'QueueName: !Sub "${ResourcePrefix}-drift-alerts"' in template
    assert 'Name: !Sub "${ResourcePrefix}-drift-alert"' in template
    assert 'alarmName: [{prefix: !Sub "${ResourcePrefix}-drift"}]' in template
    uc = usecase()
    assert ma.queue_name(uc) == "mlb-fraud-detection-drift-alerts"
    assert ma.rule_name(uc) == "mlb-fraud-detection-drift-alert"
    assert all(a["AlarmName"].startswith("mlb-fraud-detection-drift") for a in ma.alarm_requests(uc))


# ---------------------------------------------------------------- under moto


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield {s: boto3.client(s, region_name=REGION) for s in ("cloudwatch", "events", "sqs")}


def test_ensure_alerting_creates_then_updates(uc, aws):
    cw, ev, sqs = aws["cloudwatch"], aws["events"], aws["sqs"]
    made = ma.ensure_alerting(uc, cw, ev, sqs)
    # the URL the DAG file derived for the watcher is the queue's
    assert made["queue_url"] == ma.queue_url(uc) and made["queue_arn"] == ma.queue_arn(uc)
    assert made["rule"] == ma.rule_arn(uc)
    attrs = sqs.get_queue_attributes(QueueUrl=made["queue_url"], AttributeNames=["All"])["Attributes"]
    assert attrs["KmsMasterKeyId"] == uc.aws.kms_key_arn and attrs["MessageRetentionPeriod"] == "1209600"
    policy = json.loads(attrs["Policy"])
    [allow] = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
    assert allow["Principal"] == {"Service": "events.amazonaws.com"} and allow["Action"] == "sqs:SendMessage"
    assert allow["Condition"]["ArnEquals"]["aws:SourceArn"] == made["rule"]
    rule = ev.describe_rule(Name=ma.rule_name(uc))
    assert rule["State"] == "ENABLED" and json.loads(rule["EventPattern"]) == ma.event_pattern(uc)
    [target] = ev.list_targets_by_rule(Rule=ma.rule_name(uc))["Targets"]
    assert target == {"Id": "queue", "Arn": made["queue_arn"]}
    alarms = cw.describe_alarms(AlarmNamePrefix="mlb-fraud-detection-drift-")["MetricAlarms"]
    assert sorted(a["AlarmName"] for a in alarms) == sorted(made["alarms"])
    assert {a["MetricName"] for a in alarms} == {"dataset_drift_fired", "prediction_drift_fired", "model_quality_fired"}

    # again: nothing new, nothing lost
    again = ma.ensure_alerting(uc, cw, ev, sqs)
    assert again == made
    assert len(sqs.list_queues()["QueueUrls"]) == 1
    assert len(ev.list_targets_by_rule(Rule=ma.rule_name(uc))["Targets"]) == 1

    # a signal the policy drops loses its alarm
    fewer = usecase(alert={"signals": ["dataset_drift"]})
    assert ma.ensure_alerting(fewer, cw, ev, sqs)["alarms"] == ["mlb-fraud-detection-drift-dataset_drift"]
    left = cw.describe_alarms(AlarmNamePrefix="mlb-fraud-detection-drift-")["MetricAlarms"]
    assert [a["AlarmName"] for a in left] == ["mlb-fraud-detection-drift-dataset_drift"]


def test_publish_puts_the_windows_metrics(uc, aws):
    cw = aws["cloudwatch"]
    now = datetime.now(UTC)
    end = (now - timedelta(days=1)).date().isoformat()
    rows = [{**r, "window_start": end, "window_end": end} for r in WINDOW] + [
        row("broken", "column_drift", "wasserstein", math.nan, end=end)
    ]
    out = ma.publish(uc, rows, decision(["dataset_drift"], end=end), cw, now=now)
    assert out == {
        "namespace": "mlblueprints/fraud_detection",
        "requests": 1,
        "datums": len(WINDOW) + 6,
        "skipped": {"not_finite": 1, "out_of_range": 0, "too_old": 0},
    }
    listed = cw.list_metrics(Namespace="mlblueprints/fraud_detection")["Metrics"]
    names = {(m["MetricName"], tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"]))) for m in listed}
    assert ("wasserstein", (("Column", "amount"), ("ModelVersion", "3"), ("Signal", "column_drift"))) in names
    assert ("dataset_drift_fired", ()) in names and ("dataset_drift_fired", (("ModelVersion", "3"),)) in names
    ts = datetime.fromisoformat(end) + timedelta(days=1)
    got = cw.get_metric_statistics(
        Namespace="mlblueprints/fraud_detection",
        MetricName="dataset_drift_fired",
        StartTime=ts - timedelta(days=1),
        EndTime=ts + timedelta(days=1),
        Period=86_400,
        Statistics=["Maximum"],
    )["Datapoints"]
    assert [d["Maximum"] for d in got] == [1.0]


def alarm_event(name: str, state: str) -> dict:
    """The event CloudWatch puts on the default bus when an alarm changes state (its documented
    shape, trimmed)."""
    return {
        "Source": "aws.cloudwatch",
        "DetailType": "CloudWatch Alarm State Change",
        "Detail": json.dumps(
            {"alarmName": name, "state": {"value": state, "reason": "test"}, "previousState": {"value": "OK"}}
        ),
    }


def _drain(sqs, url: str) -> list[dict]:
    out = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            return out
        out += got
        for m in got:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def test_the_rule_sends_an_alarm_going_to_alarm_and_nothing_else(uc, aws):
    made = ma.ensure_alerting(uc, aws["cloudwatch"], aws["events"], aws["sqs"])
    ev, sqs = aws["events"], aws["sqs"]
    ev.put_events(
        Entries=[
            alarm_event("mlb-fraud-detection-drift-dataset_drift", "OK"),
            alarm_event("mlb-claim-cost-drift-dataset_drift", "ALARM"),  # another use case's
            alarm_event("mlb-fraud-detection-latency", "ALARM"),  # not a drift alarm
        ]
    )
    assert _drain(sqs, made["queue_url"]) == []
    ev.put_events(Entries=[alarm_event("mlb-fraud-detection-drift-dataset_drift", "ALARM")])
    [msg] = _drain(sqs, made["queue_url"])
    body = json.loads(msg["Body"])
    assert body["detail"]["alarmName"] == "mlb-fraud-detection-drift-dataset_drift"
    # and the drift_alert Asset event a state machine puts on the bus
    ev.put_events(
        Entries=[
            {
                "Source": "mlblueprints",
                "DetailType": "mlblueprints asset updated",
                "Detail": json.dumps({"asset": "fraud_detection.drift_alert"}),
            }
        ]
    )
    assert len(_drain(sqs, made["queue_url"])) == 1


# ---------------------------------------------------------------- the Asset watcher


def drift_asset(uc):
    """The drift_alert Asset of the training DAG the builder renders for ``uc``."""
    from mlblueprints import patterns
    from mlblueprints.airflow.builder import build_dag

    dag = build_dag(patterns.declare("training", uc), uc)
    [asset] = [a for a in dag.timetable.asset_condition.objects if getattr(a, "name", "") == f"{uc.name}.drift_alert"]
    return asset


def test_the_watcher_turns_queued_alerts_into_one_event(moto_world, uc):
    [watcher] = drift_asset(uc).watchers
    classpath, kwargs = watcher.trigger.serialize()
    assert classpath == "airflow.providers.amazon.aws.triggers.sqs.SqsSensorTrigger"
    # what the triggerer does with a serialized trigger
    module, _, name = classpath.rpartition(".")
    trigger = getattr(importlib.import_module(module), name)(**kwargs)

    cw, ev, sqs = (boto3.client(s, region_name=REGION) for s in ("cloudwatch", "events", "sqs"))
    made = ma.ensure_alerting(uc, cw, ev, sqs)
    assert kwargs["sqs_queue"] == made["queue_url"]
    ev.put_events(Entries=[alarm_event("mlb-fraud-detection-drift-prediction_drift", "ALARM")])
    sqs.send_message(QueueUrl=made["queue_url"], MessageBody=json.dumps({"reason": "retrain: new fraud ring"}))

    def queued() -> int:
        a = sqs.get_queue_attributes(
            QueueUrl=made["queue_url"],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])

    assert queued() == 2

    async def first_event():
        run = trigger.run()
        try:
            event = await asyncio.wait_for(run.__anext__(), timeout=60)
            return event, queued()  # the trigger has not resumed past its yield yet
        finally:
            await run.aclose()

    event, left_at_yield = asyncio.run(first_event())
    assert event.payload["status"] == "success"
    bodies = [json.loads(m["Body"]) for m in event.payload["message_batch"]]
    assert sorted(b.get("reason") or b["detail"]["alarmName"] for b in bodies) == [
        "mlb-fraud-detection-drift-prediction_drift",
        "retrain: new fraud ring",
    ]
    # the provider's trigger deletes what it received before it yields the event: at-most-once
    # between the queue and the Asset event (a triggerer that dies in between loses the alert)
    assert left_at_yield == 0
