"""The model registry: MLflow tracking + model registry (on SQLite locally).

``<runtime>/mlflow/mlflow.db`` holds runs and registered models; artifacts go to
``<runtime>/mlflow/artifacts``. Every training run is an MLflow run (experiment = the use case)
with the candidate's and the champion's metrics, the gate's comparison and the lineage as
tags. A registered version gets the alias ``challenger`` (``champion`` too when the use case
promotes directly) and carries the lineage as version tags, so the registry alone answers
"which code, config, data and run made this model".

Registration is idempotent per Airflow run: a retried register task finds the version its run
already registered (tag ``mlb.run_id``) instead of adding another.

On the aws target with ``training.sagemaker.mlflow_tracking_server_arn`` set, the same calls go
to that SageMaker managed MLflow tracking server: the ``sagemaker-mlflow`` plugin accepts the
server's ARN as tracking and registry URI (and signs the requests with the worker's AWS
credentials); artifacts then go to the server's own S3 artifact store.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.config import UseCase
from mlblueprints.errors import PermanentError

log = logging.getLogger(__name__)

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous"


def tracking_uri(uc: UseCase | None) -> str:
    """Where MLflow runs and registered models of ``uc`` live: the ARN of its SageMaker managed
    MLflow tracking server (aws target, ``training.sagemaker.mlflow_tracking_server_arn`` set),
    else the SQLite database under the runtime directory."""
    arn = uc.mlflow_tracking_server if uc is not None else None
    if arn:
        return arn
    return f"sqlite:///{runtime.path('mlflow') / 'mlflow.db'}"


def client(uc: UseCase | None = None) -> Any:
    """An MlflowClient on ``uc``'s tracking server (and ``mlflow``'s fluent API pointed at it).
    Without a use case: the local SQLite store."""
    import mlflow
    from mlflow import MlflowClient

    # the requirements are given explicitly (serving_requirements): MLflow's notes on how it would
    # infer them (uv project found, no pip in a uv environment) say nothing to act on
    for name in ("mlflow.utils.uv_utils", "mlflow.utils.environment"):
        logging.getLogger(name).setLevel(logging.ERROR)
    uri = tracking_uri(uc)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment(uc: UseCase) -> str:
    import mlflow

    c = client(uc)
    exp = c.get_experiment_by_name(uc.name)
    if exp is not None:
        return exp.experiment_id
    # a managed tracking server keeps artifacts in its own S3 artifact store
    location = None if uc.mlflow_tracking_server else (runtime.path("mlflow", "artifacts") / uc.name).as_uri()
    try:
        return c.create_experiment(uc.name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created concurrently
        return c.get_experiment_by_name(uc.name).experiment_id


def model_version(uc: UseCase, alias: str) -> dict[str, Any] | None:
    """The registered version behind ``alias`` (e.g. ``champion``), or None."""
    from mlflow.exceptions import MlflowException

    c = client(uc)
    try:
        mv = c.get_model_version_by_alias(uc.model_name, alias)
    except MlflowException:
        return None
    return {"version": int(mv.version), "run_id": mv.run_id, "source": mv.source, "tags": dict(mv.tags)}


def load_booster(uc: UseCase, alias: str) -> Any:
    """The XGBoost booster of the version behind ``alias`` (None when there is none)."""
    import mlflow.xgboost

    if model_version(uc, alias) is None:
        return None
    client(uc)
    return mlflow.xgboost.load_model(f"models:/{uc.model_name}@{alias}")


def serving_requirements() -> list[str]:
    """What serving the logged model needs, pinned to the versions that trained it (given to MLflow
    explicitly: its inference of a project's requirements takes seconds and warns per model)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "xgboost", "numpy", "pandas", "scikit-learn")]


# what a registered scikit-learn model may be made of: skops refuses to load any other type (a
# model saved by the training job that needs another type fails registration, naming it)
TRUSTED_TYPE_PREFIXES = ("sklearn.", "numpy.", "scipy.")


def skops_trusted_types(estimator: Any) -> list[str]:
    """The types skops must be told to trust to load ``estimator`` back: only scikit-learn's, numpy's
    and scipy's own (e.g. ``sklearn.tree._tree.Tree``); anything else is refused, so a registered model
    never needs arbitrary code to load."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import skops.io

        untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(estimator))
    foreign = [t for t in untrusted if not t.startswith(TRUSTED_TYPE_PREFIXES)]
    if foreign:
        from mlblueprints.training.models import ModelFormatError

        raise ModelFormatError(
            f"the scikit-learn model uses types outside scikit-learn, numpy and scipy: {foreign}; "
            "they cannot be registered as a skops model (which loads without running code)"
        )
    return list(untrusted)


def _pinned(package: str) -> str:
    from importlib.metadata import version

    return f"{package}=={version(package)}"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _log_model(model: Any) -> str:
    """Log a trained model under ``model`` in its own MLflow flavor; returns its URI."""
    import mlflow

    if model.flavor == "xgboost":
        import mlflow.xgboost

        info = mlflow.xgboost.log_model(
            model.raw, name="model", model_format="ubj", pip_requirements=serving_requirements()
        )
        return info.model_uri
    if model.flavor == "sklearn":
        import warnings

        import mlflow.sklearn

        predict_fn = "predict" if model.task == "regression" else "predict_proba"
        with warnings.catch_warnings():
            # skops inspects every imported module on import, Airflow's deprecated aliases included
            warnings.simplefilter("ignore")
            info = mlflow.sklearn.log_model(
                model.raw,
                name="model",
                pip_requirements=[*serving_requirements(), _pinned("skops")],
                pyfunc_predict_fn=predict_fn,
                serialization_format="skops",
                skops_trusted_types=skops_trusted_types(model.raw),
            )
        return info.model_uri
    # an MLflow model directory the training script wrote: kept as it is
    mlflow.log_artifacts(model.source, "model")
    return f"runs:/{mlflow.active_run().info.run_id}/model"


def _str_tags(d: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str) for k, v in d.items()}


def record(
    uc: UseCase,
    *,
    model: Any,
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    decision: dict[str, Any],
    lineage: dict[str, Any],
    params: dict[str, Any],
    register: bool,
    evaluation_dir: Path,
) -> dict[str, Any]:
    """Log the run (metrics, comparison, lineage, the model in its own MLflow flavor); register it
    when ``register``. ``model`` is a :class:`mlblueprints.training.models.Model`."""
    import mlflow

    c = client(uc)
    run_id_airflow = str(lineage.get("run_id"))
    existing = (
        [
            mv
            for mv in c.search_model_versions(f"name = '{uc.model_name}'")
            if mv.tags.get("mlb.run_id") == run_id_airflow
        ]
        if register and c.search_registered_models(f"name = '{uc.model_name}'")
        else []
    )
    exp = _experiment(uc)
    tags = {f"mlb.{k}": v for k, v in _str_tags(lineage).items()}
    tags["mlb.verdict"] = "registered" if register else "not promoted"
    if existing:  # a retry of a register task whose first try got this far
        mv = existing[0]
        log.info("version %s of %s was registered by this run already", mv.version, uc.model_name)
        mlflow_run_id = mv.run_id
        version: int | None = int(mv.version)
    else:
        with mlflow.start_run(experiment_id=exp, run_name=run_id_airflow, tags=tags) as r:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            mlflow.log_metrics({f"candidate_{k}": float(v) for k, v in candidate.items() if _number(v)})
            if champion:
                mlflow.log_metrics({f"champion_{k}": float(v) for k, v in champion.items() if _number(v)})
            mlflow.log_dict(decision, "evaluation/gate.json")
            mlflow.log_artifacts(str(evaluation_dir), "evaluation")
            model_uri = _log_model(model)
            mlflow_run_id = r.info.run_id
        version = None
        if register:
            mv = mlflow.register_model(model_uri, uc.model_name, tags=tags)
            version = int(mv.version)
    aliases: list[str] = []
    if version is not None:
        c.set_registered_model_alias(uc.model_name, CHALLENGER, str(version))
        aliases.append(CHALLENGER)
        if uc.training and uc.training.promote:
            c.set_registered_model_alias(uc.model_name, CHAMPION, str(version))
            aliases.append(CHAMPION)
    return {"mlflow_run_id": mlflow_run_id, "model_name": uc.model_name, "version": version, "aliases": aliases}


# set on a version by the explainability pattern's fairness gate when a bias metric broke a bound
# (the value says which metric of which facet, its value and the bound); absent when it passed
FAIRNESS_FAILED_TAG = "mlb.fairness_failed"
REJECTED_TAG = "mlb.rejected"  # set by the promotion pattern when a canary is rolled back
EXPLAINED_BY_TAG = "mlb.explained_by"  # the run that last explained and checked the version
MAX_TAG_CHARS = 5000  # MLflow's limit on a model version tag's value


class PromotionRefused(PermanentError):
    """A version the fairness gate marked cannot become the champion."""


def refusal(uc: UseCase, version: int) -> str | None:
    """Why ``version`` must not be promoted (one line), or None."""
    mv = client(uc).get_model_version(uc.model_name, str(version))
    failed = (mv.tags or {}).get(FAIRNESS_FAILED_TAG)
    if failed:
        return f"{uc.model_name} version {version} is not promoted: it failed the fairness gate: {failed}"
    rejected = (mv.tags or {}).get(REJECTED_TAG)
    if rejected:
        return f"{uc.model_name} version {version} is not promoted: its canary was rolled back: {rejected}"
    return None


def promote(uc: UseCase, version: int) -> None:
    """Make ``version`` the champion (the promotion pattern's job; ``--promote`` for use cases
    with no endpoint); the champion it replaces keeps the alias ``previous``. A version the
    fairness gate marked, or a canary rolled back, is refused, saying why."""
    why = refusal(uc, version)
    if why:
        raise PromotionRefused(why)
    c = client(uc)
    current = model_version(uc, CHAMPION)
    if current is not None and int(current["version"]) != int(version):
        c.set_registered_model_alias(uc.model_name, PREVIOUS, str(current["version"]))
    c.set_registered_model_alias(uc.model_name, CHAMPION, str(version))


def reject(uc: UseCase, version: int, reason: str, run_id: str) -> None:
    """Mark ``version`` as rolled back by a canary (tag :data:`REJECTED_TAG`: which guardrail,
    its value and bound, the run); it loses the ``challenger`` alias if it has it."""
    c = client(uc)
    c.set_model_version_tag(uc.model_name, str(version), REJECTED_TAG, f"{reason} (run {run_id})"[:MAX_TAG_CHARS])
    challenger = model_version(uc, CHALLENGER)
    if challenger is not None and int(challenger["version"]) == int(version):
        c.delete_registered_model_alias(uc.model_name, CHALLENGER)


def mark_fairness(uc: UseCase, version: int, reasons: list[str], run_id: str) -> str | None:
    """The fairness gate's mark on ``version``: the tag :data:`FAIRNESS_FAILED_TAG` with every broken
    bound when ``reasons``, none when it passed (a mark left by an earlier check is removed).
    Returns the tag's value."""
    c = client(uc)
    name, v = uc.model_name, str(version)
    c.set_model_version_tag(name, v, EXPLAINED_BY_TAG, run_id)
    if not reasons:
        if FAIRNESS_FAILED_TAG in (c.get_model_version(name, v).tags or {}):
            c.delete_model_version_tag(name, v, FAIRNESS_FAILED_TAG)
        return None
    text = "; ".join(reasons)
    if len(text) > MAX_TAG_CHARS:
        text = text[: MAX_TAG_CHARS - 25] + f" ... ({len(reasons)} in all)"
    c.set_model_version_tag(name, v, FAIRNESS_FAILED_TAG, text)
    return text


def fetch_artifact(uc: UseCase, version: int, artifact: str, dst: Path) -> Path:
    """The artifact ``artifact`` of the run that made ``version``, downloaded under ``dst``."""
    c = client(uc)
    run_id = c.get_model_version(uc.model_name, str(version)).run_id
    dst.mkdir(parents=True, exist_ok=True)
    from mlflow.exceptions import MlflowException

    try:
        return Path(c.download_artifacts(run_id, artifact, str(dst)))
    except (OSError, MlflowException) as exc:  # a missing artifact, by artifact store
        raise LookupError(f"{uc.model_name} version {version}: no artifact {artifact} in its run {run_id}") from exc


def log_artifacts(uc: UseCase, version: int, local_dir: Path, artifact_path: str) -> str:
    """Log the files under ``local_dir`` as artifacts ``artifact_path`` of the run that made
    ``version`` (overwriting what an earlier try logged); returns their URI."""
    c = client(uc)
    run_id = c.get_model_version(uc.model_name, str(version)).run_id
    c.log_artifacts(run_id, str(local_dir), artifact_path)
    return f"{c.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"


def lineage(uc: UseCase, version: int | None = None, alias: str | None = None) -> dict[str, Any]:
    """Everything the registry knows about a version: lineage tags, params, metrics, aliases."""
    c = client(uc)
    if version is None:
        mv = c.get_model_version_by_alias(uc.model_name, alias or CHAMPION)
    else:
        mv = c.get_model_version(uc.model_name, str(version))
    run = c.get_run(mv.run_id)
    aliases = sorted(mv.aliases or [])
    decode = {}
    for k, v in mv.tags.items():
        try:
            decode[k.removeprefix("mlb.")] = json.loads(v)
        except (TypeError, ValueError):
            decode[k.removeprefix("mlb.")] = v
    return {
        "model_name": uc.model_name,
        "version": int(mv.version),
        "aliases": aliases,
        "source": mv.source,
        "mlflow_run_id": mv.run_id,
        "lineage": decode,
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
    }


# ------------------------------------------------------------------ the backend


class MlflowRegistry:
    """The registry capability on the local target (``mlblueprints.backends.Registry``): MLflow on
    SQLite under the runtime directory. The aws registry adds SageMaker model packages."""

    CHALLENGER, CHAMPION, PREVIOUS = CHALLENGER, CHAMPION, PREVIOUS

    def __init__(self, uc: UseCase):
        self.uc = uc

    @property
    def tracking_uri(self) -> str:
        return tracking_uri(self.uc)

    def model_version(self, alias: str) -> dict[str, Any] | None:
        return model_version(self.uc, alias)

    def load_booster(self, alias: str) -> Any:
        return load_booster(self.uc, alias)

    def reference_model(self, exclude_run_id: str | None = None) -> Any:
        """What a candidate is judged against: the champion, else the newest registered version
        (not one this run registered itself), else None (:mod:`mlblueprints.registry.reference`)."""
        from mlblueprints.registry.reference import reference_model

        return reference_model(self.uc, exclude_run_id=exclude_run_id)

    def load_reference(self, ref: Any, task: str, features: list[str]) -> Any:
        """The reference version as a :class:`mlblueprints.training.models.Model`, in its flavor."""
        from mlblueprints.training.models import from_registry

        client(self.uc)  # points mlflow's registry URI at the use case's store
        return from_registry(ref.model_uri, task, features)

    def version_task(self, version: int) -> str:
        """The task a registered version was trained for (its lineage tag; binary before tasks existed)."""
        mv = client(self.uc).get_model_version(self.uc.model_name, str(version))
        return (mv.tags or {}).get("mlb.task", "binary")

    def record(self, **kw: Any) -> dict[str, Any]:
        return record(self.uc, **kw)

    def register_package(
        self, ts: dict[str, Any], trained: dict[str, Any], ev: dict[str, Any], registered: dict[str, Any], run: Any
    ) -> dict[str, Any] | None:
        """No model package registry on the local target: the MLflow version is the registration."""
        return None

    def promote(self, version: int) -> None:
        promote(self.uc, version)

    def refusal(self, version: int) -> str | None:
        return refusal(self.uc, version)

    def reject(self, version: int, reason: str, run_id: str) -> None:
        reject(self.uc, version, reason, run_id)

    def load_version(self, version: int, task: str, features: list[str]) -> Any:
        """A registered version as a :class:`mlblueprints.training.models.Model`, in its flavor."""
        from mlblueprints.training.models import from_registry

        client(self.uc)
        return from_registry(f"models:/{self.uc.model_name}/{version}", task, features)

    def fetch_artifact(self, version: int, artifact: str, dst: Path) -> Path:
        return fetch_artifact(self.uc, version, artifact, dst)

    def log_artifacts(self, version: int, local_dir: Path, artifact_path: str) -> str:
        return log_artifacts(self.uc, version, local_dir, artifact_path)

    def mark_fairness(self, version: int, reasons: list[str], run_id: str) -> str | None:
        return mark_fairness(self.uc, version, reasons, run_id)

    def lineage(self, version: int | None = None, alias: str | None = None) -> dict[str, Any]:
        return lineage(self.uc, version=version, alias=alias)

    def where(self) -> list[str]:
        uri = self.tracking_uri
        where = f"; artifacts under {runtime.home() / 'mlflow' / 'artifacts'}" if uri.startswith("sqlite") else ""
        return [f"MLflow tracking: {uri}{where}"]
