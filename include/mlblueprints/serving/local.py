"""The endpoint capability on the local target (``mlblueprints.backends.Endpoint``): the FastAPI
endpoint this project starts on loopback, its state file, and a replay client that sends the
newest scored rows to it at a bounded rate.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from mlblueprints.config import UseCase
from mlblueprints.errors import PermanentError
from mlblueprints.serving import server
from mlblueprints.serving.core import RequestShape, paced
from mlblueprints.serving.state import DeploymentState


class LocalEndpoint:
    def __init__(self, uc: UseCase):
        if uc.promotion is None:
            raise PermanentError(f"{uc.name}: the use case has no promotion section")
        self.uc = uc
        self.opts = uc.promotion
        self.state = DeploymentState(uc)

    # ------------------------------------------------------------------ the server

    def ensure_running(self) -> dict[str, Any]:
        """The endpoint, started in the background when it is not running; its URL and pid."""
        if not self.uc.source_path:
            raise PermanentError(f"{self.uc.name}: the use case was not loaded from a file; the endpoint needs one")
        try:
            info = server.start(self.uc, self.uc.source_path)  # type: ignore[arg-type]
        except server.EndpointError as exc:
            raise PermanentError(str(exc)) from exc
        return {"url": info["url"], "pid": info["pid"], "generation": info["health"]["generation"]}

    def serving(self) -> list[dict[str, Any]]:
        """The variants the endpoint state names (version, weight, alias)."""
        return self.state.variants()

    def deploy(self, variants: Sequence[Mapping[str, Any]], by: str, timeout: float = 120.0) -> int:
        """Serve ``variants`` (variant, version, weight, alias) and wait until the endpoint
        answers with them; returns their generation."""
        gen = self.state.set_variants(variants, by)
        base = server.url(self.uc, self._port())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = server.ping(base)
            if h is not None and int(h.get("generation", -1)) >= gen:
                return gen
            time.sleep(0.1)
        raise PermanentError(
            f"{self.uc.name}: the endpoint at {base} did not serve generation {gen} within {timeout:.0f}s "
            f"(see its log: {self._log()})"
        )

    def _port(self) -> int:
        info = server.status(self.uc)
        return int(info["port"]) if info else self.opts.endpoint.port

    def _log(self) -> str:
        info = server.status(self.uc)
        return str(info["log"]) if info else "-"

    def captures(self, generation: int, after_id: int = 0) -> list[dict[str, Any]]:
        """The captured requests answered while ``generation`` was served (written every 0.2 s:
        call after the traffic stopped and a flush)."""
        time.sleep(0.5)  # the capture writer's interval, twice
        return self.state.captures(after_id=after_id, generation=generation)

    def deployments(self) -> DeploymentState:
        return self.state

    # ------------------------------------------------------------------ replayed traffic

    def replay_records(
        self, registry: Any, version: int, shape: RequestShape
    ) -> tuple[list[dict[str, Any]], dict[Any, int]]:
        """Up to ``traffic.max_requests`` request records (entity keys and request-time fields:
        the endpoint reads the rest from the online store) from the newest ``traffic.replay_days``
        event dates of the rows the model is trained on (its training set's labels source), newest
        last, with each one's label by its key (``id``)."""
        n = self.opts.traffic.max_requests
        from mlblueprints.core.duck import connect
        from mlblueprints.lakehouse import iceberg, naming
        from mlblueprints.lakehouse.sqlgen import ident

        uc = self.uc
        assert uc.training is not None
        ts = uc.training_sets[uc.training.training_set]
        source, label = ts.labels.source, ts.labels.label
        key = uc.gold[source].primary_key if source in uc.gold else uc.datasets[source].primary_key
        table = iceberg.load(iceberg.catalog(), naming.identifier(uc, source))
        if table is None:
            raise PermanentError(f"{uc.name}: promotion: no table {source!r} to replay requests from")
        cols = list(dict.fromkeys([*key, *shape.entity_fields, *shape.request_fields, label]))
        con = connect()
        try:
            iceberg.register_view(con, "src", table)
            days = int(self.opts.traffic.replay_days)
            rows = con.execute(
                f"SELECT {', '.join(ident(c) for c in cols)} FROM src "
                f"WHERE event_date > (SELECT max(event_date) FROM src) - INTERVAL {days} DAY "
                f"ORDER BY event_time DESC, {', '.join(ident(k) for k in key)} LIMIT {int(n)}"
            ).fetchall()
        finally:
            con.close()
        records, labels = [], {}
        for r in reversed(rows):
            d = dict(zip(cols, r))
            rid = "|".join(str(d[k]) for k in key)
            rec = {f: d[f] for f in (*shape.entity_fields, *shape.request_fields)}
            for f in shape.request_fields:
                rec[f] = None if rec[f] is None else float(rec[f])
            rec["id"] = rid
            records.append(rec)
            if d[label] is not None:
                labels[rid] = int(d[label])
        return records, labels

    def canary(self, registry: Any, version: int, champion: int, run_id: str) -> list[dict[str, Any]]:
        """The canary by variant weights this endpoint routes (``serving.canary.by_weights``)."""
        from mlblueprints.serving.canary import by_weights

        return by_weights(self, registry, version, champion, run_id)

    def decided(self, version: int, promoted: bool, reason: str) -> None:
        """Nothing more to record: the registry's alias and tag are the local record of it."""

    def send(self, records: Sequence[Mapping[str, Any]], seconds: float, max_requests: int) -> dict[str, Any]:
        """Send ``records`` (cycling) one per request at ``traffic.rate_per_second`` over
        ``traffic.clients`` keep-alive connections, for ``seconds`` or ``max_requests`` requests,
        whichever comes first. Returns the statuses (0: no answer) and the requests sent."""
        base = server.url(self.uc, self._port())
        host, port = base.removeprefix("http://").rsplit(":", 1)
        bodies = [json.dumps(r).encode() for r in records]

        def client() -> Any:
            con = [http.client.HTTPConnection(host.strip("[]"), int(port), timeout=30)]

            def call(i: int) -> int:
                try:
                    con[0].request(
                        "POST", "/invocations", bodies[i % len(bodies)], {"Content-Type": "application/json"}
                    )
                    resp = con[0].getresponse()
                    resp.read()
                    return resp.status
                except (OSError, http.client.HTTPException):
                    con[0].close()
                    con[0] = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=30)
                    return 0

            return call, lambda: con[0].close()

        return paced(client, self.opts.traffic, seconds, max_requests)

    def where(self) -> list[str]:
        info = server.status(self.uc)
        at = f"running at {info['url']} (pid {info['pid']}, log {info['log']})" if info else "not running"
        return [f"endpoint: {at}; state, capture and deployment history: {self.state.path}"]
