"""The fraud model the benchmarks measure: synthetic rows with the types and rough distributions
of the fraud use case's features, a label that depends on them non-linearly, and an XGBoost
binary model trained on them with the use case's hyperparameters.

Shared by bench/scoring.py, bench/explainability.py and bench/serving.py, so that they measure the
same model.
"""

from __future__ import annotations

import os
import time
from typing import Any

TRAIN_ROWS = 200_000
FLAG_QUANTILE = 0.97  # the operating threshold: the top 3 % of scores are flagged


def feature_types(features: list[str]) -> dict[str, str]:
    """The SQL type of each feature: counts bigint, the hour int, amounts and seconds double."""
    out = {}
    for f in features:
        if "count" in f:
            out[f] = "bigint"
        elif f == "event_hour":
            out[f] = "int"
        else:
            out[f] = "double"
    return out


def columns(rng: Any, n: int, types: dict[str, str]) -> dict[str, Any]:
    """Plausible fraud features: counts Poisson, amounts log-normal, seconds exponential, 1 % nulls."""
    import numpy as np

    cols: dict[str, Any] = {}
    for f, t in types.items():
        if t == "bigint":
            v = rng.poisson(3.0 if "1h" in f else 20.0, n).astype(np.float64)
        elif t == "int":
            v = rng.integers(0, 24, n).astype(np.float64)
        elif f.startswith("seconds"):
            v = rng.exponential(40_000.0, n)
        else:
            v = rng.lognormal(3.5, 1.0, n)
        v[rng.random(n) < 0.01] = np.nan
        cols[f] = v
    return cols


def label(rng: Any, cols: dict[str, Any]) -> Any:
    """1 for the top 3 % of a noisy non-linear score of the columns, else 0."""
    import numpy as np

    z = np.zeros(len(next(iter(cols.values()))))
    for i, v in enumerate(cols.values()):
        s = np.nan_to_num((v - np.nanmean(v)) / (np.nanstd(v) or 1.0))
        z += (0.6 if i % 3 == 0 else -0.3) * s + (0.4 * np.sin(s) if i % 2 else 0.0)
    z += rng.normal(size=len(z))
    return (z > np.quantile(z, 0.97)).astype(np.int8)


def train(uc: Any, rng: Any, rounds: int, rows: int = TRAIN_ROWS) -> dict[str, Any]:
    """An XGBoost binary model with ``uc``'s hyperparameters and seed and ``rounds`` rounds, trained
    on ``rows`` rows drawn from ``rng``: the booster, its training rows (float32) and labels, the
    training seconds and the operating threshold (the score at :data:`FLAG_QUANTILE`)."""
    import numpy as np
    import xgboost as xgb

    feats = uc.model_features()
    cols = columns(rng, rows, feature_types(feats))
    x = np.column_stack([cols[f] for f in feats]).astype(np.float32)
    y = label(rng, cols)
    params = {**uc.training.hyperparameters, "objective": "binary:logistic", "nthread": os.cpu_count() or 1}
    params["seed"] = uc.training.seed
    t = time.perf_counter()
    booster = xgb.train(params, xgb.DMatrix(x, label=y, feature_names=feats), num_boost_round=int(rounds))
    seconds = time.perf_counter() - t
    threshold = float(np.quantile(booster.inplace_predict(x), FLAG_QUANTILE))
    return {"booster": booster, "x": x, "y": y, "train_seconds": seconds, "threshold": threshold}


def register(uc: Any, trained: dict[str, Any], rounds: int, evaluation: Any, champion: bool) -> int:
    """Register a model :func:`train` made in the runtime's MLflow registry with the lineage the
    scoring code checks (task, features, threshold), and make it the champion if ``champion``;
    returns its version."""
    from mlblueprints.registry import local as registry
    from mlblueprints.training.core import hyperparameters
    from mlblueprints.training.models import Model

    hp = hyperparameters(uc)
    hp["num_boost_round"] = int(rounds)
    evaluation.mkdir(parents=True, exist_ok=True)
    (evaluation / "note.txt").write_text("benchmark model: trained on synthetic rows, not evaluated\n")
    lineage = {
        "task": "binary",
        "hyperparameters": hp,
        "model_format": "xgboost",
        "metrics": {"threshold": trained["threshold"]},
        "run_id": f"bench-{time.time_ns()}",
        "training_set": None,
    }
    out = registry.record(
        uc,
        model=Model("xgboost", trained["booster"], "binary", uc.model_features(), "bench"),
        candidate={"threshold": trained["threshold"]},
        champion=None,
        decision={"passed": True, "why": "benchmark"},
        lineage=lineage,
        params=hp,
        register=True,
        evaluation_dir=evaluation,
    )
    if champion:
        registry.promote(uc, int(out["version"]))
    return int(out["version"])
