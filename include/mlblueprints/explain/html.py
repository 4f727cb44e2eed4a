"""The explainability report a person reads: ``report.html`` with PNG plots, written beside
``analysis.json`` and logged with it as artifacts of the version's run.

Plots (matplotlib, which MLflow already depends on; drawn on a ``Figure`` without pyplot, so no
global backend is set in the worker):

- ``plots/global_importance.png``: mean |SHAP| per feature, the largest at the top;
- ``plots/shap_beeswarm.png``: every explained record's SHAP value per feature (the top features),
  coloured by the feature's value rank - where high values push the score;
- ``plots/bias_metrics.png``: each gated metric's value per facet against its bounds, red when
  outside.

Everything is drawn from ``analysis.json``, the gate's bounds and the attributions, so the report
says what the gate will decide on the same document.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlblueprints.explain import core

TOP = 15  # features shown in the importance and beeswarm plots


def _importance(fig: Any, importance: Mapping[str, float]) -> None:
    top = sorted(importance, key=lambda f: importance[f])[-TOP:]
    ax = fig.add_subplot()
    ax.barh(top, [importance[f] for f in top], color="#3b6ea5")
    ax.set_xlabel("mean |SHAP| (log-odds)")
    ax.set_title("Global feature importance")


def _beeswarm(fig: Any, shap: core.Attributions, x: Any, importance: Mapping[str, float]) -> None:
    import numpy as np

    top = sorted(importance, key=lambda f: importance[f])[-TOP:]
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    values = shap.values if shap.values.ndim == 2 else shap.values[:, 0, :]
    for row, f in enumerate(top):
        j = shap.features.index(f)
        ranks = np.argsort(np.argsort(x[:, j])) / max(len(x) - 1, 1)
        jitter = rng.uniform(-0.3, 0.3, len(values))
        points = ax.scatter(values[:, j], row + jitter, c=ranks, cmap="coolwarm", s=6, vmin=0, vmax=1)
    ax.set_yticks(range(len(top)), top)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("SHAP value (log-odds)")
    ax.set_title("Per-record attributions")
    fig.colorbar(points, ax=ax, label="feature value (rank: low -> high)")


def _bias(fig: Any, checked: list[dict[str, Any]]) -> None:
    known = [v for c in checked for v in (c["min"], c["max"], c["value"]) if v is not None]
    pad = 0.1 * ((max(known) - min(known)) or 1.0)
    left, right = min(known) - pad, max(known) + pad
    ax = fig.add_subplot()
    for i, c in enumerate(checked):
        lo = left if c["min"] is None else c["min"]
        hi = right if c["max"] is None else c["max"]
        ax.plot([lo, hi], [i, i], color="#9bbf85", lw=8, solid_capstyle="butt")
        if c["value"] is not None:
            ax.plot([c["value"]], [i], "o", color="#2a7a2a" if c["passed"] else "#c0392b", ms=9)
    ax.set_xlim(left, right)
    ax.set_ylim(-0.7, len(checked) - 0.3)
    ax.set_yticks(
        range(len(checked)), [f"{c['name']} {c['facet']}={c['value_or_threshold']} ({c['stage']})" for c in checked]
    )
    ax.set_title("Gated bias metrics (dot) against their bounds (green band)")


def _save(draw: Any, path: Path, *args: Any, height: float = 4.5) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, height), layout="constrained")
    draw(fig, *args)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return f"plots/{path.name}"


def write_report(
    doc: Mapping[str, Any],
    thresholds: Mapping[str, tuple[float | None, float | None]],
    out_dir: Path,
    shap: core.Attributions | None = None,
    x: Any = None,
) -> Path:
    """``<out_dir>/report.html`` and its plots under ``<out_dir>/plots/``; ``x`` holds the explained
    records' feature values (the rows of ``shap``), for the beeswarm's colours."""
    meta = doc.get("mlblueprints") or {}
    title = f"{meta.get('model_name', 'model')} version {meta.get('model_version', '?')}"
    decision = core.gate(doc, thresholds)
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Explainability and bias: {e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}td.n{text-align:right}"
        ".broken{color:#c0392b;font-weight:bold}</style></head><body>",
        f"<h1>Explainability and bias: {e(title)}</h1>",
        f"<p>Holdout rows: {meta.get('holdout_rows', '?')}; predicted labels at threshold "
        f"{meta.get('predicted_label_threshold', '?')}; run {e(str(meta.get('run_id', '')))}; "
        f"commit {e(str(meta.get('git_commit', '')))}.</p>",
        f"<h2>Fairness gate</h2><pre>{e(decision.text())}</pre>",
    ]
    plots = out_dir / "plots"
    if decision.checked:
        src = _save(_bias, plots / "bias_metrics.png", decision.checked, height=1.2 + 0.5 * len(decision.checked))
        parts.append(f"<img src='{src}' alt='gated bias metrics against their bounds'>")
    gated = {(c["name"], c["facet"], str(c["value_or_threshold"])): c for c in decision.checked}
    rows = []
    for m in core.metric_values(doc):
        c = gated.get((m["name"], m["facet"], str(m["value_or_threshold"])))
        verdict = ""
        if c:
            lo, hi = ("-inf" if c["min"] is None else f"{c['min']:g}"), ("inf" if c["max"] is None else f"{c['max']:g}")
            verdict = f"[{lo}, {hi}] " + ("ok" if c["passed"] else "<span class='broken'>BROKEN</span>")
        value = "-" if m["value"] is None else f"{m['value']:.4f}"
        rows.append(
            f"<tr><td>{e(m['name'])}</td><td>{e(m['stage'])}</td><td>{e(m['facet'])}={e(str(m['value_or_threshold']))}"
            f"</td><td class='n'>{value}</td><td>{verdict}</td><td>{e(m['description'])}</td></tr>"
        )
    if rows:
        parts.append(
            "<h2>Bias metrics</h2><table><tr><th>metric</th><th>stage</th><th>facet</th><th>value</th>"
            "<th>gate</th><th>meaning</th></tr>" + "".join(rows) + "</table>"
        )
    explanations = (doc.get("explanations") or {}).get("kernel_shap") or {}
    if explanations and shap is not None:
        importance = explanations[shap.outputs[0]]["global_shap_values"]
        parts.append(
            f"<h2>Feature attributions</h2><p>Exact TreeSHAP of {len(shap.values):,} holdout records; base value "
            f"{explanations[shap.outputs[0]]['expected_value']:.4f} (log-odds).</p>"
        )
        src = _save(_importance, plots / "global_importance.png", importance)
        parts.append(f"<img src='{src}' alt='global feature importance'>")
        if x is not None:
            src = _save(_beeswarm, plots / "shap_beeswarm.png", shap, x, importance, height=5.5)
            parts.append(f"<img src='{src}' alt='per-record SHAP values'>")
    else:
        parts.append("<h2>Feature attributions</h2><p>No SHAP values in this analysis.</p>")
    parts.append("</body></html>")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(path)
    return path
