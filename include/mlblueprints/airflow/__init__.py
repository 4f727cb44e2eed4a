"""Airflow integration: DAG factories and operators. The only package that imports Airflow."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from mlblueprints.config import UseCase, load_usecases

log = logging.getLogger(__name__)


class UseCaseConfigWarning(UserWarning):
    """A use-case YAML could not be loaded; the message is file: field: reason."""


def register_dags(
    namespace: MutableMapping[str, Any], factory: Callable[[UseCase], Any | None], usecases_dir: Path
) -> list[str]:
    """Build one DAG per use case into a DAG file's globals; report bad YAMLs, keep the rest.

    ``MLB_USECASES_DIR`` overrides the directory (tests use it).
    """
    directory = Path(os.environ.get("MLB_USECASES_DIR") or usecases_dir)
    usecases, errors = load_usecases(directory)
    for err in errors:
        log.error("%s", err)
        warnings.warn(str(err), UseCaseConfigWarning, stacklevel=2)
    built = []
    for uc in usecases:
        try:
            dag = factory(uc)
        except Exception as exc:  # one broken use case must not hide the others
            msg = f"{uc.source_path}: <dag>: {type(exc).__name__}: {exc}"
            log.error("%s", msg)
            warnings.warn(msg, UseCaseConfigWarning, stacklevel=2)
            continue
        if dag is None:  # the pattern does not apply to this use case (e.g. no feature views)
            continue
        namespace[dag.dag_id] = dag
        built.append(dag.dag_id)
    return built
