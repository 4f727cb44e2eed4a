"""Check a use case's quality suites before anything runs: ``mlblueprints check-config`` and the
gates themselves.

* every gate the use case has (Bronze and Silver per data set, Gold per table; a suite name of
  ``""`` switches a gate off) has its suite file;
* every expectation type is one the installed Great Expectations registers, and its arguments
  are ones that expectation accepts (Great Expectations' own validation of the expectation);
* every column an expectation names is a column of the table it checks: the data set's schema
  plus the Bronze metadata columns (Bronze) or the lineage columns and ``event_date`` (Silver),
  or an output column of the Gold SQL (read with sqlglot, nothing runs) plus ``event_date``.

Each problem is one line: ``<suite file>: expectations[<i>] <type>(<column>): <problem>``.
Great Expectations is imported on first use (not at DAG parse time).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from mlblueprints.config import UseCase
from mlblueprints.quality.suites import SuiteError, load_suite, suite_path

# arguments that name one column, and arguments that name several
COLUMN_ARGS = ("column", "column_A", "column_B")
COLUMN_LIST_ARGS = ("column_list", "column_set")
# expectations that compare a column with numbers: DuckDB refuses them on a BOOLEAN column
# ("Cannot compare values of type BOOLEAN and type DOUBLE", no avg of BOOLEAN)
NUMERIC_ONLY = ("_mean_", "_median_", "_stdev_", "_quantile_", "values_to_be_between", "z_scores")
# Great Expectations builds no regular-expression or LIKE condition for the DuckDB dialect
NOT_ON_DUCKDB = {"regex": "regular expressions", "like_pattern": "LIKE patterns"}


@cache
def expectation_types() -> frozenset[str]:
    """Every expectation type the installed Great Expectations registers."""
    from great_expectations.expectations.registry import (
        list_registered_expectation_implementations,
        register_core_expectations,
    )

    register_core_expectations()
    return frozenset(list_registered_expectation_implementations())


@cache
def unavailable_reason(etype: str) -> str | None:
    """Why the gates cannot evaluate ``etype`` (they run Great Expectations' SQL engine on
    DuckDB), or None: a metric with no SQL implementation in the installed Great Expectations
    (read from its metric registry), or a condition it does not build for DuckDB."""
    from great_expectations.exceptions import MetricProviderError
    from great_expectations.expectations.registry import (
        get_expectation_impl,
        get_sqlalchemy_metric_provider,
        register_core_metrics,
    )

    for word, what in NOT_ON_DUCKDB.items():
        if word in etype:
            return f"not available on DuckDB (Great Expectations has no {what} for it)"
    register_core_metrics()
    cls = get_expectation_impl(etype)
    metrics = [f"{cls.map_metric}.condition"] if getattr(cls, "map_metric", None) else []
    metrics += list(getattr(cls, "metric_dependencies", ()) or ())
    for m in metrics:
        try:
            get_sqlalchemy_metric_provider(m)
        except MetricProviderError as exc:
            if "No provider found" in str(exc):
                return (
                    f"not available on the SQL engine the gates use "
                    f"(Great Expectations computes {m} only in pandas or Spark)"
                )
    return None


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _label(i: int, e: dict[str, Any]) -> str:
    kw = e.get("kwargs") if isinstance(e.get("kwargs"), dict) else {}
    target = kw.get("column") or kw.get("column_A") or kw.get("column_list") or kw.get("column_set")
    t = str(e.get("type", "?"))
    if isinstance(target, list):
        target = ",".join(map(str, target))
    return f"expectations[{i}] {t}" + (f"({target})" if target else "")


def _argument_problems(etype: str, kwargs: dict[str, Any]) -> list[str]:
    """What Great Expectations says about these arguments of ``etype`` (empty when fine)."""
    import pydantic.v1 as pv1
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration
    from great_expectations.expectations.registry import get_expectation_impl

    try:
        ExpectationConfiguration(type=etype, kwargs=dict(kwargs)).to_domain_obj()
    except pv1.ValidationError as exc:
        known = [f for f in get_expectation_impl(etype).__fields__ if f not in ("id", "rendered_content", "windows")]
        out: dict[str, str] = {}
        errors = exc.errors()
        # a required argument given under a misspelt name: reported once, as the unknown one
        meant = {
            m
            for err in errors
            if err["type"] == "value_error.extra" and err["loc"]
            for m in difflib.get_close_matches(str(err["loc"][0]), known, n=1, cutoff=0.6)
        }
        for err in errors:
            where = str(err["loc"][0]) if err["loc"] else "__root__"
            if where in out:
                continue  # the first reason per argument (pydantic lists one per accepted type)
            if err["type"] == "value_error.extra":
                out[where] = f"unknown argument {where!r}{_did_you_mean(where, known)}"
            elif err["type"] == "value_error.missing" and where in meant:
                continue
            elif err["type"] == "value_error.missing":
                out[where] = f"missing argument {where!r}"
            elif where == "__root__":
                out[where] = err["msg"]
            else:
                out[where] = f"argument {where!r}: {err['msg']}"
        return list(out.values())
    except Exception as exc:  # noqa: BLE001 - Great Expectations' configuration errors
        return [f"{type(exc).__name__}: {exc}"]
    return []


def expectation_problems(
    spec: dict[str, Any],
    path: Path | str,
    columns: Iterable[str] | None = None,
    types: Mapping[str, str] | None = None,
) -> list[str]:
    """Problems of a loaded suite (:func:`~mlblueprints.quality.suites.load_suite`): unknown
    expectation types, arguments Great Expectations rejects, expectations the gates' engine
    cannot evaluate and, when ``columns`` is given, columns the checked table does not have
    (with ``types``, column -> type, numeric checks of boolean columns). One line each."""
    known = expectation_types()
    cols = list(columns) if columns is not None else None
    lines = []
    for i, e in enumerate(spec.get("expectations", [])):
        where = f"{path}: {_label(i, e)}"
        etype = str(e.get("type", ""))
        if etype not in known:
            lines.append(f"{where}: unknown expectation type{_did_you_mean(etype, known)}")
            continue
        why = unavailable_reason(etype)
        if why:
            lines.append(f"{where}: {why}")
        kwargs = e.get("kwargs") or {}
        for p in _argument_problems(etype, kwargs):
            lines.append(f"{where}: {p}")
        if cols is None:
            continue
        named: list[tuple[str, Any]] = [(a, kwargs[a]) for a in COLUMN_ARGS if isinstance(kwargs.get(a), str)]
        for a in COLUMN_LIST_ARGS:
            if isinstance(kwargs.get(a), list):
                named += [(a, c) for c in kwargs[a]]
        for arg, col in named:
            if (
                types
                and str(types.get(col, "")).lower() in ("boolean", "bool")
                and any(w in etype for w in NUMERIC_ONLY)
            ):
                lines.append(
                    f"{where}: column {col!r} is boolean and {etype} compares numbers; use "
                    f"expect_column_values_to_be_in_set, or check the rate on CAST({col} AS INTEGER) in the Gold SQL"
                )
            if col not in cols:
                lines.append(
                    f"{where}: {arg} {col!r} is not a column of the table{_did_you_mean(str(col), cols)} "
                    f"(columns: {', '.join(cols)})"
                )
    return lines


def gates(uc: UseCase) -> list[tuple[str, str, str, str]]:
    """Every gate of the use case that has a suite: ``(table, layer, suite name, YAML field)``."""
    out = []
    for ds in uc.datasets:
        for layer in ("bronze", "silver"):
            name = uc.suite_name(ds, layer)
            if name is not None:
                out.append((ds, layer, name, f"datasets.{ds}.quality.{layer}"))
    for g in uc.gold:
        name = uc.suite_name(g, "gold")
        if name is not None:
            out.append((g, "gold", name, f"gold.{g}.quality"))
    if uc.scoring is not None and uc.training is not None:
        name = uc.scoring_suite()
        if name is not None:
            out.append((uc.scoring.output_table, "scoring", name, "scoring.quality"))
    return out


def table_columns(uc: UseCase, table: str, layer: str) -> list[str]:
    """The columns the gate of ``table`` at ``layer`` sees. Gold: the Gold SQL's output columns
    (raises ``ValueError`` when sqlglot cannot read them) plus ``event_date``."""
    from mlblueprints.lakehouse import sqlgen

    if layer == "bronze":
        return [c.name for c in uc.datasets[table].columns] + list(sqlgen.BRONZE_META)
    if layer == "silver":
        return sqlgen.silver_columns(uc.datasets[table])
    if layer == "scoring":  # the predictions table (mlblueprints.scoring.core.output_columns)
        from mlblueprints.scoring.core import output_columns

        keys = [(k, "string") for k in uc.scoring_rows()["keys"]]
        return [c for c, _ in output_columns(uc.training.task if uc.training else "binary", keys)]
    out = sqlgen.output_columns(uc.gold_sql_path(table).read_text())
    return out + ([] if "event_date" in out else ["event_date"])


def check_usecase_suites(uc: UseCase, directory: Path | None = None) -> list[str]:
    """Every suite problem of a use case, one line each (empty: all suites are fine)."""
    lines = []
    for table, layer, name, field in gates(uc):
        try:
            spec = load_suite(name, directory)
        except SuiteError as exc:
            msg = str(exc)
            if "not found" in msg:
                msg = (
                    f"{suite_path(name, directory)}: missing: the {layer} gate of {table} needs suite {name!r} "
                    f"({uc.source_path}: {field}); write starter suites with: mlblueprints suites init {uc.name}"
                )
            lines.append(msg)
            continue
        try:
            cols: list[str] | None = table_columns(uc, table, layer)
        except Exception:  # noqa: BLE001 - an unreadable Gold SQL is reported by the feature checks
            cols = None
        types = {c.name: c.type for c in uc.datasets[table].columns} if layer == "silver" else None
        if layer == "scoring":  # decision is 0/1 (binary) or a class: never boolean
            types = None
        lines += expectation_problems(spec, suite_path(name, directory), cols, types)
    return lines


def check_suite_for_table(name: str, types: Mapping[str, str], directory: Path | None = None) -> dict[str, Any]:
    """Load the suite ``name`` and check it against a table whose columns and types are
    ``types`` (the gate does this before running anything); raise :class:`SuiteError` listing
    every problem."""
    spec = load_suite(name, directory)
    lines = expectation_problems(spec, suite_path(name, directory), list(types), types)
    if lines:
        raise SuiteError("\n".join(lines))
    return spec
