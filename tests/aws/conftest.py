"""Fixtures of the aws tests; what they build is in ``moto_world.py``."""

from __future__ import annotations

import pytest
from moto_world import moto_world_fixture, patch_moto_like_sagemaker


@pytest.fixture
def moto_world(monkeypatch, tmp_path):
    """In-process moto plus a moto server behind the Airflow AWS connection (one state)."""
    yield from moto_world_fixture(monkeypatch, tmp_path)


@pytest.fixture
def sagemaker_like_aws(monkeypatch):
    """moto's feature groups patched where moto differs from SageMaker."""
    patch_moto_like_sagemaker(monkeypatch)
