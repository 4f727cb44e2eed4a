"""The run report of ``<usecase>__training``: training, the metrics table, the gate verdict and
the lineage of what was registered (written with :func:`mlblueprints.core.reporting.write_run_report`)."""

from __future__ import annotations

import json
from typing import Any

from mlblueprints.config import TASK_METRICS, UseCase
from mlblueprints.core.reporting import Table

# what the metrics table shows per task, in order (the gate's metrics and a few more)
METRIC_ORDER = {
    "binary": ("roc_auc", "pr_auc", "precision", "recall", "fpr", "calibration_error", "threshold"),
    "multiclass": TASK_METRICS["multiclass"],
    "regression": TASK_METRICS["regression"],
}


def render(uc: UseCase, run_id: str, results: dict[str, Any], where: list[str]) -> str:
    """The report text; ``where`` says where the registry keeps runs and models."""
    lines = [f"{uc.name}__training  run {run_id}", ""]
    ts = results.get("training_set")
    task = uc.training.task if uc.training else "binary"
    if ts:
        shape = f", {ts['positives']:,} positive" if task == "binary" else f" ({task} label)"
        lines.append(f"training set {ts['table']} snapshot {ts['snapshot_id']}: {ts['rows']:,} label events{shape}")
    tr = results.get("train")
    if tr:
        m, d = tr["meta"], tr["data"]
        lines.append(
            f"train: {d['train']['rows']:,} rows {d['train']['from']}..{d['train']['to']}; "
            f"holdout: {d['holdout']['rows']:,} rows {d['holdout']['from']}..{d['holdout']['to']}"
        )
        resumed = m.get("resumed_from_round")
        made = f"{m['rounds']} boosting rounds" if m.get("rounds") is not None else str(m.get("format", "a model"))
        lines.append(
            f"model: {made} in {tr['seconds']:.1f}s"
            + (
                f" (resumed from the checkpoint at round {resumed}; {m['rounds_trained_in_this_process']} rounds in "
                "the last try)"
                if resumed
                else ""
            )
            + f"; job {tr['job_name']}"
        )
    else:
        lines.append("train: NOT RUN / FAILED")
    ev = results.get("evaluate")
    if ev:
        cand, champ = ev["candidate"], ev.get("champion")
        table = Table(
            ("metric", "candidate", ev["decision"].get("against", "reference") if champ else "reference"),
            right=(1, 2),
            indent="  ",
        )
        for k in METRIC_ORDER[ev.get("task", "binary")]:
            if cand.get(k) is not None:
                table.add(k, f"{cand[k]:.4f}", f"{champ[k]:.4f}" if champ and champ.get(k) is not None else "-")
        lines += ["", table.render(), *details_lines(ev.get("candidate_details") or {})]
        lines += ["", ev["decision_text"]]
    reg = results.get("register")
    if reg:
        lines.append("")
        if reg.get("version") is not None:
            lines.append(f"registered {reg['model_name']} version {reg['version']} aliases {', '.join(reg['aliases'])}")
            lines.append(f"lineage (also: mlblueprints models lineage {uc.name} --version {reg['version']}):")
            for k, v in reg["lineage"].items():
                if k in ("metrics", "hyperparameters"):
                    continue
                lines.append(f"  {k}: {json.dumps(v, default=str) if not isinstance(v, str) else v}")
        else:
            lines.append(f"not promoted: nothing registered (MLflow run {reg['mlflow_run_id']} has the comparison)")
    lines.append("")
    lines += where
    return "\n".join(lines)


def details_lines(details: dict[str, Any]) -> list[str]:
    """What the task's evaluation adds to the metrics: the decision rule, per-class figures and the
    confusion matrix (multiclass), the residuals (regression)."""
    lines = []
    if details.get("decision"):
        lines.append(f"  decision: {details['decision']}")
    if details.get("per_class"):
        t = Table(("class", "precision", "recall", "f1", "support"), right=(1, 2, 3, 4), indent="  ")
        for c, m in details["per_class"].items():
            t.add(c, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"])
        lines += ["", t.render()]
    if details.get("confusion_matrix"):
        classes = details.get("classes") or [str(i) for i in range(len(details["confusion_matrix"]))]
        t = Table(("actual \\ predicted", *classes), right=range(1, len(classes) + 1), indent="  ")
        for c, row in zip(classes, details["confusion_matrix"]):
            t.add(c, *row)
        lines += ["", "  confusion matrix (rows: actual class, columns: predicted class)", t.render()]
    if details.get("residuals"):
        r = details["residuals"]
        lines.append(
            "  residuals (prediction - actual): "
            + ", ".join(f"{k} {r[k]:.4g}" for k in ("mean", "std", "p05", "p50", "p95", "max_abs"))
            + f"; MAPE over {details.get('mape_rows', 0):,} rows with a non-zero target"
        )
    return lines
