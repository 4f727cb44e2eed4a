"""The canary by variant weights (the local endpoint): the challenger served beside the champion at
each share of ``promotion.canary`` in turn, traffic sent for the bake, every guardrail judged on
the requests each variant answered at that share; stops at the first share a guardrail fails."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"


def log_verdicts(verdicts: Sequence[Mapping[str, Any]]) -> None:
    for v in verdicts:
        log.info(
            "  %-16s %-10s threshold %-8s %s  %s",
            v["guardrail"],
            v["value"],
            v["threshold"],
            {True: "ok", False: "TRIPPED", None: "-"}[v["ok"]],
            v["detail"],
        )


def bake_entry(share: float, generation: int, sent: dict[str, Any], by: Mapping[str, Any], verdicts: list) -> dict:
    from mlblueprints.serving import guardrails

    answered = {v: s["requests"] for v, s in by.items()}
    total = sum(answered.values())
    return {
        "share": share,
        "generation": generation,
        "sent": sent,
        "answered": answered,
        "challenger_share": answered.get(CHALLENGER, 0) / total if total else None,
        "verdicts": verdicts,
        "tripped": guardrails.tripped(verdicts),
    }


def by_weights(ep: Any, registry: Any, version: int, champion: int, run_id: str) -> list[dict[str, Any]]:
    """The bakes of a canary on ``ep`` (``deploy`` of weighted variants, ``replay_records``,
    ``send``, ``captures``)."""
    from mlblueprints.errors import PermanentError
    from mlblueprints.scoring.core import model_from_registry
    from mlblueprints.serving import guardrails
    from mlblueprints.serving.core import RequestShape

    uc = ep.uc
    p = uc.promotion
    facts = model_from_registry(uc, registry.lineage(version=version), CHALLENGER)
    shape = RequestShape.of(uc, facts["features"])
    records: list[dict[str, Any]] = []
    labels: dict[Any, int] = {}
    if p.traffic.replay:
        records, labels = ep.replay_records(registry, version, shape)
        if not records:
            raise PermanentError(f"{uc.name}: promotion: no rows to replay to the endpoint (promotion.traffic)")
    bakes = []
    for share in p.canary.shares():
        gen = ep.deploy(
            [
                {"variant": CHAMPION, "version": champion, "weight": round(1 - share, 6), "alias": CHAMPION},
                {"variant": CHALLENGER, "version": version, "weight": share, "alias": CHALLENGER},
            ],
            run_id,
        )
        log.info(
            "canary: version %s at %.0f%% (generation %s), baking %ss", version, 100 * share, gen, p.canary.bake_seconds
        )
        if records:
            sent = ep.send(records, p.canary.bake_seconds, p.traffic.max_requests)
        else:
            time.sleep(p.canary.bake_seconds)
            sent = {"requests": 0, "statuses": {}, "seconds": p.canary.bake_seconds}
        by = guardrails.samples(ep.captures(gen))
        verdicts = guardrails.evaluate(p.guardrails, by, CHAMPION, CHALLENGER, labels)
        bakes.append(bake_entry(share, gen, sent, by, verdicts))
        log_verdicts(verdicts)
        if bakes[-1]["tripped"]:
            break
    return bakes
