"""Drift alerting on the aws target: CloudWatch metrics and alarms, an EventBridge rule, and the
SQS queue the ``<usecase>.drift_alert`` Asset's watcher reads.

Pure request builders (no boto3 import) and thin functions that send them with a boto3-like
client. The path of an alert::

    monitoring task --PutMetricData--> CloudWatch --alarm goes to ALARM--> EventBridge rule
        --> SQS queue --AssetWatcher (the Amazon provider's SqsSensorTrigger)--> drift_alert Asset
        --> the training DAG

Anything else that sends to the queue (SageMaker Model Monitor through a rule of its own, a
person with ``aws sqs send-message``) starts retraining the same way.

Metrics (namespace ``mlblueprints/<usecase>``, unit None, one sample per window):

* one datum per metric row of a window: metric name = the row's ``metric``, value = its
  ``statistic``, dimensions ``ModelVersion``, ``Signal`` and ``Column`` (no ``Column`` on a
  dataset-level row: CloudWatch refuses an empty dimension value);
* one datum per alert signal: metric ``<signal>_fired``, 1.0 when the window's decision lists
  the signal in ``signals`` (the signals that breached in this window), else 0.0; published
  twice, with the dimension ``ModelVersion`` (to read per version) and with no dimension. The
  alarms watch the dimensionless one: an alarm names one metric, dimensions included, when it
  is created, and the version that will be scored next is not known then. Every window
  publishes the dimensionless datum whatever version scored it, so one alarm per signal
  covers every version to come.

Timestamp of a window's data: 00:00 UTC of the day after ``window_end`` (the window's last
day is complete then), or now if that is later than now (CloudWatch refuses timestamps more
than two hours ahead). A window whose timestamp is older than two weeks (a backfill) is not
published: CloudWatch refuses such timestamps. Values CloudWatch refuses (NaN, infinities,
beyond +-2**360) are skipped. :func:`metric_datums` counts what it skips.

Republishing a window (a retried task) adds a second sample of the same values: the alarms use
the Maximum statistic, so a retry changes no alarm.

Alarms (``mlb-<usecase>-drift-<signal>``, one per signal of ``monitoring.alert``): Maximum of
``<signal>_fired`` >= 1 in ``alert.consecutive`` consecutive periods of one day, missing data
not breaching. CloudWatch allows at most seven days of evaluation (Period x EvaluationPeriods
<= 604,800 s), so ``consecutive`` is at most 7 on aws. An alarm changes state once: while a
signal keeps breaching it stays in ALARM and sends no further event (CloudWatch's own cooldown;
``alert.cooldown_days`` is the monitoring pattern's, in Airflow).

The names are those of the CloudFormation stack (``infra/mlblueprints.yaml``: queue
``mlb-<usecase>-drift-alerts``, rule ``mlb-<usecase>-drift-alert``, the rule's event pattern),
so :func:`ensure_alerting` on an account where the stack runs updates the stack's resources to
what they already are, and without the stack creates them. The queue is encrypted with the use
case's KMS key (``aws.kms_key_arn``): EventBridge must be allowed ``kms:GenerateDataKey`` and
``kms:Decrypt`` on it (the stack's key policy allows it; an existing key needs that statement).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from mlblueprints.config import UseCase
from mlblueprints.stepfunctions.names import aws_section, resource_prefix

log = logging.getLogger(__name__)

# CloudWatch PutMetricData (API reference): at most 1,000 metrics per request, 1 MB per request,
# values within +-2**360 (no NaN or infinity), timestamps at most two weeks old and two hours ahead
MAX_DATUMS_PER_REQUEST = 1000
MAX_REQUEST_BYTES = 1_000_000
MAX_ABS_VALUE = 2.0**360
MAX_AGE = timedelta(days=14)
MAX_AHEAD = timedelta(hours=2)
DIMENSION_VALUE_MAX = 1024
# PutMetricAlarm: Period x EvaluationPeriods <= 604,800 s (seven days)
DAY_SECONDS = 86_400
MAX_EVALUATION_SECONDS = 604_800
MAX_CONSECUTIVE = MAX_EVALUATION_SECONDS // DAY_SECONDS
# SQS: the longest retention (14 days), as the stack sets it
RETENTION_SECONDS = 1_209_600
# CloudWatch's alarm events on EventBridge (as the stack's rule matches them)
ALARM_SOURCE, ALARM_DETAIL_TYPE = "aws.cloudwatch", "CloudWatch Alarm State Change"
TARGET_ID = "queue"


# ---------------------------------------------------------------- names


def namespace(uc: UseCase) -> str:
    return f"mlblueprints/{uc.name}"


def signal_metric(signal: str) -> str:
    """The metric an alarm watches: 1.0 in a window where ``signal`` breached, 0.0 where not."""
    return f"{signal}_fired"


def alarm_name(uc: UseCase, signal: str) -> str:
    return f"{resource_prefix(uc)}-drift-{signal}"


def rule_name(uc: UseCase) -> str:
    return f"{resource_prefix(uc)}-drift-alert"


def queue_name(uc: UseCase) -> str:
    return f"{resource_prefix(uc)}-drift-alerts"


def _partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def queue_url(uc: UseCase) -> str:
    """The queue's URL, derived from the aws section (region, account): known when the DAG file
    is parsed, before anything asks SQS."""
    aws = aws_section(uc)
    domain = "amazonaws.com.cn" if aws.region.startswith("cn-") else "amazonaws.com"
    return f"https://sqs.{aws.region}.{domain}/{aws.account_id}/{queue_name(uc)}"


def queue_arn(uc: UseCase) -> str:
    aws = aws_section(uc)
    return f"arn:{_partition(aws.region)}:sqs:{aws.region}:{aws.account_id}:{queue_name(uc)}"


def rule_arn(uc: UseCase) -> str:
    aws = aws_section(uc)
    return f"arn:{_partition(aws.region)}:events:{aws.region}:{aws.account_id}:rule/{rule_name(uc)}"


def alert_signals(uc: UseCase) -> list[str]:
    """The signals of the alert policy for the use case's model (model quality: binary only)."""
    if uc.monitoring is None:
        raise ValueError(f"{uc.name}: drift alerting needs the monitoring section")
    return uc.monitoring.signals(uc.training.task if uc.training else "")


def watch(uc: UseCase, poll_seconds: int = 60) -> dict[str, Any]:
    """What the ``drift_alert`` Asset's watcher reads (``core.naming.AssetSpec.watch``)."""
    aws = aws_section(uc)
    return {
        "kind": "sqs",
        "name": queue_name(uc),
        "queue_url": queue_url(uc),
        "region": aws.region,
        "aws_conn_id": aws.aws_conn_id,
        "poll_seconds": poll_seconds,
    }


# ---------------------------------------------------------------- metric data


def window_timestamp(window_end: str | date, now: datetime) -> datetime:
    """00:00 UTC of the day after ``window_end``, or ``now`` if that is earlier."""
    end = date.fromisoformat(window_end) if isinstance(window_end, str) else window_end
    after = datetime.combine(end + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    return min(after, now)


def _dimension_value(text: str) -> str:
    """A dimension value CloudWatch takes: ASCII, 1-1024 characters."""
    return text.encode("ascii", "backslashreplace").decode()[:DIMENSION_VALUE_MAX]


def _dims(**pairs: str) -> list[dict[str, str]]:
    return [{"Name": k, "Value": _dimension_value(v)} for k, v in pairs.items() if v != ""]


def metric_datums(
    uc: UseCase, rows: Iterable[Mapping[str, Any]], decision: Mapping[str, Any], *, now: datetime | None = None
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The MetricData of one window (module docstring), and what was skipped:
    ``{"not_finite": n, "out_of_range": n, "too_old": n}``."""
    now = now or datetime.now(UTC)
    skipped = {"not_finite": 0, "out_of_range": 0, "too_old": 0}
    rows = list(rows)
    ts = window_timestamp(decision["window_end"], now)
    stamp = ts.strftime("%Y-%m-%dT%H:%M:%SZ")
    fired = set(decision.get("signals") or [])
    policy = alert_signals(uc)
    signals = policy + sorted(fired - set(policy))
    version = str(int(decision["model_version"]))
    out: list[dict[str, Any]] = []
    for r in rows:
        value = r.get("statistic")
        value = float(value) if value is not None else math.nan
        if not math.isfinite(value):
            skipped["not_finite"] += 1
            continue
        if abs(value) > MAX_ABS_VALUE:
            skipped["out_of_range"] += 1
            continue
        out.append(
            {
                "MetricName": r["metric"],
                "Dimensions": _dims(
                    ModelVersion=str(int(r.get("model_version", version))),
                    Signal=r["signal"],
                    Column=r.get("column") or "",
                ),
                "Timestamp": stamp,
                "Value": value,
                "Unit": "None",
            }
        )
    for s in signals:
        value = 1.0 if s in fired else 0.0
        for dims in (_dims(ModelVersion=version), []):
            datum = {"MetricName": signal_metric(s), "Timestamp": stamp, "Value": value, "Unit": "None"}
            out.append({**datum, "Dimensions": dims} if dims else datum)
    if now - ts > MAX_AGE:
        skipped["too_old"] = len(out)
        log.warning(
            "%s: window ending %s is older than CloudWatch takes (two weeks): %d data points not published",
            uc.name,
            decision["window_end"],
            len(out),
        )
        return [], skipped
    return out, skipped


def _size(datum: Mapping[str, Any]) -> int:
    """An upper bound of a datum's share of a request: its JSON text plus 256 bytes, more than the
    member names the query protocol's form encoding adds (older botocore); CloudWatch's CBOR
    encoding (current botocore) is smaller than the JSON text."""
    return len(json.dumps(datum)) + 256


def batches(uc: UseCase, datums: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """PutMetricData kwargs holding ``datums`` in order, each within the request limits."""
    out: list[dict[str, Any]] = []
    cur: list[Mapping[str, Any]] = []
    size = 0
    budget = MAX_REQUEST_BYTES - 4096  # the envelope
    for d in datums:
        n = _size(d)
        if cur and (len(cur) >= MAX_DATUMS_PER_REQUEST or size + n > budget):
            out.append({"Namespace": namespace(uc), "MetricData": cur})
            cur, size = [], 0
        cur.append(d)
        size += n
    if cur:
        out.append({"Namespace": namespace(uc), "MetricData": cur})
    return out


def metric_data_requests(
    uc: UseCase, rows: Iterable[Mapping[str, Any]], decision: Mapping[str, Any], *, now: datetime | None = None
) -> list[dict[str, Any]]:
    """PutMetricData kwargs of one window (what :func:`metric_datums` skips is not in them)."""
    datums, _ = metric_datums(uc, rows, decision, now=now)
    return batches(uc, datums)


# ---------------------------------------------------------------- alarms, rule, queue


def alarm_requests(uc: UseCase) -> list[dict[str, Any]]:
    """PutMetricAlarm kwargs, one per signal of the alert policy (module docstring)."""
    m = uc.monitoring
    if m is None:
        raise ValueError(f"{uc.name}: drift alerting needs the monitoring section")
    n = m.alert.consecutive
    if n > MAX_CONSECUTIVE:
        raise ValueError(
            f"{uc.name}: monitoring.alert.consecutive is {n}; a CloudWatch alarm evaluates at most "
            f"{MAX_CONSECUTIVE} periods of one day"
        )
    return [
        {
            "AlarmName": alarm_name(uc, s),
            "AlarmDescription": (
                f"{uc.name}: {s} breached in {n} consecutive monitoring window(s); the alarm going to "
                "ALARM sends a drift alert to the queue the training DAG's Asset watcher reads"
            ),
            "Namespace": namespace(uc),
            "MetricName": signal_metric(s),
            "Statistic": "Maximum",
            "Period": DAY_SECONDS,
            "EvaluationPeriods": n,
            "DatapointsToAlarm": n,
            "Threshold": 1.0,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "notBreaching",
            "Tags": [{"Key": "mlblueprints:usecase", "Value": uc.name}],
        }
        for s in alert_signals(uc)
    ]


def event_pattern(uc: UseCase) -> dict[str, Any]:
    """The stack's pattern: a drift alarm of the use case going to ALARM, or the drift_alert
    Asset event a state machine puts on the bus."""
    from mlblueprints.core.naming import drift_alert_asset
    from mlblueprints.stepfunctions.asl import EVENT_DETAIL_TYPE, EVENT_SOURCE

    return {
        "$or": [
            {
                "source": [ALARM_SOURCE],
                "detail-type": [ALARM_DETAIL_TYPE],
                "detail": {"alarmName": [{"prefix": f"{resource_prefix(uc)}-drift"}], "state": {"value": ["ALARM"]}},
            },
            {
                "source": [EVENT_SOURCE],
                "detail-type": [EVENT_DETAIL_TYPE],
                "detail": {"asset": [drift_alert_asset(uc).name]},
            },
        ]
    }


def rule_requests(uc: UseCase, queue_arn_: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(PutRule kwargs, PutTargets kwargs): the rule and its queue target (id ``queue``, as in the
    stack, so the stack's other target is left alone)."""
    put_rule = {
        "Name": rule_name(uc),
        "EventPattern": json.dumps(event_pattern(uc), separators=(",", ":")),
        "State": "ENABLED",
        "Description": f"{uc.name}: a drift alarm going to ALARM, or the drift_alert Asset event, goes to the drift queue",
        "Tags": [{"Key": "mlblueprints:usecase", "Value": uc.name}],
    }
    put_targets = {"Rule": rule_name(uc), "Targets": [{"Id": TARGET_ID, "Arn": queue_arn_ or queue_arn(uc)}]}
    return put_rule, put_targets


def queue_policy(queue_arn_: str, rule_arn_: str) -> dict[str, Any]:
    """EventBridge may send from the rule only; nothing may use the queue without TLS."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DriftAlertsFromTheRule",
                "Effect": "Allow",
                "Principal": {"Service": "events.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn_,
                "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn_}},
            },
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "sqs:*",
                "Resource": queue_arn_,
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
        ],
    }


def _queue_attributes(uc: UseCase) -> dict[str, str]:
    return {
        "KmsMasterKeyId": aws_section(uc).kms_key_arn,
        "KmsDataKeyReusePeriodSeconds": "300",
        "MessageRetentionPeriod": str(RETENTION_SECONDS),
    }


def queue_requests(
    uc: UseCase, queue_url_: str | None = None, queue_arn_: str | None = None, rule_arn_: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(CreateQueue kwargs, SetQueueAttributes kwargs): the queue (SSE-KMS with the use case's key,
    14 days' retention) and its policy. URL and ARNs default to the derived ones."""
    create = {
        "QueueName": queue_name(uc),
        "Attributes": _queue_attributes(uc),
        "tags": {"mlblueprints:usecase": uc.name},
    }
    policy = queue_policy(queue_arn_ or queue_arn(uc), rule_arn_ or rule_arn(uc))
    attrs = {
        "QueueUrl": queue_url_ or queue_url(uc),
        "Attributes": {**_queue_attributes(uc), "Policy": json.dumps(policy)},
    }
    return create, attrs


# ---------------------------------------------------------------- apply


def publish(
    uc: UseCase,
    rows: Iterable[Mapping[str, Any]],
    decision: Mapping[str, Any],
    cloudwatch: Any,
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Put one window's metrics; returns what was sent and skipped."""
    datums, skipped = metric_datums(uc, rows, decision, now=now)
    requests = batches(uc, datums)
    for r in requests:
        cloudwatch.put_metric_data(**r)
    return {"namespace": namespace(uc), "requests": len(requests), "datums": len(datums), "skipped": skipped}


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def ensure_alerting(uc: UseCase, cloudwatch: Any, events: Any, sqs: Any) -> dict[str, Any]:
    """Create or update the queue, the rule, its target, the queue policy and the alarms, and
    delete the alarms of signals the policy no longer has (boto3 by hand: the Amazon provider has
    no operators for these). Safe to run again."""
    create, _ = queue_requests(uc)
    try:
        url = sqs.get_queue_url(QueueName=create["QueueName"])["QueueUrl"]
    except Exception as exc:  # noqa: BLE001 - only "no such queue" means create it
        if _error_code(exc) not in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
            raise
        url = sqs.create_queue(**create)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    put_rule, put_targets = rule_requests(uc, arn)
    rule = events.put_rule(**put_rule)["RuleArn"]
    events.put_targets(**put_targets)
    _, set_attrs = queue_requests(uc, url, arn, rule)
    sqs.set_queue_attributes(**set_attrs)
    alarms = alarm_requests(uc)
    for a in alarms:
        cloudwatch.put_metric_alarm(**a)
    # a signal the policy no longer has: its alarm goes (the names under the prefix are ours)
    keep = {a["AlarmName"] for a in alarms}
    prefix = f"{resource_prefix(uc)}-drift-"
    stale = [
        m["AlarmName"]
        for page in cloudwatch.get_paginator("describe_alarms").paginate(
            AlarmNamePrefix=prefix, AlarmTypes=["MetricAlarm"]
        )
        for m in page.get("MetricAlarms", [])
        if m["AlarmName"] not in keep
    ]
    for i in range(0, len(stale), 100):  # DeleteAlarms: at most 100 names
        cloudwatch.delete_alarms(AlarmNames=stale[i : i + 100])
    return {"queue_url": url, "queue_arn": arn, "alarms": [a["AlarmName"] for a in alarms], "rule": rule}


# ---------------------------------------------------------------- the backend

NOT_BUILT = (
    "monitoring on the aws target: the window's rows (the scoring run's transform input joined to "
    "the predictions table) and the reference (the training set object on S3) are not read on aws yet, "
    "and the history is not kept in Athena yet; the CloudWatch metrics, alarms, rule and queue are "
    "(docs/monitoring.md)"
)


class AwsMonitor:
    """The monitoring capability on the aws target (see ``mlblueprints.backends``): the metrics and
    the alerting path to the drift_alert Asset's watcher. What reads data refuses in one line,
    naming what is not built."""

    def __init__(self, uc: UseCase, rt: Any):
        self.uc = uc
        self.rt = rt

    def _refuse(self) -> Any:
        from mlblueprints.errors import PermanentError

        raise PermanentError(f"{self.uc.name}: {NOT_BUILT}")

    def reference(self, model: dict[str, Any]) -> tuple[Any, str]:
        return self._refuse()

    def window(self, lo: date, hi: date, model: dict[str, Any]) -> tuple[Any, Any, str | None]:
        return self._refuse()

    def history(self) -> list[dict[str, Any]]:
        return self._refuse()

    def write(
        self, ident_: dict[str, Any], rows: list[dict[str, Any]], decision: dict[str, Any], run: Any
    ) -> dict[str, Any]:
        return self._refuse()

    def metrics(self, last: int = 10) -> Any:
        return self._refuse()

    def report_dir(self, lo: str, hi: str) -> Any:
        from mlblueprints import runtime

        return runtime.path("monitoring", self.uc.name, f"{lo}_{hi}")

    def publish(self, ident_: dict[str, Any], rows: list[dict[str, Any]], decision: dict[str, Any]) -> dict[str, Any]:
        """The window's metrics to CloudWatch, after making sure the alarms, the rule and the queue
        exist as the use case says."""
        cw = self.rt.client("cloudwatch")
        alerting = ensure_alerting(self.uc, cw, self.rt.client("events"), self.rt.client("sqs"))
        full = [{**ident_, **r} for r in rows]
        return {**publish(self.uc, full, {**decision, **ident_}, cw), "alerting": alerting}

    def where(self) -> list[str]:
        return [f"CloudWatch namespace {namespace(self.uc)}; alerts queue {queue_url(self.uc)}"]
