"""The run report of ``<usecase>__scoring``: the interval and where it came from, the model and
its threshold, the inputs read (snapshot ids), rows scored, the score histogram, the decisions,
the gate and the commit (written with :func:`mlblueprints.core.reporting.write_run_report`)."""

from __future__ import annotations

from typing import Any

from mlblueprints.config import UseCase
from mlblueprints.core.reporting import Table
from mlblueprints.scoring.core import histogram_text


def decision_lines(task: str, scored: dict[str, Any], threshold: float | None) -> list[str]:
    rows = int(scored.get("rows") or 0)
    if not rows:
        return []
    if task == "binary":
        flagged = int(scored.get("flagged") or 0)
        return [f"flagged (score >= {threshold:.6g}): {flagged:,} of {rows:,} ({100 * flagged / rows:.2f} %)"]
    if task == "multiclass":
        table = Table(("decision", "rows", "share"), right=(1, 2), indent="  ")
        for c, n in sorted((scored.get("decisions") or {}).items(), key=lambda kv: -kv[1]):
            table.add(c, n, f"{100 * n / rows:.2f} %")
        return ["decisions (the most probable class):", table.render()]
    h = scored.get("histogram") or {}
    return [f"predictions: mean {h.get('mean'):.4g}, min {h.get('min'):.4g}, max {h.get('max'):.4g}"]


def render(uc: UseCase, run_id: str, results: dict[str, Any], where: list[str]) -> str:
    lines = [f"{uc.name}__scoring  run {run_id}", ""]
    planned = results.get("plan")
    if not planned:
        lines.append("plan: FAILED (see below)")
        return "\n".join([*lines, "", *where])
    m = planned["model"]
    lo, hi = planned["range"]
    lines.append(f"interval: event dates {lo}..{hi} (from {planned.get('range_source', '-')})")
    how = f"alias {m['alias']}" if m.get("alias") else "pinned"
    thr = f"; threshold {m['threshold']:.6g} ({m['threshold_source']})" if m.get("threshold") is not None else ""
    lines.append(f"model: {m['label']} ({how}, {m['task']}, {m['model_format']}); MLflow run {m['mlflow_run_id']}{thr}")
    rows = planned["rows"]
    joined = (
        f"feature views {', '.join(rows['views'])} joined point in time"
        if rows["views"]
        else "features read from the rows"
    )
    lines.append(f"rows: {rows['source']} by {', '.join(rows['keys'])} at {rows['event_time']}; {joined}")
    snaps = Table(("input", "snapshot"), indent="  ")
    for k, v in planned["snapshots"].items():
        snaps.add(k, str(v))
    lines += ["inputs read:", snaps.render()]
    skipped = planned.get("skipped_null_key") or 0
    lines.append(
        f"rows in the interval: {planned['rows_in']:,}"
        + (f" ({skipped:,} more skipped: a key is null)" if skipped else "")
    )
    scored = results.get("score")
    gated = results.get("gate") or {}
    if scored is not None and "rows" not in scored:  # on aws the figures come from reading the job's output
        scored = {**scored, **{k: gated[k] for k in ("rows", "histogram", "flagged", "decisions") if k in gated}}
    lines.append("")
    if scored is None:
        lines.append("score: FAILED")
    elif "rows" not in scored:
        lines.append(f"scored by transform job {scored.get('job_name')}; the gate did not read its output")
    elif not scored["rows"]:
        lines.append("scored: 0 rows - the interval has no rows to score; its predictions are replaced by none")
    else:
        rate = f", {scored['rows_per_second']:,.0f} rows/s" if scored.get("rows_per_second") else ""
        lines.append(
            f"scored: {scored['rows']:,} rows in {scored.get('batches', '-')} batches ({scored['seconds']:.1f} s{rate})"
        )
        lines += [histogram_text(scored["histogram"]), *decision_lines(m["task"], scored, m.get("threshold"))]
    if gated:
        lines += ["", gated.get("summary") or f"gate: {gated.get('verdict')}"]
    committed = results.get("commit")
    if committed:
        lines.append(
            f"committed: {committed['rows']:,} predictions of {committed['range'][0]}..{committed['range'][1]} "
            f"replace the interval in {committed['table']} (snapshot {committed['snapshot_id']})"
        )
    else:
        lines.append("commit: NOT DONE - the predictions table is as it was before this run")
    return "\n".join([*lines, "", *where])
