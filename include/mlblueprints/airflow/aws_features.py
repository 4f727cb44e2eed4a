"""The aws target of feature materialization as seen from a task: SageMaker Feature Store.

:class:`AwsFeatures` has the same step functions as ``mlblueprints.features.local`` and hands
``mlblueprints.features.aws`` the :class:`~mlblueprints.lakehouse.aws.AwsRuntime` of
:class:`~mlblueprints.airflow.aws_engine.AwsLakehouse` (Athena statements through the Amazon
provider's ``AthenaOperator``, with a client request token unique per run, task, try and
statement), plus ``sagemaker`` and ``sagemaker-featurestore-runtime`` clients made from the
same Airflow AWS connection's boto3 session.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

from mlblueprints.airflow.aws_engine import AwsLakehouse
from mlblueprints.config import UseCase


class AwsFeatures:
    """Feature-view steps on the aws target, bound to the running task."""

    def __init__(self, uc: UseCase):
        assert uc.aws is not None
        self.uc = uc
        self.aws = uc.aws
        self.lakehouse = AwsLakehouse(uc)

    def runtime(self) -> Any:
        """The lakehouse's AwsRuntime of the running task (Athena via AthenaOperator)."""
        return self.lakehouse.runtime()

    def clients(self, session: Any) -> tuple[Any, Any]:
        """(sagemaker, sagemaker-featurestore-runtime) clients of the connection's session."""
        from mlblueprints.features import aws

        return aws.clients(session, self.uc)

    def session(self) -> Any:
        hook = AwsBaseHook(aws_conn_id=self.aws.aws_conn_id, region_name=self.aws.region)
        return hook.get_session(region_name=self.aws.region)

    # the same signatures as mlblueprints.features.local
    def materialize(self, uc: UseCase, view: str, lo: date, hi: date, run: Any) -> dict[str, Any]:
        from mlblueprints.features import aws

        rt = self.runtime()
        sm, fs = self.clients(rt.session)
        return aws.materialize(uc, view, lo, hi, run, rt, sm=sm, fs=fs)

    def get_online_features(
        self, uc: UseCase, view: str, keys: list[Any], as_of: datetime | None = None
    ) -> list[dict[str, Any] | None]:
        from mlblueprints.features import aws

        return aws.get_online_features(uc, view, keys, as_of, session=self.session())
