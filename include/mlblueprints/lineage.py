"""Lineage carried by everything a run writes: code commit, config hash, run ids, inputs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from mlblueprints import runtime
from mlblueprints.config import UseCase


@dataclass(frozen=True)
class RunInfo:
    """Who is writing: the Airflow run (or a CLI invocation) and the code and config it runs."""

    run_id: str
    dag_id: str = "cli"
    task_id: str = "cli"
    try_number: int = 1
    git_commit: str = field(default_factory=runtime.git_commit)
    config_hash: str = ""
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @classmethod
    def for_usecase(cls, uc: UseCase, **kw: object) -> RunInfo:
        return cls(config_hash=uc.config_hash(), **kw)  # type: ignore[arg-type]

    def snapshot_properties(self, **inputs: object) -> dict[str, str]:
        """Properties stored on each Iceberg snapshot a run commits."""
        props = {
            "mlb.run-id": self.run_id,
            "mlb.dag-id": self.dag_id,
            "mlb.task-id": self.task_id,
            "mlb.try-number": str(self.try_number),
            "mlb.git-commit": self.git_commit,
            "mlb.config-hash": self.config_hash,
        }
        for k, v in inputs.items():
            props[f"mlb.{k.replace('_', '-')}"] = (
                v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
            )
        return props

    def as_dict(self) -> dict[str, object]:
        return asdict(self)
