"""The local endpoint as a user runs it: ``mlblueprints.serving.server.start`` launches uvicorn in
its own process on loopback, and the test talks to it over real HTTP.

World: ``scoring_base`` (Gold of the shared pipeline, both feature views materialized into the
online store, a fraud model registered as champion). Checked against independent computations:
each card's and merchant's newest Gold row (pyiceberg's reader, not the online store's code) and
the booster's own ``predict`` on a DMatrix.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pytest

from helpers import free_port, read_table, runtime_home, usecases_dir
from mlblueprints.config import load_usecase

pytestmark = pytest.mark.slow


def call(base: str, path: str, body: Any = None, raw: bytes | None = None, timeout: float = 10) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method="POST" if data is not None else "GET")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def served(scoring_base, tmp_path_factory):
    from mlblueprints.serving import server
    from mlblueprints.serving.state import DeploymentState

    home = tmp_path_factory.mktemp("endpoint") / "home"
    shutil.copytree(scoring_base["home"], home)
    yaml_file = scoring_base["uc_dir"] / "fraud_detection.yaml"
    with usecases_dir(scoring_base["uc_dir"]), runtime_home(home):
        uc = load_usecase(yaml_file)
        info = server.start(uc, yaml_file, port=free_port(), timeout=180)
        try:
            yield {"uc": uc, "home": home, "base": info["url"], "info": info, "state": DeploymentState(uc)}
        finally:
            server.stop(uc)


def _newest(gold: pd.DataFrame, key: str) -> pd.DataFrame:
    """Each entity's newest Gold row, for entities whose newest event time is not shared."""
    g = gold.sort_values("event_time")
    last = g.groupby(key).tail(1).set_index(key)
    ties = g.merge(last[["event_time"]].reset_index(), on=[key, "event_time"]).groupby(key).size()
    return last.loc[ties[ties == 1].index]


@pytest.fixture(scope="module")
def expected(served):
    """Requests for 200 (card, merchant) pairs and the booster's own scores for them."""
    import mlflow.xgboost
    import xgboost as xgb

    from mlblueprints.registry import local as registry

    uc = served["uc"]
    feats = uc.model_features()
    with runtime_home(served["home"]):
        gold = read_table(uc, "transaction_features")
        registry.client(uc)
        booster = mlflow.xgboost.load_model(f"models:/{uc.model_name}@champion")
        version = int(registry.model_version(uc, "champion")["version"])
    cards, merchants = _newest(gold, "card_id"), _newest(gold, "merchant_id")
    rng = np.random.default_rng(7)
    card_ids = rng.choice(cards.index.to_numpy(), 200, replace=False)
    merchant_ids = rng.choice(merchants.index.to_numpy(), 200)
    amounts = np.round(rng.uniform(1, 900, 200), 2)
    hours = rng.integers(0, 24, 200)
    reqs, rows = [], []
    for c, m, a, h in zip(card_ids, merchant_ids, amounts, hours):
        reqs.append(
            {"card_id": str(c), "merchant_id": str(m), "amount": float(a), "event_hour": int(h), "id": f"{c}/{m}"}
        )
        row = {}
        for f in feats:
            if f in uc.features["card_activity"].features:
                row[f] = cards.loc[c, f]
            elif f in uc.features["merchant_activity"].features:
                row[f] = merchants.loc[m, f]
        row.update(amount=a, event_hour=h)
        rows.append(row)
    x = pd.DataFrame(rows)[feats].astype(np.float64).to_numpy()
    scores = booster.predict(xgb.DMatrix(x, feature_names=feats))
    with runtime_home(served["home"]):
        from mlblueprints.backends import backend_for
        from mlblueprints.scoring.core import model_from_registry

        threshold = model_from_registry(uc, backend_for(uc, "registry").lineage(version=version), "champion")[
            "threshold"
        ]
    return {"requests": reqs, "scores": scores, "version": version, "threshold": threshold}


def test_each_answer_is_the_models_score_on_the_online_features(served, expected):
    base = served["base"]
    assert call(base, "/ping")[0] == 200
    got = []
    for r in expected["requests"][:100]:  # one record per request
        status, body = call(base, "/invocations", r)
        assert status == 200, body
        got.append(body)
    status, batch = call(base, "/invocations", {"records": expected["requests"][100:]})  # a batch of 100
    assert status == 200, batch
    got += batch["predictions"]
    scores = np.array([g["score"] for g in got])
    assert np.abs(scores - expected["scores"]).max() <= 1e-6
    assert [g["id"] for g in got] == [r["id"] for r in expected["requests"]]
    assert all(g["model_version"] == expected["version"] and g["variant"] == "champion" for g in got)
    assert [g["decision"] for g in got] == [int(s >= expected["threshold"]) for s in scores]
    # what a request carries, said by the endpoint itself
    status, desc = call(base, "/")
    assert desc["request"]["entity_fields"] == ["card_id", "merchant_id"]
    assert desc["request"]["request_fields"] == ["amount", "event_hour"]


def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(served, expected):
    base = served["base"]
    good = expected["requests"][0]
    cases = [
        (b"{not json", 400, "not JSON"),
        (
            json.dumps({**good, "card_id": "no-such-card"}).encode(),
            404,
            "card_activity: no features for card_id='no-such-card'",
        ),
        (json.dumps({k: v for k, v in good.items() if k != "amount"}).encode(), 422, "amount: missing"),
        (json.dumps({**good, "event_hour": "noon"}).encode(), 422, "event_hour: must be a number"),
        (json.dumps({"records": [good, {**good, "merchant_id": None}]}).encode(), 422, "records[1].merchant_id"),
        (b"[]", 400, "must be a JSON object"),
        (b"x" * 70_000, 413, "at most 65536"),
    ]
    for raw, status, says in cases:
        got, body = call(base, "/invocations", raw=raw)
        assert got == status and says in body["error"], (raw[:80], got, body)
    status, body = call(base, "/invocations", good)
    assert status == 200 and abs(body["score"] - expected["scores"][0]) <= 1e-6


def test_a_canary_gets_its_share_every_request_is_captured_and_a_switch_loses_no_request(served, expected):
    """Two variants at 90/10 (the same version under two names: the split is what is measured),
    then back to one, while a client keeps sending: every request answered 200, the capture table
    holds each one with its variant, and the challenger answered one in ten while it was deployed."""
    base, state = served["base"], served["state"]
    v = expected["version"]
    time.sleep(0.6)  # the capture writer's interval: the earlier tests' requests are in the table
    before = state.last_capture_id()
    gen = state.set_variants(
        [
            {"variant": "champion", "version": v, "weight": 0.9, "alias": "champion"},
            {"variant": "challenger", "version": v, "weight": 0.1, "alias": "challenger"},
        ],
        by="test",
    )
    deadline = time.monotonic() + 30
    while call(base, "/ping")[1].get("generation") != gen:
        assert time.monotonic() < deadline, "the endpoint did not pick up the new variants"
        time.sleep(0.1)
    statuses: list[int] = []
    stop = threading.Event()

    def client() -> None:
        i = 0
        while not stop.is_set():
            statuses.append(call(base, "/invocations", expected["requests"][i % 200])[0])
            i += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    mid = state.last_capture_id()
    time.sleep(0.5)
    gen2 = state.set_variants([{"variant": "champion", "version": v, "weight": 1.0, "alias": "champion"}], by="test")
    while call(base, "/ping")[1].get("generation") != gen2:
        time.sleep(0.05)
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join()
    assert statuses and set(statuses) == {200}, Counter(statuses)
    time.sleep(0.6)  # the capture writer's interval
    cap = state.captures(after_id=before)
    assert len(cap) == len(statuses)  # capture_sample 1.0: every request
    during = [c for c in cap if c["id"] <= mid]
    share = sum(c["variant"] == "challenger" for c in during) / len(during)
    assert len(during) > 50 and abs(share - 0.1) < 0.02, share
    assert {c["status"] for c in cap} == {200}
    assert all(c["response"]["variant"] == c["variant"] and c["version"] == v for c in cap)
    metrics = call(base, "/metrics")[1]["variants"]
    assert set(metrics) == {"champion"} and metrics["champion"]["requests"] > 0
    assert metrics["champion"]["latency_ms_p99"] is not None


def test_status_names_the_running_endpoint(served):
    from mlblueprints.serving import server

    with runtime_home(served["home"]):
        info = server.status(served["uc"])
    assert info is not None and info["health"]["status"] == "healthy" and info["pid"] == served["info"]["pid"]
