"""The run report of ``<usecase>__monitoring``: the window, each column's test against its
threshold, data quality and model quality, the decision and where the reports are."""

from __future__ import annotations

import json
from typing import Any

from mlblueprints.config import UseCase
from mlblueprints.core.reporting import Table


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}"


def drift_table(rows: list[dict[str, Any]], indent: str = "  ") -> str:
    """Per column: the drift test, its statistic against the threshold, and the quality measures."""
    table = Table(
        ("column", "test", "statistic", "threshold", "drift", "nulls", "new values"), right=(2, 3, 5, 6), indent=indent
    )
    by_col: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["column"]:
            by_col.setdefault(r["column"], {})[r["metric"] if r["signal"] == "data_quality" else "drift"] = r
    for col, ms in by_col.items():
        d = ms.get("drift") or {}
        problem = json.loads(d.get("detail") or "{}").get("problem") if d else None
        verdict = "n/a" if d.get("drifted") is None else ("DRIFT" if d["drifted"] else "ok")
        if "missing" in ms:
            verdict, problem = "MISSING", "missing from the window"
        new = ms.get("out_of_range_share") or ms.get("unseen_share") or {}
        table.add(
            col,
            d.get("metric", "-") if not problem else f"- ({problem})",
            _num(d.get("statistic")),
            _num(d.get("threshold")),
            verdict,
            _num((ms.get("null_share") or {}).get("statistic")),
            _num(new.get("statistic")),
        )
    return table.render()


def render(uc: UseCase, run_id: str, results: dict[str, Any], where: list[str]) -> str:
    lines = [f"{uc.name}__monitoring  run {run_id}", ""]
    p = results.get("plan")
    if not p:
        return "\n".join([*lines, "plan: NOT RUN / FAILED"])
    lines.append(f"window {p['window'][0]}..{p['window'][1]} ({p['window_source']}), scored by {p['model']['label']}")
    me = results.get("measure")
    if me:
        ref = me["reference"]
        lines.append(f"  {me['rows']:,} rows against the reference: {ref['source']} ({ref['rows']:,} rows)")
        lines += ["", drift_table(me["metrics"])]
        lines.append(f"  drifted share of features: {me['drifted_share']:.2f}")
        mq = me.get("model_quality") or {}
        if mq:
            if mq.get("decided"):
                lines.append(
                    f"  model quality on {mq['labelled']:,} labelled rows: ROC-AUC {mq['roc_auc']:.4f}, PR-AUC {mq['pr_auc']:.4f}"
                    + (f"; degraded: {', '.join(mq['degraded_metrics'])}" if mq["degraded_metrics"] else "")
                )
            else:
                lines.append(f"  model quality: {mq.get('note')}")
        for prob in me.get("problems") or []:
            lines.append(f"  problem: {prob}")
        signals = ", ".join(f"{k} {'YES' if v else 'no'}" for k, v in me["signals"].items())
        lines.append(f"  signals: {signals}")
        if me.get("report"):
            lines.append(f"  Evidently report ({me['report']['rows']['current']:,}-row sample): {me['report']['html']}")
    d = results.get("decide")
    if d:
        lines += ["", f"decision: {'ALERT' if d['fired'] and not d.get('rerun_of') else 'no alert'} - {d['reason']}"]
    a = results.get("alert") or {}
    if a.get("reason"):
        lines.append(f"  emitted {uc.name}.drift_alert: the training DAG is scheduled on it")
    lines += ["", *where]
    return "\n".join(lines)
