"""The run report of ``<usecase>__training``: training, the metrics table, the gate verdict and
the lineage of what was registered. Written to ``<runtime>/runs/<usecase>/training/``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.config import UseCase

METRIC_ORDER = ("roc_auc", "pr_auc", "precision", "recall", "fpr", "calibration_error", "threshold")


def render(uc: UseCase, run_id: str, results: dict[str, Any]) -> str:
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
        header = ("metric", "candidate", f"champion v{ev['champion_version']}" if champ else "champion")
        rows = [header] + [
            (k, f"{cand[k]:.4f}", f"{champ[k]:.4f}" if champ else "-") for k in METRIC_ORDER if k in cand
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines.append("")
        lines += [
            "  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
            for r in rows
        ]
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
    from mlblueprints.registry.local import tracking_uri

    uri = tracking_uri(uc)
    where = f"; artifacts under {runtime.home() / 'mlflow' / 'artifacts'}" if uri.startswith("sqlite") else ""
    lines.append(f"MLflow tracking: {uri}{where}")
    return "\n".join(lines)


def write_training_report(uc: UseCase, run_id: str, results: dict[str, Any]) -> tuple[Path, str, list[str]]:
    missing = sorted(t for t, v in results.items() if v is None)
    text = render(uc, run_id, results)
    safe = "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in run_id)
    path = runtime.path("runs", uc.name, "training") / f"{safe}.json"
    path.write_text(
        json.dumps(
            {"usecase": uc.name, "run_id": run_id, "missing": missing, "tasks": results, "text": text},
            indent=1,
            default=str,
        )
    )
    (path.parent / "latest.txt").write_text(text + "\n")
    return path, text, missing
