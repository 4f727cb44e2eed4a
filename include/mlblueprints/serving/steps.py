"""The steps of the promotion pattern (declared in ``mlblueprints.patterns.promotion``).

``target`` (which challenger; may it be deployed) -> ``deploy`` (the endpoint running, the
deployment recorded) -> ``bake`` (the challenger at each canary share, traffic, guardrails) ->
``decide`` (promote: the registry alias and the endpoint move to the challenger; or roll back:
the champion takes all traffic again, the version is tagged rejected) -> ``report``.

A rerun of a killed run finds its own deployment, bakes again and decides once: the registry's
``champion`` alias names one version at every moment, and it moves only in ``decide``.
"""

from __future__ import annotations

import logging
from typing import Any

from mlblueprints import runtime
from mlblueprints.core import reporting
from mlblueprints.core.context import StepContext
from mlblueprints.core.naming import explained_model_asset, registered_model_asset
from mlblueprints.errors import PermanentError, StepSkipped
from mlblueprints.serving.canary import CHALLENGER, CHAMPION

log = logging.getLogger(__name__)


def _promotion(ctx: StepContext) -> Any:
    p = ctx.uc.promotion
    if p is None or ctx.uc.training is None:
        raise PermanentError(f"{ctx.uc.name}: the use case has no promotion (or training) section")
    return p


def target(ctx: StepContext) -> dict[str, Any]:
    """The challenger (the ``version`` Param, else the newest version the triggering events name,
    else the ``challenger`` alias), and whether it may be deployed: it passed the evaluation gate
    (it is registered), the fairness gate (no ``mlb.fairness_failed`` tag, and judged at all when
    the use case has an explainability section), and was not rolled back before."""
    from mlblueprints.registry.local import EXPLAINED_BY_TAG

    uc = ctx.uc
    _promotion(ctx)
    registry = ctx.backend("registry")
    events = [
        e
        for name in (explained_model_asset(uc).name, registered_model_asset(uc).name)
        for e in ctx.triggering.get(name, [])
        if e and e.get("version") is not None
    ]
    if ctx.params.get("version"):
        version, chosen_by = int(ctx.params["version"]), "the version Param"
    elif events:
        version, chosen_by = max(int(e["version"]) for e in events), "the triggering event"
    else:
        mv = registry.model_version(CHALLENGER)
        if mv is None:
            raise PermanentError(f"{uc.name}: promotion: no challenger: set the version Param, or register one")
        version, chosen_by = int(mv["version"]), "the challenger alias"
    lin = registry.lineage(version=version)
    champion = registry.model_version(CHAMPION)
    champion_version = int(champion["version"]) if champion else None
    refused = f"{uc.model_name} version {version} is the champion already" if champion_version == version else None
    refused = refused or registry.refusal(version)
    judged = EXPLAINED_BY_TAG.removeprefix("mlb.") in (lin.get("lineage") or {})
    if refused is None and uc.explainability is not None and not judged:
        refused = (
            f"{uc.model_name} version {version} has not been through the fairness gate yet "
            f"(the {uc.name}__explainability DAG; mlblueprints explain {uc.name} --version {version})"
        )
    commit = (lin.get("lineage") or {}).get("git_commit")
    out = {
        "model_name": uc.model_name,
        "version": version,
        "chosen_by": chosen_by,
        "champion_version": champion_version,
        "git_commit": commit,
        "committed_at": runtime.commit_time(commit),
        "refused": refused,
    }
    log.info(
        "challenger %s version %s (%s), champion %s%s",
        uc.model_name,
        version,
        chosen_by,
        champion_version,
        f": not deployed: {refused}" if refused else "",
    )
    return out


def deploy(ctx: StepContext, target: dict[str, Any]) -> dict[str, Any]:
    """The endpoint running (started when it is not) and the deployment recorded (a rerun finds
    its own; another one left in progress is superseded). With no champion yet, the challenger
    is the first version: it takes all traffic and becomes the champion at once."""
    if target["refused"]:
        raise StepSkipped(f"not deployed: {target['refused']}")
    uc = ctx.uc
    ep = ctx.backend("endpoint")
    info = ep.ensure_running()
    version = int(target["version"])
    d = ep.deployments().start_deployment(
        ctx.run.run_id, version, target["champion_version"], target["git_commit"], target["committed_at"]
    )
    first = target["champion_version"] is None
    if first:
        registry = ctx.backend("registry")
        registry.promote(version)
        gen = ep.deploy([{"variant": CHAMPION, "version": version, "weight": 1.0, "alias": CHAMPION}], ctx.run.run_id)
        ep.decided(version, True, "the first version: no champion to canary against")
        ep.deployments().finish_deployment(d["id"], "first", "no champion to canary against", [1.0], [])
        log.info(
            "%s version %s is the first champion: serving all traffic (generation %s)", uc.model_name, version, gen
        )
    return {"deployment_id": int(d["id"]), "url": info["url"], "first": first, "started_at": d["started_at"]}


def bake(ctx: StepContext, target: dict[str, Any], deployed: dict[str, Any]) -> dict[str, Any]:
    """The challenger at each canary share in turn, with traffic, every guardrail judged on the
    requests answered at that share; stops at the first share a guardrail fails. How the shares
    are served is the endpoint's (``Endpoint.canary``): the local endpoint's weights, moved by
    this step; on aws SageMaker's blue/green update, rolled back by CloudWatch alarms (a service
    job: the orchestrator runs the update and the endpoint's traffic meanwhile)."""
    if deployed["first"]:
        raise StepSkipped("the first version: no champion to canary against")
    _promotion(ctx)
    ep = ctx.backend("endpoint")
    out = ep.canary(ctx.backend("registry"), int(target["version"]), int(target["champion_version"]), ctx.run.run_id)
    return ctx.then(out, _baked)


def _baked(ctx: StepContext, bakes: list[dict[str, Any]]) -> dict[str, Any]:
    last = bakes[-1]["tripped"]
    return {"bakes": bakes, "passed": not last, "tripped": last}


def decide(ctx: StepContext, target: dict[str, Any], deployed: dict[str, Any], baked: dict[str, Any]) -> dict[str, Any]:
    """Promote (the registry's ``champion`` alias to the challenger, the old champion kept as
    ``previous``, the endpoint serving it alone) or roll back (the champion alone again, the
    version tagged ``mlb.rejected`` with the guardrails that tripped). Safe to run again."""
    uc = ctx.uc
    ep = ctx.backend("endpoint")
    registry = ctx.backend("registry")
    version, champion = int(target["version"]), int(target["champion_version"])
    shares = [b["share"] for b in baked["bakes"]]
    verdicts = [v for b in baked["bakes"] for v in b["verdicts"]]
    if baked["passed"]:
        # the endpoint first, the alias last: killed in between, the alias still names the old
        # champion, so a rerun bakes and decides again rather than finding nothing to do
        gen = ep.deploy([{"variant": CHAMPION, "version": version, "weight": 1.0, "alias": CHAMPION}], ctx.run.run_id)
        registry.promote(version)
        outcome = "promoted"
        reason = f"every guardrail held at {', '.join(f'{100 * s:.0f}%' for s in shares)}"
    else:
        gen = ep.deploy([{"variant": CHAMPION, "version": champion, "weight": 1.0, "alias": CHAMPION}], ctx.run.run_id)
        reason = "; ".join(baked["tripped"])
        registry.reject(version, reason, ctx.run.run_id)
        outcome = "rolled_back"
    ep.decided(version, outcome == "promoted", reason)
    ep.deployments().finish_deployment(deployed["deployment_id"], outcome, reason, shares, verdicts)
    log.info(
        "%s version %s %s: %s (endpoint generation %s)", uc.model_name, version, outcome.replace("_", " "), reason, gen
    )
    return {
        "outcome": outcome,
        "reason": reason,
        "version": version,
        "champion": version if outcome == "promoted" else champion,
        "generation": gen,
    }


def report(ctx: StepContext, results: dict[str, Any]) -> dict[str, Any]:
    from mlblueprints.serving.report import render

    tg, dep = results.get("target"), results.get("deploy")
    if tg and tg.get("refused"):  # not deployed, and said why: nothing after target ran
        results = {**results, **{k: {"skipped": True} for k in ("deploy", "bake", "decide") if results.get(k) is None}}
    elif dep and dep.get("first"):  # the first version: promoted at deploy, no canary
        results = {**results, **{k: {"skipped": True} for k in ("bake", "decide") if results.get(k) is None}}
    where = ctx.backend("endpoint").where()
    return reporting.finish_run(ctx, "promotion", render(ctx.uc, ctx.run.run_id, results, where), results)
