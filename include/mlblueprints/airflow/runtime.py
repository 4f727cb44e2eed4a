"""The aws runtime of a task: every client made from the use case's Airflow AWS connection.

Credentials, region, ``endpoint_url`` (VPC endpoints, a test double) and botocore config of the
connection apply to every client the project makes on the aws target.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

from mlblueprints.aws.session import AwsRuntime
from mlblueprints.config import UseCase


def connection_runtime(uc: UseCase) -> AwsRuntime:
    aws = uc.aws_settings

    def make(service: str, config: Any) -> Any:
        return AwsBaseHook(aws_conn_id=aws.aws_conn_id, region_name=aws.region, client_type=service, config=config).conn

    session = AwsBaseHook(aws_conn_id=aws.aws_conn_id, region_name=aws.region).get_session(region_name=aws.region)
    return AwsRuntime(region=aws.region, client_factory=make, session=session, expected_bucket_owner=aws.account_id)
