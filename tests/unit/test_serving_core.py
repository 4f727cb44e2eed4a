"""The endpoint's pure parts: what a request must carry, how a bad one is answered, how traffic
is split between variants, and the latency percentiles."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import fraud_usecase
from mlblueprints.serving.core import (
    RequestError,
    RequestShape,
    Router,
    VariantStats,
    check_record,
    parse_body,
    percentile,
)


@pytest.fixture(scope="module")
def shape() -> RequestShape:
    uc = fraud_usecase()
    return RequestShape.of(uc, uc.model_features())


def test_the_request_carries_the_views_keys_and_the_request_time_features(shape):
    assert shape.entity_fields == ("card_id", "merchant_id")
    assert shape.request_fields == ("amount", "event_hour")
    assert shape.views == {"card_activity": ("card_id",), "merchant_activity": ("merchant_id",)}
    # every model feature has one source, in the model's order
    uc = fraud_usecase()
    assert list(shape.features) == uc.model_features()
    for f, src in zip(shape.features, shape.source):
        if src is None:
            assert f in uc.training.extra_features
        else:
            assert f in uc.features[src].features


def test_a_good_record_gives_keys_and_values_in_order(shape):
    keys, values = check_record(
        shape, {"card_id": "c1", "merchant_id": 7, "amount": 12.5, "event_hour": None, "x": 1}, ""
    )
    assert keys == {"card_id": "c1", "merchant_id": 7}
    assert values[0] == 12.5 and math.isnan(values[1])


@pytest.mark.parametrize(
    ("record", "status", "names"),
    [
        ({"merchant_id": "m", "amount": 1, "event_hour": 3}, 422, "card_id: missing"),
        ({"card_id": "c", "merchant_id": "m", "event_hour": 3}, 422, "amount: missing"),
        ({"card_id": "", "merchant_id": "m", "amount": 1, "event_hour": 3}, 422, "card_id: must be"),
        ({"card_id": None, "merchant_id": "m", "amount": 1, "event_hour": 3}, 422, "card_id: must be"),
        ({"card_id": True, "merchant_id": "m", "amount": 1, "event_hour": 3}, 422, "card_id: must be"),
        ({"card_id": {"a": 1}, "merchant_id": "m", "amount": 1, "event_hour": 3}, 422, "card_id: must be"),
        ({"card_id": "c", "merchant_id": "m", "amount": "12", "event_hour": 3}, 422, "amount: must be a number"),
        ({"card_id": "c", "merchant_id": "m", "amount": 1, "event_hour": False}, 422, "event_hour: must be a number"),
        ({"card_id": "c", "merchant_id": "m", "amount": 1e400, "event_hour": 3}, 422, "amount: must be finite"),
    ],
)
def test_a_bad_record_is_named(shape, record, status, names):
    with pytest.raises(RequestError) as e:
        check_record(shape, record, "records[3].")
    assert e.value.status == status
    assert f"records[3].{names}" in e.value.message


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"", 400, "empty"),
        (b"{not json", 400, "not JSON"),
        (b'{"amount": NaN}', 400, "NaN is not a JSON value"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'{"records": []}', 422, "non-empty list"),
        (b'{"records": {"a": 1}}', 422, "non-empty list"),
        (b'{"records": [1]}', 422, "records[0]: must be an object"),
        (json.dumps({"records": [{}] * 101}).encode(), 413, "at most 100"),
        (b"\xff\xfe", 400, "not JSON"),
        (b" " * 70_000, 413, "at most 65536"),
    ],
)
def test_a_bad_body_is_named(body, status, says):
    with pytest.raises(RequestError) as e:
        parse_body(body, 65_536, 100)
    assert e.value.status == status
    assert says in e.value.message


def test_a_body_is_one_record_or_a_batch():
    assert parse_body(b'{"a": 1}', 100, 10) == ([{"a": 1}], False)
    assert parse_body(b'{"records": [{"a": 1}, {"a": 2}]}', 100, 10) == ([{"a": 1}, {"a": 2}], True)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_body_is_records_or_a_request_error(body):
    try:
        recs, _ = parse_body(body, 200, 5)
    except RequestError as e:
        assert 400 <= e.status < 500 and e.message
    else:
        assert recs and all(isinstance(r, dict) for r in recs)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.sampled_from("abcde"), st.integers(min_value=0, max_value=100), min_size=1).filter(
        lambda w: any(v > 0 for v in w.values())
    ),
    st.integers(min_value=1, max_value=400),
)
def test_every_variant_gets_its_weights_share_within_one_request(weights, n):
    r = Router(weights)
    got = Counter(r.pick() for _ in range(n))
    total = sum(weights.values())
    for k, w in weights.items():
        assert abs(got.get(k, 0) - n * w / total) < 1 + 1e-9, (k, got, weights)


def test_a_router_needs_a_positive_weight():
    with pytest.raises(ValueError, match="positive weight"):
        Router({"a": 0, "b": 0})


def test_a_ten_percent_canary_gets_exactly_one_request_in_ten():
    r = Router({"champion": 0.9, "challenger": 0.1})
    picks = [r.pick() for _ in range(1000)]
    assert picks.count("challenger") == 100
    # spread out, not in a burst: never two challenger requests within 9 of each other
    idx = [i for i, p in enumerate(picks) if p == "challenger"]
    assert min(b - a for a, b in zip(idx, idx[1:])) >= 9


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e4), min_size=1, max_size=200), st.sampled_from([0.5, 0.9, 0.99]))
def test_percentiles_are_numpys(values, q):
    assert percentile(sorted(values), q) == pytest.approx(float(np.percentile(values, q * 100)), rel=1e-9, abs=1e-9)


def test_variant_stats_count_errors_and_keep_a_window():
    s = VariantStats(window=3)
    for ms in (1.0, 2.0, 3.0, 4.0):
        s.add(ms, [0.05, 0.95], error=False)
    s.add(10.0, None, error=True)
    s.add_client_error()
    snap = s.snapshot()
    assert (snap["requests"], snap["errors"], snap["client_errors"], snap["records"]) == (6, 1, 1, 8)
    assert snap["latency_ms_max"] == 10.0 and snap["latency_ms_p50"] == 4.0  # the newest 3: 3, 4, 10
    assert snap["score_histogram"][0] == 4 and snap["score_histogram"][-1] == 4
    assert snap["error_rate"] == pytest.approx(1 / 6)
