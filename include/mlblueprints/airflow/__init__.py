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


def report_broken_usecases(usecases_dir: Path | None = None) -> None:
    """Raise one error naming every use-case YAML that does not load (one line per problem), so
    Airflow lists them among its import errors (``airflow dags list-import-errors``, the UI's
    banner) - from a DAG file of their own, so that the pattern DAG files keep the other use
    cases. Nothing happens when every YAML loads."""
    directory = Path(os.environ.get("MLB_USECASES_DIR") or usecases_dir or runtime.usecases_dir())
    _, errors = load_usecases(directory)
    if errors:
        lines = [line for err in errors for line in str(err).splitlines()]
        raise BrokenUseCases(f"{len(errors)} use case(s) in {directory} do not load:\n" + "\n".join(lines))


class BrokenUseCases(Exception):
    """Use-case YAMLs that do not load; the message has one line per problem."""


async def logged_in_user(request: Any) -> Any | None:
    """The Airflow user logged in on a request to an app the API server mounts (the reports
    view): the UI's session cookie or a bearer token, checked by the API server's auth manager;
    None when there is none or it may not see the website."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import HTTPException
    from fastapi.security import HTTPAuthorizationCredentials

    auth = request.headers.get("authorization", "")
    bearer = (
        HTTPAuthorizationCredentials(scheme="Bearer", credentials=auth[7:]) if auth[:7].lower() == "bearer " else None
    )
    try:
        user = await get_user(request, None, bearer)
    except HTTPException:
        return None
    if not get_auth_manager().is_authorized_view(access_view=AccessView.WEBSITE, user=user):
        return None
    return user
