"""What a step sees of the run it is part of, handed in by the orchestrator.

Steps are plain functions ``step(ctx, **inputs) -> result``. Everything they need from the run -
the use case, who is writing (lineage), the run's Params, the data interval, the Asset events
that triggered it, the backends of the use case's target - comes in a :class:`StepContext`. The
Airflow builder makes one from the task's context; tests and the CLI make one directly. Nothing
below the Airflow package calls ``get_current_context()``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from mlblueprints.config import UseCase
from mlblueprints.core import service
from mlblueprints.lineage import RunInfo

log = logging.getLogger(__name__)


@dataclass
class StepContext:
    uc: UseCase
    run: RunInfo
    params: Mapping[str, Any] = field(default_factory=dict)
    interval_start: datetime | date | None = None
    interval_end: datetime | date | None = None
    # the Asset events that triggered the run: asset name -> list of their ``extra`` dicts
    triggering: Mapping[str, list[dict[str, Any]]] = field(default_factory=dict)
    # makes the aws runtime (session, clients) of the use case when a backend needs one
    runtime_factory: Callable[[], Any] | None = None
    emitted: dict[str, dict[str, Any]] = field(default_factory=dict)
    # for a step that collects the others' results (run reports): why a step has none
    failures: dict[str, str] = field(default_factory=dict)
    _runtime: Any = None

    def backend(self, capability: str, **key: Any) -> Any:
        """The use case's backend for ``capability`` (chosen by :func:`mlblueprints.backends.backend_for`)."""
        from mlblueprints.backends import backend_for

        return backend_for(self.uc, capability, lambda: self.runtime, **key)  # made only for an aws backend

    @property
    def runtime(self) -> Any:
        if self._runtime is None and self.runtime_factory is not None:
            self._runtime = self.runtime_factory()
        return self._runtime

    def emit(self, asset: str, extra: dict[str, Any]) -> None:
        """Attach ``extra`` to the event of an Asset the step emits (what changed, for the DAGs
        scheduled on it)."""
        self.emitted[asset] = dict(extra)

    def then(self, value: Any, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """Apply ``fn(ctx, result, **kwargs)`` to a backend's result: now when it is a result, after
        the job when it is a :class:`~mlblueprints.core.service.ServiceCall`."""
        if isinstance(value, service.ServiceCall):
            value.then = service.qualified_name(fn)
            value.then_kwargs = dict(kwargs)
            return value
        return fn(self, value, **kwargs)

    def triggering_extras(self) -> list[dict[str, Any]]:
        return [e for events in self.triggering.values() for e in events if e is not None]


def date_list(value: Any) -> list[date]:
    """A date Param (a list of ``YYYY-MM-DD`` or one comma/space separated string) -> sorted dates."""
    if not value:
        return []
    if isinstance(value, str):
        value = [s for s in value.replace(",", " ").split() if s]
    return sorted({v if isinstance(v, date) else date.fromisoformat(str(v)) for v in value})
