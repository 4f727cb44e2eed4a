"""The gate of an interval's predictions, the same on both targets: Great Expectations on a
DuckDB view of the staged predictions (Parquet files locally, the transform job's output on aws)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlblueprints import runtime
from mlblueprints.config import UseCase
from mlblueprints.lakehouse.sqlgen import ident
from mlblueprints.lineage import RunInfo
from mlblueprints.scoring import core


def gate_view(uc: UseCase, con: Any, view: str, planned: Mapping[str, Any], run: RunInfo) -> dict[str, Any]:
    """Validate a DuckDB view of an interval's predictions: the use case's suite plus the checks
    every predictions gate makes (:func:`core.gate_expectations`). Zero rows in, zero out: the
    gate says so instead of judging an empty table's mean."""
    from mlblueprints.quality.gx import run_gate

    table = uc.scoring.output_table if uc.scoring else "predictions"
    rows = con.execute(f"SELECT count(*) FROM {ident(view)}").fetchone()[0]
    if rows == 0 and planned["rows_in"] == 0:
        return {
            "success": True,
            "verdict": "PASSED (no rows in the interval: nothing to validate)",
            "rows": 0,
            "evaluated": 0,
            "summary": f"gate scoring {table}: no rows in the interval, no predictions",
        }
    report = run_gate(
        con,
        view,
        suite_name=uc.scoring_suite(),
        table=table,
        layer="scoring",
        run_name=f"{run.run_id}__{run.try_number}",
        quality_dir=runtime.path("quality", uc.name),
        result_format=uc.lakehouse.gate_result_format,
        extra_expectations=core.gate_expectations(
            planned["model"]["task"], planned["rows"]["keys"], planned["rows_in"]
        ),
    )
    out = report.as_dict()
    out["summary"] = report.summary()
    return out
