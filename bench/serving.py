"""Benchmark of online serving: the local endpoint's latency and throughput at 1, 8 and 32
concurrent clients, against the bare model predict, and what a canary's second variant adds.

Usage::

    .venv/bin/python bench/serving.py [--entities 20000] [--seconds 8] [--clients 1,8,32] [--repeats 3]
                                      [--rounds 300] [--json PATH] [--txt PATH] [--workdir DIR] [--keep] [--quick]

Set-up (in this process): the shipped fraud use case in a fresh runtime directory; a Gold table
``transaction_features`` with one row per entity (``--entities`` cards and a tenth as many
merchants, the fraud model's feature types, about 1 % nulls) materialized into both feature views'
online store by the feature pattern's own code; an XGBoost model with the use case's
hyperparameters and ``--rounds`` rounds (bench/fraudmodel.py) registered twice - version 1 the
champion, version 2 the same model as challenger.

Measured per number of clients, ``--repeats`` times (medians reported), each for ``--seconds``:

* ``predict``: the bare model in this process: XGBoost's in-place predict of one record on one
  thread (what the endpoint calls per request), called by N threads at once;
* ``endpoint``: ``mlblueprints serve``'s server (uvicorn, its own process) serving the champion
  alone: N client processes, one keep-alive connection each, POST /invocations one record at a
  time with entity keys and request-time fields (the features read from the online store);
* ``canary``: the same server with the champion at 90 % and the challenger at 10 %.

Client latency is measured by the client around each request (loopback HTTP included); server
latency is the endpoint's own (its capture table: parse, route, online lookups, predict). Load is
generated on the same machine as the server (loopback only): on 2 cores the clients compete with
the server for CPU, so the figures are an upper bound of what the server alone would take.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "include"))

import fraudmodel  # noqa: E402
from harness import finish, log, machine_facts, recorded  # noqa: E402

DAY = date(2024, 3, 1)
GOLD = "transaction_features"
GOAL_P99_MS = 10.0  # the endpoint's p99 at 8 clients
GOAL_ROUTER_MS = 1.0  # what the canary's second variant may add to p99


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entities", type=int, default=20_000, help="cards in the online store (merchants: a tenth)")
    ap.add_argument("--seconds", type=float, default=8.0, help="load time per mode and client count")
    ap.add_argument("--clients", default="1,8,32", help="concurrent clients, comma separated")
    ap.add_argument("--repeats", type=int, default=3, help="runs of every measurement; medians reported")
    ap.add_argument("--rounds", type=int, default=300, help="boosting rounds of the model (the use case's: 300)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 2,000 entities, 1 s, 1 and 8 clients, once")
    ap.add_argument("--json", help="also write the results as JSON to this path")
    ap.add_argument("--txt", help="also write the printed report to this path")
    ap.add_argument("--workdir", help="where to put the runtime directory (default: a new temp dir, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args(argv)
    if args.quick:
        args.entities, args.seconds, args.clients, args.repeats, args.rounds = 2_000, 1.0, "1,8", 1, 50
    args.client_counts = [int(c) for c in str(args.clients).split(",") if c.strip()]
    return args


# ====================================================================== set-up


def write_usecase(work: Path, port: int) -> Path:
    """The shipped fraud use case, its endpoint on ``port``, every request captured."""
    import yaml

    data = yaml.safe_load((PROJECT / "dags/usecases/fraud_detection.yaml").read_text())
    sql_dir = PROJECT / "dags/usecases/sql/fraud_detection"
    for g in data["gold"].values():
        g["sql"] = str(sql_dir / Path(g["sql"]).name)
    data["promotion"]["endpoint"].update(port=port, feature_clock="watermark", capture_sample=1.0)
    path = work / "usecases" / "fraud_detection.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def prepare(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The online store and the two registered versions (the module docstring)."""
    import numpy as np
    import pyarrow as pa

    from mlblueprints.config import load_usecase
    from mlblueprints.features import local as features
    from mlblueprints.lakehouse import iceberg, naming
    from mlblueprints.lineage import RunInfo

    port = _free_port()
    uc = load_usecase(write_usecase(work, port))
    rng = np.random.default_rng(7)
    n, n_merchants = int(args.entities), max(1, int(args.entities) // 10)
    view_feats = [f for v in uc.features.values() for f in v.features]
    types = fraudmodel.feature_types(sorted(set(view_feats) | set(uc.model_features())))
    arrow = {"bigint": pa.int64(), "int": pa.int32(), "double": pa.float64()}
    cols = fraudmodel.columns(rng, n, types)
    batch: dict[str, Any] = {
        "transaction_id": pa.array([f"t{i:09d}" for i in range(n)], pa.string()),
        "event_time": pa.array(
            np.datetime64(DAY.isoformat(), "us")
            + np.sort(rng.integers(0, 86_400_000_000, n)).astype("timedelta64[us]"),
            pa.timestamp("us"),
        ),
        "event_date": pa.array(np.full(n, np.datetime64(DAY.isoformat(), "D")), pa.date32()),
        "card_id": pa.array([f"card_{i:06d}" for i in range(n)], pa.string()),
        "merchant_id": pa.array([f"m_{i % n_merchants:05d}" for i in range(n)], pa.string()),
    }
    for f, t in types.items():
        mask = np.isnan(cols[f])
        batch[f] = pa.array(np.where(mask, 0, cols[f]).astype(arrow[t].to_pandas_dtype()), arrow[t], mask=mask)
    table = pa.table(batch)
    gold = iceberg.ensure_table(iceberg.catalog(), naming.identifier(uc, GOLD), table.schema, "event_date", {})
    location = iceberg.new_write_dir(gold)
    import pyarrow.parquet as pq

    path = location / f"event_date={DAY.isoformat()}" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    iceberg.commit_files(gold, location, replace=None, snapshot_properties={"mlb.bench": "gold"})
    for view in uc.features:
        features.materialize(uc, view, DAY, DAY, RunInfo.for_usecase(uc, run_id="bench-features"))
    trained = fraudmodel.train(uc, rng, int(args.rounds), rows=50_000)
    champion = fraudmodel.register(uc, trained, int(args.rounds), work / "evaluation", champion=True)
    challenger = fraudmodel.register(uc, trained, int(args.rounds), work / "evaluation", champion=False)
    requests = [
        {
            "card_id": f"card_{int(i):06d}",
            "merchant_id": f"m_{int(i) % n_merchants:05d}",
            "amount": round(float(a), 2),
            "event_hour": int(h),
        }
        for i, a, h in zip(rng.integers(0, n, 5000), rng.lognormal(3.5, 1.0, 5000), rng.integers(0, 24, 5000))
    ]
    return {
        "uc": uc,
        "champion": champion,
        "challenger": challenger,
        "requests": requests,
        "port": port,
        "entities": {"cards": n, "merchants": n_merchants},
        "threshold": trained["threshold"],
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ====================================================================== load


def _percentiles(ms: list[float]) -> dict[str, float | None]:
    from mlblueprints.serving.core import percentile

    s = sorted(ms)
    return {"p50": percentile(s, 0.5), "p99": percentile(s, 0.99)}


def load_predict(predict: Any, x_rows: list[Any], clients: int, seconds: float) -> dict[str, Any]:
    """N threads calling the bare predict on one record each time, for ``seconds``."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    stop = time.perf_counter() + seconds

    def worker(k: int) -> None:
        i = k
        out = lat[k]
        while time.perf_counter() < stop:
            t = time.perf_counter()
            predict(x_rows[i % len(x_rows)])
            out.append((time.perf_counter() - t) * 1000)
            i += clients

    t0 = time.perf_counter()
    _run_threads(worker, clients)
    took = time.perf_counter() - t0
    ms = [v for part in lat for v in part]
    return {"requests": len(ms), "per_second": len(ms) / took, "client": _percentiles(ms), "errors": 0}


def _client(port: int, bodies: list[bytes], offset: int, step: int, seconds: float) -> tuple[list[float], int]:
    """One client: a keep-alive connection, POST /invocations one after another for ``seconds``."""
    con = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out: list[float] = []
    errors = 0
    i = offset
    stop = time.perf_counter() + seconds
    try:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            con.request("POST", "/invocations", bodies[i % len(bodies)], {"Content-Type": "application/json"})
            r = con.getresponse()
            r.read()
            out.append((time.perf_counter() - t) * 1000)
            errors += r.status != 200
            i += step
    finally:
        con.close()
    return out, errors


def load_http(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict[str, Any]:
    """N clients, each its own process (no client shares an interpreter lock with another), one
    keep-alive connection each, POST /invocations for ``seconds``."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(clients) as pool:
        list(pool.map(time.sleep, [0.0] * clients))  # the processes up before the clock
        t0 = time.perf_counter()
        parts = list(
            pool.map(
                _client, [port] * clients, [bodies] * clients, range(clients), [clients] * clients, [seconds] * clients
            )
        )
        took = time.perf_counter() - t0
    ms = [v for part, _ in parts for v in part]
    return {
        "requests": len(ms),
        "per_second": len(ms) / took,
        "client": _percentiles(ms),
        "errors": sum(e for _, e in parts),
    }


def _run_threads(worker: Any, n: int) -> None:
    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _deploy(state: Any, port: int, variants: list[dict[str, Any]]) -> int:
    from mlblueprints.serving import server

    gen = state.set_variants(variants, by="bench")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        h = server.ping(f"http://127.0.0.1:{port}")
        if h and int(h["generation"]) >= gen:
            return gen
        time.sleep(0.1)
    raise RuntimeError(f"the endpoint did not serve generation {gen}")


def _server_side(state: Any, generation: int, after: int) -> dict[str, Any]:
    time.sleep(0.6)  # the capture writer's interval
    caps = state.captures(after_id=after, generation=generation)
    ms = [float(c["latency_ms"]) for c in caps if c["status"] == 200]
    share = sum(c["variant"] == "challenger" for c in caps) / len(caps) if caps else None
    return {"server": _percentiles(ms), "captured": len(caps), "challenger_share": share}


def measure(prep: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    import numpy as np

    from mlblueprints.serving import server
    from mlblueprints.serving.endpoint import load_version
    from mlblueprints.serving.state import DeploymentState

    uc = prep["uc"]
    _, predict = load_version(uc, prep["champion"], "champion")
    rng = np.random.default_rng(3)
    x_rows = [rng.lognormal(2.0, 1.0, (1, len(uc.model_features()))).astype(np.float32) for _ in range(1000)]
    bodies = [json.dumps(r).encode() for r in prep["requests"]]
    state = DeploymentState(uc)
    one = [{"variant": "champion", "version": prep["champion"], "weight": 1.0, "alias": "champion"}]
    two = [
        {"variant": "champion", "version": prep["champion"], "weight": 0.9, "alias": "champion"},
        {"variant": "challenger", "version": prep["challenger"], "weight": 0.1, "alias": "challenger"},
    ]
    info = server.start(uc, Path(uc.source_path), port=prep["port"], timeout=180)
    rows: list[dict[str, Any]] = []
    try:
        load_http(prep["port"], bodies, 4, 1.0)  # warm-up: connections, page cache, the model's first calls
        for rep in range(args.repeats):
            for clients in args.client_counts:
                r = load_predict(predict, x_rows, clients, args.seconds)
                rows.append({"mode": "predict", "clients": clients, "repeat": rep, **r})
                for mode, variants in (("endpoint", one), ("canary", two)):
                    gen = _deploy(state, prep["port"], variants)
                    after = state.last_capture_id()
                    r = load_http(prep["port"], bodies, clients, args.seconds)
                    rows.append(
                        {"mode": mode, "clients": clients, "repeat": rep, **r, **_server_side(state, gen, after)}
                    )
                    log(
                        f"{mode:8s} {clients:2d} clients: {r['per_second']:,.0f}/s, client p99 "
                        f"{r['client']['p99']:.2f} ms, server p99 {rows[-1]['server']['p99']:.2f} ms"
                    )
    finally:
        server.stop(uc)
    return rows, info


def summarize(rows: list[dict[str, Any]], counts: list[int]) -> dict[str, Any]:
    def med(mode: str, clients: int, key: str, sub: str | None = None) -> float | None:
        vals = [(r[key][sub] if sub else r[key]) for r in rows if r["mode"] == mode and r["clients"] == clients]
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None

    table = []
    for c in counts:
        for mode in ("predict", "endpoint", "canary"):
            table.append(
                {
                    "clients": c,
                    "mode": mode,
                    "per_second": med(mode, c, "per_second"),
                    "client_p50": med(mode, c, "client", "p50"),
                    "client_p99": med(mode, c, "client", "p99"),
                    "server_p50": med(mode, c, "server", "p50") if mode != "predict" else None,
                    "server_p99": med(mode, c, "server", "p99") if mode != "predict" else None,
                    "errors": sum(r["errors"] for r in rows if r["mode"] == mode and r["clients"] == c),
                    "challenger_share": med(mode, c, "challenger_share") if mode == "canary" else None,
                }
            )
    out: dict[str, Any] = {"table": table}
    at8 = next((t for t in table if t["clients"] == 8 and t["mode"] == "endpoint"), None)
    if at8:
        out["p99_at_8_ms"] = at8["client_p99"]
        out["p99_goal_met"] = at8["client_p99"] is not None and at8["client_p99"] < GOAL_P99_MS
    added = {}
    for c in counts:
        e = next(t for t in table if t["clients"] == c and t["mode"] == "endpoint")
        k = next(t for t in table if t["clients"] == c and t["mode"] == "canary")
        added[c] = {
            "client_p99_ms": None if None in (e["client_p99"], k["client_p99"]) else k["client_p99"] - e["client_p99"],
            "server_p99_ms": None if None in (e["server_p99"], k["server_p99"]) else k["server_p99"] - e["server_p99"],
        }
    out["canary_adds"] = added
    return out


def report(results: dict[str, Any]) -> str:
    s = results["summary"]
    m = results["machine"]
    lines = [
        f"Online serving - {results['data']['entities']['cards']:,} cards and {results['data']['entities']['merchants']:,} "
        f"merchants in the online store, a {results['args']['rounds']}-round XGBoost model, {results['args']['seconds']:g} s "
        f"per measurement, median of {results['args']['repeats']}; {m['cpu_count']} CPUs ({m['cpu_model']}), "
        f"load average {m['loadavg_start'][0]:.1f} at the start",
        "",
        f"{'clients':>7}  {'mode':<9}{'req/s':>9}{'client p50':>12}{'client p99':>12}{'server p50':>12}{'server p99':>12}"
        f"{'errors':>8}  challenger share",
    ]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f} ms"

    for t in s["table"]:
        share = "" if t["challenger_share"] is None else f"{100 * t['challenger_share']:.1f} %"
        lines.append(
            f"{t['clients']:>7}  {t['mode']:<9}{t['per_second']:>9,.0f}{ms(t['client_p50']):>12}{ms(t['client_p99']):>12}"
            f"{ms(t['server_p50']):>12}{ms(t['server_p99']):>12}{t['errors']:>8}  {share}"
        )
    lines.append("")
    if "p99_at_8_ms" in s:
        lines.append(
            f"goal: the endpoint's p99 under {GOAL_P99_MS:g} ms at 8 clients: {ms(s['p99_at_8_ms'])} (client side) - "
            + ("met" if s["p99_goal_met"] else "NOT met")
        )
    adds = ", ".join(
        f"{c} clients {ms(a['client_p99_ms'])} client / {ms(a['server_p99_ms'])} server"
        for c, a in s["canary_adds"].items()
    )
    lines.append(f"goal: the canary's second variant adds under {GOAL_ROUTER_MS:g} ms to p99: {adds}")
    lines.append(
        "(predict: the bare in-process predict of one record; endpoint/canary: HTTP on loopback, the clients on the "
        "same cores as the server)"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mlb-bench-serving-")).resolve()
    os.environ["MLB_HOME"] = str(work / "home")
    os.environ.setdefault("MLB_GIT_COMMIT", "bench")
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: v for k, v in vars(args).items()},
        "machine": machine_facts("fastapi", "uvicorn", "xgboost"),
    }
    log(f"work dir {work}")
    with recorded(results, work, args):
        log(f"set-up: {args.entities:,} cards in the online store, a {args.rounds}-round model, two versions")
        t = time.perf_counter()
        prep = prepare(work, args)
        results["data"] = {
            "entities": prep["entities"],
            "versions": [prep["champion"], prep["challenger"]],
            "setup_seconds": round(time.perf_counter() - t, 1),
        }
        rows, _ = measure(prep, args)
        results["rows"] = rows
        results["summary"] = summarize(rows, args.client_counts)
    return finish(report(results), results, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
