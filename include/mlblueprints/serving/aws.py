"""The endpoint capability on the aws target: a SageMaker real-time endpoint. Not built yet:
every method refuses in one line naming what is missing (docs/serving.md)."""

from __future__ import annotations

from typing import Any

from mlblueprints.config import UseCase
from mlblueprints.errors import PermanentError

NOT_BUILT = (
    "promotion on the aws target: the SageMaker endpoint (CreateEndpointConfig with data capture, "
    "UpdateEndpoint with a blue/green canary and CloudWatch alarm auto-rollback) is not built yet; "
    "the local endpoint is (docs/serving.md)"
)


class AwsEndpoint:
    def __init__(self, uc: UseCase, rt: Any):
        self.uc = uc
        self.rt = rt

    def _refuse(self, *_: Any, **__: Any) -> Any:
        raise PermanentError(f"{self.uc.name}: {NOT_BUILT}")

    ensure_running = serving = deploy = captures = deployments = replay_records = send = _refuse

    def where(self) -> list[str]:
        return [f"endpoint: {NOT_BUILT}"]
