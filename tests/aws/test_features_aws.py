"""Feature materialization on the aws target (SageMaker Feature Store), in process under moto.

What moto covers and what it does not (moto 5.2):

* ``sagemaker`` CreateFeatureGroup / DescribeFeatureGroup are implemented: our CreateFeatureGroup
  request goes to moto with botocore's parameter validation on and is read back. moto drops
  ``OnlineStoreConfig`` and ``Description``, replaces ``DataCatalogConfig`` with its own, answers
  ListTags for a feature group with an internal error, and raises ``KeyError`` (not
  ``ResourceNotFound``) from DescribeFeatureGroup of an unknown group. The round-trip test
  asserts what moto keeps and checks the rest in the (validated) request; the other tests patch
  moto to answer like SageMaker on those points (:func:`sagemaker_like_aws`).
* ``sagemaker-featurestore-runtime`` (PutRecord, BatchGetRecord) is not implemented at all
  ("Not yet implemented"). Instead of skipping, every request to it is built by a real boto3
  client - so botocore validates it against the service model - and then answered by
  :class:`FeatureStoreTwin` (an in-memory Feature Store with the documented online-store rule:
  a record replaces the stored one when its event time is at least as new) or by
  ``botocore.stub.Stubber`` with the expected parameters, including the throttling path.
* Athena runs no SQL under moto: as in ``test_lakehouse_aws.py``, an Athena twin answers the
  UNLOAD and the SELECT from DuckDB over the local target's Gold table, built here from generated
  landing files by ``mlblueprints.lakehouse.local`` (plus a few injected rows: null keys, a null
  event time, two rows of one card at one instant, a fractional-second event time).
"""

from __future__ import annotations

import copy
import json
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import boto3
import botocore.exceptions
import botocore.session
import pytest
import yaml
from botocore.stub import Stubber
from botocore.validate import validate_parameters
from moto_world import REGION, UNLOAD, AthenaTwin, FeatureStoreTwin, run_direct

from helpers import ROOT, runtime_home
from mlblueprints.aws import featurestore as fsreq
from mlblueprints.aws import requests as req
from mlblueprints.aws.session import boto3_runtime
from mlblueprints.config import duration_seconds, load_usecase, parse_usecase
from mlblueprints.datagen import generate_fraud
from mlblueprints.features import aws as fa
from mlblueprints.features import core
from mlblueprints.features.aws import AwsFeatureStore
from mlblueprints.features.core import FeatureViewError
from mlblueprints.lakehouse import iceberg, local, naming
from mlblueprints.lakehouse.aws import gold_columns
from mlblueprints.lineage import RunInfo

pytestmark = [pytest.mark.aws, pytest.mark.slow]

moto = pytest.importorskip("moto")

BUCKET = "mlb-test-features"
DB = "fraud_fs_lake"
NAME = "fraud_fs"
START = date(2024, 3, 1)
DAYS = 2
LO, HI = START, START + timedelta(days=DAYS - 1)
GOLD = "transaction_features"
VIEWS = ("card_activity", "card_merchant")


def _usecase_data(target: str, kms: str = "arn:aws:kms:eu-west-1:123456789012:key/test") -> dict:
    data = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    data.update(name=NAME, target=target)
    data["gold"][GOLD]["sql"] = str(ROOT / "dags/usecases/sql/fraud_detection/transaction_features.sql")
    data["features"]["card_merchant"] = {
        "source": GOLD,
        "entity": ["card_id", "merchant_id"],
        "features": ["amount", "channel", "is_fraud", "event_hour"],
        "ttl": "36h",
    }
    data.pop("training_sets", None)
    data.pop("training", None)  # it names a training set removed above
    data.pop("scoring", None)  # it scores with the training section's model
    data.pop("explainability", None)  # it explains the training section's model
    data.pop("promotion", None)  # it serves the training section's model
    data["aws"].update(region=REGION, bucket=BUCKET, prefix="fraud", glue_database=DB, kms_key_arn=kms)
    data["aws"]["feature_store"] = {"put_record_workers": 4, "max_attempts": 5}
    return data


def _write_usecase(directory: Path, data: dict):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_usecase(path)


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """The local target's Gold table for two landing days, with rows injected to exercise the
    skips and the tie-break; the local use case reads it, the Athena twin answers from it."""
    base = tmp_path_factory.mktemp("features_aws")
    home = base / "home"
    generate_fraud(home / "landing", start=START, days=DAYS, rows=600, seed=11)
    uc_local = _write_usecase(base / "local", _usecase_data("local"))
    with runtime_home(home):
        for i in range(DAYS):
            d = START + timedelta(days=i)
            run = RunInfo.for_usecase(uc_local, run_id=f"lake-{d}")
            touched = {}
            for ds in uc_local.datasets:
                local.ingest_bronze(uc_local, ds, [d], run)
                touched[ds] = local.build_silver(uc_local, ds, [d], run)["touched_event_dates"]
            local.build_gold(uc_local, GOLD, touched, run)
        table = iceberg.load(iceberg.catalog(), naming.identifier(uc_local, GOLD))
        rows = table.scan().to_arrow().to_pylist()
        newest: dict[str, dict] = {}
        for r in rows:
            if r["card_id"] not in newest or r["event_time"] > newest[r["card_id"]]["event_time"]:
                newest[r["card_id"]] = r
        cards = sorted(newest, key=lambda c: (newest[c]["event_date"], c))
        dup_of, frac_of = newest[cards[-1]], newest[cards[-2]]
        injected = [
            {**rows[0], "transaction_id": "tx_inj_null_card", "card_id": None},
            {**rows[1], "transaction_id": "tx_inj_null_both", "card_id": None, "merchant_id": None},
            {**rows[2], "transaction_id": "tx_inj_null_time", "event_time": None},
            # same card and instant as its newest row, greater primary key: this one is kept
            {**dup_of, "transaction_id": "tx_zz_duplicate", "card_txn_count_1h": 999, "amount": 1234.5},
            # the newest row of another card, 250 ms after its previous one
            {
                **frac_of,
                "transaction_id": "tx_zz_fraction",
                "event_time": frac_of["event_time"] + timedelta(milliseconds=250),
                "card_txn_count_1h": 777,
            },
        ]
        import pyarrow as pa

        table.append(pa.Table.from_pylist(injected, schema=table.schema().as_arrow()))
        gold_rows = table.refresh().scan().to_arrow().to_pylist()
    return {
        "base": base,
        "home": home,
        "uc_local": uc_local,
        "gold_rows": gold_rows,
        "dup_card": dup_of["card_id"],
        "frac_card": frac_of["card_id"],
    }


@pytest.fixture
def aws_env(moto_world, monkeypatch):
    monkeypatch.setattr(fa, "BACKOFF_BASE_SECONDS", 0.001)
    moto_world.bucket(BUCKET)
    kms = moto_world.kms_key("features")
    moto_world.workgroup(BUCKET)
    uc = _write_usecase(moto_world.tmp / "aws", _usecase_data("aws", kms))
    yield {"uc": uc, "kms": kms, "tmp": moto_world.tmp}


def _glue_gold(uc, extra_drop: tuple[str, ...] = ()) -> None:
    """The Gold table as Glue reports it (moto does not derive columns from an Iceberg schema);
    Glue's Hive type names are the config's: string, int, bigint, double, date, timestamp."""
    glue = boto3.client("glue", region_name=REGION)
    glue.create_database(DatabaseInput=req.glue_database_input(uc.aws, "features test"))
    cols = [{"Name": n, "Type": t} for n, t in gold_columns(uc, GOLD) if n not in extra_drop]
    glue.create_table(
        DatabaseName=DB,
        TableInput={
            "Name": GOLD,
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {"table_type": "ICEBERG"},
            "StorageDescriptor": {"Columns": cols, "Location": uc.aws.s3_uri("warehouse", GOLD)},
        },
    )


def athena_twin(lake: dict, tmp: Path, kms: str) -> AthenaTwin:
    """The Athena twin over the local target's Gold table."""
    twin = AthenaTwin(DB, tmp, kms)
    with runtime_home(lake["home"]):
        t = iceberg.load(iceberg.catalog(), naming.identifier(lake["uc_local"], GOLD))
        iceberg.register_view(twin.con, "_gold", t)
    twin.con.execute(f'CREATE VIEW {DB}."{GOLD}" AS SELECT * FROM "_gold"')
    return twin


@pytest.fixture
def world(lake, aws_env, sagemaker_like_aws, monkeypatch):
    """moto + the Athena twin + the Feature Store twin, and an AwsRuntime over the twin's session."""
    uc = aws_env["uc"]
    _glue_gold(uc)
    twin = athena_twin(lake, aws_env["tmp"], aws_env["kms"]).install(monkeypatch)
    store = FeatureStoreTwin()
    session = store.attach(boto3.Session(region_name=REGION))
    rt = boto3_runtime(uc, session)
    return {**aws_env, "athena": twin, "store": store, "rt": rt, "session": session}


def materialize(world: dict, view: str, run: RunInfo, uc=None) -> dict:
    """One materialization through the aws backend, its Athena statements run synchronously."""
    uc = uc or world["uc"]
    return run_direct(uc, world["rt"], AwsFeatureStore(uc, world["rt"]).materialize(view, LO, HI, run), run)


def _cols(uc, view):
    return core.resolve_columns(uc, view, dict(gold_columns(uc, GOLD)))


def _expected(lake, uc, view):
    """The batch, the newest row per entity and the counts, computed in plain Python from Gold."""
    v = uc.features[view]
    in_range = [r for r in lake["gold_rows"] if r["event_time"] is None or LO <= r["event_time"].date() <= HI]
    null_et = [r for r in in_range if r["event_time"] is None]
    null_key = [r for r in in_range if r["event_time"] is not None and any(r[k] is None for k in v.entity)]
    kept: dict[tuple, dict] = {}
    for r in in_range:
        if r["event_time"] is None or any(r[k] is None for k in v.entity):
            continue
        key = (*(r[k] for k in v.entity), r["event_time"])
        if key not in kept or r["transaction_id"] > kept[key]["transaction_id"]:
            kept[key] = r
    latest: dict[tuple, dict] = {}
    for r in kept.values():
        ent = tuple(r[k] for k in v.entity)
        if ent not in latest or r["event_time"] > latest[ent]["event_time"]:
            latest[ent] = r
    return {
        "rows_in": len(in_range),
        "skipped_null_key": len(null_key),
        "skipped_null_event_time": len(null_et),
        "collapsed_duplicates": len(in_range) - len(null_key) - len(null_et) - len(kept),
        "offline_rows": len(kept),
        "online_entities": len(latest),
        "batch": list(kept.values()),
        "latest": latest,
    }


def _record(uc, view, cols, row) -> dict[str, str]:
    req_ = fsreq.put_record_request(uc, view, cols, {**row, "event_time": row[cols.event_time]}, ["OfflineStore"])
    return {f["FeatureName"]: f["ValueAsString"] for f in req_["Record"]}


# ---------------------------------------------------------------- request builders (pure)


@pytest.mark.parametrize(
    "ttl, expected",
    [
        ("90s", {"Unit": "Seconds", "Value": 90}),
        ("15m", {"Unit": "Minutes", "Value": 15}),
        ("120m", {"Unit": "Hours", "Value": 2}),
        ("36h", {"Unit": "Hours", "Value": 36}),
        ("48h", {"Unit": "Days", "Value": 2}),
        ("10d", {"Unit": "Days", "Value": 10}),
        ("7d", {"Unit": "Weeks", "Value": 1}),
        ("14d", {"Unit": "Weeks", "Value": 2}),
    ],
)
def test_ttl_in_the_largest_exact_unit(ttl, expected):
    assert fsreq.ttl_duration(duration_seconds(ttl)) == expected


def test_values_as_feature_store_strings_and_back():
    ts = datetime(2024, 3, 1, 12, 30, 5)
    cases = [
        (True, "boolean", "1"),
        (False, "boolean", "0"),
        (42, "bigint", "42"),
        (7, "int", "7"),
        (0.1, "double", "0.1"),
        ("a#b", "string", "a#b"),
        (date(2024, 3, 1), "date", "2024-03-01"),
        (ts, "timestamp", "2024-03-01T12:30:05Z"),
        (ts.replace(microsecond=250000), "timestamp", "2024-03-01T12:30:05.250Z"),
        (ts.replace(microsecond=250123), "timestamp", "2024-03-01T12:30:05.250123Z"),
    ]
    for value, t, text in cases:
        assert fsreq.value_as_string(value, t) == text, (value, t)
        assert fsreq.value_from_string(text, t) == value, (text, t)
    # event times: Feature Store accepts milliseconds at most; aware times are converted to UTC
    cet = timezone(timedelta(hours=1))
    assert fsreq.value_as_string(ts.replace(microsecond=250999), "timestamp", event_time=True) == (
        "2024-03-01T12:30:05.250Z"
    )
    assert fsreq.value_as_string(ts.replace(tzinfo=cet), "timestamp", event_time=True) == "2024-03-01T11:30:05Z"
    assert fsreq.value_as_string(None, "double") is None
    assert fsreq.value_as_string(float("nan"), "double") is None


def test_put_record_request_omits_nulls_and_joins_composite_keys():
    uc = parse_usecase(_usecase_data("aws"))
    cols = _cols(uc, "card_merchant")
    row = {
        "card_id": "card_1",
        "merchant_id": "m_2",
        "event_time": datetime(2024, 3, 1, 9, 0, 0, 500000),
        "amount": 12.5,
        "channel": None,
        "is_fraud": 0,
        "event_hour": 9,
    }
    r = fsreq.put_record_request(uc, "card_merchant", cols, row, ["OnlineStore"])
    assert r == {
        "FeatureGroupName": "fraud-fs-card-merchant-v1",
        "Record": [
            {"FeatureName": "record_id", "ValueAsString": "card_1#m_2"},
            {"FeatureName": "card_id", "ValueAsString": "card_1"},
            {"FeatureName": "merchant_id", "ValueAsString": "m_2"},
            {"FeatureName": "event_time", "ValueAsString": "2024-03-01T09:00:00.500Z"},
            {"FeatureName": "amount", "ValueAsString": "12.5"},
            {"FeatureName": "is_fraud", "ValueAsString": "0"},
            {"FeatureName": "event_hour", "ValueAsString": "9"},
        ],
        "TargetStores": ["OnlineStore"],
    }
    rt_model = botocore.session.get_session().get_service_model("sagemaker-featurestore-runtime")
    validate_parameters(r, rt_model.operation_model("PutRecord").input_shape)
    assert fsreq.record_id_of(r) == "card_1#m_2"
    # BatchGetRecord: 100 identifiers per call (the API limit), duplicates asked once
    keys = [(f"card_{i}", "m_1") for i in range(230)] + [("card_0", "m_1")]
    calls = fsreq.batch_get_record_requests(uc, "card_merchant", keys, fsreq.feature_names(cols))
    assert [len(c["Identifiers"][0]["RecordIdentifiersValueAsString"]) for c in calls] == [100, 100, 30]
    for c in calls:
        validate_parameters(c, rt_model.operation_model("BatchGetRecord").input_shape)
    with pytest.raises(ValueError, match="2 entity keys"):
        fsreq.batch_get_record_requests(uc, "card_merchant", ["card_1"])


def test_create_request_has_only_the_stores_the_view_asks_for():
    for stores, present, absent in (
        (["online"], {"OnlineStoreConfig"}, {"OfflineStoreConfig", "RoleArn"}),
        (["offline"], {"OfflineStoreConfig", "RoleArn"}, {"OnlineStoreConfig"}),
    ):
        data = _usecase_data("aws")
        data["features"]["card_activity"]["stores"] = stores
        uc = parse_usecase(data)
        r = fsreq.create_feature_group_request(uc, "card_activity", _cols(uc, "card_activity"))
        assert present <= set(r) and not (absent & set(r)), (stores, sorted(r))


def test_feature_names_feature_store_rejects_are_caught():
    data = _usecase_data("aws")
    data["features"]["card_activity"]["features"] = ["card_txn_count_1h", "write_time"]
    uc = parse_usecase(data)
    cols = core.resolve_columns(uc, "card_activity", {**dict(gold_columns(uc, GOLD)), "write_time": "bigint"})
    with pytest.raises(FeatureViewError, match=r"features\.card_activity: column 'write_time': Feature Store reserves"):
        fsreq.create_feature_group_request(uc, "card_activity", cols)


# ---------------------------------------------------------------- CreateFeatureGroup under moto


def test_create_feature_group_round_trips_under_moto(aws_env):
    uc = aws_env["uc"]
    sm = boto3.client("sagemaker", region_name=REGION)
    for view, rid, ttl in (
        ("card_activity", "card_id", {"Unit": "Weeks", "Value": 1}),
        ("card_merchant", "record_id", {"Unit": "Hours", "Value": 36}),
    ):
        cols = _cols(uc, view)
        request = fsreq.create_feature_group_request(uc, view, cols)
        arn = sm.create_feature_group(**request)["FeatureGroupArn"]  # botocore validates it first
        got = sm.describe_feature_group(FeatureGroupName=request["FeatureGroupName"])
        assert got["FeatureGroupArn"] == arn and got["FeatureGroupStatus"] == "Created"
        assert got["FeatureGroupName"] == core.feature_group_name(uc, view)
        assert got["RecordIdentifierFeatureName"] == rid and got["EventTimeFeatureName"] == "event_time"
        assert got["FeatureDefinitions"] == request["FeatureDefinitions"]
        types = {d["FeatureName"]: d["FeatureType"] for d in got["FeatureDefinitions"]}
        assert types["event_time"] == "String" and types[rid] == "String"
        s3 = got["OfflineStoreConfig"]["S3StorageConfig"]
        assert s3["S3Uri"] == f"s3://{BUCKET}/fraud/feature-store" and s3["KmsKeyId"] == aws_env["kms"]
        assert got["OfflineStoreConfig"]["TableFormat"] == "Iceberg"
        assert got["RoleArn"] == uc.aws.iam_role_arn
        # moto drops OnlineStoreConfig and cannot list a feature group's tags: check the request
        online = request["OnlineStoreConfig"]
        assert online == {"EnableOnlineStore": True, "SecurityConfig": {"KmsKeyId": aws_env["kms"]}, "TtlDuration": ttl}
        tags = {t["Key"]: t["Value"] for t in request["Tags"]}
        assert tags["mlblueprints:usecase"] == NAME and tags["mlblueprints:view"] == view
        assert tags["mlblueprints:view-version"] == "1" and tags["mlblueprints:config-hash"] == uc.config_hash()
        assert tags["mlblueprints:git-commit"]
        assert request["OfflineStoreConfig"]["DataCatalogConfig"] == {
            "Catalog": "AwsDataCatalog",
            "Database": DB,
            "TableName": f"fv_{view}_v1",
        }
    # validation is on: a malformed request never reaches the service
    bad = copy.deepcopy(request)
    bad["FeatureDefinitions"][0]["FeatureType"] = 3
    with pytest.raises(botocore.exceptions.ParamValidationError):
        sm.create_feature_group(**bad)


def _sm_stub(uc, view, cols):
    sm = boto3.client("sagemaker", region_name=REGION)
    return sm, Stubber(sm), fsreq.create_feature_group_request(uc, view, cols)


def test_ensure_feature_group_waits_for_created_and_fails_clearly(aws_env):
    uc = aws_env["uc"]
    cols = _cols(uc, "card_activity")
    sm, stub, request = _sm_stub(uc, "card_activity", cols)
    name = request["FeatureGroupName"]
    arn = f"arn:aws:sagemaker:{REGION}:123456789012:feature-group/{name}"
    described = {
        "FeatureGroupArn": arn,
        "FeatureGroupName": name,
        "RecordIdentifierFeatureName": "card_id",
        "EventTimeFeatureName": "event_time",
        "FeatureDefinitions": request["FeatureDefinitions"],
        "CreationTime": datetime(2024, 3, 1),
        "OnlineStoreConfig": request["OnlineStoreConfig"],
        "OfflineStoreConfig": request["OfflineStoreConfig"],
        "NextToken": "",
    }
    sleeps: list[float] = []
    with stub:
        stub.add_client_error("describe_feature_group", "ResourceNotFound", http_status_code=404)
        stub.add_response("create_feature_group", {"FeatureGroupArn": arn}, expected_params=request)
        stub.add_response("describe_feature_group", {**described, "FeatureGroupStatus": "Creating"})
        stub.add_response("describe_feature_group", {**described, "FeatureGroupStatus": "Creating"})
        stub.add_response("describe_feature_group", {**described, "FeatureGroupStatus": "Created"})
        out = fa.ensure_feature_group(sm, uc, "card_activity", cols, 60, 2.5, sleep=sleeps.append)
        stub.assert_no_pending_responses()
    assert out == {"name": name, "arn": arn, "created": True, "status": "Created"}
    assert sleeps == [2.5, 2.5]

    with stub:
        stub.add_client_error("describe_feature_group", "ResourceNotFound", http_status_code=404)
        stub.add_response("create_feature_group", {"FeatureGroupArn": arn})
        stub.add_response(
            "describe_feature_group",
            {**described, "FeatureGroupStatus": "CreateFailed", "FailureReason": "KMS key is disabled"},
        )
        with pytest.raises(RuntimeError, match="CreateFailed: KMS key is disabled"):
            fa.ensure_feature_group(sm, uc, "card_activity", cols, 60, 0, sleep=sleeps.append)

    with stub:  # an existing group still Creating past the wait
        stub.add_response("describe_feature_group", {**described, "FeatureGroupStatus": "Creating"})
        with pytest.raises(TimeoutError, match="still Creating"):
            fa.ensure_feature_group(sm, uc, "card_activity", cols, 0, 0, sleep=sleeps.append)

    with stub:  # created by a concurrent run between our describe and create
        stub.add_client_error("describe_feature_group", "ResourceNotFound", http_status_code=404)
        stub.add_client_error("create_feature_group", "ResourceInUse")
        stub.add_response("describe_feature_group", {**described, "FeatureGroupStatus": "Created"})
        assert fa.ensure_feature_group(sm, uc, "card_activity", cols, 60, 0)["created"] is False


# ---------------------------------------------------------------- PutRecord: retries


def _put_requests(uc, n: int) -> list[dict]:
    cols = _cols(uc, "card_activity")
    return [
        fsreq.put_record_request(
            uc,
            "card_activity",
            cols,
            {"card_id": f"card_{i}", "event_time": datetime(2024, 3, 1, 0, 0, i % 60), "card_txn_count_1h": i},
            ["OfflineStore"],
        )
        for i in range(n)
    ]


def test_put_records_retries_throttling_and_5xx_then_succeeds(aws_env):
    fs = boto3.client("sagemaker-featurestore-runtime", region_name=REGION)
    [request] = _put_requests(aws_env["uc"], 1)
    sleeps: list[float] = []
    with Stubber(fs) as stub:
        stub.add_client_error("put_record", "ThrottlingException", "Rate exceeded", 400, expected_params=request)
        stub.add_client_error("put_record", "ServiceUnavailable", "try again", 503, expected_params=request)
        stub.add_client_error("put_record", "InternalFailure", "oops", 500, expected_params=request)
        stub.add_response("put_record", {}, expected_params=request)
        out = fa.put_records(fs, [request], workers=1, max_attempts=5, sleep=sleeps.append)
        stub.assert_no_pending_responses()
    assert out["sent"] == 1 and out["retried"] == 3
    # exponential backoff with jitter: each delay within [cap/2, cap], caps doubling
    caps = [fa.BACKOFF_BASE_SECONDS * 2**i for i in range(3)]
    assert all(c / 2 <= s <= c for s, c in zip(sleeps, caps)) and len(sleeps) == 3


def test_put_records_fails_naming_the_record_that_exhausts_its_attempts(aws_env):
    fs = boto3.client("sagemaker-featurestore-runtime", region_name=REGION)
    first, second = _put_requests(aws_env["uc"], 2)
    with Stubber(fs) as stub:
        stub.add_response("put_record", {}, expected_params=first)
        for _ in range(3):
            stub.add_client_error("put_record", "ThrottlingException", "Rate exceeded", 400, expected_params=second)
        with pytest.raises(fa.PutRecordError, match=r"record 'card_1' after 3 attempt\(s\): ThrottlingException"):
            fa.put_records(fs, [first, second], workers=1, max_attempts=3, sleep=lambda s: None)
    # a non-retryable error fails at once
    with Stubber(fs) as stub:
        stub.add_client_error("put_record", "ValidationError", "bad value", 400, expected_params=first)
        with pytest.raises(fa.PutRecordError, match=r"record 'card_0' after 1 attempt\(s\): ValidationError"):
            fa.put_records(fs, [first], workers=1, max_attempts=8, sleep=lambda s: None)
    assert fa.is_retryable(botocore.exceptions.EndpointConnectionError(endpoint_url="https://x"))
    assert not fa.is_retryable(ValueError("no"))


def test_put_records_in_parallel_sends_each_record_once(aws_env):
    store = FeatureStoreTwin()
    session = store.attach(boto3.Session(region_name=REGION))
    _, fs = fa.clients(boto3_runtime(aws_env["uc"], session), aws_env["uc"], workers=4)
    requests = _put_requests(aws_env["uc"], 200)
    for i in range(0, 200, 7):
        store.faults[f"card_{i}"] = ["ThrottlingException", "InternalFailure"][: 1 + i % 2]
    out = fa.put_records(fs, iter(requests), workers=4, max_attempts=4, sleep=lambda s: None)
    assert out["sent"] == 200 and out["retried"] == store.failed_attempts > 0
    assert sorted(r["card_id"] for r in store.offline) == sorted(f"card_{i}" for i in range(200))


# ---------------------------------------------------------------- materialize end to end


def test_materialize_end_to_end_under_moto(world, lake):
    uc, store, athena = world["uc"], world["store"], world["athena"]
    run = RunInfo.for_usecase(uc, run_id="scheduled__2024-03-02T00:00:00+00:00", dag_id=f"{NAME}__features")
    results = {view: materialize(world, view, run) for view in VIEWS}

    for view in VIEWS:
        out, exp = results[view], _expected(lake, uc, view)
        cols = _cols(uc, view)
        group = core.feature_group_name(uc, view)
        for k in ("rows_in", "skipped_null_key", "skipped_null_event_time", "collapsed_duplicates"):
            assert out[k] == exp[k], (view, k)
        assert out["offline_rows"] == exp["offline_rows"] and out["online_entities"] == exp["online_entities"]
        assert out["rows_in"] == (
            out["skipped_null_key"] + out["skipped_null_event_time"] + out["collapsed_duplicates"] + out["offline_rows"]
        )
        assert out["target"] == "aws" and out["range"] == [LO.isoformat(), HI.isoformat()]
        assert out["feature_group"] == group and out["feature_group_created"] is True
        assert "offline" not in out["put_record"], "history goes to the offline store as files, not PutRecord"
        assert out["put_record"]["online"]["sent"] == exp["online_entities"]
        # the offline store holds exactly the batch, each value as PutRecord would have stored it,
        # with this write's write time; the online store the newest row per entity
        assert offline_records(athena, uc, view, out["offline"]["write_time"]) == sorted(
            json.dumps(_record(uc, view, cols, r), sort_keys=True) for r in exp["batch"]
        )
        assert out["offline"]["rows"] == exp["offline_rows"] and out["offline_snapshot_id"]
        online = {rid: rec for (g, rid), rec in store.online.items() if g == group}
        assert online == {
            fsreq.record_identifier(uc, view, ent): _record(uc, view, cols, r) for ent, r in exp["latest"].items()
        }
    assert (
        results["card_activity"]["skipped_null_key"] == 2 and results["card_activity"]["skipped_null_event_time"] == 1
    )
    assert results["card_activity"]["collapsed_duplicates"] == 1
    assert results["card_merchant"]["skipped_null_key"] == 2
    # every request was a PutRecord to the online store, validated by botocore and by the twin
    assert all(p["TargetStores"] == ["OnlineStore"] for p in store.puts) and not store.offline
    assert not any(p["Record"][0]["ValueAsString"] in ("", "None") for p in store.puts)
    # the tie-break: the greater Gold primary key wins; a 250 ms event time keeps its milliseconds
    dup = store.online[(core.feature_group_name(uc, "card_activity"), lake["dup_card"])]
    assert dup["card_txn_count_1h"] == "999"
    frac = store.online[(core.feature_group_name(uc, "card_activity"), lake["frac_card"])]
    assert frac["card_txn_count_1h"] == "777" and re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.250Z", frac["event_time"]
    )

    # Athena: per view the skipped rows, the offline INSERT, its check, the UNLOAD of the newest
    # rows (to a prefix unique per run and try), compaction and VACUUM of the offline table
    unloads = [e for e in athena.executions if UNLOAD.match(e["query"])]
    assert len(unloads) == 2 and len(athena.executions) == 2 * 7
    heads = [e["query"].split(None, 1)[0] for e in athena.executions[:7]]
    assert heads == ["SELECT", "INSERT", "SELECT", "UNLOAD", "OPTIMIZE", "ALTER", "VACUUM"], heads
    for e in athena.executions:
        assert e["workgroup"] == "mlblueprints" and e["context"].get("Database") == DB
        assert e["config"]["EncryptionConfiguration"] == {"EncryptionOption": "SSE_KMS", "KmsKey": world["kms"]}
    targets = {UNLOAD.match(e["query"])["target"] for e in unloads}
    assert targets == {fa.staging_uri(uc, view, run) for view in VIEWS}
    assert all("__1/" in t and run.run_id.replace(":", "_").replace("+", "_") in t for t in targets)
    assert {u["format"] for u in athena.unloads} == {"PARQUET"} and {u["compression"] for u in athena.unloads} == {
        "ZSTD"
    }
    vacuums = [m for m in athena.maintenance if m["op"] == "vacuum"]
    assert {m["table"] for m in vacuums} == {f"fv_{v}_v1" for v in VIEWS}
    assert all(m["retention_seconds"] == str(7 * 86400) for m in vacuums)
    s3 = boto3.client("s3", region_name=REGION)
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="fraud/_features/").get("KeyCount") == 0, "staging not deleted"

    # reads: the same contract as the local store
    exp = _expected(lake, uc, "card_activity")
    newest = max(r["event_time"] for r in exp["batch"])
    known = sorted(e[0] for e in exp["latest"])
    cards = known + [f"no_such_card_{i}" for i in range(100)]  # more than one BatchGetRecord call
    got = fa.get_online_features(uc, "card_activity", cards, as_of=newest, rt=world["rt"])
    assert len(store.batch_gets) == -(-len(cards) // 100) == 2
    assert got[len(known) :] == [None] * 100
    for card, row in zip(known, got):
        want = exp["latest"][(card,)]
        if want["event_time"] < newest - timedelta(days=7):
            assert row is None
            continue
        assert row == {
            "card_id": card,
            "event_time": want["event_time"],
            **{f: want[f] for f in uc.features["card_activity"].features},
        }
    # older than the TTL at as_of: not served
    assert (
        fa.get_online_features(uc, "card_activity", cards[:3], as_of=newest + timedelta(days=30), rt=world["rt"])
        == [None] * 3
    )
    latest_pairs = _expected(lake, uc, "card_merchant")["latest"]
    pair = max(latest_pairs, key=lambda e: latest_pairs[e]["event_time"])
    [row] = fa.get_online_features(uc, "card_merchant", [pair], as_of=newest, rt=world["rt"])
    want = latest_pairs[pair]
    assert row == {
        "card_id": pair[0],
        "merchant_id": pair[1],
        "event_time": want["event_time"],
        **{f: want[f] for f in uc.features["card_merchant"].features},
    }

    # a retry (next try) appends the batch to the offline store again, with its own write time
    # (readers keep the newest write), and leaves the online store as it was
    before_online = dict(store.online)
    store.faults[lake["dup_card"]] = ["ThrottlingException", "ServiceUnavailable"]
    again = materialize(world, "card_activity", RunInfo(**{**run.as_dict(), "try_number": 2}))
    assert again["feature_group_created"] is False and again["staging_uri"].endswith("__2/")
    assert again["offline"]["write_time"] != results["card_activity"]["offline"]["write_time"]
    assert offline_records(athena, uc, "card_activity", again["offline"]["write_time"]) == offline_records(
        athena, uc, "card_activity", results["card_activity"]["offline"]["write_time"]
    )
    assert store.online == before_online
    assert again["put_record"]["online"]["retried"] == 2


def offline_records(athena, uc, view: str, write_time: str) -> list[str]:
    """The offline store's rows of one write, as the PutRecord text of each feature (sorted JSON)."""
    table = core.offline_table(uc, view)
    df = athena.con.execute(
        f'SELECT * FROM "{DB}"."{table}" WHERE write_time = CAST(? AS TIMESTAMP) AND api_invocation_time = write_time '
        "AND NOT is_deleted",
        [write_time],
    ).df()
    out = []
    for row in df.to_dict("records"):
        rec = {}
        for name in fsreq.feature_names(_cols(uc, view)):
            v = row[name]
            if v is None or (isinstance(v, float) and v != v):
                continue
            rec[name] = repr(float(v)) if isinstance(v, float) else str(int(v)) if not isinstance(v, str) else v
        out.append(json.dumps(rec, sort_keys=True))
    return sorted(out)


def _fields(put: dict) -> dict[str, str]:
    return {f["FeatureName"]: f["ValueAsString"] for f in put["Record"]}


def test_counts_match_the_local_target(world, lake):
    """The local target's materialize over the same Gold table reports the same counts."""
    from mlblueprints.features import local as features_local

    uc_local = lake["uc_local"]
    for view in VIEWS:
        aws_out = materialize(world, view, RunInfo.for_usecase(world["uc"], run_id="cmp"))
        with runtime_home(lake["home"]):  # the lake's Gold; the local stores are written beside it
            local_out = features_local.materialize(uc_local, view, LO, HI, RunInfo.for_usecase(uc_local, run_id="cmp"))
        for k in (
            "rows_in",
            "skipped_null_key",
            "skipped_null_event_time",
            "collapsed_duplicates",
            "offline_rows",
            "online_entities",
        ):
            assert aws_out[k] == local_out[k], (view, k)
        assert aws_out["range"] == local_out["range"] and aws_out["view"] == local_out["view"] == view


# ---------------------------------------------------------------- bad input


def test_missing_gold_column_fails_before_anything_is_sent(lake, aws_env, sagemaker_like_aws):
    uc = aws_env["uc"]
    _glue_gold(uc, extra_drop=("card_txn_count_24h",))
    store = FeatureStoreTwin()
    session = store.attach(boto3.Session(region_name=REGION))
    store_backend = AwsFeatureStore(uc, boto3_runtime(uc, session))
    run = RunInfo.for_usecase(uc, run_id="bad")
    with pytest.raises(FeatureViewError) as err:
        store_backend.materialize("card_activity", LO, HI, run)
    assert err.value.view == "card_activity" and err.value.column == "card_txn_count_24h"
    assert "features.card_activity: column 'card_txn_count_24h'" in str(err.value)
    assert not _queries() and not store.puts
    sm = boto3.client("sagemaker", region_name=REGION)
    with pytest.raises(botocore.exceptions.ClientError, match="ResourceNotFound"):
        sm.describe_feature_group(FeatureGroupName=core.feature_group_name(uc, "card_activity"))
    # no Gold table in Glue at all
    boto3.client("glue", region_name=REGION).delete_table(DatabaseName=DB, Name=GOLD)
    with pytest.raises(
        FeatureViewError, match=r"features\.card_activity: Gold table .* is not in the Glue Data Catalog"
    ):
        store_backend.materialize("card_activity", LO, HI, run)


def test_type_change_against_an_existing_group_fails_before_anything_is_sent(lake, aws_env, sagemaker_like_aws):
    uc = aws_env["uc"]
    # the group was created when card_amount_sum_24h was a bigint (Integral); Gold now gives a double
    _glue_gold(uc)
    old = _cols(uc, "card_activity")
    old = core.ViewColumns(
        view=old.view,
        entity=old.entity,
        event_time=old.event_time,
        features=tuple((n, "bigint" if n == "card_amount_sum_24h" else t) for n, t in old.features),
    )
    sm = boto3.client("sagemaker", region_name=REGION)
    sm.create_feature_group(**fsreq.create_feature_group_request(uc, "card_activity", old))
    store = FeatureStoreTwin()
    session = store.attach(boto3.Session(region_name=REGION))
    store_backend = AwsFeatureStore(uc, boto3_runtime(uc, session))
    with pytest.raises(FeatureViewError) as err:
        store_backend.materialize("card_activity", LO, HI, RunInfo.for_usecase(uc, run_id="bad"))
    assert err.value.view == "card_activity" and err.value.column == "card_amount_sum_24h"
    assert (
        "type changed" in str(err.value)
        and "Integral" in str(err.value)
        and "bump features.card_activity.version" in str(err.value)
    )
    assert not _queries() and not store.puts
    # and a group created without an online store cannot serve a view that wants one
    data = _usecase_data("aws", aws_env["kms"])
    data["features"]["card_merchant"]["stores"] = ["offline"]
    offline_only = parse_usecase(data)
    sm.create_feature_group(
        **fsreq.create_feature_group_request(offline_only, "card_merchant", _cols(offline_only, "card_merchant"))
    )
    with pytest.raises(FeatureViewError, match="has no online store"):
        store_backend.materialize("card_merchant", LO, HI, RunInfo.for_usecase(uc, run_id="bad"))
    assert not _queries() and not store.puts


def _queries() -> list[str]:
    """Every Athena query started so far (moto keeps them)."""
    return boto3.client("athena", region_name=REGION).list_query_executions().get("QueryExecutionIds", [])


def test_feature_store_clients_come_from_the_connection(aws_env):
    """The backend's clients in a task: made from the Airflow connection (its endpoint and
    region), the Feature Store runtime one sized for the parallel PutRecord and not retrying
    by itself (put_records owns the retries)."""
    pytest.importorskip("airflow.providers.amazon")
    from mlblueprints.airflow.runtime import connection_runtime

    rt = connection_runtime(aws_env["uc"])
    sm, fs = fa.clients(rt, aws_env["uc"])
    assert sm.meta.service_model.service_name == "sagemaker" and sm.meta.region_name == REGION
    assert fs.meta.service_model.service_name == "sagemaker-featurestore-runtime"
    assert fs.meta.endpoint_url.startswith("http://127.0.0.1:"), "the connection's endpoint_url applies"
    assert fs.meta.config.retries["total_max_attempts"] == 1
    assert fs.meta.config.max_pool_connections >= aws_env["uc"].aws.feature_store.put_record_workers


def test_gold_schema_from_iceberg_metadata_when_glue_lists_no_columns(aws_env):
    """Glue tables created with OpenTableFormatInput may list no columns (moto never does):
    the schema then comes from the table's current Iceberg metadata in S3."""
    uc = aws_env["uc"]
    glue = boto3.client("glue", region_name=REGION)
    s3 = boto3.client("s3", region_name=REGION)
    glue.create_database(DatabaseInput=req.glue_database_input(uc.aws, "features test"))
    fields = [
        {"id": i, "name": n, "required": False, "type": req.iceberg_type(t)}
        for i, (n, t) in enumerate(gold_columns(uc, GOLD), start=1)
    ]
    metadata = {
        "format-version": 2,
        "current-schema-id": 1,
        "schemas": [
            {"schema-id": 0, "type": "struct", "fields": fields[:3]},
            {"schema-id": 1, "type": "struct", "fields": fields},
        ],
    }
    key = f"fraud/warehouse/{GOLD}/metadata/00001-abc.metadata.json"
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(metadata).encode())
    glue.create_table(
        DatabaseName=DB,
        TableInput={
            "Name": GOLD,
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {"table_type": "ICEBERG", "metadata_location": f"s3://{BUCKET}/{key}"},
        },
    )
    assert fa.gold_types(uc, GOLD, glue, s3)["card_txn_count_1h"] == "bigint"
    for view in VIEWS:
        assert fa.view_columns(uc, view, glue, s3) == _cols(uc, view)
    with pytest.raises(FeatureViewError, match="has no columns in the Glue Data Catalog"):
        fa.view_columns(uc, "card_activity", glue)


# ---------------------------------------------------------------- the features DAG on aws
#
# ``<usecase>__features`` runs as Airflow runs it (dag.test), for the shipped use case with
# ``target: aws``: CreateFeatureGroup / DescribeFeatureGroup go to moto (through the moto server
# behind the Airflow connection); the step's Feature Store client gets the twin attached; each
# view's UNLOAD and SELECT run as the provider's Athena operator (deferrable: its trigger polls
# moto's server) and are answered by the Athena twin over the ``lake`` fixture's Gold table.

# not the lakehouse aws test's name: Asset names are global in the metadata DB, and the same
# name with another bucket would make that test's Assets inactive
DAG_NAME = "fraud_features_aws"
DAG_VIEWS = ("card_activity", "merchant_activity")  # the views the shipped use case declares


@pytest.fixture
def dag_world(lake, moto_world, sagemaker_like_aws, airflow_db, monkeypatch):
    """moto (with its server behind the Airflow connection), the Athena and Feature Store twins,
    and an aws use case YAML (the shipped one with ``target: aws``) in a temp MLB_USECASES_DIR."""
    from mlblueprints.features import aws as fa

    mw = moto_world
    mw.bucket(BUCKET)
    kms = mw.kms_key("features")
    mw.workgroup(BUCKET)
    twin = athena_twin(lake, mw.tmp, kms).install(monkeypatch)

    # moto does not implement sagemaker-featurestore-runtime (PutRecord answers "Not yet
    # implemented"): the step's own Feature Store client - made from the connection, botocore
    # validation on - gets the twin attached, which answers in memory and validates again.
    # CreateFeatureGroup goes to moto; its parameters are kept as sent.
    store = FeatureStoreTwin()
    created: list[dict] = []
    clients: list = []
    original_clients = fa.clients

    def keep_create(params, **_):
        created.append(copy.deepcopy(params))

    def task_clients(rt, uc, workers=None):
        sm, fs = original_clients(rt, uc, workers)
        store.attach(fs)
        if sm not in clients:
            sm.meta.events.register("before-parameter-build.sagemaker.CreateFeatureGroup", keep_create)
        clients.extend([c for c in (sm, fs) if c not in clients])
        return sm, fs

    monkeypatch.setattr(fa, "clients", task_clients)
    usecases = mw.tmp / "usecases"
    usecases.mkdir()
    data = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())
    data.update(name=DAG_NAME, target="aws", retry_delay_seconds=0)
    data["gold"][GOLD]["sql"] = str(ROOT / "dags/usecases/sql/fraud_detection/transaction_features.sql")
    # glue_database: the database the Athena twin serves Gold from
    data["aws"].update(region=REGION, bucket=BUCKET, prefix="fraud", glue_database=DB, kms_key_arn=kms)
    data["aws"]["feature_store"] = {"put_record_workers": 4}
    (usecases / f"{DAG_NAME}.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("MLB_USECASES_DIR", str(usecases))
    uc = load_usecase(usecases / f"{DAG_NAME}.yaml")
    assert set(uc.features) == set(DAG_VIEWS) and all(uc.view_target(v) == "aws" for v in DAG_VIEWS)
    _glue_gold(uc)  # the Gold table as the lakehouse DAG leaves it in Glue
    yield {
        "uc": uc,
        "kms": kms,
        "home": mw.home,
        "athena": twin,
        "store": store,
        "created": created,
        "clients": clients,
    }


def test_features_dag_on_aws_under_moto(dag_world, lake):  # noqa: F811
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from mlblueprints.airflow import localrun

    uc, store, kms = dag_world["uc"], dag_world["store"], dag_world["kms"]
    # one throttled PutRecord: retried by the task (the runtime client itself does not retry)
    store.faults[lake["dup_card"]] = ["ThrottlingException"]

    dag = localrun.get_dag(f"{DAG_NAME}__features")
    dr = dag.test(run_conf={"event_dates": [LO.isoformat(), HI.isoformat()]})
    tis = {ti.task_id: ti for ti in dr.get_task_instances()}
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    # each view's Gold batch is UNLOADed by the provider's Athena operator between prepare and finish
    steps = [f"materialize__{v}.{t}" for v in DAG_VIEWS for t in ("prepare", "athena", "finish")]
    assert set(tis) == {"plan", "report", *steps}
    plan = tis["plan"].xcom_pull(task_ids="plan")
    assert plan == {
        "range": [LO.isoformat(), HI.isoformat()],
        "views": sorted(DAG_VIEWS),
        "source": "param event_dates",
    }
    outs = {v: tis[f"materialize__{v}.finish"].xcom_pull(task_ids=f"materialize__{v}.finish") for v in DAG_VIEWS}

    # the tasks' clients: made from the connection (its endpoint), botocore's parameter validation on
    services = {c.meta.service_model.service_name for c in dag_world["clients"]}
    assert services == {"sagemaker", "sagemaker-featurestore-runtime"}
    assert all(c.meta.config.parameter_validation for c in dag_world["clients"])
    assert all(c.meta.endpoint_url.startswith("http://127.0.0.1:") for c in dag_world["clients"])

    # CreateFeatureGroup: one request per view, valid against the service model; moto holds the groups
    sm_model = botocore.session.get_session().get_service_model("sagemaker")
    created = {r["FeatureGroupName"]: r for r in dag_world["created"]}
    assert (
        sorted(created)
        == sorted(core.feature_group_name(uc, v) for v in DAG_VIEWS)
        == sorted(f"{DAG_NAME.replace('_', '-')}-{v.replace('_', '-')}-v1" for v in DAG_VIEWS)
    )
    sm = boto3.client("sagemaker", region_name=REGION)
    for view in DAG_VIEWS:
        group = core.feature_group_name(uc, view)
        request = created[group]
        validate_parameters(request, sm_model.operation_model("CreateFeatureGroup").input_shape)
        assert request["RecordIdentifierFeatureName"] == uc.features[view].entity[0]
        assert request["EventTimeFeatureName"] == "event_time"
        assert request["OnlineStoreConfig"] == {
            "EnableOnlineStore": True,
            "SecurityConfig": {"KmsKeyId": kms},
            "TtlDuration": {"Unit": "Weeks", "Value": 1},  # ttl: 7d
        }
        assert request["OfflineStoreConfig"]["DataCatalogConfig"] == {
            "Catalog": "AwsDataCatalog",
            "Database": DB,
            "TableName": f"fv_{view}_v1",
        }
        tags = {t["Key"]: t["Value"] for t in request["Tags"]}
        assert tags["mlblueprints:usecase"] == DAG_NAME and tags["mlblueprints:view"] == view
        got = sm.describe_feature_group(FeatureGroupName=group)
        assert got["FeatureGroupStatus"] == "Created" and got["FeatureGroupArn"] == outs[view]["feature_group_arn"]
        assert got["FeatureDefinitions"] == request["FeatureDefinitions"]
        offline = got["OfflineStoreConfig"]
        assert offline["TableFormat"] == "Iceberg"
        assert offline["S3StorageConfig"]["S3Uri"] == f"s3://{BUCKET}/fraud/feature-store"
        assert offline["S3StorageConfig"]["KmsKeyId"] == kms
        assert got["RoleArn"] == uc.aws.iam_role_arn == "arn:aws:iam::123456789012:role/mlblueprints-execution"
        assert got["OnlineStoreConfig"] == request["OnlineStoreConfig"]  # kept by sagemaker_like_aws

    # PutRecord: online only, every request valid against the service model, counts as the XCom
    # summary says; the history is in the offline store, which the step checked before emitting
    rt_model = botocore.session.get_session().get_service_model("sagemaker-featurestore-runtime")
    put_shape = rt_model.operation_model("PutRecord").input_shape
    for p in store.puts:
        validate_parameters(p, put_shape)
        assert p["TargetStores"] == ["OnlineStore"]
    assert store.failed_attempts == 1
    retried = 0
    for view in DAG_VIEWS:
        out, exp = outs[view], _expected(lake, uc, view)
        group = core.feature_group_name(uc, view)
        online_puts = [p for p in store.puts if p["FeatureGroupName"] == group]
        assert out["target"] == "aws" and out["feature_group"] == group and out["feature_group_created"] is True
        assert out["offline_rows"] == out["offline"]["rows"] == exp["offline_rows"]
        assert len(offline_records(dag_world["athena"], uc, view, out["offline"]["write_time"])) == exp["offline_rows"]
        assert len(online_puts) == out["put_record"]["online"]["sent"] == out["online_entities"]
        assert (
            out["online_entities"]
            == exp["online_entities"]
            == len({p["Record"][0]["ValueAsString"] for p in online_puts})
        )
        for k in ("rows_in", "skipped_null_key", "skipped_null_event_time", "collapsed_duplicates"):
            assert out[k] == exp[k], (view, k)
        retried += out["put_record"]["online"]["retried"]
        assert out["run_id"] == dr.run_id and out["try_number"] == 1
    assert retried == store.failed_attempts
    assert len(store.puts) == sum(o["online_entities"] for o in outs.values())

    # Athena: seven statements per view, our workgroup and database, results encrypted with our key
    executions = dag_world["athena"].executions
    assert len(executions) == 7 * len(DAG_VIEWS)
    for e in executions:
        assert e["workgroup"] == "mlblueprints" and e["context"].get("Database") == DB
        assert e["config"]["EncryptionConfiguration"] == {"EncryptionOption": "SSE_KMS", "KmsKey": kms}
    s3 = boto3.client("s3", region_name=REGION)
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="fraud/_features/").get("KeyCount") == 0, "staging not deleted"

    # the materialize tasks emitted the view Assets, with the range in their extra
    with create_session() as session:
        events = session.execute(
            select(AssetModel.name, AssetEvent.source_task_id, AssetEvent.extra)
            .join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
            .where(AssetEvent.source_dag_id == f"{DAG_NAME}__features", AssetEvent.source_run_id == dr.run_id)
        ).all()
    assert sorted((n, t) for n, t, _ in events) == sorted(
        (f"{DAG_NAME}.features.{v}", f"materialize__{v}.finish") for v in DAG_VIEWS
    )
    for name, _, extra in events:
        assert extra["range"] == [LO.isoformat(), HI.isoformat()] and extra["version"] == 1
        # the offline store's Iceberg state that holds the batch (its Glue metadata location)
        view = name.rsplit(".", 1)[1]
        assert extra["offline_snapshot_id"] == outs[view]["offline"]["metadata_location"]
        assert extra["offline_snapshot_id"].startswith(f"s3://{BUCKET}/fraud/feature-store/")

    # the report: JSON under MLB_HOME/runs/<usecase>/features/, with the tasks' results
    reports = dag_world["home"] / "runs" / DAG_NAME / "features"
    [path] = reports.glob("*.json")
    assert tis["report"].xcom_pull(task_ids="report") == {"report": str(path)}
    report = json.loads(path.read_text())
    assert report["usecase"] == DAG_NAME and report["run_id"] == dr.run_id and report["missing"] == []
    assert report["tasks"]["plan"] == plan
    for view in DAG_VIEWS:
        assert report["tasks"][f"materialize__{view}"]["put_record"] == outs[view]["put_record"]
        assert view in report["text"] and outs[view]["feature_group"] in report["text"]
    assert (reports / "latest.txt").read_text().strip() == report["text"].strip()


# ---------------------------------------------------------------- the offline store: freshness, backfills


def test_the_view_asset_is_emitted_only_when_the_offline_store_holds_the_batch(world, lake):
    """The features step runs as in the DAG (prepare, the Athena statements, finish): when the
    offline store does not hold the batch the statements wrote (here: the writes are accepted but
    not there), the step fails naming the counts and emits no Asset; when it does, the Asset
    carries the offline table's Iceberg state."""
    from mlblueprints.aws import direct
    from mlblueprints.core import service
    from mlblueprints.core.context import StepContext
    from mlblueprints.core.naming import feature_view_asset
    from mlblueprints.features import steps

    uc, rt, athena = world["uc"], world["rt"], world["athena"]
    planned = {"range": [LO.isoformat(), HI.isoformat()], "views": ["card_activity"]}
    run = RunInfo.for_usecase(uc, run_id="fresh", task_id="materialize__card_activity.athena")

    athena.lagging.add("fv_card_activity_v1")
    ctx = StepContext(uc=uc, run=run, runtime_factory=lambda: rt)
    call = steps.materialize(ctx, "card_activity", planned)
    with pytest.raises(fa.OfflineStoreIncomplete, match=r"holds 0 of the batch's \d+ rows"):
        service.complete(ctx, call, direct.runner(rt, uc, run))
    assert ctx.emitted == {}

    athena.lagging.clear()
    ctx = StepContext(uc=uc, run=RunInfo(**{**run.as_dict(), "try_number": 2}), runtime_factory=lambda: rt)
    out = service.complete(ctx, steps.materialize(ctx, "card_activity", planned), direct.runner(rt, uc, ctx.run))
    [(asset, extra)] = ctx.emitted.items()
    assert asset == feature_view_asset(uc, "card_activity").name
    assert extra["offline_snapshot_id"] == out["offline"]["metadata_location"] and out["offline"]["rows"] > 0


BACKFILL_DAYS = 250


@pytest.fixture
def long_gold(aws_env, sagemaker_like_aws, monkeypatch):
    """A Gold table of two rows on each of 250 event dates (no local oracle: the values are
    synthetic), answered by the Athena twin."""
    uc = aws_env["uc"]
    _glue_gold(uc)
    twin = AthenaTwin(DB, aws_env["tmp"], aws_env["kms"]).install(monkeypatch)
    exprs = []
    for name, t in gold_columns(uc, GOLD):
        if name == "event_time":
            exprs.append("TIMESTAMP '2023-06-01 06:00:00' + i * INTERVAL 12 HOUR")
        elif name == "event_date":
            exprs.append("CAST(TIMESTAMP '2023-06-01 06:00:00' + i * INTERVAL 12 HOUR AS DATE)")
        elif t == "string":
            exprs.append(
                f"'{name[:4]}_' || CAST(i % 17 AS VARCHAR)"
                if name != "transaction_id"
                else "'tx_' || CAST(i AS VARCHAR)"
            )
        elif t in ("double", "float"):
            exprs.append("CAST(i AS DOUBLE) / 4")
        else:
            exprs.append(f"CAST(i % 5 AS {t.upper()})")
    cols = ", ".join(f'{e} AS "{n}"' for e, (n, _) in zip(exprs, gold_columns(uc, GOLD)))
    twin.con.execute(f'CREATE TABLE {DB}."{GOLD}" AS SELECT {cols} FROM range({2 * BACKFILL_DAYS}) AS r(i)')
    store = FeatureStoreTwin()
    session = store.attach(boto3.Session(region_name=REGION))
    return {**aws_env, "athena": twin, "store": store, "rt": boto3_runtime(uc, session)}


def test_a_backfill_goes_to_the_offline_store_in_windows_of_at_most_100_event_dates(long_gold):
    uc, athena = long_gold["uc"], long_gold["athena"]
    lo = date(2023, 6, 1)
    hi = lo + timedelta(days=BACKFILL_DAYS - 1)
    run = RunInfo.for_usecase(uc, run_id="backfill")
    out = run_direct(
        uc, long_gold["rt"], AwsFeatureStore(uc, long_gold["rt"]).materialize("card_activity", lo, hi, run), run
    )
    inserts = [w for w in athena.writes if w["kind"] == "insert" and w["table"] == "fv_card_activity_v1"]
    assert [w["partitions"] for w in inserts] == [100, 100, 50]
    assert [q for q in out["statements"] if q.startswith("features_offline_")] == [
        f"features_offline_card_activity__{k:03d}" for k in range(3)
    ]
    assert out["offline_rows"] == out["offline"]["rows"] == 2 * BACKFILL_DAYS
    assert len(offline_records(athena, uc, "card_activity", out["offline"]["write_time"])) == 2 * BACKFILL_DAYS
    # the offline table, partitioned by Feature Store on the event time string, is compacted whole
    assert [m["op"] for m in athena.maintenance] == ["optimize", "alter", "vacuum"]
    assert "where" not in athena.maintenance[0]
