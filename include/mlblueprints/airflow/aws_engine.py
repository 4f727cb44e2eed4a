"""The aws target as seen from a task: the lakehouse steps with Athena run by ``AthenaOperator``.

:class:`AwsLakehouse` has the same step functions as ``mlblueprints.lakehouse.local`` and hands
``mlblueprints.lakehouse.aws`` an :class:`~mlblueprints.lakehouse.aws.AwsRuntime` built from the
Airflow AWS connection of the use case: each statement runs through the Amazon provider's
``AthenaOperator`` (polling until done, cancelling the query if the task is killed), with a
client request token unique per run, task, try and statement.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from airflow.providers.amazon.aws.hooks.athena import AthenaHook
from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from airflow.providers.amazon.aws.operators.athena import AthenaOperator
from airflow.sdk import get_current_context

from mlblueprints.aws import requests as req
from mlblueprints.config import UseCase

log = logging.getLogger(__name__)


def rows_from_results(response: dict[str, Any]) -> list[dict[str, Any]]:
    """GetQueryResults -> list of {column: text}; drops the header row Athena puts first."""
    rs = response.get("ResultSet", {})
    cols = [c["Name"] for c in rs.get("ResultSetMetadata", {}).get("ColumnInfo", [])]
    rows = [[d.get("VarCharValue") for d in r.get("Data", [])] for r in rs.get("Rows", [])]
    if rows and rows[0] == cols:
        rows = rows[1:]
    return [dict(zip(cols, r)) for r in rows]


class AwsLakehouse:
    """Step functions of the lakehouse on the aws target, bound to the running task."""

    def __init__(self, uc: UseCase):
        assert uc.aws is not None
        self.uc = uc
        self.aws = uc.aws
        # seconds between polls of a running query (tests set 0)
        self.poll_seconds = float(os.environ.get("MLB_ATHENA_POLL_SECONDS", "5"))

    def runtime(self) -> Any:
        from mlblueprints.lakehouse.aws import AwsRuntime

        ctx = get_current_context()
        ti = ctx["ti"]
        aws = self.aws
        hook = AwsBaseHook(aws_conn_id=aws.aws_conn_id, region_name=aws.region)
        athena = AthenaHook(aws_conn_id=aws.aws_conn_id, region_name=aws.region, log_query=False)

        def run_query(stmt: Any) -> str:
            token = req.client_request_token(ctx["run_id"], ti.task_id, ti.try_number, stmt.name)
            op = AthenaOperator(
                task_id=f"{ti.task_id}__{stmt.name}",
                query=stmt.sql,
                database=aws.glue_database,
                output_location=aws.results_uri,
                workgroup=aws.athena_workgroup,
                client_request_token=token,
                result_configuration={
                    "EncryptionConfiguration": req.athena_result_configuration(aws)["EncryptionConfiguration"]
                },
                aws_conn_id=aws.aws_conn_id,
                region_name=aws.region,
                sleep_time=self.poll_seconds,
                log_query=False,
            )
            log.info("athena %s (%d characters of SQL)", stmt.name, len(stmt.sql))
            return op.execute(ctx)

        def fetch_rows(query_execution_id: str) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            paginator = athena.get_conn().get_paginator("get_query_results")
            for page in paginator.paginate(QueryExecutionId=query_execution_id):
                out += rows_from_results(page)
            return out

        return AwsRuntime(session=hook.get_session(region_name=aws.region), run_query=run_query, fetch_rows=fetch_rows)

    # the same signatures as mlblueprints.lakehouse.local
    def ingest_bronze(self, uc: UseCase, dataset: str, dates: list, run: Any) -> dict[str, Any]:
        from mlblueprints.lakehouse import aws

        return aws.ingest_bronze(uc, dataset, dates, run, self.runtime())

    def build_silver(self, uc: UseCase, dataset: str, dates: list, run: Any) -> dict[str, Any]:
        from mlblueprints.lakehouse import aws

        return aws.build_silver(uc, dataset, dates, run, self.runtime())

    def build_gold(self, uc: UseCase, gold: str, touched: dict, run: Any) -> dict[str, Any]:
        from mlblueprints.lakehouse import aws

        return aws.build_gold(uc, gold, touched, run, self.runtime())

    def reconcile(self, uc: UseCase, silvers: list, ingests: list) -> dict[str, Any]:
        from mlblueprints.lakehouse import aws

        return aws.reconcile(uc, silvers, ingests, self.runtime())

    def compact(self, uc: UseCase, run: Any) -> dict[str, Any]:
        from mlblueprints.lakehouse import aws

        return aws.compact(uc, run, self.runtime())

    def gate(self, uc: UseCase, table: str, layer: str, scope: dict, run: Any) -> Any:
        from mlblueprints.lakehouse import aws

        return aws.gate(uc, table, layer, scope, run, self.runtime())
