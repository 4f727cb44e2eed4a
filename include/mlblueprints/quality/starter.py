"""Starter quality suites written from a use case's configuration: ``mlblueprints suites init``.

For every gate the use case has (a suite name of ``""`` switches a gate off):

* Bronze (every value still text, as landed): each schema column exists; every row traces back
  to its file and line (lineage not null, one row per file checksum and line); at most 1 % of
  the rows unparseable (warning); a partitioned data set lands at least one row (warning).
* Silver (typed): the primary key is unique and not null; each required column is not null;
  ``min``/``max`` as a range, ``allowed`` as a set, booleans are true or false - the same rules
  the Silver transform quarantines by, so a failure here means the transform is wrong, not the
  data; ``event_date`` not null and at least one row (warning) for a partitioned data set.
* Gold: every output column of the SQL exists, the primary key is unique and not null, the
  event time and ``event_date`` are not null, at least one row (warning).

They are a starting point: add what you know about your data (label rates, plausible means,
relations between columns) before you rely on them. Existing files are never overwritten
unless ``force`` is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlblueprints.config import Dataset, UseCase
from mlblueprints.quality.check import gates, table_columns
from mlblueprints.quality.suites import suite_path

GENERATED_BY = "mlblueprints suites init"


def _e(etype: str, severity: str = "critical", why: str | None = None, **kwargs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": etype, "kwargs": kwargs, "severity": severity}
    if why:
        out["meta"] = {"why": why}
    return out


def _unique(keys: list[str]) -> dict[str, Any]:
    why = "Silver holds one version per key."
    if len(keys) == 1:
        return _e("expect_column_values_to_be_unique", why=why, column=keys[0])
    return _e("expect_compound_columns_to_be_unique", why=why, column_list=list(keys))


def bronze_suite(uc: UseCase, name: str) -> list[dict[str, Any]]:
    ds = uc.datasets[name]
    out = []
    if ds.partition_by == "event_date":
        out.append(
            _e(
                "expect_table_row_count_to_be_between",
                "warning",
                "A landing day without rows usually means a producer did not deliver.",
                min_value=1,
            )
        )
    out += [_e("expect_column_to_exist", column=c) for c in table_columns(uc, name, "bronze")]
    lineage_why = "Every Bronze row must trace back to its file and line."
    for c in ("_source_file", "_file_checksum", "_line_number", "_ingest_time"):
        out.append(
            _e("expect_column_values_to_not_be_null", why=lineage_why if c == "_source_file" else None, column=c)
        )
    out.append(
        _e(
            "expect_compound_columns_to_be_unique",
            why="A physical record is ingested once.",
            column_list=["_file_checksum", "_line_number"],
        )
    )
    out.append(
        _e(
            "expect_column_values_to_be_null",
            "warning",
            "More than 1% unparseable records points at a broken producer.",
            column="_raw_record",
            mostly=0.99,
        )
    )
    return out


def silver_suite(uc: UseCase, name: str) -> list[dict[str, Any]]:
    ds: Dataset = uc.datasets[name]
    out = []
    if ds.partition_by == "event_date":
        out.append(_e("expect_table_row_count_to_be_between", "warning", min_value=1))
    out.append(_unique(ds.primary_key))
    not_null = list(dict.fromkeys([*ds.primary_key, ds.event_time, *(c.name for c in ds.columns if c.required)]))
    out += [_e("expect_column_values_to_not_be_null", column=c) for c in not_null]
    for c in ds.columns:
        if c.min is not None or c.max is not None:
            kw: dict[str, Any] = {"column": c.name}
            if c.min is not None:
                kw["min_value"] = c.min
            if c.max is not None:
                kw["max_value"] = c.max
            out.append(_e("expect_column_values_to_be_between", **kw))
        if c.allowed:
            out.append(_e("expect_column_values_to_be_in_set", column=c.name, value_set=list(c.allowed)))
        if c.type == "boolean":
            out.append(_e("expect_column_values_to_be_in_set", column=c.name, value_set=[True, False]))
    if ds.partition_by == "event_date":
        out.append(_e("expect_column_values_to_not_be_null", column="event_date"))
    return out


def gold_suite(uc: UseCase, name: str) -> list[dict[str, Any]]:
    g = uc.gold[name]
    out = [_e("expect_table_row_count_to_be_between", "warning", min_value=1)]
    out += [_e("expect_column_to_exist", column=c) for c in table_columns(uc, name, "gold")]
    out.append(_unique(g.primary_key))
    not_null = list(dict.fromkeys([*g.primary_key, g.event_time, "event_date"]))
    out += [_e("expect_column_values_to_not_be_null", column=c) for c in not_null]
    return out


def scoring_suite(uc: UseCase, table: str) -> list[dict[str, Any]]:
    """The predictions of an interval: lineage never null and, for a binary model, a 0/1 decision.
    The gate itself always checks one prediction per input row, unique keys and the score's range;
    bounds on the share flagged or the mean score depend on the model: add them once it has run."""
    out = [_e("expect_column_values_to_not_be_null", column=c) for c in ("event_time", "model_version")]
    if uc.training is not None and uc.training.task == "binary":  # gates() lists it only with training
        out.append(_e("expect_column_values_to_be_in_set", column="decision", value_set=[0, 1]))
    return out


def starter_suites(uc: UseCase) -> dict[str, dict[str, Any]]:
    """Suite name -> suite (the JSON form) for every gate of ``uc``."""
    build = {"bronze": bronze_suite, "silver": silver_suite, "gold": gold_suite, "scoring": scoring_suite}
    out = {}
    for table, layer, name, _field in gates(uc):
        meta = {
            "layer": layer,
            ("dataset" if layer in ("bronze", "silver") else "table"): table,
            "generated_by": GENERATED_BY,
        }
        out[name] = {"name": name, "meta": meta, "expectations": build[layer](uc, table)}
    return out


def write_starter_suites(uc: UseCase, directory: Path | None = None, force: bool = False) -> list[tuple[Path, str]]:
    """Write the starter suites; returns ``(path, "written" | "overwritten" | "kept")`` per suite
    (an existing file is kept unless ``force``)."""
    result = []
    for name, suite in starter_suites(uc).items():
        path = suite_path(name, directory)
        exists = path.exists()
        if exists and not force:
            result.append((path, "kept"))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(suite, indent=2) + "\n")
        tmp.replace(path)
        result.append((path, "overwritten" if exists else "written"))
    return result
