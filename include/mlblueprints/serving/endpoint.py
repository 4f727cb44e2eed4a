"""The local inference endpoint: a FastAPI app (served by uvicorn on loopback) that scores
entities with the registered model versions the endpoint state names, reading their features
from the online store.

* ``POST /invocations`` - one record (a JSON object) or ``{"records": [...]}``: each record gives
  the entity keys of the model's feature views and its request-time fields (``GET /`` lists them).
  The request goes to one variant, chosen by weight (:class:`~mlblueprints.serving.core.Router`);
  the answer per record is the score, the decision (binary: 1 at or above the version's
  registered threshold; multiclass: the class), the model version and the variant.
* ``GET /ping`` - 200 once a variant is loaded (SageMaker's health check), 503 before.
* ``GET /metrics`` - per variant: requests, client and server errors, latency percentiles, the
  score histogram and mean, since the variant was loaded.
* ``GET /`` - what a request carries, and what is served.

Bad requests get a 4xx naming the field (400 malformed JSON, 404 an entity the online store does
not know when ``promotion.endpoint.missing_features`` is ``reject``, 413 too large, 422 a missing
or mistyped field); a model that fails answers 500 and counts as the variant's error. The server
keeps serving either way.

The variants come from the endpoint state (:mod:`mlblueprints.serving.state`); with none there,
the version behind the registry alias ``champion`` is served alone. A change of the state is
picked up by a poller thread: the new set is loaded beside the old and swapped in one assignment.

(No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations, which
name classes imported inside :func:`create_app`.)
"""

import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlblueprints.config import UseCase
from mlblueprints.serving.core import RequestError, RequestShape, Router, VariantStats, check_record, parse_body
from mlblueprints.serving.state import CaptureWriter, DeploymentState

log = logging.getLogger(__name__)

CHAMPION = "champion"


@dataclass
class Variant:
    """A loaded model version served under a variant name."""

    name: str
    version: int
    weight: float
    alias: str | None
    model: Mapping[str, Any]  # what scoring knows of the version (scoring.core.model_from_registry)
    predict: Any  # float32 rows -> raw model outputs
    shape: RequestShape
    stats: VariantStats = field(default_factory=VariantStats)


@dataclass(frozen=True)
class Served:
    generation: int
    variants: dict[str, Variant]
    router: Router


def load_version(uc: UseCase, version: int, alias: str | None) -> tuple[dict[str, Any], Any]:
    """A registered version's scoring facts and its predict function (XGBoost's in-place predict
    on one thread per request; other flavors through their own)."""
    from mlblueprints.backends import backend_for
    from mlblueprints.scoring.core import model_from_registry
    from mlblueprints.scoring.local import load_model

    registered = backend_for(uc, "registry").lineage(version=version)
    facts = model_from_registry(uc, registered, alias)
    m = load_model(uc, facts)
    if m.flavor == "xgboost":
        booster = m.raw
        booster.set_param({"nthread": 1})
        return facts, booster.inplace_predict
    return facts, m.scores


class Endpoint:
    """The app's state: the served variants, the online readers, the capture writer."""

    def __init__(self, uc: UseCase, state: DeploymentState | None = None, poll_seconds: float = 0.25):
        if uc.promotion is None:
            raise ValueError(
                f"{uc.name}: the use case has no promotion section (promotion.endpoint configures serving)"
            )
        self.uc = uc
        self.opts = uc.promotion.endpoint
        self.state = state or DeploymentState(uc)
        self.poll_seconds = poll_seconds
        self.capture = CaptureWriter(self.state)
        self._rng = random.Random()
        self._served: Served | None = None
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.load_error: str | None = None
        self._stores: dict[str, Any] = {}

    # ------------------------------------------------------------------ variants

    def _wanted(self) -> tuple[int, list[dict[str, Any]]]:
        gen = self.state.generation()
        rows = self.state.variants()
        if rows:
            return gen, rows
        from mlblueprints.backends import backend_for

        champion = backend_for(self.uc, "registry").model_version(CHAMPION)
        if champion is None:
            raise LookupError(
                f"{self.uc.name}: nothing to serve: no variant is deployed and no version has the alias "
                f"{CHAMPION!r} (mlblueprints models promote {self.uc.name} N)"
            )
        return gen, [{"variant": CHAMPION, "version": int(champion["version"]), "weight": 1.0, "alias": CHAMPION}]

    def refresh(self, force: bool = False) -> bool:
        """Load the state's variants if they changed; True when a new set was swapped in."""
        with self._load_lock:
            cur = self._served
            if not force and cur is not None and cur.generation == self.state.generation():
                return False
            gen, rows = self._wanted()
            if not force and cur is not None and cur.generation == gen:
                return False
            old = cur.variants if cur is not None else {}
            loaded: dict[str, Variant] = {}
            for r in rows:
                name, version = r["variant"], int(r["version"])
                prev = old.get(name)
                if prev is not None and prev.version == version:  # same model: keep it and its figures
                    loaded[name] = Variant(
                        name,
                        version,
                        float(r["weight"]),
                        r.get("alias"),
                        prev.model,
                        prev.predict,
                        prev.shape,
                        prev.stats,
                    )
                    continue
                facts, predict = load_version(self.uc, version, r.get("alias"))
                loaded[name] = Variant(
                    name,
                    version,
                    float(r["weight"]),
                    r.get("alias"),
                    facts,
                    predict,
                    RequestShape.of(self.uc, facts["features"]),
                )
            self._served = Served(gen, loaded, Router({n: v.weight for n, v in loaded.items()}))
            self.load_error = None
            log.info("serving generation %s: %s", gen, {n: (v.version, v.weight) for n, v in loaded.items()})
            return True

    def start(self) -> None:
        try:
            self.refresh(force=True)
        except Exception as exc:  # noqa: BLE001 - the endpoint starts unhealthy and says why on /ping
            self.load_error = str(exc)
            log.error("%s", exc)
        self._poller = threading.Thread(target=self._poll, name="variant-poller", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - keep serving what is loaded; say why on /ping
                self.load_error = str(exc)
                log.error("could not load the deployed variants (still serving the previous ones): %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
        self.capture.close()

    def _store(self, view: str) -> Any:
        """The features backend of ``view`` (made once: a request does not build one)."""
        store = self._stores.get(view)
        if store is None:
            from mlblueprints.backends import backend_for

            store = self._stores[view] = backend_for(self.uc, "features", view=view)
        return store

    @property
    def served(self) -> Served | None:
        return self._served

    # ------------------------------------------------------------------ scoring

    def _features(self, v: Variant, keyed: list[dict[str, Any]], values: list[list[float]]) -> Any:
        import numpy as np

        shape = v.shape
        x = np.empty((len(keyed), len(shape.features)), dtype=np.float32)
        as_of = "watermark" if self.opts.feature_clock == "watermark" else None
        found: dict[str, list[dict[str, Any] | None]] = {}
        for view, cols in shape.views.items():
            keys = [k[cols[0]] if len(cols) == 1 else tuple(k[c] for c in cols) for k in keyed]
            got = self._store(view).get_online_features(view, keys, as_of=as_of)
            for i, g in enumerate(got):
                if g is None and self.opts.missing_features == "reject":
                    ttl = self.uc.features[view].ttl
                    raise RequestError(
                        404,
                        f"{_at(i, len(keyed))}{view}: no features for {', '.join(f'{c}={keyed[i][c]!r}' for c in cols)} "
                        f"(an entity the online store does not know, or whose newest value is older than the "
                        f"view's ttl {ttl})",
                    )
            found[view] = got
        r = 0
        for j, (f, src) in enumerate(zip(shape.features, shape.source)):
            if src is None:
                x[:, j] = [row[r] for row in values]
                r += 1
            else:
                x[:, j] = [math.nan if g is None or g.get(f) is None else float(g[f]) for g in found[src]]
        return x

    def invoke(self, body: bytes) -> tuple[int, dict[str, Any], dict[str, Any]]:
        """Answer one request: (status, response body, capture facts)."""
        from mlblueprints.scoring.core import decide

        t0 = time.perf_counter()
        served = self._served
        if served is None:
            return 503, {"error": f"no model loaded: {self.load_error or 'starting'}"}, {}
        v: Variant | None = None
        try:
            recs, batch = parse_body(body, self.opts.max_body_bytes, self.opts.max_records)
            v = served.variants[served.router.pick()]
            keyed, values = [], []
            for i, rec in enumerate(recs):
                k, vals = check_record(v.shape, rec, _at(i, len(recs)) if batch else "")
                keyed.append(k)
                values.append(vals)
            x = self._features(v, keyed, values)
            try:
                raw = v.predict(x)
                scores, decisions = decide(v.model["task"], raw, v.model.get("threshold"), v.model.get("classes"))
            except Exception as exc:  # noqa: BLE001 - the variant failed: a 500, counted against it
                ms = (time.perf_counter() - t0) * 1000
                v.stats.add(ms, None, error=True)
                return (
                    500,
                    {"error": f"variant {v.name} (version {v.version}) failed: {type(exc).__name__}: {exc}"},
                    {
                        "variant": v.name,
                        "version": v.version,
                        "latency_ms": ms,
                        "records": len(recs),
                        "generation": served.generation,
                    },
                )
            out = []
            for i, rec in enumerate(recs):
                p: dict[str, Any] = {"score": float(scores[i])}
                if decisions is not None:
                    d = decisions[i]
                    p["decision"] = d.item() if hasattr(d, "item") else d
                p["model_version"] = v.version
                p["variant"] = v.name
                if "id" in rec:
                    p["id"] = rec["id"]
                out.append(p)
            ms = (time.perf_counter() - t0) * 1000
            v.stats.add(ms, [p["score"] for p in out], error=False)
            resp: dict[str, Any] = {"predictions": out} if batch else out[0]
            return (
                200,
                resp,
                {
                    "variant": v.name,
                    "version": v.version,
                    "latency_ms": ms,
                    "records": len(recs),
                    "generation": served.generation,
                },
            )
        except RequestError as exc:
            ms = (time.perf_counter() - t0) * 1000
            if v is not None:
                v.stats.add_client_error()
            return (
                exc.status,
                {"error": exc.message},
                {
                    "variant": v.name if v else None,
                    "version": v.version if v else None,
                    "latency_ms": ms,
                    "generation": served.generation,
                },
            )

    def record(self, status: int, body: bytes, resp: Mapping[str, Any], facts: Mapping[str, Any]) -> None:
        """Queue the request for the capture table, sampled (a server error always)."""
        if status < 500 and self._rng.random() >= self.opts.capture_sample:
            return
        import json

        at = datetime.now(UTC)
        at_us = int(at.timestamp() * 1_000_000)
        self.capture.put(
            (
                at_us,
                uuid.uuid4().hex,
                facts.get("generation"),
                facts.get("variant"),
                facts.get("version"),
                status,
                facts.get("latency_ms"),
                facts.get("records"),
                body.decode("utf-8", errors="replace")[: self.opts.max_body_bytes],
                json.dumps(resp, separators=(",", ":")),
            )
        )

    def metrics(self) -> dict[str, Any]:
        s = self._served
        return {
            "generation": s.generation if s else None,
            "variants": {
                n: {"version": v.version, "weight": v.weight, "alias": v.alias, **v.stats.snapshot()}
                for n, v in (s.variants.items() if s else ())
            },
        }

    def describe(self) -> dict[str, Any]:
        s = self._served
        return {
            "usecase": self.uc.name,
            "variants": [
                {"variant": n, "version": v.version, "weight": v.weight, "alias": v.alias}
                for n, v in (s.variants.items() if s else ())
            ],
            "request": next(iter(s.variants.values())).shape.describe() if s and s.variants else None,
            "load_error": self.load_error,
        }


def _at(i: int, n: int) -> str:
    return f"records[{i}]." if n > 1 else ""


def create_app(uc: UseCase, endpoint: Endpoint | None = None) -> Any:
    """The FastAPI app of ``uc``'s endpoint (started and stopped with the app's lifespan)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    ep = endpoint or Endpoint(uc)

    @asynccontextmanager
    async def lifespan(app: Any):  # noqa: ANN202
        ep.start()
        try:
            yield
        finally:
            ep.stop()

    app = FastAPI(title=f"mlblueprints endpoint: {uc.name}", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.endpoint = ep

    @app.post("/invocations")
    async def invocations(request: Request) -> JSONResponse:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > ep.opts.max_body_bytes:
            return JSONResponse(
                {"error": f"the body is {length} bytes; at most {ep.opts.max_body_bytes} are accepted"}, status_code=413
            )
        body = await request.body()
        # in the thread pool: a slow model holds up its own requests, not the event loop
        status, resp, facts = await run_in_threadpool(ep.invoke, body)
        ep.record(status, body, resp, facts)
        return JSONResponse(resp, status_code=status)

    @app.get("/ping")
    async def ping() -> JSONResponse:
        s = ep.served
        if s is None or not s.variants:
            return JSONResponse({"status": "unhealthy", "error": ep.load_error or "starting"}, status_code=503)
        return JSONResponse({"status": "healthy", "generation": s.generation})

    @app.get("/metrics")
    async def metrics() -> JSONResponse:
        return JSONResponse(ep.metrics())

    @app.get("/")
    async def root() -> JSONResponse:
        return JSONResponse(ep.describe())

    return app
