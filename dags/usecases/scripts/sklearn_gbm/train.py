"""A team's own training script: scikit-learn gradient boosting under the SageMaker script-mode
contract, checkpointed so that a Spot interruption loses at most one chunk of trees.

Point a use case at it with ``training.entry_point: scripts/sklearn_gbm/train.py`` and
``training.model_format: sklearn`` (``training.framework: sklearn`` on aws: the SageMaker
scikit-learn image runs it). What it relies on, and what any script must do (docs/training.md):

* read the hyperparameters from ``SM_HPS`` (JSON; ``features``, ``label``, ``task``, ``seed``,
  ``num_boost_round`` come from the use case, the rest from ``training.hyperparameters``);
* read the Parquet files of ``SM_CHANNEL_TRAIN`` (the features and the label, already encoded:
  0/1, a class index, or a number);
* write the model to ``SM_MODEL_DIR`` in the declared format (here ``model.joblib``);
* for Spot: checkpoint to ``SM_CHECKPOINT_DIR`` (write a temporary file, then rename), resume from
  the newest checkpoint on start, and on SIGTERM checkpoint and exit with 143;
* optionally print ``round <done>/<total>`` lines: the run shows progress, and the simulated
  interruption (``interrupt: {after_rounds: n}``) knows when to strike.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

CHUNK = 10  # trees between checkpoints
stop = False


def _on_sigterm(signum, frame):  # Spot's two-minute notice: finish the chunk, checkpoint, exit
    global stop
    stop = True


def main() -> int:
    import joblib
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    signal.signal(signal.SIGTERM, _on_sigterm)
    hps = json.loads(os.environ["SM_HPS"])
    features = [f for f in str(hps["features"]).split(",") if f]
    label, task = hps["label"], hps.get("task", "binary")
    total = int(hps.get("num_boost_round", 100))
    table = pq.read_table(os.environ["SM_CHANNEL_TRAIN"]).to_pandas()
    x = table[features].to_numpy(dtype=np.float64)
    x = np.nan_to_num(x, nan=0.0)  # this estimator takes no missing values
    y = table[label].to_numpy()
    ckpt_dir = Path(os.environ.get("SM_CHECKPOINT_DIR", "/opt/ml/checkpoints"))
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_dir / "model.joblib"
    if ckpt.is_file():
        model = joblib.load(ckpt)
        print(f"resuming from a checkpoint with {model.n_estimators} trees", flush=True)
    else:
        cls = GradientBoostingRegressor if task == "regression" else GradientBoostingClassifier
        model = cls(
            n_estimators=0,
            warm_start=True,
            max_depth=int(hps.get("max_depth", 3)),
            learning_rate=float(hps.get("learning_rate", 0.1)),
            random_state=int(hps.get("seed", 0)),
        )
    while model.n_estimators < total:
        model.n_estimators = min(total, model.n_estimators + CHUNK)
        model.fit(x, y)
        tmp = ckpt.with_name(ckpt.name + ".partial")
        joblib.dump(model, tmp)
        os.replace(tmp, ckpt)
        print(f"round {model.n_estimators}/{total}", flush=True)  # progress: "round <done>/<total>"
        if stop:
            print("SIGTERM: checkpoint written, exiting", flush=True)
            return 143
    out = Path(os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out / "model.joblib")
    return 0


if __name__ == "__main__":
    sys.exit(main())
