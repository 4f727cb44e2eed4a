"""The aws runtime a backend receives: clients made in one place, with the connection's settings.

In an Airflow task the runtime is built from the use case's Airflow AWS connection
(``mlblueprints.airflow.runtime``: credentials, region, ``endpoint_url`` and botocore config of
the connection apply to every client the project makes); in a test or a script from a boto3
session (:func:`boto3_runtime`). Backends never make clients of their own.

Bucket ownership: every S3 request of the runtime's S3 clients carries ``ExpectedBucketOwner``
(the use case's ``aws.account_id``), so S3 refuses the call (403) when the bucket has changed
hands, whatever the operation (paginators and the transfer manager's ranged GETs included).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlblueprints.config import UseCase


def with_owner(s3: Any, account_id: str) -> Any:
    """Make every request of an S3 client that has the parameter carry ``ExpectedBucketOwner``.

    A botocore ``before-parameter-build`` handler: it sees the parameters of each operation
    (direct calls, paginators, the transfer manager's calls alike) before they are serialized,
    and adds the owner unless the caller set one.
    """

    def add_owner(params: dict[str, Any], model: Any, **_: Any) -> None:
        if "ExpectedBucketOwner" in model.input_shape.members:
            params.setdefault("ExpectedBucketOwner", account_id)

    s3.meta.events.register("before-parameter-build.s3", add_owner, unique_id="mlblueprints-expected-bucket-owner")
    return s3


def rows_from_results(response: dict[str, Any]) -> list[dict[str, Any]]:
    """GetQueryResults -> list of {column: text}; drops the header row Athena puts first."""
    rs = response.get("ResultSet", {})
    cols = [c["Name"] for c in rs.get("ResultSetMetadata", {}).get("ColumnInfo", [])]
    rows = [[d.get("VarCharValue") for d in r.get("Data", [])] for r in rs.get("Rows", [])]
    if rows and rows[0] == cols:
        rows = rows[1:]
    return [dict(zip(cols, r)) for r in rows]


@dataclass
class AwsRuntime:
    """Clients of one AWS identity and region. ``client_factory(service, config)`` makes a client
    (``config``: a botocore ``Config`` or None)."""

    region: str
    client_factory: Callable[[str, Any], Any]
    session: Any = None  # the boto3 session behind the clients, where there is one
    athena_poll_seconds: float = field(default_factory=lambda: float(os.environ.get("MLB_ATHENA_POLL_SECONDS", "5")))
    sagemaker_poll_seconds: float = field(
        default_factory=lambda: float(os.environ.get("MLB_SAGEMAKER_POLL_SECONDS", "30"))
    )
    expected_bucket_owner: str | None = None  # the account that must own every bucket we call
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    def client(self, service: str, config: Any = None) -> Any:
        """A client of ``service`` (cached; a ``config`` makes a new, uncached one)."""
        if config is not None:
            return self._checked(service, self.client_factory(service, config))
        if service not in self._clients:
            self._clients[service] = self._checked(service, self.client_factory(service, None))
        return self._clients[service]

    def _checked(self, service: str, client: Any) -> Any:
        if service == "s3" and self.expected_bucket_owner:
            with_owner(client, self.expected_bucket_owner)
        return client

    def fetch_rows(self, query_execution_id: str) -> list[dict[str, Any]]:
        """Every result row of a finished Athena query, as {column: text}."""
        out: list[dict[str, Any]] = []
        for page in (
            self.client("athena").get_paginator("get_query_results").paginate(QueryExecutionId=query_execution_id)
        ):
            out += rows_from_results(page)
        return out


def boto3_runtime(uc: UseCase, session: Any = None, endpoint_url: str | None = None) -> AwsRuntime:
    """A runtime from a boto3 session (default: one of the use case's region)."""
    import boto3

    if uc.aws is None:
        raise ValueError(f"{uc.name}: the aws section is required")
    region = uc.aws.region
    session = session or boto3.Session(region_name=region)

    def make(service: str, config: Any) -> Any:
        kw: dict[str, Any] = {"region_name": region}
        if endpoint_url:
            kw["endpoint_url"] = endpoint_url
        if config is not None:
            kw["config"] = config
        return session.client(service, **kw)

    return AwsRuntime(region=region, client_factory=make, session=session, expected_bucket_owner=uc.aws.account_id)
