"""Shared test helpers: run the DAG for landing days, read tables with pyiceberg's own reader."""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from mlblueprints.config import UseCase, load_usecase
from mlblueprints.lakehouse import iceberg, naming

ROOT = Path(__file__).resolve().parents[1]


def fraud_usecase() -> UseCase:
    return load_usecase(ROOT / "dags" / "usecases" / "fraud_detection.yaml")


@contextmanager
def env_var(name: str, value: Path | str):
    """Set an environment variable for the duration (session fixtures cannot use monkeypatch)."""
    old = os.environ.get(name)
    os.environ[name] = str(value)
    try:
        yield value
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def usecases_dir(directory: Path):
    """Point the use-case loader at ``directory`` for the duration."""
    return env_var("MLB_USECASES_DIR", directory)


def runtime_home(home: Path):
    """Point the runtime at ``home`` for the duration."""
    return env_var("MLB_HOME", home)


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_table(uc: UseCase, name: str) -> pd.DataFrame:
    """A whole table through pyiceberg's reader (independent of the DuckDB path under test)."""
    t = iceberg.load(iceberg.catalog(), naming.identifier(uc, name))
    if t is None:
        return pd.DataFrame()
    return t.scan().to_arrow().to_pandas()


def table_fingerprint(uc: UseCase, name: str, drop: tuple[str, ...] = ()) -> list[tuple[Any, ...]]:
    """Every row of a table as sorted tuples (order-free comparison of contents)."""
    df = read_table(uc, name)
    if df.empty:
        return []
    df = df.drop(columns=[c for c in drop if c in df.columns])
    df = df[sorted(df.columns)]
    rows = [tuple(None if pd.isna(v) else v for v in row) for row in df.itertuples(index=False, name=None)]
    return sorted(rows, key=repr)


def all_tables(uc: UseCase) -> list[str]:
    out = []
    for ds in uc.datasets:
        out += [naming.table_name(ds, k) for k in ("bronze", "bronze_files", "silver", "quarantine", "duplicates")]
    return out + list(uc.gold)


def run_days(dag: Any, days: list[date], conf: dict | None = None) -> list[Any]:
    from mlblueprints.airflow import localrun

    return [localrun.run_dag(dag, d, conf) for d in days]


def register_explainable_version(
    uc: UseCase, tmp_path: Path, *, biased: bool = False, run_id: str = "train-1", n: int = 1000, rounds: int = 20
) -> tuple[int, Any]:
    """A booster flagging high f0 registered in the local MLflow store with a holdout of the fraud
    use case's columns (the explainability pattern explains it): with ``biased`` the online rows
    have higher f0 (the model flags them more), else each online row has a point-of-sale twin with
    the same features. Returns (version, booster)."""
    import numpy as np
    import xgboost as xgb

    from mlblueprints.registry import local as registry
    from mlblueprints.training.models import load_model

    feats = uc.model_features()
    rng = np.random.default_rng(11)
    x = rng.normal(size=(n, len(feats)))
    y = (x[:, 0] + 0.3 * rng.normal(size=n) > 1.0).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "seed": 1},
        xgb.DMatrix(x, label=y, feature_names=feats),
        num_boost_round=rounds,
    )
    model_dir = tmp_path / run_id / "model"
    model_dir.mkdir(parents=True)
    booster.save_model(str(model_dir / "model.ubj"))
    online = x.copy()
    if biased:
        online[:, 0] += 1.5
    holdout = pd.DataFrame(np.vstack([x, online]), columns=feats)
    holdout["channel"] = ["pos"] * n + ["online"] * n
    holdout["transaction_id"] = [f"t{i}" for i in range(2 * n)]
    holdout["is_fraud"] = np.r_[y, y]
    ev_dir = tmp_path / run_id / "evaluation"
    ev_dir.mkdir()
    holdout.to_parquet(ev_dir / "holdout.parquet")
    out = registry.record(
        uc,
        model=load_model(model_dir, "xgboost", "binary", feats),
        candidate={"threshold": 0.5},
        champion=None,
        decision={"passed": True},
        lineage={"run_id": run_id, "task": "binary", "metrics": {"threshold": 0.5}},
        params={},
        register=True,
        evaluation_dir=ev_dir,
    )
    return int(out["version"]), booster


def clarify_analysis(config: dict[str, Any], data: pd.DataFrame, booster: Any) -> tuple[dict[str, Any], Any]:
    """What a SageMaker Clarify job computes from its analysis config and dataset, for the stand-ins
    of tests where no Clarify container runs: the booster's labels at the config's threshold, the
    config's bias metrics per facet, and exact TreeSHAP values (standing in for the container's
    Kernel SHAP: values that can be checked). Returns ``analysis.json`` (Clarify's keys only) and the
    SHAP values ``explain.core.write_analysis`` writes beside it."""
    import numpy as np

    from mlblueprints.explain import core

    label = config["label"]
    feats = [c for c in data.columns if c != label and c not in config.get("excluded_columns", [])]
    x = data[feats].to_numpy(dtype=np.float64)
    predicted = (booster.inplace_predict(x) >= config["probability_threshold"]).astype(np.int64)
    methods = config["methods"]
    facets = [core.Facet(f["name_or_index"], tuple(f["value_or_threshold"])) for f in config.get("facet", [])]
    bias = core.bias_report(
        data,
        facets,
        label,
        config["label_values_or_threshold"][0],
        predicted,
        pre_training=methods.get("pre_training_bias", {}).get("methods", []),
        post_training=methods.get("post_training_bias", {}).get("methods", []),
    )
    shap = core.tree_shap(booster, x, feats)
    doc = core.analysis(bias, shap)
    doc.pop("mlblueprints")  # a Clarify job writes Clarify's keys only
    return doc, shap
