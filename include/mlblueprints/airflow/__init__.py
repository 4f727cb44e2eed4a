"""Airflow integration: the one builder that renders pattern declarations into DAGs, the
provider operators of the aws service steps, the connection runtime, and the local runner.
The only package that imports Airflow."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.config import load_usecases

log = logging.getLogger(__name__)


class UseCaseConfigWarning(UserWarning):
    """A use-case YAML could not be loaded; the message is file: field: reason."""


def register_dags(namespace: MutableMapping[str, Any], pattern: str, usecases_dir: Path | None = None) -> list[str]:
    """Build the DAG of ``pattern`` for every use case into a DAG file's globals; report bad YAMLs,
    keep the rest. ``MLB_USECASES_DIR`` overrides the directory (tests use it)."""
    from mlblueprints.airflow.builder import build_dag
    from mlblueprints.patterns import declare

    directory = Path(os.environ.get("MLB_USECASES_DIR") or usecases_dir or runtime.usecases_dir())
    usecases, errors = load_usecases(directory)
    for err in errors:
        log.error("%s", err)
        warnings.warn(str(err), UseCaseConfigWarning, stacklevel=2)
    built = []
    for uc in usecases:
        try:
            spec = declare(pattern, uc)
            if spec is None:  # the pattern does not apply to this use case (e.g. no feature views)
                continue
            dag = build_dag(spec, uc)
        except Exception as exc:  # one broken use case must not hide the others
            msg = f"{uc.source_path}: <{pattern}>: {type(exc).__name__}: {exc}"
            log.error("%s", msg)
            warnings.warn(msg, UseCaseConfigWarning, stacklevel=2)
            continue
        namespace[dag.dag_id] = dag
        built.append(dag.dag_id)
    return built
