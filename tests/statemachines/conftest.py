"""Fixtures of the state machine tests; the harness is in ``sfn_harness.py``."""

from sfn_harness import sfn_world  # noqa: F401 - a fixture
