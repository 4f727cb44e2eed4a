"""Which registered model a candidate is compared with (the gate's reference model).

The champion (alias ``champion``) when there is one. With no champion - a use case that does not
promote (``promote: false``, no canary yet) - the newest registered version: a candidate that is
worse than the version registered before it is not registered, even though no version was ever
made champion. ``None`` only when nothing is registered yet; the gate then compares the
candidate with the baseline alone (:func:`mlblueprints.training.evaluate.gate`).

Versions the current run registered itself (tag ``mlb.run_id``) are skipped, so a retried or
re-run evaluation never compares a candidate with its own registration. Versions MLflow did not
finish registering (status other than ``READY``) are skipped too.

Works with any MLflow client (the local SQLite store or a SageMaker managed tracking server):
pass the client and the model name, or a use case (its tracking server and model name).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

CHAMPION = "champion"
RUN_ID_TAG = "mlb.run_id"
_PAGE = 100


@dataclass(frozen=True)
class ReferenceModel:
    """The registered version a candidate is judged against."""

    model_name: str
    version: int
    kind: str  # "champion" or "newest"
    run_id: str | None  # the MLflow run that logged it

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}/{self.version}"

    @property
    def label(self) -> str:
        """How the gate names it (``GateDecision.against``)."""
        if self.kind == "champion":
            return f"champion v{self.version}"
        return f"v{self.version} (newest registered version; no champion)"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model_uri": self.model_uri, "label": self.label}


def _client_and_name(target: Any, model_name: str | None) -> tuple[Any, str]:
    from mlblueprints.config import UseCase

    if isinstance(target, UseCase):
        from mlblueprints.registry.local import client

        return client(target), model_name or target.model_name
    if model_name is None:
        raise TypeError("reference_model(client, model_name): give the registered model's name")
    return target, model_name


def _own(mv: Any, exclude_run_id: str | None) -> bool:
    return exclude_run_id is not None and (mv.tags or {}).get(RUN_ID_TAG) == exclude_run_id


def reference_model(
    target: Any, model_name: str | None = None, *, exclude_run_id: str | None = None
) -> ReferenceModel | None:
    """The champion, else the newest registered version, else None.

    ``target`` is an ``MlflowClient`` (then ``model_name`` is required) or a
    :class:`~mlblueprints.config.UseCase` (its registry and ``model_name``). ``exclude_run_id``
    is the Airflow run id of the current training run: versions tagged with it are skipped.
    """
    from mlflow.exceptions import MlflowException

    client, name = _client_and_name(target, model_name)
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no such model, or no champion alias
        champ = None
    if champ is not None and not _own(champ, exclude_run_id):
        return ReferenceModel(name, int(champ.version), "champion", champ.run_id)

    newest = None
    token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", max_results=_PAGE, page_token=token)
        for mv in page:
            if str(getattr(mv, "status", "READY")) != "READY" or _own(mv, exclude_run_id):
                continue
            if newest is None or int(mv.version) > int(newest.version):
                newest = mv
        token = getattr(page, "token", None)
        if not token:
            break
    if newest is None:
        return None
    return ReferenceModel(name, int(newest.version), "newest", newest.run_id)


def load_reference_booster(uc: Any, ref: ReferenceModel) -> Any:
    """The XGBoost booster of ``ref``, from the registry of the use case ``uc``."""
    import mlflow.xgboost

    from mlblueprints.registry.local import client

    client(uc)  # points mlflow's registry URI at the use case's store
    return mlflow.xgboost.load_model(ref.model_uri)
