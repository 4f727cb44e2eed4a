"""What the training pattern shares between targets and orchestrators (pure, no heavy import).

* :func:`hyperparameters` - the training script's hyperparameters for a use case;
* the one hyperparameter codec (:func:`encode_hyperparameters` / :func:`decode_hyperparameters`):
  every value JSON-encoded, as CreateTrainingJob carries it and SageMaker's training toolkit
  decodes it. The local runner writes ``hyperparameters.json`` and ``SM_HPS`` with the same
  codec, so a local run exercises exactly what an aws job receives;
* :func:`job_dir` - the per-run working directory (checkpoints there survive a retry);
* :func:`source_archive` - the training code as a reproducible ``.tar.gz``;
* the names of the files a training job leaves.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.config import UseCase
from mlblueprints.core.naming import safe
from mlblueprints.training import ENTRY_POINT

HYPERPARAMETER_VALUE_MAX = 2500  # CreateTrainingJob: characters per value, once encoded
# the built-in script's booster in /opt/ml/model: the one file there, under the name the SageMaker
# XGBoost image serves (it loads every file of the model dir as a booster)
MODEL_FILE = "xgboost-model"
META_FILE = "model_meta.json"  # the script's, in /opt/ml/output/data (never beside the booster)
METRICS_FILE = "training_metrics.json"  # the script's, in /opt/ml/output/data
# other booster files a training job may leave in /opt/ml/model (model.ubj: before the serving layout)
BOOSTER_FILES = ("model.ubj", "model.json", "model.bin", "model.xgb")


def hyperparameters(uc: UseCase) -> dict[str, Any]:
    """The training script's hyperparameters (typed values) for ``uc``."""
    t = uc.training
    if t is None:
        raise ValueError(f"{uc.name}: the use case has no training section")
    ts = uc.training_sets[t.training_set]
    out = {
        **t.hyperparameters,
        "features": ",".join(uc.model_features()),
        "label": ts.labels.label,
        "task": t.task,
        "objective": t.xgboost_objective,
        "num_boost_round": t.num_boost_round,
        "seed": t.seed,
        "checkpoint_interval_seconds": t.checkpoint_interval_seconds,
    }
    if t.task == "multiclass":
        out["num_class"] = len(uc.label_classes() or [])
    return out


def encode_hyperparameters(values: Mapping[str, Any]) -> dict[str, str]:
    """Every value JSON-encoded (strings too): the framework containers ``json.loads`` each one.

    NaN and infinities have no JSON form and are refused, as are values longer than the API's
    2,500 characters once encoded; ``None`` values are dropped.
    """
    out: dict[str, str] = {}
    for k, v in values.items():
        if v is None:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"hyperparameter {k!r} is {v!r}, which JSON cannot carry")
        text = json.dumps(v, sort_keys=True, separators=(",", ":"), allow_nan=False)
        if len(text) > HYPERPARAMETER_VALUE_MAX:
            raise ValueError(
                f"hyperparameter {k!r} is {len(text)} characters once JSON-encoded; SageMaker accepts at most "
                f"{HYPERPARAMETER_VALUE_MAX} (pass large values in a file of the train channel)"
            )
        if not 0 < len(str(k)) <= 256:
            raise ValueError(f"hyperparameter name {k!r} must have 1-256 characters")
        out[str(k)] = text
    return out


def decode_hyperparameters(values: Mapping[str, str]) -> dict[str, Any]:
    """What the container does with ``hyperparameters.json``: ``json.loads`` each value, the raw
    string when it is not JSON (what SageMaker's toolkit puts in ``SM_HPS``)."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        try:
            out[k] = json.loads(v)
        except (ValueError, TypeError):
            out[k] = v
    return out


def job_dir(uc: UseCase, run_id: str) -> Path:
    """Per DAG run (not per try): checkpoints here survive a retry, which resumes from them."""
    return runtime.path("training", uc.name, safe(run_id))


def source_archive(script_dir: Path, entry_point: str = ENTRY_POINT) -> tuple[bytes, str]:
    """The training code as a reproducible ``.tar.gz`` (the entry point at the root, sorted
    members, no timestamps or owners, no caches) and its sha256: the same code gives the same bytes."""
    script_dir = Path(script_dir)
    if not (script_dir / entry_point).is_file():
        raise FileNotFoundError(f"the training code has no {entry_point} at its root: {script_dir}")
    buf = io.BytesIO()
    with (
        gzip.GzipFile(filename="", fileobj=buf, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for p in sorted(script_dir.rglob("*")):
            rel = p.relative_to(script_dir)
            if not p.is_file() or p.suffix in (".pyc", ".pyo"):
                continue
            if any(part == "__pycache__" or part.startswith(".") for part in rel.parts):
                continue
            info = tarfile.TarInfo(rel.as_posix())
            info.size = p.stat().st_size
            info.mode = 0o755 if os.access(p, os.X_OK) else 0o644
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with p.open("rb") as f:
                tar.addfile(info, f)
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()
