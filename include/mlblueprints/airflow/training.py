"""DAG factory of the training pattern: training set -> train (Spot-safe) -> evaluate -> gate -> register.

``build_training_dag(usecase)`` returns ``<usecase>__training`` (None without a ``training``
section). It is scheduled on the Assets of the training set's feature views (all of them
updated) or on the use case's drift-alert Asset (declared here; the monitoring pattern emits it)::

    training_set -> train -> evaluate -> register -> report

* ``training_set`` builds the point-in-time training set (an Iceberg snapshot, pinned by id);
* ``train`` runs the script-mode training entry point: locally as a subprocess with the
  SageMaker contract mapped to directories, checkpoints kept across task tries so a retry
  resumes; the ``interrupt`` Param sends SIGTERM (Spot's notice) or SIGKILL to the first try;
* ``evaluate`` scores candidate and champion on the time-based holdout and applies the gate;
* ``register`` logs the MLflow run and registers the candidate (alias ``challenger``) only when
  the gate passed; otherwise the run ends "not promoted" with the comparison in its log.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, AssetAll, Param, TriggerRule, get_current_context, task

from mlblueprints.airflow.features import view_asset
from mlblueprints.config import UseCase

log = logging.getLogger(__name__)

TAGS = ("mlblueprints", "training")


def drift_asset(uc: UseCase) -> Asset:
    """The Asset a drift alert emits (monitoring pattern); training is scheduled on it too."""
    return Asset(
        name=f"{uc.name}.drift_alert",
        uri=f"file://mlblueprints/{uc.name}/monitoring/drift_alert",
        group="monitoring",
        extra={"usecase": uc.name},
    )


def _run_info(uc: UseCase) -> Any:
    from mlblueprints.lineage import RunInfo

    ctx = get_current_context()
    ti = ctx["ti"]
    return RunInfo.for_usecase(
        uc, run_id=ctx["run_id"], dag_id=ti.dag_id, task_id=ti.task_id, try_number=int(ti.try_number or 1)
    )


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def job_dir(uc: UseCase, run_id: str) -> Path:
    """Per DAG run (not per try): checkpoints here survive a retry, which resumes from them."""
    from mlblueprints import runtime

    return runtime.path("training", uc.name, _safe(run_id))


def hyperparameters(uc: UseCase) -> dict[str, Any]:
    t = uc.training
    assert t is not None
    ts = uc.training_sets[t.training_set]
    return {
        **t.hyperparameters,
        "features": ",".join(uc.model_features()),
        "label": ts.labels.label,
        "num_boost_round": t.num_boost_round,
        "seed": t.seed,
        "checkpoint_interval_seconds": t.checkpoint_interval_seconds,
    }


def build_training_dag(uc: UseCase) -> DAG | None:
    if uc.training is None:
        return None
    t = uc.training
    views = uc.training_sets[t.training_set].features
    schedule = AssetAll(*(view_asset(uc, v) for v in views)) | drift_asset(uc)
    params = {
        "interrupt": Param(
            {"signal": None, "after_seconds": 5},
            type="object",
            description="Simulate a Spot interruption of the first training try: signal SIGTERM (the "
            "two-minute notice: checkpoint, exit) or SIGKILL (no notice), after_seconds. The retry resumes.",
        ),
        "promote": Param(t.promote, type="boolean", description="Make a registered candidate the champion right away."),
    }
    dag = DAG(
        dag_id=f"{uc.name}__training",
        description=f"{uc.name}: point-in-time training set -> Spot-safe training -> gate -> MLflow ({uc.target})",
        schedule=schedule,
        start_date=datetime.combine(uc.start_date, datetime.min.time(), tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        tags=sorted({*TAGS, uc.name, uc.target, *uc.tags}),
        params=params,
        default_args={
            "owner": uc.owner,
            "retries": uc.retries,
            "retry_delay": timedelta(seconds=uc.retry_delay_seconds),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(minutes=30),
        },
        doc_md=__doc__,
    )
    with dag:

        @task(task_id="training_set")
        def training_set() -> dict[str, Any]:
            if uc.target == "aws":
                from mlblueprints.airflow.aws_training import AwsTraining

                return AwsTraining(uc).training_set(_run_info(uc))
            from mlblueprints.features.local import build_training_set

            out = build_training_set(uc, t.training_set, _run_info(uc))
            log.info("training set %s: %s rows, snapshot %s", out["table"], out["rows"], out["snapshot_id"])
            return out

        @task(task_id="train")
        def train(tset: dict[str, Any]) -> dict[str, Any]:  # ("ts" is a reserved context key)
            from airflow.sdk.exceptions import AirflowException

            from mlblueprints.training import dataset
            from mlblueprints.training.local import TrainingInterrupted, run_training_job

            ctx = get_current_context()
            ti = ctx["ti"]
            jd = job_dir(uc, ctx["run_id"])
            if uc.target == "aws":
                from mlblueprints.airflow.aws_training import AwsTraining

                return AwsTraining(uc).train(tset, jd, hyperparameters(uc), _run_info(uc))
            data = dataset.split(uc, tset["snapshot_id"], jd)
            interrupt = dict(ctx["params"].get("interrupt") or {})
            if not interrupt.get("signal") or int(ti.try_number or 1) > 1:
                interrupt = None  # a Spot interruption is simulated on the first try only
            name = f"{_safe(uc.name)}-{_safe(ctx['run_id'])}-try{ti.try_number}"
            try:
                out = run_training_job(
                    jd / f"try-{ti.try_number}",
                    jd / "train",
                    hyperparameters(uc),
                    checkpoint_dir=jd / "checkpoints",
                    interrupt=interrupt,
                )
            except TrainingInterrupted as exc:
                raise AirflowException(f"training interrupted ({exc}); the retry resumes from the checkpoint") from exc
            meta = out["meta"]
            log.info(
                "trained %s rounds (%s in this try, resumed from %s) in %.1fs",
                meta["rounds"],
                meta["rounds_trained_in_this_process"],
                meta["resumed_from_round"],
                out["seconds"],
            )
            return {
                "job_name": name,
                "try_number": int(ti.try_number or 1),
                "model_dir": str(out["model_dir"]),
                "meta": meta,
                "metrics": out.get("metrics") or {},
                "seconds": out["seconds"],
                "data": data,
                "job_dir": str(jd),
            }

        @task(task_id="evaluate")
        def evaluate(trained: dict[str, Any]) -> dict[str, Any]:
            if uc.target == "aws":  # the model and holdout may be on another worker's disk
                from mlblueprints.airflow.aws_training import AwsTraining

                AwsTraining(uc).ensure_local(trained)
            return _evaluate(uc, trained)

        @task(task_id="register")
        def register(tset: dict[str, Any], trained: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any]:
            if uc.target == "aws":
                from mlblueprints.airflow.aws_training import AwsTraining

                AwsTraining(uc).ensure_local(trained)
            out = _register(uc, tset, trained, ev)
            if uc.target == "aws" and out["verdict"] == "registered":
                from mlblueprints.airflow.aws_training import AwsTraining

                out["model_package"] = AwsTraining(uc).register_model_package(tset, trained, ev, out, _run_info(uc))
            return out

        @task(task_id="report", trigger_rule=TriggerRule.ALL_DONE, retries=0)
        def report() -> dict[str, Any]:
            from mlblueprints.training.report import write_training_report

            ctx = get_current_context()
            ti = ctx["ti"]
            results = {x: ti.xcom_pull(task_ids=x) for x in dag.task_ids if x != "report"}
            path, text, missing = write_training_report(uc, ctx["run_id"], results)
            log.info("\n%s", text)
            if missing:
                raise RuntimeError(f"run incomplete: task(s) {missing} did not succeed; report: {path}")
            return {"report": str(path)}

        tset = training_set()
        tr = train(tset)
        ev = evaluate(tr)
        reg = register(tset, tr, ev)
        reg >> report()
    return dag


def _evaluate(uc: UseCase, trained: dict[str, Any]) -> dict[str, Any]:
    import json

    import numpy as np
    import xgboost as xgb

    from mlblueprints.registry import local as registry
    from mlblueprints.training import dataset, evaluate

    t = uc.training
    assert t is not None
    jd = Path(trained["job_dir"])
    holdout = dataset.read_holdout(jd)
    feats = uc.model_features()
    label = uc.training_sets[t.training_set].labels.label
    x = xgb.DMatrix(holdout[feats].to_numpy(dtype=np.float64), feature_names=feats)
    y = holdout[label].to_numpy()
    candidate = xgb.Booster()
    candidate.load_model(str(Path(trained["model_dir"]) / "model.ubj"))
    cand = evaluate.evaluate(y, candidate.predict(x), t.threshold)
    champ_info = registry.model_version(uc, registry.CHAMPION)
    champ = None
    if champ_info is not None:
        booster = registry.load_booster(uc, registry.CHAMPION)
        champ = evaluate.evaluate(y, booster.predict(x), t.threshold)
    against = f"champion v{champ_info['version']}" if champ_info else "baseline"
    decision = evaluate.gate(cand, champ, t.gate, against)
    log.info("\n%s", decision.text())
    out_dir = jd / "evaluation"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "candidate": cand,
        "champion": champ,
        "champion_version": champ_info["version"] if champ_info else None,
        "decision": decision.as_dict(),
        "decision_text": decision.text(),
        "holdout": trained["data"].get("holdout"),
        "evaluation_dir": str(out_dir),
    }
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def _register(uc: UseCase, ts: dict[str, Any], trained: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any]:
    import xgboost as xgb

    from mlblueprints.registry import local as registry

    ctx = get_current_context()
    ti = ctx["ti"]
    run = _run_info(uc)
    passed = ev["decision"]["passed"]
    lineage = {
        "git_commit": run.git_commit,
        "config_hash": run.config_hash,
        "training_set": ts["table"],
        "training_set_snapshot_id": ts["snapshot_id"],
        "source_snapshots": ts["source_snapshots"],
        "feature_views": ts["feature_views"],
        "dag_id": ti.dag_id,
        "run_id": ctx["run_id"],
        "train_try_number": trained["try_number"],
        "training_job_name": trained["job_name"],
        "hyperparameters": hyperparameters(uc),
        "holdout": ev["holdout"],
        "metrics": ev["candidate"],
        "gate": "passed" if passed else "not promoted",
        "compared_with": ev["decision"]["against"],
    }
    booster = xgb.Booster()
    booster.load_model(str(Path(trained["model_dir"]) / "model.ubj"))
    out = registry.record(
        uc,
        booster=booster,
        candidate=ev["candidate"],
        champion=ev["champion"],
        decision=ev["decision"],
        lineage=lineage,
        params=hyperparameters(uc),
        register=passed,
        evaluation_dir=Path(ev["evaluation_dir"]),
    )
    if passed and ctx["params"].get("promote") and registry.CHAMPION not in out["aliases"]:
        registry.promote(uc, out["version"])
        out["aliases"].append(registry.CHAMPION)
    out["verdict"] = "registered" if passed else "not promoted"
    out["lineage"] = lineage
    log.info("%s: %s", out["verdict"], out)
    return out
