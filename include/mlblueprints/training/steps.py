"""The steps of the training pattern (declared in ``mlblueprints.patterns.training``).

``training_set`` (feature store) -> ``train`` (trainer) -> ``evaluate`` -> ``register``
(registry) -> ``publish`` -> ``report``. Evaluation and registration are the same code on both
targets: the trainer backend makes the model and the holdout local first (``ensure_local``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from mlblueprints.core import reporting
from mlblueprints.core.context import StepContext
from mlblueprints.core.naming import registered_model_asset
from mlblueprints.errors import PermanentError, StepSkipped
from mlblueprints.training.core import hyperparameters, job_dir

log = logging.getLogger(__name__)


def _training(ctx: StepContext) -> Any:
    t = ctx.uc.training
    if t is None:
        raise PermanentError(f"{ctx.uc.name}: the use case has no training section")
    return t


def training_set(ctx: StepContext) -> Any:
    """The point-in-time training set of ``training.training_set`` (pinned: a snapshot or object)."""
    t = _training(ctx)
    out = ctx.backend("features").build_training_set(t.training_set, ctx.run, job_dir(ctx.uc, ctx.run.run_id))
    return ctx.then(out, _built)


def _built(ctx: StepContext, out: dict[str, Any]) -> dict[str, Any]:
    log.info("training set %s: %s rows, snapshot %s", out["table"], out["rows"], out["snapshot_id"])
    return out


def train(ctx: StepContext, tset: dict[str, Any]) -> Any:
    """Train on the set's training split (the ``interrupt`` Param simulates a Spot interruption
    of the first local try; the retry resumes from the checkpoint)."""
    interrupt = dict(ctx.params.get("interrupt") or {}) or None
    out = ctx.backend("trainer").train(tset, job_dir(ctx.uc, ctx.run.run_id), ctx.run, interrupt)
    return ctx.then(out, _trained)


def _trained(ctx: StepContext, out: dict[str, Any]) -> dict[str, Any]:
    meta = out["meta"]
    resumed = meta.get("resumed_from_round")
    log.info(
        "trained %s rounds in try %s%s in %.1fs",
        meta["rounds"],
        out["try_number"],
        f" (resumed from the checkpoint at round {resumed})" if resumed else "",
        out["seconds"],
    )
    return out


def _model(ctx: StepContext, trained: dict[str, Any]) -> Any:
    from mlblueprints.training.models import load_model

    t = _training(ctx)
    return load_model(Path(trained["model_dir"]), t.format, t.task, ctx.uc.model_features())


def evaluate(ctx: StepContext, trained: dict[str, Any]) -> dict[str, Any]:
    """Score the candidate and the reference model on the time-based holdout with the metrics of
    the task; apply the gate."""
    import numpy as np

    from mlblueprints.training import dataset
    from mlblueprints.training import evaluate as ev

    uc, t = ctx.uc, _training(ctx)
    ctx.backend("trainer").ensure_local(trained)  # the model and holdout may be on another worker's disk
    registry = ctx.backend("registry")
    jd = Path(trained["job_dir"])
    holdout = dataset.read_holdout(jd)
    feats = uc.model_features()
    label = uc.training_sets[t.training_set].labels.label
    x = holdout[feats].to_numpy(dtype=np.float64)
    y = holdout[label].to_numpy()
    classes = uc.label_classes()

    def measure(model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return ev.evaluate_task(t.task, y, model.scores(x), rule=t.threshold, classes=classes)

    cand, details = measure(_model(ctx, trained))
    # the champion, else the newest registered version (never one this run registered itself)
    ref = registry.reference_model(exclude_run_id=ctx.run.run_id)
    champ, note = None, None
    if ref is not None:
        ref_task = registry.version_task(ref.version)
        if ref_task != t.task:  # a model of another task cannot be compared metric by metric
            note = f"{ref.label} is a {ref_task} model; this is a {t.task} task: compared with the baseline only"
            ref = None
        else:
            champ, _ = measure(registry.load_reference(ref, t.task, feats))
    against = ref.label if ref else "baseline"
    decision = ev.gate(cand, champ, t.gate, against, task=t.task, no_skill_values=details.get("no_skill"))
    if note:
        decision.reasons.insert(0, note)
    log.info("\n%s", decision.text())
    out_dir = jd / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    # the holdout goes with the run (artifact evaluation/holdout.parquet), so that a registered
    # version can be explained and checked for bias later on the data it was judged on
    tmp = out_dir / "holdout.parquet.partial"
    shutil.copyfile(jd / "holdout" / "holdout.parquet", tmp)
    tmp.replace(out_dir / "holdout.parquet")
    result = {
        "task": t.task,
        "candidate": cand,
        "candidate_details": details,
        "champion": champ,
        "champion_version": ref.version if ref else None,
        "reference": ref.as_dict() if ref else None,
        "decision": decision.as_dict(),
        "decision_text": decision.text(),
        "holdout": trained["data"].get("holdout"),
        "evaluation_dir": str(out_dir),
    }
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def lineage(ctx: StepContext, ts: dict[str, Any], trained: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any]:
    """What a registered version records about how it was made."""
    t = _training(ctx)
    passed = ev["decision"]["passed"]
    return {
        "git_commit": ctx.run.git_commit,
        "config_hash": ctx.run.config_hash,
        "training_set": ts["table"],
        "training_set_snapshot_id": ts["snapshot_id"],
        "source_snapshots": ts["source_snapshots"],
        "feature_views": ts["feature_views"],
        "dag_id": ctx.run.dag_id,
        "run_id": ctx.run.run_id,
        "train_try_number": trained["try_number"],
        "training_job_name": trained["job_name"],
        "hyperparameters": hyperparameters(ctx.uc),
        "task": t.task,
        "objective": t.xgboost_objective if t.entry_point is None else None,
        "classes": ctx.uc.label_classes() if t.task == "multiclass" else None,
        "target_range": (trained["data"].get("train") or {}).get("label_range"),
        "training_script": t.entry_point or "built-in (mlblueprints/training/script/train.py)",
        "model_format": t.format,
        "holdout": ev["holdout"],
        "metrics": ev["candidate"],
        "gate": "passed" if passed else "not promoted",
        "compared_with": ev["decision"]["against"],
    }


def register(ctx: StepContext, tset: dict[str, Any], trained: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any]:
    """Log the MLflow run; register the candidate (alias ``challenger``) only when the gate passed."""
    uc = ctx.uc
    ctx.backend("trainer").ensure_local(trained)
    registry = ctx.backend("registry")
    passed = ev["decision"]["passed"]
    lin = lineage(ctx, tset, trained, ev)
    out = registry.record(
        model=_model(ctx, trained),
        candidate=ev["candidate"],
        champion=ev["champion"],
        decision=ev["decision"],
        lineage=lin,
        params=hyperparameters(uc),
        register=passed,
        evaluation_dir=Path(ev["evaluation_dir"]),
    )
    if passed and ctx.params.get("promote") and registry.CHAMPION not in out["aliases"]:
        registry.promote(out["version"])
        out["aliases"].append(registry.CHAMPION)
    out["verdict"] = "registered" if passed else "not promoted"
    out["lineage"] = lin
    if passed:
        package = registry.register_package(tset, trained, ev, out, ctx.run)
        if package is not None:
            out["model_package"] = package
    log.info("%s: %s", out["verdict"], {k: v for k, v in out.items() if k != "lineage"})
    return out


def publish(ctx: StepContext, registered: dict[str, Any]) -> dict[str, Any]:
    """Announce a registered challenger (the Asset explainability and promotion are scheduled on)."""
    if registered.get("verdict") != "registered":
        raise StepSkipped("the candidate was not registered: no challenger to announce")
    extra = {"model": registered["model_name"], "version": registered["version"], "run_id": ctx.run.run_id}
    ctx.emit(registered_model_asset(ctx.uc).name, extra)
    return extra


def report(ctx: StepContext, results: dict[str, Any]) -> dict[str, Any]:
    from mlblueprints.training.report import render

    registry = ctx.backend("registry")
    if (results.get("register") or {}).get("verdict") == "not promoted" and results.get("publish") is None:
        results = {**results, "publish": {"skipped": "the candidate was not registered"}}
    return reporting.finish_run(ctx, "training", render(ctx.uc, ctx.run.run_id, results, registry.where()), results)
