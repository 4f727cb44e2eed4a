"""The run report of ``<usecase>__promotion``: which challenger, each bake's traffic and
guardrails against their thresholds, the outcome, and where the endpoint and its history are."""

from __future__ import annotations

from typing import Any

from mlblueprints.config import UseCase
from mlblueprints.core.reporting import Table


def render(uc: UseCase, run_id: str, results: dict[str, Any], where: list[str]) -> str:
    lines = [f"{uc.name}__promotion  run {run_id}", ""]
    tg = results.get("target")
    if not tg:
        return "\n".join([*lines, "target: NOT RUN / FAILED"])
    lines.append(
        f"challenger: {tg['model_name']} version {tg['version']} ({tg['chosen_by']}); champion: "
        + (f"version {tg['champion_version']}" if tg["champion_version"] is not None else "none")
    )
    if tg.get("refused"):
        lines += ["", f"NOT DEPLOYED: {tg['refused']}"]
    dep = results.get("deploy") or {}
    if dep.get("first"):
        lines += ["", f"version {tg['version']} is the first champion: it serves all traffic (no canary)"]
    baked = results.get("bake") or {}
    for b in baked.get("bakes", []):
        sent = b["sent"]
        share = b["challenger_share"]
        lines += [
            "",
            f"canary at {100 * b['share']:.0f}% (endpoint generation {b['generation']}): {sent['requests']:,} requests "
            f"replayed in {sent['seconds']:.1f}s, statuses {sent['statuses']}; answered {b['answered']}"
            + ("" if share is None else f" - the challenger answered {100 * share:.1f}%"),
        ]
        t = Table(("guardrail", "value", "threshold", "verdict", "detail"), right=(1, 2), indent="  ")
        for v in b["verdicts"]:
            t.add(
                v["guardrail"],
                "-" if v["value"] is None else f"{v['value']:.4g}",
                f"{v['threshold']:g}",
                {True: "ok", False: "TRIPPED", None: "not judged"}[v["ok"]],
                v["detail"],
            )
        lines.append(t.render())
    dec = results.get("decide") or {}
    if dec.get("outcome"):
        verb = "PROMOTED" if dec["outcome"] == "promoted" else "ROLLED BACK"
        lines += ["", f"{verb}: version {dec['version']}: {dec['reason']}; champion: version {dec['champion']}"]
    lines += ["", *where, f"history and DORA metrics: mlblueprints deployments {uc.name}"]
    return "\n".join(lines)
