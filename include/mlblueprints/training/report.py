"""The run report of ``<usecase>__training``: training, the metrics table, the gate verdict and
the lineage of what was registered (written with :func:`mlblueprints.core.reporting.write_run_report`)."""

from __future__ import annotations

import json
from typing import Any

from mlblueprints.config import UseCase
from mlblueprints.core.reporting import Table

METRIC_ORDER = ("roc_auc", "pr_auc", "precision", "recall", "fpr", "calibration_error", "threshold")


def render(uc: UseCase, run_id: str, results: dict[str, Any], where: list[str]) -> str:
    """The report text; ``where`` says where the registry keeps runs and models."""
    lines = [f"{uc.name}__training  run {run_id}", ""]
    ts = results.get("training_set")
    if ts:
        lines.append(
            f"training set {ts['table']} snapshot {ts['snapshot_id']}: {ts['rows']:,} label events, "
            f"{ts['positives']:,} positive"
        )
    tr = results.get("train")
    if tr:
        m, d = tr["meta"], tr["data"]
        lines.append(
            f"train: {d['train']['rows']:,} rows {d['train']['from']}..{d['train']['to']}; "
            f"holdout: {d['holdout']['rows']:,} rows {d['holdout']['from']}..{d['holdout']['to']}"
        )
        resumed = m.get("resumed_from_round")
        lines.append(
            f"model: {m['rounds']} boosting rounds in {tr['seconds']:.1f}s"
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
        for k in METRIC_ORDER:
            if k in cand:
                table.add(k, f"{cand[k]:.4f}", f"{champ[k]:.4f}" if champ else "-")
        lines += ["", table.render()]
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
