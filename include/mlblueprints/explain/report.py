"""The run report of ``<usecase>__explainability``: which version, its bias metrics against their
bounds, the most important features, where the analysis is, and the gate's verdict."""

from __future__ import annotations

from typing import Any

from mlblueprints.config import UseCase
from mlblueprints.core.reporting import Table


def _bound(v: float | None) -> str:
    return "" if v is None else f"{v:g}"


def render(uc: UseCase, run_id: str, results: dict[str, Any]) -> str:
    lines = [f"{uc.name}__explainability  run {run_id}", ""]
    tg = results.get("target")
    if not tg:
        return "\n".join([*lines, "target: NOT RUN / FAILED"])
    lines.append(
        f"{tg['model_name']} version {tg['version']} ({tg['chosen_by']}); "
        f"predicted labels at its threshold {tg['threshold']:.4g}"
    )
    an = results.get("analyse")
    fair = results.get("gate") or {}
    if an:
        gated = {(c["name"], c["facet"], str(c["value_or_threshold"])): c for c in fair.get("checked", [])}
        table = Table(("bias metric", "stage", "facet", "value", "gate"), right=(3,), indent="  ")
        for m in an["metrics"]:
            c = gated.get((m["name"], m["facet"], str(m["value_or_threshold"])))
            bounds = f"[{_bound(c['min'])}, {_bound(c['max'])}] {'ok' if c['passed'] else 'BROKEN'}" if c else ""
            value = "-" if m["value"] is None else f"{m['value']:.4f}"
            table.add(m["name"], m["stage"], f"{m['facet']}={m['value_or_threshold']}", value, bounds)
        lines += ["", table.render()] if an["metrics"] else ["", "  no facet configured: no bias metrics"]
        if an["top_features"]:
            lines.append(
                f"  most important features (mean |SHAP| over {an['explained_rows']:,} of "
                f"{an['holdout_rows']:,} holdout records): {', '.join(an['top_features'][:5])}"
            )
        if an.get("shap_note"):
            lines.append(f"  {an['shap_note']}")
        lines.append(f"  analysis (SageMaker Clarify layout): {an['artifact_uri']}/analysis.json")
        lines.append(f"  report with plots: {an['artifact_uri']}/report.html")
    if fair:
        lines += ["", fair["decision_text"]]
        if fair["tag"]:
            lines.append(f"  version {fair['version']} is tagged mlb.fairness_failed: promotion refuses it")
    return "\n".join(lines)
