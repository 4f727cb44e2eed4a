"""Run a Great Expectations suite as a gate, on a DuckDB relation, with Data Docs.

Great Expectations runs with its SQL execution engine (SQLAlchemy, through ``duckdb_engine``)
against a DuckDB view of exactly the rows a run wrote: expectations compile to aggregate
queries that DuckDB streams over the Parquet files, so a gate costs seconds and bounded memory
even at millions of rows (the pandas engine would load them all).

Results and Data Docs HTML persist under ``<runtime>/quality`` (Great Expectations' filesystem
stores), so the Data Docs index lists every gate ever run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from mlblueprints.errors import PermanentError
from mlblueprints.quality.check import check_suite_for_table

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)

for _noisy in ("great_expectations", "great_expectations._docs_decorators"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


class GateFailed(PermanentError):
    """A critical expectation failed (or a warning one, when warnings fail the run); the message
    is a readable summary of what failed. The same data fails the same way: no retry."""


@dataclass
class GateReport:
    suite: str
    table: str
    layer: str
    rows: int
    success: bool
    evaluated: int
    failed_critical: list[dict[str, Any]] = field(default_factory=list)
    failed_warning: list[dict[str, Any]] = field(default_factory=list)
    results_path: str = ""
    docs_path: str = ""
    docs_index: str = ""
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        if not self.success:
            return "FAILED"
        return "PASSED with warnings" if self.failed_warning else "PASSED"

    def summary(self) -> str:
        lines = [
            f"gate {self.layer} {self.table} ({self.suite}): {self.verdict}, {self.rows} rows, {self.evaluated} expectations"
        ]
        for label, items in (("error", self.failed_critical), ("warning", self.failed_warning)):
            for f in items:
                lines.append(f"  {label}: {describe_failure(f)}")
        if self.docs_path:
            lines.append(f"  Data Docs: {self.docs_path}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict
        return d


def describe_failure(f: dict[str, Any]) -> str:
    kw = {k: v for k, v in f.get("kwargs", {}).items() if k not in ("batch_id", "result_format")}
    target = kw.pop("column", None) or kw.pop("column_list", None)
    parts = [f["type"] + (f"({target})" if target else "")]
    if kw:
        parts.append(", ".join(f"{k}={v}" for k, v in sorted(kw.items())))
    if f.get("exception"):
        parts.append(f"could not be evaluated: {f['exception']}")
    if f.get("unexpected_count") is not None:
        pct = f.get("unexpected_percent")
        parts.append(f"{f['unexpected_count']} unexpected" + (f" ({pct:.3g}%)" if pct is not None else ""))
    if f.get("observed_value") is not None:
        parts.append(f"observed {f['observed_value']}")
    if f.get("sample"):
        parts.append(f"e.g. {f['sample'][:5]}")
    return "; ".join(parts)


def _duckdb_creator(con: duckdb.DuckDBPyConnection):
    """SQLAlchemy ``creator`` handing out cursors of one DuckDB database.

    Each DBAPI cursor runs on its own DuckDB cursor, so a result stays readable after SQLAlchemy
    returns the connection to its pool (Great Expectations fetches results after that, and a
    shared DuckDB connection would have discarded them).
    """
    import duckdb_engine

    class _Connection(duckdb_engine.ConnectionWrapper):
        def __init__(self, raw: duckdb.DuckDBPyConnection) -> None:
            super().__init__(raw)
            self._raw = raw

        def cursor(self) -> duckdb_engine.CursorWrapper:  # type: ignore[override]
            return duckdb_engine.CursorWrapper(self._raw.cursor(), self)

    return lambda: _Connection(con.cursor())


def run_gate(
    con: duckdb.DuckDBPyConnection,
    view: str,
    *,
    suite_name: str | None,
    table: str,
    layer: str,
    run_name: str,
    quality_dir: Path,
    result_format: str = "SUMMARY",
    expectations_dir: Path | None = None,
    extra_expectations: list[dict[str, Any]] | None = None,
) -> GateReport:
    """Validate the DuckDB view ``view`` (a non-temporary view of ``con``'s database).

    Writes the validation result JSON and Data Docs; returns the report. Does not raise on
    failed expectations (the caller decides). Raises ``SuiteError`` (a
    :class:`~mlblueprints.errors.PermanentError`) before validating anything when the suite is
    missing or broken: an unknown expectation type, arguments Great Expectations rejects, or a
    column the view does not have - one line per problem, naming the file and the expectation.
    ``extra_expectations`` (the suite's JSON form) are checked too, after the suite's; with
    ``suite_name`` None they are the whole suite.
    """
    import great_expectations as gx
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        FilesystemStoreBackendDefaults,
        ProgressBarsConfig,
    )
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    started = time.perf_counter()
    types = {r[0]: r[1] for r in con.execute(f'DESCRIBE "{view}"').fetchall()}
    spec = check_suite_for_table(suite_name, types, expectations_dir) if suite_name else {"expectations": []}
    spec = {**spec, "expectations": [*spec["expectations"], *(extra_expectations or [])]}
    quality_dir.mkdir(parents=True, exist_ok=True)
    cfg = DataContextConfig(
        store_backend_defaults=FilesystemStoreBackendDefaults(root_directory=str(quality_dir)),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    ctx = gx.get_context(project_config=cfg, mode="ephemeral")
    ds = ctx.data_sources.add_or_update_sql(
        name="lakehouse", connection_string="duckdb:///:memory:", kwargs={"creator": _duckdb_creator(con)}
    )
    asset = ds.add_table_asset(name=table, table_name=view)
    batch_def = asset.add_batch_definition_whole_table(f"{layer}")
    gx_name = (suite_name or f"{table}.{layer}.builtin").replace("/", ".")  # GE store keys cannot hold '/'
    suite = ExpectationSuite(name=gx_name, meta=spec.get("meta") or {})
    for e in spec["expectations"]:
        suite.add_expectation_configuration(
            ExpectationConfiguration(
                type=e["type"], kwargs=e.get("kwargs", {}), meta=e.get("meta") or {}, severity=e["severity"]
            )
        )
    suite = ctx.suites.add_or_update(suite)
    vd = ctx.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=f"{gx_name}:{layer}", data=batch_def, suite=suite)
    )
    checkpoint = ctx.checkpoints.add_or_update(
        gx.Checkpoint(
            name=f"{gx_name}:{layer}",
            validation_definitions=[vd],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            result_format={"result_format": result_format, "partial_unexpected_count": 10},
        )
    )
    result = checkpoint.run(run_id=RunIdentifier(run_name=run_name))
    ((key, vres),) = result.run_results.items()

    rows = con.execute(f'SELECT COUNT(*) FROM "{view}"').fetchall()[0][0]
    report = GateReport(
        suite=suite_name or "-", table=table, layer=layer, rows=rows, success=True, evaluated=len(vres.results)
    )
    for r in vres.results:
        if r.success:
            continue
        cfg_ = r.expectation_config
        res = r.result or {}
        exc = (r.exception_info or {}).get("exception_message") if isinstance(r.exception_info, dict) else None
        if exc is None and isinstance(r.exception_info, dict):
            # metric errors are keyed by metric id
            for v in r.exception_info.values():
                if isinstance(v, dict) and v.get("raised_exception"):
                    exc = v.get("exception_message")
                    break
        entry = {
            "type": cfg_.type,
            "kwargs": dict(cfg_.kwargs),
            "severity": str(getattr(cfg_.severity, "value", cfg_.severity)),
            "unexpected_count": res.get("unexpected_count"),
            "unexpected_percent": res.get("unexpected_percent"),
            "observed_value": res.get("observed_value"),
            "sample": [str(x) for x in (res.get("partial_unexpected_list") or [])][:10],
            "exception": exc,
        }
        if entry["severity"] == "critical":
            report.success = False
            report.failed_critical.append(entry)
        elif entry["severity"] == "warning":
            report.failed_warning.append(entry)
    site = quality_dir / "uncommitted" / "data_docs" / "local_site"
    report.docs_index = str(site / "index.html")
    urls = ctx.get_docs_sites_urls(resource_identifier=key, only_if_exists=False)
    report.docs_path = unquote(urls[0]["site_url"].removeprefix("file://")) if urls else report.docs_index
    results = quality_dir / "results" / table / layer / f"{_safe(run_name)}.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    report.seconds = round(time.perf_counter() - started, 3)
    results.write_text(
        json.dumps({"report": report.as_dict(), "validation": vres.to_json_dict()}, indent=1, default=str)
    )
    report.results_path = str(results)
    return report


def _safe(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in s)
