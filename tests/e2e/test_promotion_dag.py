"""The promotion DAG through dag.test(): a registered challenger as a canary on the real local
endpoint (uvicorn in its own process), replayed traffic, guardrails, promote or roll back.

World: ``scoring_base`` (features in the online store, a fraud model as champion), with short
bakes. Challengers are registered here: the champion's own booster (good), and the same booster
wrapped to fail one way each (``models/faulty_challenger.py``): errors on some inputs, slow,
shifted scores. A client outside the DAG keeps calling the endpoint through each run: a switch
of variants must not fail one of its requests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import free_port, runtime_home, usecases_dir
from mlblueprints.config import load_usecase

pytestmark = pytest.mark.slow

FAULTY = Path(__file__).with_name("models") / "faulty_challenger.py"
CANARY, LINEAR = 0.1, 0.3  # the challenger's shares, baked in turn


@pytest.fixture(scope="module")
def world(scoring_base, tmp_path_factory, airflow_db):
    from mlblueprints.serving import server

    base = tmp_path_factory.mktemp("promotion")
    home, uc_dir = base / "home", base / "usecases"
    shutil.copytree(scoring_base["home"], home)
    shutil.copytree(scoring_base["uc_dir"], uc_dir)
    doc = yaml.safe_load((uc_dir / "fraud_detection.yaml").read_text())
    doc["promotion"].update(
        canary={"steps": [CANARY, LINEAR], "bake_seconds": 6},  # linear: a bad one trips at the first step
        traffic={"rate_per_second": 500, "max_requests": 3000, "clients": 4},
        # the slow challenger answers after 300 ms: a p99 bound of 200 ms leaves room for a busy machine
        guardrails={"min_requests": 50, "max_p99_latency_ms": 200},
    )
    doc["promotion"]["endpoint"]["port"] = free_port()
    (uc_dir / "fraud_detection.yaml").write_text(yaml.safe_dump(doc))
    with usecases_dir(uc_dir), runtime_home(home):
        uc = load_usecase(uc_dir / "fraud_detection.yaml")
        from mlblueprints.features.online import get_online_features

        cards = get_online_features(uc, "card_activity", [f"card_{i:06d}" for i in range(1, 400)], as_of="watermark")
        merchants = get_online_features(
            uc, "merchant_activity", [f"m_{i:05d}" for i in range(1, 400)], as_of="watermark"
        )
        known = [m["merchant_id"] for m in merchants if m]
        records = [
            {"card_id": c["card_id"], "merchant_id": known[i % len(known)], "amount": 20.0, "event_hour": 12}
            for i, c in enumerate(c for c in cards if c)
        ]
        assert len(records) >= 50
        server.start(uc, uc_dir / "fraud_detection.yaml", timeout=180)  # serving the champion before any run
        try:
            yield {"uc": uc, "home": home, "uc_dir": uc_dir, "base": base, "records": records}
        finally:
            server.stop(uc)


def _registry(world):
    from mlblueprints.backends import backend_for

    return backend_for(world["uc"], "registry")


def register(world: dict, fault: str | None) -> int:
    """A new version: the champion's model as it is (``fault`` None), or wrapped to fail. It
    carries the champion's lineage tags (features, task, threshold): only its behaviour differs."""
    import mlflow
    import mlflow.xgboost

    from mlblueprints.registry import local as registry

    uc = world["uc"]
    c = registry.client(uc)
    champ = c.get_model_version_by_alias(uc.model_name, "champion")
    tags = {k: v for k, v in champ.tags.items() if k.startswith("mlb.") and k not in ("mlb.rejected", "mlb.run_id")}
    if fault is None:
        mv = mlflow.register_model(champ.source, uc.model_name, tags=tags)
    else:
        booster = mlflow.xgboost.load_model(f"models:/{uc.model_name}/{champ.version}")
        path = world["base"] / f"booster-{fault}.json"
        booster.save_model(str(path))
        experiment = c.get_experiment_by_name(uc.name).experiment_id  # its artifacts under the runtime directory
        with mlflow.start_run(experiment_id=experiment, run_name=f"faulty-{fault}"):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(FAULTY),
                artifacts={"booster": str(path)},
                model_config={"fault": fault},
            )
        mv = mlflow.register_model(info.model_uri, uc.model_name, tags=tags)
    c.set_registered_model_alias(uc.model_name, "challenger", mv.version)
    return int(mv.version)


class Load:
    """A client outside the DAG: one request after another until stopped; every status kept."""

    def __init__(self, url: str, records: list[dict[str, Any]]):
        self.url, self.records = url, records
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            body = json.dumps(self.records[i % len(self.records)]).encode()
            req = urllib.request.Request(self.url + "/invocations", data=body, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback
                    self.statuses[r.status] += 1
            except urllib.error.HTTPError as e:
                self.statuses[e.code] += 1
            except OSError:
                self.statuses[0] += 1
            i += 1

    def __enter__(self) -> Load:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()


def promote_run(world: dict, version: int, load: bool = True) -> dict[str, Any]:
    """One run of the promotion DAG for ``version`` (with the outside client when the endpoint
    runs); its task states, results, and the outside client's statuses."""
    from mlblueprints.airflow import localrun
    from mlblueprints.serving import server

    uc = world["uc"]
    with runtime_home(world["home"]):
        info = server.status(uc)
        dag = localrun.get_dag("fraud_detection__promotion")
        if info and load:
            with Load(info["url"], world["records"]) as client:
                dr = dag.test(run_conf={"version": version})
            statuses = dict(client.statuses)
        else:
            dr = dag.test(run_conf={"version": version})
            statuses = None
        tis = {ti.task_id: ti for ti in dr.get_task_instances()}
        res = {k: ti.xcom_pull(task_ids=ti.task_id) for k, ti in tis.items()}
    return {"dr": dr, "states": {k: ti.state for k, ti in tis.items()}, "res": res, "load": statuses}


def _serving(world: dict) -> list[dict[str, Any]]:
    from mlblueprints.serving.state import DeploymentState

    with runtime_home(world["home"]):
        return DeploymentState(world["uc"]).variants()


def _aliases(world: dict) -> dict[str, int | None]:
    with runtime_home(world["home"]):
        reg = _registry(world)
        return {
            a: (m or {}).get("version") for a in ("champion", "previous", "challenger") for m in [reg.model_version(a)]
        }


def _endpoint_answers(world: dict) -> dict[str, Any]:
    from mlblueprints.serving import server

    with runtime_home(world["home"]):
        info = server.status(world["uc"])
    assert info is not None and info["health"] is not None, "the endpoint is not serving"
    with urllib.request.urlopen(info["url"] + "/", timeout=10) as r:  # noqa: S310 - loopback
        return json.loads(r.read())


def test_a_good_challenger_is_promoted(world):
    with runtime_home(world["home"]):
        old = int(_registry(world).model_version("champion")["version"])
    good = register(world, None)
    run = promote_run(world, good)
    assert run["dr"].state == "success", run["states"]
    dec = run["res"]["decide"]
    assert dec["outcome"] == "promoted" and dec["champion"] == good, dec
    assert _aliases(world)["champion"] == good and _aliases(world)["previous"] == old
    assert [(v["variant"], v["version"], v["weight"]) for v in _serving(world)] == [("champion", good, 1.0)]
    assert [v["version"] for v in _endpoint_answers(world)["variants"]] == [good]
    bakes = run["res"]["bake"]["bakes"]
    assert [b["share"] for b in bakes] == [CANARY, LINEAR]  # each step baked, every guardrail held
    for b in bakes:
        assert all(v["ok"] is not False for v in b["verdicts"]), b["verdicts"]
        n = sum(b["answered"].values())
        assert abs(b["answered"]["challenger"] - b["share"] * n) <= 1  # smooth round robin: exact, to one request
    text = (world["home"] / "runs" / "fraud_detection" / "promotion" / "latest.txt").read_text()
    assert f"PROMOTED: version {good}" in text and "score_shift_psi" in text
    assert run["load"] and set(run["load"]) == {200}, run["load"]  # none lost across the switch


def test_bad_challengers_are_rolled_back_each_by_its_own_guardrail_and_no_request_fails(world):
    """One that fails on some inputs, one that is slow, one whose scores moved: each rolled back
    by the guardrail made for it, the champion untouched, the version tagged rejected. A client
    calling the endpoint all along (with amounts the failing one handles) gets no failure through
    the canaries and the rollbacks."""
    from mlblueprints.backends import backend_for

    for fault, guardrail in (("error", "error_rate"), ("slow", "p99_latency_ms"), ("shift", "score_shift_psi")):
        before = _aliases(world)["champion"]
        bad = register(world, fault)
        run = promote_run(world, bad)
        assert run["dr"].state == "success", (fault, run["states"])
        dec = run["res"]["decide"]
        assert dec["outcome"] == "rolled_back", (fault, dec)
        tripped = run["res"]["bake"]["tripped"]
        assert tripped and tripped[0].startswith(guardrail), (fault, tripped)
        if fault != "error":  # the error one also trips nothing else; the others trip only theirs
            assert all(t.startswith(guardrail) for t in tripped), (fault, tripped)
        assert _aliases(world)["champion"] == before
        assert [(v["variant"], v["version"], v["weight"]) for v in _serving(world)] == [("champion", before, 1.0)]
        with runtime_home(world["home"]):
            why = backend_for(world["uc"], "registry").refusal(bad)
        assert why and "canary was rolled back" in why and guardrail in why
        (bake,) = run["res"]["bake"]["bakes"]  # stopped at the first step
        n = sum(bake["answered"].values())
        assert bake["answered"].get("challenger", 0) <= CANARY * n + 1, bake["answered"]
        assert run["load"] and set(run["load"]) == {200}, (fault, run["load"])


def test_a_challenger_that_failed_the_fairness_gate_is_never_deployed(world):
    from mlblueprints.registry.local import FAIRNESS_FAILED_TAG, client

    v = register(world, None)
    with runtime_home(world["home"]):
        client(world["uc"]).set_model_version_tag(world["uc"].model_name, str(v), FAIRNESS_FAILED_TAG, "DI 0.5 < 0.8")
        from mlblueprints.serving.state import DeploymentState

        gen = DeploymentState(world["uc"]).generation()
        n = len(DeploymentState(world["uc"]).deployments())
    run = promote_run(world, v, load=False)
    assert run["dr"].state == "success", run["states"]
    assert run["res"]["target"]["refused"].endswith("failed the fairness gate: DI 0.5 < 0.8")
    assert run["states"]["deploy"] == "skipped" and run["states"]["decide"] == "skipped"
    with runtime_home(world["home"]):
        assert DeploymentState(world["uc"]).generation() == gen  # the endpoint never saw it
        assert len(DeploymentState(world["uc"]).deployments()) == n
    text = (world["home"] / "runs" / "fraud_detection" / "promotion" / "latest.txt").read_text()
    assert "NOT DEPLOYED" in text and "fairness gate" in text


RUN = r"""
import sys
from mlblueprints.airflow import localrun
localrun.get_dag("fraud_detection__promotion").test(run_conf={"version": int(sys.argv[1])})
"""


def test_a_promotion_killed_during_the_bake_and_run_again_ends_with_one_champion(world):
    """SIGKILL the process running the DAG while the canary bakes: the champion alias has not
    moved and the endpoint still serves both variants. A new run of the same challenger takes
    over (the killed deployment is marked superseded), and ends with one champion serving alone."""
    from helpers import ROOT
    from mlblueprints.airflow import localrun
    from mlblueprints.serving.state import DeploymentState

    good = register(world, None)
    before = _aliases(world)["champion"]
    with runtime_home(world["home"]):
        state = DeploymentState(world["uc"])
        proc = subprocess.Popen(
            [sys.executable, "-c", RUN, str(good)],
            env={**os.environ, "PYTHONPATH": str(ROOT / "include")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and proc.poll() is None:
                if any(v["variant"] == "challenger" and v["version"] == good for v in state.variants()):
                    break
                time.sleep(0.2)
            assert proc.poll() is None, f"the run ended before its bake: {proc.stderr.read()[-3000:]}"
            time.sleep(1.5)  # into the bake
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert _aliases(world)["champion"] == before  # never zero champions, and not moved yet
        assert sorted((v["variant"], v["version"]) for v in state.variants()) == [
            ("challenger", good),
            ("champion", before),
        ]
        assert state.deployments()[-1]["outcome"] == "in_progress"
        localrun.fail_stuck_runs()  # what the next start of the CLI does
    run = promote_run(world, good)
    assert run["dr"].state == "success", run["states"]
    assert run["res"]["decide"]["outcome"] == "promoted"
    assert _aliases(world)["champion"] == good and _aliases(world)["previous"] == before
    assert [(v["variant"], v["version"], v["weight"]) for v in _serving(world)] == [("champion", good, 1.0)]
    assert [v["version"] for v in _endpoint_answers(world)["variants"]] == [good]
    with runtime_home(world["home"]):
        last = DeploymentState(world["uc"]).deployments()[-2:]
    assert [d["outcome"] for d in last] == ["superseded", "promoted"] and {d["version"] for d in last} == {good}
    assert run["load"] and set(run["load"]) == {200}, run["load"]


def test_the_history_and_dora_metrics(world, capsys):
    from mlblueprints import cli

    with runtime_home(world["home"]):
        assert cli.main(["deployments", "fraud_detection"]) == 0
    out = capsys.readouterr().out
    assert out.count("rolled_back") == 3 and out.count("promoted") == 2 and out.count("superseded") == 1
    assert "change failure rate    60 %" in out  # 3 of 5 canaries decided
    assert "deployment frequency   0.47 per week" in out  # 2 promotions in 30 days
