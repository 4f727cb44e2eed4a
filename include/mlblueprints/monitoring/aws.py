"""Monitoring on the aws target: the window and the reference read through Athena and S3, the
history in Iceberg tables of the Glue catalog written by Athena, and drift alerting: CloudWatch
metrics and alarms, an EventBridge rule, and the SQS queue the ``<usecase>.drift_alert`` Asset's
watcher reads.

Reads and history (:class:`AwsMonitor`; the SQL is built by the pure functions below, in DuckDB's
dialect and transpiled to Trino as the other aws backends do):

* the window's rows are exactly what its scoring runs scored: Athena UNLOADs the window's
  predictions of the version (keys, event date, score, scoring run) and the labels landed in Gold
  for them (as it is now); the worker joins each prediction with the features of the Batch
  Transform input its scoring run recorded (``input_s3_uri`` of the scoring lineage record under
  ``<prefix>/lineage/<predictions table>/``), keys decoded as the job's output is;
* the reference is the version's training set, the content-addressed Parquet object its lineage
  records (``training_set_snapshot_id``), or for ``reference.source: window`` the scored rows of
  those event dates; either is scored by the version in the worker, as on the local target;
* a window's metric rows are staged as a text file on S3 (strings hex-encoded) under an external
  table, and one MERGE makes the window's rows of the monitoring table exactly those (a rerun
  replaces them in one commit; the table is partitioned by ``window_end``: one partition per
  write); the decision is MERGEd into ``<output_table>_decisions`` keyed by its run, so a retried
  statement records it once; then both tables' maintenance (OPTIMIZE of the window's partition,
  retention, VACUUM) and the external table dropped. The tables are created through Glue when
  missing;
* the history (decisions) and the metric rows of the last windows are read through Athena at once
  with the runtime's helper: one row per window, a few windows' rows.

Alerting: pure request builders (no boto3 import) and thin functions that send them with a
boto3-like client. The path of an alert::

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

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from mlblueprints.aws.s3io import error_code
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


def ensure_alerting(uc: UseCase, cloudwatch: Any, events: Any, sqs: Any) -> dict[str, Any]:
    """Create or update the queue, the rule, its target, the queue policy and the alarms, and
    delete the alarms of signals the policy no longer has (boto3 by hand: the Amazon provider has
    no operators for these). Safe to run again."""
    create, _ = queue_requests(uc)
    try:
        url = sqs.get_queue_url(QueueName=create["QueueName"])["QueueUrl"]
    except Exception as exc:  # noqa: BLE001 - only "no such queue" means create it
        if error_code(exc) not in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
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


# ---------------------------------------------------------------- SQL (DuckDB dialect; Trino by sqlglot)

CAPABILITY = "monitor"
# the monitoring table's rows of one window are replaced by this key (MERGE)
METRIC_KEY = ("model_version", "window_start", "window_end", "column", "signal", "metric")
# a decision is recorded once per run of a window (MERGE: a retried statement adds no second row)
DECISION_KEY = ("model_version", "window_start", "window_end", "run_id")
NULL_TEXT = "\\N"  # how the staged text file says NULL (Hive's LazySimpleSerDe)


def history_tables(uc: UseCase) -> tuple[str, str]:
    """The Glue names of the monitoring table and of its decisions table."""
    m = uc.monitoring
    if m is None:
        raise ValueError(f"{uc.name}: the use case has no monitoring section")
    return m.output_table, f"{m.output_table}_decisions"


def window_filter(alias: str, lo: str, hi: str, version: int | None) -> str:
    """The predictions of the window's event dates (of one version; None: of any)."""
    from mlblueprints.lakehouse.sqlgen import literal

    out = f"{alias}.event_date BETWEEN DATE {literal(lo)} AND DATE {literal(hi)}"
    return out if version is None else f"{out} AND {alias}.model_version = {int(version)}"


def window_predictions_sql(predictions: str, keys: Sequence[str], lo: str, hi: str, version: int | None) -> str:
    """The window's predictions: keys, event date, score and the scoring run that made each."""
    from mlblueprints.lakehouse.sqlgen import ident

    cols = ", ".join(f"p.{ident(k)}" for k in keys)
    return (
        f"SELECT {cols}, p.event_date, p.score, p.scoring_run_id FROM {predictions} AS p "
        f"WHERE {window_filter('p', lo, hi, version)}"
    )


def window_labels_sql(
    predictions: str,
    gold: str,
    keys: Sequence[str],
    label: str,
    lo: str,
    hi: str,
    version: int | None,
    prune: bool,
) -> str:
    """The labels landed in Gold (as it is now) for the window's predictions, by key; ``prune``:
    Gold is partitioned by the rows' event date."""
    from mlblueprints.lakehouse.sqlgen import ident, literal

    on = " AND ".join(f"g.{ident(k)} = p.{ident(k)}" for k in keys)
    where = f"{window_filter('p', lo, hi, version)} AND g.{ident(label)} IS NOT NULL"
    if prune:
        where += f" AND g.event_date BETWEEN DATE {literal(lo)} AND DATE {literal(hi)}"
    cols = ", ".join(f"p.{ident(k)}" for k in keys)
    return (
        f"SELECT {cols}, CAST(g.{ident(label)} AS DOUBLE) AS {ident(label)} "
        f"FROM {predictions} AS p JOIN {gold} AS g ON {on} WHERE {where}"
    )


def scored_input_sql(relation: str, key_types: Sequence[tuple[str, str]], features: Sequence[str]) -> str:
    """A scoring run's transform input (``relation``: its CSV lines as text columns ``k<i>``,
    ``event_time``, the features) as rows: keys decoded and typed, features as numbers (an empty
    field is a null, as the job read it)."""
    from mlblueprints.lakehouse.sqlgen import ident, sql_type

    cols = [f"CAST(decode(unhex(k{i})) AS {sql_type(t)}) AS {ident(k)}" for i, (k, t) in enumerate(key_types)]
    cols += [f"CAST(NULLIF({ident(f)}, '') AS DOUBLE) AS {ident(f)}" for f in features]
    return f"SELECT {', '.join(cols)} FROM {relation}"


def window_rows_sql(
    predictions: str, inputs: Sequence[tuple[str, str]], keys: Sequence[str], features: Sequence[str]
) -> str:
    """The window's rows: each prediction with the features its scoring run's transform job read
    (``inputs``: (scoring run id, relation of :func:`scored_input_sql`)), joined by key."""
    from mlblueprints.lakehouse.sqlgen import ident, literal

    on = " AND ".join(f"p.{ident(k)} = r.{ident(k)}" for k in keys)
    head = ", ".join(f"p.{ident(k)}" for k in keys)
    feats = ", ".join(f"r.{ident(f)}" for f in features)
    return " UNION ALL ".join(
        f"SELECT {head}, p.event_date, p.score, {feats} FROM {predictions} AS p JOIN {rel} AS r ON {on} "
        f"WHERE p.scoring_run_id = {literal(run)}"
        for run, rel in inputs
    )


def labelled_sql(frame: str, labels: str, keys: Sequence[str], label: str) -> str:
    """The window's rows whose label has landed: their score and the label."""
    from mlblueprints.lakehouse.sqlgen import ident

    on = " AND ".join(f"f.{ident(k)} = l.{ident(k)}" for k in keys)
    return f"SELECT f.score, l.{ident(label)} FROM {frame} AS f JOIN {labels} AS l ON {on}"


def _text(value: Any, type_: str) -> str:
    """A value as a field of the staged text file: strings hex-encoded (any character may be in a
    detail or a reason; none of a hex string is a delimiter), the rest as SQL casts read them."""
    if value is None:
        return NULL_TEXT
    if type_ == "string":
        return str(value).encode().hex()
    if type_ == "boolean":
        return "true" if value else "false"
    if type_ == "double":
        x = float(value)
        if math.isnan(x):
            return "NaN"
        if math.isinf(x):
            return "Infinity" if x > 0 else "-Infinity"
        return repr(x)
    if type_ in ("bigint", "int"):
        return str(int(value))
    return str(value)[:10] if type_ == "date" else str(value)


def staged_metrics_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """The window's metric rows as the staged text file (``,``-delimited, one row per line)."""
    return "".join(",".join(_text(r.get(c), t) for c, t in columns) + "\n" for r in rows)


def staged_metrics_sql(relation: str, columns: Sequence[tuple[str, str]]) -> str:
    """The staged text file's rows (``relation``: text columns) typed as the monitoring table."""
    from mlblueprints.lakehouse.sqlgen import ident, sql_type

    def typed(c: str, t: str) -> str:
        if t == "string":
            return f"CAST(decode(unhex({ident(c)})) AS VARCHAR) AS {ident(c)}"
        return f"CAST({ident(c)} AS {sql_type(t)}) AS {ident(c)}"

    return f"SELECT {', '.join(typed(c, t) for c, t in columns)} FROM {relation}"


def metrics_merge_sql(target: str, staged: str, columns: Sequence[tuple[str, str]], ident_: Mapping[str, Any]) -> str:
    """One MERGE that makes the window's rows (its version, start and end) of the monitoring table
    exactly the staged ones: a rerun replaces them, rows it no longer has are deleted."""
    from mlblueprints.lakehouse.sqlgen import literal
    from mlblueprints.scoring.aws import replace_sql

    scope = (
        f"p.window_start = DATE {literal(str(ident_['window_start']))} "
        f"AND p.window_end = DATE {literal(str(ident_['window_end']))} "
        f"AND p.model_version = {int(ident_['model_version'])}"
    )
    return replace_sql(target, staged, METRIC_KEY, columns, scope)


def decision_merge_sql(target: str, decision: Mapping[str, Any], columns: Sequence[tuple[str, str]]) -> str:
    """Record the decision of a window's run once: inserted unless the run's row is there."""
    from mlblueprints.lakehouse.sqlgen import ident, literal, sql_type

    def value(c: str, t: str) -> str:
        v = decision.get(c)
        if v is None:
            return f"CAST(NULL AS {sql_type(t)}) AS {ident(c)}"
        if t == "timestamp":
            return f"CAST({literal(str(v))} AS TIMESTAMP(6)) AS {ident(c)}"
        if t in ("date",):
            return f"DATE {literal(str(v)[:10])} AS {ident(c)}"
        if t in ("string",):
            return f"CAST({literal(str(v))} AS VARCHAR) AS {ident(c)}"
        if t == "boolean":
            return f"{literal(bool(v))} AS {ident(c)}"
        return f"CAST({literal(v)} AS {sql_type(t)}) AS {ident(c)}"

    names = [c for c, _ in columns]
    on = " AND ".join(f"t.{ident(k)} = s.{ident(k)}" for k in DECISION_KEY)
    return (
        f"MERGE INTO {target} AS t USING (SELECT {', '.join(value(c, t) for c, t in columns)}) AS s ON {on} "
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(ident(c) for c in names)}) "
        f"VALUES ({', '.join(f's.{ident(c)}' for c in names)})"
    )


def history_sql(decisions: str) -> str:
    return f"SELECT * FROM {decisions} ORDER BY decided_at"


def metrics_sql(table: str, last: int) -> str:
    """The metric rows of the ``last`` windows (by end date), newest first."""
    return (
        f"SELECT * FROM {table} WHERE window_end IN "
        f"(SELECT DISTINCT window_end FROM {table} ORDER BY window_end DESC LIMIT {int(last)}) "
        'ORDER BY window_end DESC, "column", metric'
    )


# ---------------------------------------------------------------- the backend


def _bool(v: Any) -> bool | None:
    return None if v is None else str(v).strip().lower() == "true"


def _int(v: Any) -> int | None:
    return None if v in (None, "") else int(float(v))


def _float(v: Any) -> float | None:
    return None if v in (None, "") else float(v)


def typed_rows(rows: Iterable[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Athena's text results typed as the table's columns (dates and timestamps kept as text)."""
    conv = {"boolean": _bool, "bigint": _int, "int": _int, "double": _float}
    out = []
    for r in rows:
        row = {}
        for c, t in columns:
            v = r.get(c)
            row[c] = conv[t](v) if t in conv else (str(v)[:10] if t == "date" and v is not None else v)
        out.append(row)
    return out


class AwsMonitor:
    """The monitoring capability on the aws target (see ``mlblueprints.backends``).

    * :meth:`window` returns the UNLOADs of the window's predictions (and of the labels landed in
      Gold for them) as a service call; :meth:`resume_window` joins each prediction, in the
      worker (DuckDB), with the features of the transform job's input its scoring run recorded
      (the scoring lineage record's ``input_s3_uri``): the rows exactly as the job scored them.
    * :meth:`reference`: the version's training set, the Parquet object on S3 its lineage records
      (content-addressed: checked against its digest), or the scored rows of the configured event
      dates (read through Athena at once: once per version, then the sketch is kept); scored by
      the version in the worker as scoring does.
    * :meth:`write` stages the window's metric rows as a text file on S3 and returns the Athena
      statements: one MERGE replacing the window's rows of the monitoring table, one MERGE
      recording the decision (once per run), the tables' maintenance; both are Iceberg tables in
      the Glue catalog, created through Glue when missing.
    * :meth:`history` and :meth:`metrics` read the tables through Athena at once (small reads:
      one row per window, the rows of a few windows).
    * :meth:`publish`: the metrics to CloudWatch, and the alerting path (module docstring).
    """

    def __init__(self, uc: UseCase, rt: Any):
        if uc.monitoring is None or uc.scoring is None or uc.training is None:
            raise ValueError(f"{uc.name}: monitoring on aws needs the monitoring, scoring and training sections")
        self.uc = uc
        self.aws = uc.aws_settings
        self.rt = rt

    # ------------------------------------------------------------ helpers

    def _fail(self, message: str) -> Exception:
        from mlblueprints.errors import PermanentError

        return PermanentError(f"{self.uc.name}: monitoring: {message}")

    def _fq(self, table: str) -> str:
        from mlblueprints.lakehouse.aws import fq

        return fq(self.uc, table)

    def _glue_columns(self, table: str) -> list[tuple[str, str]] | None:
        from mlblueprints.features import aws_training_set as ats
        from mlblueprints.features import core as fcore

        found = ats.glue_table(self.rt.client("glue"), self.aws.glue_database, table)
        if found is None:
            return None
        cols = (found.get("StorageDescriptor") or {}).get("Columns", [])
        return [(c["Name"], fcore.normalize_type(c["Type"])) for c in cols]

    def _key_types(self, rows: Mapping[str, Any]) -> dict[str, str]:
        """The rows' key types, from their Gold table in the Glue catalog (as scoring types them)."""
        from mlblueprints.features import aws as fa
        from mlblueprints.features import core as fcore

        try:
            types = fa.gold_types(self.uc, rows["source"], self.rt.client("glue"), self.rt.client("s3"))
        except LookupError as exc:
            raise self._fail(f"scoring.rows: {exc}") from None
        return {k: fcore.normalize_type(types[k]) for k in rows["keys"]}

    def _athena_now(self, name: str, sql: str) -> list[dict[str, Any]]:
        """Run one SELECT through Athena at once (the runtime's helper) and return its rows."""
        from mlblueprints.aws import direct
        from mlblueprints.core.service import Statement
        from mlblueprints.lakehouse.sqlgen import to_trino
        from mlblueprints.lineage import RunInfo

        run = RunInfo.for_usecase(self.uc, run_id=f"monitoring__{time.time_ns()}")
        out = direct.run_athena(self.rt, self.uc, [Statement(name, to_trino(sql), "select", fetch=True)], run)
        return self.rt.fetch_rows(out["queries"][name])

    def _athena_call(self, statements: list[Any], resume: str, state: dict[str, Any]) -> Any:
        from mlblueprints.core import service
        from mlblueprints.lakehouse.aws import check_statement_sizes

        check_statement_sizes(self.uc, statements)
        return service.athena(statements, CAPABILITY, resume, state)

    # ------------------------------------------------------------ the window

    def _window_statements(self, lo: str, hi: str, version: int | None, base: str) -> tuple[list[Any], dict[str, Any]]:
        """The UNLOADs of a window (of one version, or of every version) and what reading them needs."""
        from mlblueprints.lakehouse.aws import unload_statement
        from mlblueprints.lakehouse.sqlgen import to_trino

        uc = self.uc
        rows = uc.scoring_rows()
        keys = rows["keys"]
        table = uc.scoring.output_table  # type: ignore[union-attr]
        if self._glue_columns(table) is None:
            raise self._fail(
                f"no predictions table {self.aws.glue_database}.{table} yet (run {uc.name}__scoring first)"
            )
        types = self._key_types(rows)
        stmts = [
            unload_statement(
                "monitoring_window",
                to_trino(window_predictions_sql(self._fq(table), keys, lo, hi, version)),
                f"{base}/window/",
            )
        ]
        label = None
        ts = uc.training_sets[rows["training_set"]]
        if ts.labels.source == rows["source"]:
            label = ts.labels.label
        if label is not None and self._glue_columns(rows["source"]) is not None:
            prune = rows["event_time"] == uc.gold[rows["source"]].event_time
            body = window_labels_sql(self._fq(table), self._fq(rows["source"]), keys, label, lo, hi, version, prune)
            stmts.append(unload_statement("monitoring_labels", to_trino(body), f"{base}/labels/"))
        state = {
            "base": base,
            "keys": keys,
            "key_types": [[k, types[k]] for k in keys],
            "label": label,
            "labels_read": len(stmts) > 1,
        }
        return stmts, state

    def window(self, lo: date, hi: date, model: dict[str, Any]) -> Any:
        """The UNLOADs of the window's predictions by the version (and of their landed labels)."""
        import uuid

        base = self.aws.s3_uri("_monitoring", uuid.uuid4().hex)
        stmts, state = self._window_statements(lo.isoformat(), hi.isoformat(), int(model["version"]), base)
        state["features"] = list(model["features"])
        return self._athena_call(stmts, "resume_window", state)

    def _input_uri(self, s3: Any, run_id: str) -> str:
        """The transform input the scoring run ``run_id`` recorded in its lineage record."""
        from mlblueprints.aws import requests as req
        from mlblueprints.core.naming import safe

        table = self.uc.scoring.output_table  # type: ignore[union-attr]
        bucket, prefix = req.split_s3_uri(self.aws.s3_uri("lineage", table, f"{safe(run_id)}__"))
        found = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                if not o["Key"].endswith("__scoring.json"):
                    continue
                record = json.loads(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())
                if (record.get("properties") or {}).get("mlb.run-id") == run_id and record.get("input_s3_uri"):
                    found.append(record["input_s3_uri"])
        if not found:
            raise self._fail(
                f"the scoring run {run_id} recorded no transform input (no lineage record with input_s3_uri under "
                f"s3://{bucket}/{prefix}): score the window again"
            )
        return found[-1]

    def resume_window(self, state: dict[str, Any], output: dict[str, Any]) -> tuple[Any, Any, str | None]:
        return self._read_window(state)

    def _read_window(self, state: dict[str, Any]) -> tuple[Any, Any, str | None]:
        """The unloaded predictions joined with the transform inputs of their scoring runs."""
        import tempfile
        from pathlib import Path

        from mlblueprints import runtime
        from mlblueprints.aws import s3io
        from mlblueprints.core.duck import connect
        from mlblueprints.lakehouse.sqlgen import ident, literal
        from mlblueprints.monitoring.local import empty_window

        s3 = self.rt.client("s3")
        keys, feats, label = state["keys"], state["features"], state["label"]
        key_types = [(k, t) for k, t in state["key_types"]]
        con = connect()
        try:
            with tempfile.TemporaryDirectory(dir=runtime.path("tmp")) as tmp:
                staged = {}
                for part in ("window", "labels"):
                    d = Path(tmp) / part
                    d.mkdir()
                    staged[part] = s3io.download_prefix(s3, f"{state['base']}/{part}/", d)
                files = [p for _, p in staged["window"]]
                if files:
                    con.execute(
                        "CREATE TEMP VIEW window_predictions AS SELECT * FROM "
                        f"read_parquet([{', '.join(literal(f) for f in files)}], union_by_name = true)"
                    )
                runs = (
                    [r[0] for r in con.execute("SELECT DISTINCT scoring_run_id FROM window_predictions").fetchall()]
                    if files
                    else []
                )
                if not runs:
                    self._clean(s3, state["base"], staged)
                    return empty_window(keys, feats), None, None
                names = [*(f"k{i}" for i in range(len(keys))), "event_time", *feats]
                columns = "{" + ", ".join(f"{literal(c)}: 'VARCHAR'" for c in names) + "}"
                inputs = []
                for i, run in enumerate(sorted(runs)):
                    d = Path(tmp) / f"input{i}"
                    d.mkdir()
                    got = [p for _, p in s3io.download_prefix(s3, self._input_uri(s3, run), d, suffix=".csv.gz")]
                    if not got:
                        raise self._fail(
                            f"the transform input of the scoring run {run} is gone: score the window again"
                        )
                    src = (
                        f"read_csv([{', '.join(literal(f) for f in got)}], header = false, delim = ',', quote = '', "
                        f"compression = 'gzip', columns = {columns})"
                    )
                    con.execute(f"CREATE TEMP VIEW scored_input_{i} AS {scored_input_sql(src, key_types, feats)}")
                    inputs.append((run, f"scored_input_{i}"))
                frame = con.execute(window_rows_sql("window_predictions", inputs, keys, feats)).df()
                labels = None
                lfiles = [p for _, p in staged["labels"]]
                if label is not None and state["labels_read"] and not frame.empty:
                    con.register("window_frame", frame)
                    if lfiles:
                        src = f"read_parquet([{', '.join(literal(f) for f in lfiles)}], union_by_name = true)"
                    else:
                        src = f"(SELECT {ident(keys[0])}, CAST(NULL AS DOUBLE) AS {ident(label)} FROM window_frame WHERE FALSE)"
                    con.execute(f"CREATE TEMP VIEW window_labels AS SELECT * FROM {src}")
                    labels = con.execute(labelled_sql("window_frame", "window_labels", keys, label)).df()
                self._clean(s3, state["base"], staged)
        finally:
            con.close()
        if frame.empty:
            return frame, None, None
        return frame, labels, label

    def _clean(self, s3: Any, base: str, staged: Mapping[str, list[tuple[str, str]]]) -> None:
        from mlblueprints.aws import requests as req
        from mlblueprints.aws import s3io

        for part, got in staged.items():
            s3io.delete_keys(s3, req.split_s3_uri(base)[0], [k for k, _ in got], f"{base}/{part}/")

    # ------------------------------------------------------------ the reference

    def reference(self, model: dict[str, Any]) -> tuple[Any, str]:
        """The reference rows of the version (features and score) and a description of them."""
        import tempfile
        from pathlib import Path

        from mlblueprints import runtime
        from mlblueprints.monitoring.local import score_frame

        m = self.uc.monitoring
        assert m is not None
        feats = list(model["features"])
        if m.reference.source == "window":
            import uuid

            lo, hi = m.reference.start, m.reference.end
            assert lo is not None and hi is not None
            base = self.aws.s3_uri("_monitoring", uuid.uuid4().hex)
            stmts, state = self._window_statements(lo.isoformat(), hi.isoformat(), None, base)
            from mlblueprints.aws import direct
            from mlblueprints.lineage import RunInfo

            run = RunInfo.for_usecase(self.uc, run_id=f"monitoring-reference__{time.time_ns()}")
            direct.run_athena(self.rt, self.uc, stmts[:1], run)  # the rows only: no labels
            frame, _, _ = self._read_window({**state, "features": feats, "labels_read": False})
            what = f"the scored rows of {lo}..{hi}"
        else:
            import pyarrow.parquet as pq

            from mlblueprints.aws import s3io

            ident_, uri = model.get("training_set"), str(model.get("training_set_snapshot_id") or "")
            s3 = self.rt.client("s3")
            if not uri.startswith("s3://") or not s3io.exists(s3, uri):
                raise self._fail(
                    f"{self.uc.model_name} version {model['version']}: its training set {ident_} at {uri or None} is "
                    "gone (expired?): set monitoring.reference to a window of scored event dates"
                )
            with tempfile.TemporaryDirectory(dir=runtime.path("tmp")) as tmp:
                local = s3io.download(s3, uri, Path(tmp) / "training_set.parquet")
                digest = s3io.sha256_file(local)
                if not uri.rsplit("/", 1)[-1].removesuffix(".parquet").endswith(digest[:16]):
                    raise RuntimeError(f"{uri} has sha256 {digest}: not the object its content-addressed name says")
                frame = pq.read_table(local, columns=feats).to_pandas()
            what = f"training set {ident_} at {uri}"
        if frame.empty:
            raise self._fail(f"the reference ({what}) has no rows")
        return score_frame(self.uc, model, frame), what

    # ------------------------------------------------------------ the history

    def _ensure_tables(self) -> None:
        """Create the monitoring and decisions tables (Iceberg, Glue) when missing; an existing one
        must have the layout. boto3 by hand: the Amazon provider creates no Glue table."""
        from mlblueprints.aws import requests as req
        from mlblueprints.monitoring import core

        metrics_t, decisions_t = history_tables(self.uc)
        size = self.uc.lakehouse.target_file_size_mb * 1024 * 1024
        glue = self.rt.client("glue")
        for table, cols, part, what in (
            (metrics_t, core.TABLE_COLUMNS, "window_end", "drift metrics per window"),
            (decisions_t, core.DECISION_COLUMNS, None, "drift alert decisions per window"),
        ):
            have = self._glue_columns(table)
            if have is None:
                glue.create_table(**req.glue_iceberg_table_input(self.aws, table, list(cols), part, size, what))
                log.info("created the table %s.%s", self.aws.glue_database, table)
                continue
            found = dict(have)
            bad = sorted(c for c, t in cols if found and found.get(c) != t)
            if bad:
                raise self._fail(
                    f"the table {self.aws.glue_database}.{table} has another layout (columns {bad}); set "
                    "monitoring.output_table to a new table"
                )

    def history(self) -> list[dict[str, Any]]:
        """Every decision so far, oldest first (``signals`` and ``drifted_columns`` decoded)."""
        from mlblueprints.monitoring import core

        _, decisions_t = history_tables(self.uc)
        if self._glue_columns(decisions_t) is None:
            return []
        rows = typed_rows(
            self._athena_now("monitoring_history", history_sql(self._fq(decisions_t))), core.DECISION_COLUMNS
        )
        for r in rows:
            r["signals"] = json.loads(r["signals"] or "[]")
            r["drifted_columns"] = json.loads(r["drifted_columns"] or "[]")
        return rows

    def write(self, ident_: dict[str, Any], rows: list[dict[str, Any]], decision: dict[str, Any], run: Any) -> Any:
        """Stage the window's metric rows on S3 and return the statements that replace the window's
        rows and record its decision (unless the window was decided before)."""
        from mlblueprints.aws import s3io
        from mlblueprints.core.naming import safe
        from mlblueprints.core.service import Statement
        from mlblueprints.lakehouse.aws import maintenance_statements
        from mlblueprints.lakehouse.sqlgen import to_trino
        from mlblueprints.monitoring import core
        from mlblueprints.scoring.aws import stage_table_ddl

        self._ensure_tables()
        metrics_t, decisions_t = history_tables(self.uc)
        lo, hi = str(ident_["window_start"])[:10], str(ident_["window_end"])[:10]
        base = f"{safe(run.run_id)}/try-{run.try_number}"
        prefix = self.aws.s3_uri("_monitoring", base, "metrics") + "/"
        full = core.metric_rows(ident_, lo, hi, rows, run.run_id)
        text = staged_metrics_text(full, core.TABLE_COLUMNS)
        s3io.put_bytes(self.rt.client("s3"), text.encode(), prefix + "metrics.txt", self.aws, "text/plain")
        stage = f"monitoring_stage_{hashlib.sha256(prefix.encode()).hexdigest()[:16]}"
        names = [c for c, _ in core.TABLE_COLUMNS]
        stmts = [Statement("stage_table", stage_table_ddl(self.aws.glue_database, stage, names, prefix), "ddl")]
        staged = staged_metrics_sql(self._fq(stage), core.TABLE_COLUMNS)
        merge = metrics_merge_sql(
            self._fq(metrics_t), staged, core.TABLE_COLUMNS, {**ident_, "window_start": lo, "window_end": hi}
        )
        stmts.append(Statement("merge_monitoring", to_trino(merge), "merge", to_trino(staged)))
        recorded = not decision.get("rerun_of")
        if recorded:
            now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
            d = core.decision_row(ident_, lo, hi, decision, run.run_id, now)
            body = decision_merge_sql(self._fq(decisions_t), d, core.DECISION_COLUMNS)
            stmts.append(Statement("merge_decision", to_trino(body), "merge"))
        retention = self.uc.lakehouse.snapshot_retention_days
        stmts += maintenance_statements(self.uc, metrics_t, "window_end", [hi], retention)
        stmts += maintenance_statements(self.uc, decisions_t, None, None, retention)
        stmts.append(Statement("drop_stage_table", f"DROP TABLE IF EXISTS `{self.aws.glue_database}`.`{stage}`", "ddl"))
        state = {"prefix": prefix, "rows": len(full), "recorded": recorded}
        return self._athena_call(stmts, "resume_write", state)

    def resume_write(self, state: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
        from mlblueprints.aws import requests as req
        from mlblueprints.aws import s3io

        bucket, key = req.split_s3_uri(state["prefix"] + "metrics.txt")
        s3io.delete_keys(self.rt.client("s3"), bucket, [key], state["prefix"])
        return {
            "table": f"{self.aws.glue_database}.{history_tables(self.uc)[0]}",
            "rows_written": int(state["rows"]),
            "decision_recorded": bool(state["recorded"]),
            "query_execution_ids": output["queries"],
        }

    def metrics(self, last: int = 10) -> Any:
        """The metric rows of the ``last`` windows, newest first."""
        import pandas as pd

        from mlblueprints.monitoring import core

        metrics_t, _ = history_tables(self.uc)
        names = [c for c, _ in core.TABLE_COLUMNS]
        if self._glue_columns(metrics_t) is None:
            return pd.DataFrame(columns=names)
        rows = typed_rows(
            self._athena_now("monitoring_metrics", metrics_sql(self._fq(metrics_t), last)), core.TABLE_COLUMNS
        )
        return pd.DataFrame(rows, columns=names)

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
        from mlblueprints import runtime

        metrics_t, decisions_t = history_tables(self.uc)
        db = self.aws.glue_database
        return [
            f"monitoring table: {db}.{metrics_t}, decisions: {db}.{decisions_t} (Iceberg, Glue; read with Athena)",
            f"CloudWatch namespace {namespace(self.uc)}; alerts queue {queue_url(self.uc)}",
            f"reports: {runtime.home() / 'monitoring' / self.uc.name}/<window>/",
        ]
