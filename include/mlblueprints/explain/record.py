"""Why one record got its score: the exact TreeSHAP attributions of one row of the holdout a
registered version was judged on (``mlblueprints explain record``).

The row is found by the key of the training set's label table (``transaction_id`` for the fraud
use case) in the holdout the training pattern logged with the version's run, so the answer is the
same on both targets and needs no table access; a key outside that holdout is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlblueprints.config import UseCase
from mlblueprints.core.reporting import Table
from mlblueprints.errors import PermanentError
from mlblueprints.explain.steps import HOLDOUT_ARTIFACT

TOP = 10  # contributions listed; the rest are summed in one line


class RecordError(PermanentError):
    """The record cannot be explained (no such version, key or row, or no tree model)."""


def _version(registry: Any, uc: UseCase, version: int | None) -> int:
    if version:
        return version
    for alias in (registry.CHALLENGER, registry.CHAMPION):
        mv = registry.model_version(alias)
        if mv is not None:
            return int(mv["version"])
    raise RecordError(f"{uc.model_name}: no registered version to explain: train one, or give --version")


def explain_record(uc: UseCase, registry: Any, key: str, workdir: Path, version: int | None = None) -> dict[str, Any]:
    """The attributions of the holdout row of ``version`` (default: the challenger, else the
    champion) whose key is ``key`` (values of a composite key joined by commas)."""
    import numpy as np
    import pandas as pd

    from mlblueprints.explain import core

    t = uc.training
    if t is None:
        raise RecordError(f"{uc.name}: the use case has no training section")
    ts = uc.training_sets[t.training_set]
    keys = list(uc.gold[ts.labels.source].primary_key) if ts.labels.source in uc.gold else []
    version = _version(registry, uc, version)
    try:
        info = registry.lineage(version=version)
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own exception types
        raise RecordError(f"{uc.model_name} version {version}: not in the registry ({exc})") from exc
    lin = info["lineage"]
    task = lin.get("task", t.task)
    if task == "multiclass":
        raise RecordError(f"{uc.model_name} version {version} is multiclass: explain record covers one-output models")
    try:
        path = registry.fetch_artifact(version, HOLDOUT_ARTIFACT, workdir)
    except LookupError as exc:
        raise RecordError(f"{exc}: the version was registered before runs kept their holdout; retrain") from exc
    holdout = pd.read_parquet(path)
    missing = [k for k in keys if k not in holdout.columns]
    if not keys or missing:
        raise RecordError(
            f"{uc.name}: the holdout of version {version} has no key column {missing or keys}: add it to "
            f"training_sets.{t.training_set}.labels.columns"
        )
    values = key.split(",") if len(keys) > 1 else [key]
    if len(values) != len(keys):
        raise RecordError(f"{uc.name}: the key is {', '.join(keys)}: give {len(keys)} values joined by commas")
    hit = np.ones(len(holdout), dtype=bool)
    for k, v in zip(keys, values):
        hit &= holdout[k].astype(str).to_numpy() == v
    if not hit.any():
        raise RecordError(
            f"{uc.model_name} version {version}: no row with {', '.join(keys)} = {key} in the holdout it was judged "
            f"on ({len(holdout):,} rows); explain record reads that holdout only"
        )
    row = holdout[hit].iloc[[0]]
    feats = uc.model_features()
    model = registry.load_version(version, task, feats)
    if model.flavor != "xgboost":
        raise RecordError(
            f"{uc.model_name} version {version} is a {model.flavor} model: exact TreeSHAP needs an XGBoost booster"
        )
    x = row[feats].to_numpy(dtype=np.float64)
    attr = core.tree_shap(model.raw, x, feats)
    shap = attr.values[0]
    threshold = (lin.get("metrics") or {}).get("threshold")
    label = ts.labels.label
    actual = row[label].iloc[0]
    return {
        "model_name": info["model_name"],
        "version": version,
        "task": task,
        "key": dict(zip(keys, values)),
        "label": {label: actual.item() if hasattr(actual, "item") else actual},
        "score": float(model.scores(x)[0]),
        "threshold": None if threshold is None else float(threshold),
        "base_value": float(attr.base[0]),
        "margin": float(attr.base[0] + shap.sum()),
        "contributions": sorted(
            ({"feature": f, "value": float(x[0, i]), "shap": float(shap[i])} for i, f in enumerate(feats)),
            key=lambda c: -abs(c["shap"]),
        ),
    }


def render(r: dict[str, Any]) -> str:
    """The attributions in words and numbers, largest first."""
    key = ", ".join(f"{k} {v}" for k, v in r["key"].items())
    [(label, actual)] = r["label"].items()
    lines = [f"{r['model_name']} version {r['version']}: {key} ({label} = {actual} in the holdout)"]
    if r["task"] == "binary":
        t = r["threshold"]
        verdict = (
            ""
            if t is None
            else f" {'>=' if r['score'] >= t else '<'} threshold {t:.4g}: "
            + ("flagged" if r["score"] >= t else "not flagged")
        )
        lines.append(f"score {r['score']:.4f}{verdict}")
        lines.append(f"log-odds {r['margin']:+.3f} = base value {r['base_value']:+.3f} + the contributions (TreeSHAP)")
    else:
        lines.append(f"prediction {r['margin']:.4g} = base value {r['base_value']:.4g} + the contributions (TreeSHAP)")
    table = Table(("feature", "value", "SHAP", ""), right=(1, 2), indent="  ")
    for c in r["contributions"][:TOP]:
        word = "raises the score" if c["shap"] > 0 else "lowers the score" if c["shap"] < 0 else "no effect"
        table.add(c["feature"], f"{c['value']:.6g}", f"{c['shap']:+.4f}", word)
    lines.append(table.render())
    rest = r["contributions"][TOP:]
    if rest:
        lines.append(f"  ({len(rest)} more features add {sum(c['shap'] for c in rest):+.4f})")
    return "\n".join(lines)
