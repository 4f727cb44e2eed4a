"""Online serving, target-independent and pure: what a request must carry, how it is checked,
how traffic is split between variants, the per-variant figures the endpoint keeps, and the
paced client a bake sends its traffic with.

A request names the entities (each feature view's key) and the request-time fields (the model's
features that are not read from a view: ``training.extra_features``); the endpoint reads the rest
from the online store, in the model's feature order. Nothing here imports a heavy library.
"""

from __future__ import annotations

import bisect
import json
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlblueprints.config import UseCase


class RequestError(ValueError):
    """A request the endpoint answers with a 4xx: ``status`` and one line naming what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RequestShape:
    """The fields a request carries for ``features`` (the model's, in order): per feature, the
    view it is read from (``None``: the request carries it)."""

    features: tuple[str, ...]
    source: tuple[str | None, ...]  # per feature: its view, or None for a request-time field
    views: dict[str, tuple[str, ...]]  # view -> its entity key columns
    entity_fields: tuple[str, ...]  # every view's key columns, once each, in view order
    request_fields: tuple[str, ...]

    @classmethod
    def of(cls, uc: UseCase, features: Sequence[str]) -> RequestShape:
        """The shape for a model trained on ``features`` (its lineage's list) in use case ``uc``."""
        t = uc.training
        if t is None:
            raise ValueError(f"{uc.name}: the use case has no training section")
        ts = uc.training_sets[t.training_set]
        extra = set(t.extra_features)
        owner: dict[str, str] = {}
        for v in ts.features:
            for f in uc.features[v].features:
                owner.setdefault(f, v)
        source: list[str | None] = []
        for f in features:
            if f in extra or f not in owner:
                source.append(None)
            else:
                source.append(owner[f])
        used = [v for v in ts.features if v in source]
        views = {v: tuple(uc.features[v].entity) for v in used}
        entity: list[str] = []
        for v in used:
            for k in views[v]:
                if k not in entity:
                    entity.append(k)
        req = tuple(f for f, s in zip(features, source) if s is None)
        return cls(tuple(features), tuple(source), views, tuple(entity), req)

    def describe(self) -> dict[str, Any]:
        """The request's fields as the endpoint documents them (``GET /``)."""
        return {
            "entity_fields": list(self.entity_fields),
            "request_fields": list(self.request_fields),
            "features_from_views": {v: [f for f, s in zip(self.features, self.source) if s == v] for v in self.views},
        }


def parse_body(body: bytes, max_bytes: int, max_records: int) -> tuple[list[Mapping[str, Any]], bool]:
    """The records of a request body: a JSON object (one record) or ``{"records": [...]}``.
    Returns the records and whether the request was a batch. Raises :class:`RequestError`."""
    if len(body) > max_bytes:
        raise RequestError(413, f"the body is {len(body)} bytes; at most {max_bytes} are accepted")
    if not body.strip():
        raise RequestError(400, 'the body is empty: send a JSON object (one record) or {"records": [...]}')
    try:
        doc = json.loads(body, parse_constant=_no_constant)
    except RequestError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RequestError(400, f"the body must be a JSON object, not {type(doc).__name__}")
    if "records" in doc:
        recs = doc["records"]
        if not isinstance(recs, list) or not recs:
            raise RequestError(422, "records: must be a non-empty list of objects")
        if len(recs) > max_records:
            raise RequestError(413, f"records: {len(recs)} records; at most {max_records} per request")
        for i, r in enumerate(recs):
            if not isinstance(r, dict):
                raise RequestError(422, f"records[{i}]: must be an object, not {type(r).__name__}")
        return recs, True
    return [doc], False


def _no_constant(name: str) -> Any:
    raise RequestError(400, f"the body is not JSON: {name} is not a JSON value")


def check_record(shape: RequestShape, rec: Mapping[str, Any], where: str) -> tuple[dict[str, Any], list[float]]:
    """A record's entity keys (per key column) and its request-time values (in
    ``shape.request_fields`` order; a null is a missing value). Raises a 422 naming the field."""
    keys: dict[str, Any] = {}
    for k in shape.entity_fields:
        if k not in rec:
            raise RequestError(422, f"{where}{k}: missing (the entity key of a feature view)")
        v = rec[k]
        if isinstance(v, bool) or not isinstance(v, (str, int)) or v == "":
            raise RequestError(422, f"{where}{k}: must be a non-empty string or an integer, got {json.dumps(v)}")
        keys[k] = v
    values: list[float] = []
    for f in shape.request_fields:
        if f not in rec:
            raise RequestError(422, f"{where}{f}: missing (a request-time feature of the model)")
        v = rec[f]
        if v is None:
            values.append(math.nan)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise RequestError(422, f"{where}{f}: must be a number or null, got {json.dumps(v)}")
        if not math.isfinite(float(v)):
            raise RequestError(422, f"{where}{f}: must be finite")
        values.append(float(v))
    return keys, values


# ------------------------------------------------------------------ routing


class Router:
    """Weighted choice of a variant per request, by smooth weighted round robin (the algorithm of
    nginx's upstreams): over any run of requests each variant's share is its weight's within one
    request, with no randomness to make a small canary's share drift. Thread-safe."""

    def __init__(self, weights: Mapping[str, float]):
        live = {k: float(w) for k, w in weights.items() if w > 0}
        if not live:
            raise ValueError("no variant has a positive weight")
        self.weights = live
        self.total = sum(live.values())
        self._current = dict.fromkeys(live, 0.0)
        self._lock = threading.Lock()

    def pick(self) -> str:
        with self._lock:
            best = None
            for k, w in self.weights.items():
                self._current[k] += w
                if best is None or self._current[k] > self._current[best]:
                    best = k
            assert best is not None
            self._current[best] -= self.total
            return best


# ------------------------------------------------------------------ per-variant figures


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of sorted values, by linear interpolation (numpy's default)."""
    n = len(sorted_values)
    if n == 0:
        return None
    pos = q * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


SCORE_BINS = tuple(i / 10 for i in range(1, 10))  # a binary score's histogram: 10 bins of [0, 1]


@dataclass
class VariantStats:
    """Requests, errors, latency and scores of one variant since it was loaded; the latencies and
    scores of the newest ``window`` requests are kept for percentiles."""

    window: int = 100_000
    requests: int = 0
    errors: int = 0  # the variant failed (5xx)
    client_errors: int = 0  # the request was wrong (4xx); not the variant's fault
    records: int = 0
    latencies_ms: deque[float] = field(default_factory=deque)
    scores: deque[float] = field(default_factory=deque)
    score_hist: list[int] = field(default_factory=lambda: [0] * (len(SCORE_BINS) + 1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, latency_ms: float, scores: Sequence[float] | None, error: bool) -> None:
        with self._lock:
            self.requests += 1
            if error:
                self.errors += 1
            self.latencies_ms.append(latency_ms)
            if len(self.latencies_ms) > self.window:
                self.latencies_ms.popleft()
            for s in scores or ():
                self.records += 1
                self.scores.append(s)
                if len(self.scores) > self.window:
                    self.scores.popleft()
                self.score_hist[bisect.bisect_right(SCORE_BINS, s)] += 1

    def add_client_error(self) -> None:
        with self._lock:
            self.requests += 1
            self.client_errors += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lat = sorted(self.latencies_ms)
            scores = list(self.scores)
            out = {
                "requests": self.requests,
                "errors": self.errors,
                "client_errors": self.client_errors,
                "error_rate": self.errors / self.requests if self.requests else None,
                "records": self.records,
                "score_histogram": list(self.score_hist),
            }
        out.update(
            {f"latency_ms_p{int(q * 100)}": _round(percentile(lat, q)) for q in (0.5, 0.9, 0.99)},
            latency_ms_max=_round(lat[-1] if lat else None),
            score_mean=_round(sum(scores) / len(scores) if scores else None, 6),
        )
        return out


def _round(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


def paced(
    client: Callable[[], tuple[Callable[[int], int], Callable[[], None]]],
    traffic: Any,
    seconds: float,
    max_requests: int,
) -> dict[str, Any]:
    """Requests at ``traffic.rate_per_second`` over ``traffic.clients`` threads, each with its own
    ``client()`` (a call sending request ``i`` and answering its status, 0 for none; and a close),
    for ``seconds`` or ``max_requests`` requests, whichever comes first - bounded by the wall
    clock too, so a slow answer does not stretch the bake. Returns the statuses and the count."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    sent = [0]
    start = time.monotonic()
    interval = 1.0 / traffic.rate_per_second

    def worker() -> None:
        call, close = client()
        try:
            while True:
                with lock:
                    i = sent[0]
                    if i >= max_requests:
                        return
                    sent[0] += 1
                due = start + i * interval  # the i-th request's slot: a steady rate across clients
                now = time.monotonic()
                if due - start >= seconds or now - start >= seconds:
                    with lock:
                        sent[0] -= 1
                    return
                if due > now:
                    time.sleep(due - now)
                status = call(i)
                with lock:
                    statuses[status] += 1
        finally:
            close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(traffic.clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return {
        "requests": sum(statuses.values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(time.monotonic() - start, 3),
    }
