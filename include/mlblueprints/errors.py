"""Errors every pattern shares.

:class:`PermanentError` marks a failure that a retry cannot fix: a configuration mistake (a
missing or invalid quality suite, a feature view that names a column Gold does not have), or
data that fails the same way every time (a quality gate, a reconciliation that does not add
up). The orchestration layer fails such a step at once, without retries, and shows its message
in the run summary; every other exception is treated as transient and retried.
"""

from __future__ import annotations


class PermanentError(Exception):
    """A failure that the same inputs reproduce: fail the step now, do not retry it."""


class StepSkipped(Exception):  # noqa: N818 - a signal, not an error
    """The step has nothing to do in this run (its message says why); downstream steps that need
    its result are skipped too, and an Asset it would emit is not emitted."""
