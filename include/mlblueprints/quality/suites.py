"""Great Expectations suites in ``expectations/``: one JSON file per data set and layer.

A suite file is the JSON form of a Great Expectations 1.x ``ExpectationSuite``::

    {"name": "fraud_detection/transactions.silver",
     "expectations": [
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "transaction_id"},
         "severity": "critical", "meta": {"why": "..."}}]}

``severity`` is Great Expectations' own field: ``critical`` (an *error*: the gate fails and stops
everything downstream), ``warning`` (recorded, the run continues) or ``info``. An expectation
without one is ``critical``. This module only reads and checks the files' shape (no GE import);
:mod:`mlblueprints.quality.check` checks expectation types, arguments and columns against the
installed Great Expectations and the use case.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.errors import PermanentError

SEVERITIES = ("critical", "warning", "info")


class SuiteError(PermanentError, ValueError):
    """A suite that is missing or cannot be run as written: a configuration error (a retry
    cannot fix it). ``str(err)`` is one line per problem, each naming the file and, where there
    is one, the expectation."""


def suite_path(name: str, directory: Path | None = None) -> Path:
    """``<expectations>/<name>.json``; a name that would leave the expectations folder (``..``,
    an absolute path, a link pointing outside) is a :class:`SuiteError`."""
    from mlblueprints.config import check_suite_name

    root = directory or runtime.expectations_dir()
    try:
        check_suite_name(name)
    except ValueError as exc:
        raise SuiteError(f"{root}: {exc}") from None
    path = root / f"{name}.json"
    if not path.resolve().is_relative_to(root.resolve()):
        raise SuiteError(f"{path}: suite {name!r} resolves outside {root}")
    return path


def load_suite(name: str, directory: Path | None = None) -> dict[str, Any]:
    """Read and check a suite file; errors name the file and the expectation."""
    path = suite_path(name, directory)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SuiteError(
            f"{path}: suite {name!r} not found (starter suites: mlblueprints suites init <usecase>)"
        ) from None
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except UnicodeDecodeError:
        raise SuiteError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("expectations"), list):
        raise SuiteError(f"{path}: expected an object with an 'expectations' list")
    if data.get("name") not in (None, name):
        raise SuiteError(f"{path}: name {data.get('name')!r} does not match the file ({name!r})")
    data["name"] = name
    for i, e in enumerate(data["expectations"]):
        where = f"{path}: expectations[{i}]"
        if not isinstance(e, dict) or not str(e.get("type", "")).startswith("expect_"):
            raise SuiteError(f"{where}: needs a 'type' naming a Great Expectations expectation")
        if not isinstance(e.get("kwargs", {}), dict):
            raise SuiteError(f"{where}: 'kwargs' must be an object")
        sev = e.setdefault("severity", "critical")
        if sev not in SEVERITIES:
            raise SuiteError(f"{where}: severity {sev!r} is not one of {SEVERITIES}")
    return data
