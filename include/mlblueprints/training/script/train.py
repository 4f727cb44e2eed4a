"""XGBoost training entry point under the SageMaker script-mode contract (checkpointing, resumable).

One script for the three task types a use case can declare (``training.task``): a binary label
(``binary:logistic``), one of several classes (``multi:softprob``, one probability per class) or a
number (a regression objective such as ``reg:squarederror`` or ``reg:tweedie``).

The same file runs unchanged in the SageMaker XGBoost framework container (``source_dir`` = this
directory, ``entry_point`` = ``train.py``) and on a laptop as a subprocess started by
:func:`mlblueprints.training.local.run_training_job`. It imports nothing from ``mlblueprints``:
only the standard library, numpy, pyarrow (pandas as a fallback reader) and xgboost.

Inputs (environment)
--------------------
``SM_CHANNEL_TRAIN``     directory of Parquet files (``*.parquet``, ``*.parq``, ``*.pq``, any
                         depth; names starting with ``.`` or ``_`` are skipped) holding the feature
                         columns and the label; other columns are ignored. Default
                         ``/opt/ml/input/data/train``.
``SM_MODEL_DIR``         where the model goes. Default ``/opt/ml/model``.
``SM_OUTPUT_DATA_DIR``   where the metrics go. Default ``/opt/ml/output/data``.
``SM_HPS``               hyperparameters as JSON (as SageMaker sets it); when unset,
                         ``$SM_INPUT_CONFIG_DIR/hyperparameters.json`` (default
                         ``/opt/ml/input/config/hyperparameters.json``).
``SM_CHECKPOINT_DIR``    our own variable: the checkpoint directory. Default ``/opt/ml/checkpoints``
                         (SageMaker's ``CheckpointConfig.LocalPath`` default).
``SM_OUTPUT_DIR``        optional: a ``failure`` file with the reason is written there on error.

Hyperparameters (SageMaker passes every value as a string; JSON-encoded strings are decoded)
-------------------------------------------------------------------------------------------
``features``                     required; comma-separated column names, in model input order
``label``                        required; the label column (no nulls): 0/1 for ``binary``, the
                                 class index 0..num_class-1 for ``multiclass``, a number for
                                 ``regression``
``task``                         ``binary`` (default), ``multiclass`` or ``regression``
``objective``                    default per task: ``binary:logistic``, ``multi:softprob``,
                                 ``reg:squarederror``; a regression may name another regression
                                 objective (``reg:tweedie``, ``reg:absoluteerror``, ...)
``num_class``                    multiclass: the number of classes
``num_boost_round``              required; total rounds of the finished model (int >= 1)
``seed``                         default 42
``checkpoint_interval_seconds``  default 300; 0 = a checkpoint after every round
anything else                    an XGBoost parameter (max_depth, eta, subsample,
                                 colsample_bytree, min_child_weight, nthread, ...); ``nthread``
                                 defaults to 2. Keys starting with ``sagemaker_`` or ``_`` are
                                 ignored. Fixed: the eval metric of the task (``logloss``,
                                 ``mlogloss``, ``rmse`` or ``mae``), tree_method ``hist``,
                                 ``seed_per_iteration``; ``updater`` and ``process_type`` are refused.

Outputs
-------
``$SM_MODEL_DIR/xgboost-model``             the booster (UBJSON, ``Booster.save_model`` format) and
                                            nothing else: the serving contract of the SageMaker
                                            XGBoost image, which loads every file it finds in the
                                            model directory as a booster (Batch Transform and
                                            endpoints serve the archive as it is)
``$SM_OUTPUT_DATA_DIR/model_meta.json``     features, label, rounds, seed, params, fingerprints,
                                            resumed_from_round, rounds_trained_in_this_process
``$SM_OUTPUT_DATA_DIR/training_metrics.json`` the train metric, timings, checkpoint count and seconds
stdout                                      one ``round <done>/<total> train-<metric>=<x> ...``
                                            line per round, checkpoint and resume decisions
exit code                                   0 done; 143 stopped by SIGTERM after writing a
                                            checkpoint; 2 bad hyperparameters or data; 1 other

Determinism: the model is a function of the data, the hyperparameters and the xgboost build,
whatever the order of files and rows and wherever training was interrupted:

* rows are put in a canonical order first: each row (features in the given order, then the label,
  as float32 with -0.0 made 0.0 and every NaN the same NaN) is compared as a byte string, and the
  rows are sorted by it. Rows that compare equal are identical, so file and row order never
  matter;
* tree_method ``hist``, a fixed ``nthread`` and ``seed_per_iteration``: the row sampler is seeded
  from ``seed`` and the round number;
* a resumed run must draw what an uninterrupted one draws. XGBoost's hist updater keeps state
  across rounds (its column sampler's random generator, seeded - with one draw from the global
  generator - the first time the updater runs), so a booster loaded from a checkpoint would draw
  differently from one that never stopped. This script therefore starts every round with a fresh
  updater, by alternating the ``updater`` parameter between two equivalent sequences
  (``grow_quantile_histmaker`` and ``grow_quantile_histmaker,prune``; ``prune`` removes nothing,
  since hist already refuses splits below ``gamma``), passed with every other parameter again.
  Every round is then the same whether it follows a resume or not (checked with xgboost 3.2 and
  with 1.7.6, the version of the SageMaker 1.7-1 container). This is also why the loop below
  calls ``Booster.update`` with the global round number instead of ``xgb.train(...,
  xgb_model=...)``, which restarts the iteration count (and so the per-iteration seed) at 0 on a
  resume.

Checkpoints (see ``checkpoints.py``): every ``checkpoint_interval_seconds`` of training and on
SIGTERM (the Spot two-minute notice): the handler only sets a flag; after the round in progress
a callback writes a checkpoint and the process exits with 143. On start the newest valid
checkpoint of the same data and parameters is resumed; corrupt, partial and foreign ones are
skipped with a logged reason.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

# xgboost imports scikit-learn, when installed, for its scikit-learn wrapper, which this script
# does not use: 5.4 of the 6.4 s that `import xgboost` took here. Blocking it keeps every
# (re)start of a training process cheap; xgboost falls back to its stand-ins for the sklearn bases.
# Only when run as a script: an importer keeps its scikit-learn.
if __name__ == "__main__" and "sklearn" not in sys.modules:
    sys.modules["sklearn"] = None  # type: ignore[assignment]

import numpy as np  # noqa: E402
import xgboost as xgb  # noqa: E402

try:  # imported as mlblueprints.training.script.train
    from . import checkpoints as ckpt_lib
except ImportError:  # run as a script (SageMaker, the local runner): the sibling file
    import checkpoints as ckpt_lib  # type: ignore[no-redef]

SCRIPT_VERSION = "1"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 143
TREE_METHOD = "hist"
TASKS = ("binary", "multiclass", "regression")
DEFAULT_OBJECTIVE = {"binary": "binary:logistic", "multiclass": "multi:softprob", "regression": "reg:squarederror"}
REGRESSION_OBJECTIVES = (
    "reg:squarederror",
    "reg:absoluteerror",
    "reg:pseudohubererror",
    "reg:squaredlogerror",
    "reg:tweedie",
    "reg:gamma",
    "count:poisson",
)
# the train metric reported per round (and to SageMaker's metric definitions)
EVAL_METRIC = {"binary:logistic": "logloss", "multi:softprob": "mlogloss", "reg:absoluteerror": "mae"}
DEFAULT_CHANNEL = "/opt/ml/input/data/train"
DEFAULT_MODEL_DIR = "/opt/ml/model"
DEFAULT_OUTPUT_DATA_DIR = "/opt/ml/output/data"
DEFAULT_CONFIG_DIR = "/opt/ml/input/config"
DEFAULT_CHECKPOINT_DIR = "/opt/ml/checkpoints"
DEFAULT_SEED = 42
DEFAULT_NTHREAD = 2
DEFAULT_CHECKPOINT_INTERVAL = 300.0
KEEP_CHECKPOINTS = 2
SCRIPT_KEYS = ("features", "label", "num_boost_round", "seed", "checkpoint_interval_seconds", "task")
FIXED_PARAMS = {"tree_method": TREE_METHOD}
REFUSED_PARAMS = ("updater", "process_type", "eval_metric")
# two updater sequences that grow the same trees; switching between them every round makes
# XGBoost create a fresh hist updater (see the module docstring)
UPDATER_SEQUENCES = ("grow_quantile_histmaker", "grow_quantile_histmaker,prune")
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")
MODEL_FILE = "xgboost-model"  # the name the SageMaker XGBoost image serves
META_FILE = "model_meta.json"
METRICS_FILE = "training_metrics.json"

warnings.filterwarnings("ignore", message=r".*manually specified the `updater` parameter.*")


class UsageError(Exception):
    """Bad hyperparameters or training data (exit code 2)."""


def log(msg: str) -> None:
    print(msg, flush=True)


# ====================================================================== hyperparameters


def _decode(value: Any) -> Any:
    """A SageMaker hyperparameter value: JSON-decode strings that are JSON ("6", "0.1", "\"a,b\"")."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def load_hyperparameters(env: dict[str, str]) -> tuple[dict[str, Any], str]:
    """``(hyperparameters, where they came from)``: ``SM_HPS``, else the hyperparameters.json file."""
    if env.get("SM_HPS"):
        try:
            raw = json.loads(env["SM_HPS"])
        except ValueError as exc:
            raise UsageError(f"SM_HPS is not JSON: {exc}") from None
        source = "SM_HPS"
    else:
        path = Path(env.get("SM_INPUT_CONFIG_DIR") or DEFAULT_CONFIG_DIR) / "hyperparameters.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"no hyperparameters: SM_HPS is not set and {path} does not exist") from None
        except ValueError as exc:
            raise UsageError(f"{path} is not JSON: {exc}") from None
        source = str(path)
    if not isinstance(raw, dict):
        raise UsageError(f"hyperparameters from {source} are not a JSON object")
    return {str(k): _decode(v) for k, v in raw.items()}, source


def _as_int(name: str, value: Any, minimum: int | None = None) -> int:
    try:
        if isinstance(value, bool):
            raise ValueError
        f = float(value)
        if f != int(f):
            raise ValueError
        out = int(f)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"hyperparameter {name}: {value!r} is not an integer") from None
    if minimum is not None and out < minimum:
        raise UsageError(f"hyperparameter {name}: must be at least {minimum}, got {out}")
    return out


def _as_float(name: str, value: Any, minimum: float | None = None) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        out = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"hyperparameter {name}: {value!r} is not a number") from None
    if out != out or (minimum is not None and out < minimum):
        raise UsageError(f"hyperparameter {name}: must be a number >= {minimum}, got {value!r}")
    return out


def _text(value: Any) -> str:
    """A name back from a decoded value: a column called ``true`` or ``null`` decodes to a non-string."""
    return value if isinstance(value, str) else json.dumps(value)


def _xgb_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return value


class Config:
    """The parsed hyperparameters of one run."""

    def __init__(self, hps: dict[str, Any]):
        feats = hps.get("features")
        if isinstance(feats, list):
            feats = [_text(f).strip() for f in feats]
        elif feats is not None:
            feats = [f.strip() for f in _text(feats).split(",")]
        if not feats or not all(feats):
            raise UsageError("hyperparameter features: give the model's input columns, comma-separated")
        if len(set(feats)) != len(feats):
            raise UsageError(f"hyperparameter features: a column is listed twice: {feats}")
        label = _text(hps["label"]).strip() if "label" in hps else ""
        if not label:
            raise UsageError("hyperparameter label: give the label column")
        if label in feats:
            raise UsageError(f"hyperparameter label: {label!r} is also a feature")
        if "num_boost_round" not in hps:
            raise UsageError("hyperparameter num_boost_round is required")
        task = _text(hps.get("task", "binary")).strip()
        if task not in TASKS:
            raise UsageError(f"hyperparameter task: {task!r} is not one of {', '.join(TASKS)}")
        objective = _text(hps.get("objective", DEFAULT_OBJECTIVE[task])).strip()
        if task == "regression":
            if objective not in REGRESSION_OBJECTIVES:
                raise UsageError(
                    f"hyperparameter objective: {objective!r} is not a regression objective "
                    f"({', '.join(REGRESSION_OBJECTIVES)})"
                )
        elif objective != DEFAULT_OBJECTIVE[task]:
            raise UsageError(f"hyperparameter objective: a {task} task trains with {DEFAULT_OBJECTIVE[task]}")
        self.num_class: int | None = None
        if task == "multiclass":
            if "num_class" not in hps:
                raise UsageError("hyperparameter num_class is required for a multiclass task")
            self.num_class = _as_int("num_class", hps["num_class"], 2)
        elif "num_class" in hps:
            raise UsageError(f"hyperparameter num_class: only a multiclass task has classes, not {task}")
        self.task = task
        self.objective = objective
        self.eval_metric = EVAL_METRIC.get(objective, "rmse")
        self.features: list[str] = feats
        self.label: str = label
        self.num_boost_round = _as_int("num_boost_round", hps["num_boost_round"], 1)
        self.seed = _as_int("seed", hps.get("seed", DEFAULT_SEED))
        self.checkpoint_interval = _as_float(
            "checkpoint_interval_seconds", hps.get("checkpoint_interval_seconds", DEFAULT_CHECKPOINT_INTERVAL), 0.0
        )
        params: dict[str, Any] = {}
        for key in sorted(hps):
            value = hps[key]
            if key in SCRIPT_KEYS or key in ("objective", "num_class") or key.startswith(("sagemaker_", "_")):
                continue
            if key in REFUSED_PARAMS:
                raise UsageError(f"hyperparameter {key}: set by this script, not configurable")
            if key in FIXED_PARAMS:
                if str(value) != FIXED_PARAMS[key]:
                    raise UsageError(f"hyperparameter {key}: this script trains with {key}={FIXED_PARAMS[key]}")
                continue
            if key == "seed_per_iteration":
                if str(value).lower() not in ("1", "true"):
                    raise UsageError("hyperparameter seed_per_iteration: must stay true (resumable training)")
                continue
            if key in ("random_state",):
                raise UsageError("hyperparameter random_state: use seed")
            params[key] = _xgb_value(value)
        if "nthread" in params:
            params["nthread"] = _as_int("nthread", params["nthread"], 1)
        else:
            params["nthread"] = DEFAULT_NTHREAD
        params.update(FIXED_PARAMS)
        params["objective"] = self.objective
        params["eval_metric"] = self.eval_metric
        if self.num_class is not None:
            params["num_class"] = self.num_class
        params["seed"] = self.seed
        params["seed_per_iteration"] = 1
        self.params: dict[str, Any] = dict(sorted(params.items()))

    def fingerprint(self) -> str:
        """What a checkpoint must have been trained with to be resumed by this run.

        ``num_boost_round`` is left out on purpose (a checkpoint of a shorter run with the same
        parameters is the start of this one); the xgboost version and this script's version are in.
        """
        doc = {
            "script_version": SCRIPT_VERSION,
            "xgboost_version": xgb.__version__,
            "features": self.features,
            "label": self.label,
            "params": self.params,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


# ====================================================================== data


def find_files(channel: Path) -> list[Path]:
    """Parquet files under ``channel`` (any depth, sorted; ``.``/``_`` names skipped)."""
    if not channel.is_dir():
        raise UsageError(f"training channel {channel} is not a directory")
    out = []
    for root, dirs, files in os.walk(channel):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        for name in sorted(files):
            if not name.startswith((".", "_")) and name.lower().endswith(PARQUET_SUFFIXES):
                out.append(Path(root) / name)
    if not out:
        raise UsageError(f"no Parquet files (*.parquet, *.parq, *.pq) under {channel}")
    return sorted(out)


def _read_file(path: Path, columns: list[str]) -> np.ndarray:
    """One file's ``columns`` as a float32 matrix (nulls -> NaN)."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - the framework containers ship pyarrow
        return _read_file_pandas(path, columns)
    try:
        pf = pq.ParquetFile(str(path))
    except Exception as exc:
        raise UsageError(f"{path}: not a readable Parquet file ({exc})") from None
    names = pf.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise UsageError(f"{path}: missing column(s) {missing}")
    table = pf.read(columns=columns)
    out = np.empty((table.num_rows, len(columns)), dtype=np.float32)
    for j, name in enumerate(columns):
        col = table.column(name)
        t = col.type
        if not (
            pa.types.is_integer(t)
            or pa.types.is_floating(t)
            or pa.types.is_boolean(t)
            or pa.types.is_decimal(t)
            or pa.types.is_null(t)
        ):
            raise UsageError(f"{path}: column {name!r} has type {t}; only numeric and boolean columns can be used")
        out[:, j] = pc.cast(col, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    return out


def _read_file_pandas(path: Path, columns: list[str]) -> np.ndarray:  # pragma: no cover
    import pandas as pd

    df = pd.read_parquet(path)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UsageError(f"{path}: missing column(s) {missing}")
    try:
        return df[columns].astype("float64").to_numpy(dtype=np.float32, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{path}: columns must be numeric or boolean ({exc})") from None


def _values(y: np.ndarray) -> list[float | int]:
    """Up to five distinct values, integers shown as integers."""
    return [int(v) if float(v).is_integer() else v for v in sorted(set(y.tolist()))[:5]]


def check_label(y: np.ndarray, label: str, cfg: Any) -> None:
    """The label's values must be what the task trains on (no nulls anywhere)."""
    if np.isnan(y).any():
        raise UsageError(f"label {label!r} has {int(np.isnan(y).sum())} null value(s)")
    if cfg.task == "binary":
        bad = ~((y == 0) | (y == 1))
        if bad.any():
            raise UsageError(f"label {label!r} must be 0 or 1; found {_values(y[bad])}")
    elif cfg.task == "multiclass":
        bad = ~((y == np.floor(y)) & (y >= 0) & (y < cfg.num_class))
        if bad.any():
            raise UsageError(f"label {label!r} must be a class index 0..{cfg.num_class - 1}; found {_values(y[bad])}")
    else:
        if not np.isfinite(y).all():
            raise UsageError(f"label {label!r} has infinite value(s)")
        need = {"reg:tweedie": (0.0, True), "count:poisson": (0.0, True), "reg:gamma": (0.0, False)}
        if cfg.objective in need:
            lo, inclusive = need[cfg.objective]
            bad = (y < lo) if inclusive else (y <= lo)
            if bad.any():
                rule = ">= 0" if inclusive else "> 0"
                raise UsageError(f"label {label!r} must be {rule} for {cfg.objective}; found {float(y[bad].min())}")
        if cfg.objective == "reg:squaredlogerror" and (y <= -1).any():
            raise UsageError(f"label {label!r} must be > -1 for reg:squaredlogerror")


def load_training_data(
    channel: Path, features: list[str], label: str, cfg: Any = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(X, y, info)`` in canonical row order, and the data fingerprint in ``info``."""
    files = find_files(channel)
    parts = [_read_file(f, [*features, label]) for f in files]
    m = np.concatenate(parts) if len(parts) > 1 else parts[0]
    del parts
    if m.shape[0] == 0:
        raise UsageError(f"no rows in the training data under {channel}")
    check_label(m[:, -1], label, cfg if cfg is not None else _BinaryTask())
    m, fingerprint = canonical_rows(m, features, label)
    x = np.ascontiguousarray(m[:, :-1])
    y = np.ascontiguousarray(m[:, -1])
    info: dict[str, Any] = {"files": len(files), "rows": int(m.shape[0]), "data_fingerprint": fingerprint}
    task = getattr(cfg, "task", "binary")
    if task == "binary":
        info["positives"] = int(y.sum())
    elif task == "multiclass":
        info["class_counts"] = np.bincount(y.astype(np.int64), minlength=cfg.num_class).tolist()
    else:
        info["label_range"] = [float(y.min()), float(y.max())]
    return x, y, info


class _BinaryTask:
    task, objective, num_class = "binary", "binary:logistic", None


def canonical_rows(m: np.ndarray, features: list[str], label: str) -> tuple[np.ndarray, str]:
    """Sort the rows of a float32 matrix by their bytes (-0.0 -> 0.0, one NaN); hash the result."""
    m = np.ascontiguousarray(m, dtype=np.float32)
    m += np.float32(0.0)  # -0.0 + 0.0 == +0.0
    m[np.isnan(m)] = np.float32("nan")
    keys = m.view(np.dtype((np.void, m.shape[1] * m.itemsize))).ravel()
    m = m[np.argsort(keys, kind="stable")]
    h = hashlib.sha256()
    header = {"features": features, "label": label, "rows": int(m.shape[0]), "dtype": "float32<", "order": "row-bytes"}
    h.update(json.dumps(header, sort_keys=True).encode())
    h.update(m.tobytes())
    return m, h.hexdigest()


# ====================================================================== training


class SigtermFlag:
    """SIGTERM sets a flag (nothing else happens in the handler); the training loop checks it."""

    def __init__(self) -> None:
        self.at: float | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.at is None:
            self.at = time.perf_counter()

    @property
    def set(self) -> bool:
        return self.at is not None


class CheckpointCallback(xgb.callback.TrainingCallback):
    """After each round: log progress, checkpoint when the interval is up or SIGTERM came; stop on SIGTERM."""

    def __init__(self, store: Any, dtrain: Any, total: int, interval: float, sigterm: SigtermFlag, start_round: int):
        super().__init__()
        self.store = store
        self.dtrain = dtrain
        self.total = total
        self.interval = interval
        self.sigterm = sigterm
        self.last_written = start_round  # the resumed checkpoint is already on disk
        self.t_start = time.perf_counter()
        self.t_last = self.t_start
        self.interrupted = False
        self.metric_name: str = "logloss"
        self.metric: float | None = None
        self.first_round_seconds: float | None = None  # on a resume: includes predicting the loaded trees

    def write(self, model: Any, rounds: int, reason: str) -> None:
        t = time.perf_counter()
        path = self.store.write(rounds, bytes(model.save_raw("ubj")), {"reason": reason, "num_boost_round": self.total})
        self.last_written = rounds
        log(f"checkpoint {path.name} written ({reason}) in {1000 * (time.perf_counter() - t):.1f} ms")

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        rounds = epoch + 1
        if self.first_round_seconds is None:
            self.first_round_seconds = time.perf_counter() - self.t_start
        self.metric = parse_eval(model.eval(self.dtrain, "train", epoch))
        now = time.perf_counter()
        log(f"round {rounds}/{self.total} train-{self.metric_name}={self.metric:.6f} elapsed={now - self.t_start:.1f}s")
        if self.sigterm.set:
            if rounds > self.last_written:
                self.write(model, rounds, "sigterm")
            self.interrupted = True
            return True
        if rounds < self.total and (self.interval == 0 or now - self.t_last >= self.interval):
            self.write(model, rounds, "interval")
            self.t_last = time.perf_counter()
        return False


def parse_eval(text: str) -> float:
    """``"[12]\\ttrain-logloss:0.123"`` (any metric) -> 0.123."""
    return float(str(text).rsplit(":", 1)[1])


def train_rounds(
    bst: Any, dtrain: Any, params: dict[str, Any], start: int, end: int, callback: CheckpointCallback
) -> int:
    """Boost rounds ``start..end-1`` (global numbering, so the per-round seed is right); returns rounds done.

    Each round switches the updater sequence (a fresh hist updater) and passes every parameter
    again with it: XGBoost 1.7 (the SageMaker 1.7-1 container) configures a re-created updater
    with only the parameters of that ``set_param`` call, and would otherwise grow the trees with
    default ``max_depth``, ``eta``, ... from the second round on.
    """
    done = start
    for i in range(start, end):
        bst.set_param({**params, "updater": UPDATER_SEQUENCES[i % 2]})
        bst.update(dtrain, iteration=i)
        done = i + 1
        if callback.after_iteration(bst, i, {}):
            break
    return done


def _env_dir(env: dict[str, str], key: str, default: str) -> Path:
    return Path(env.get(key) or default)


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt_lib.write_file_atomic(path, (json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n").encode())


def _die_with_parent(env: dict[str, str], sigterm: SigtermFlag) -> None:
    """Local runs only (``MLB_PARENT_PID`` set by the runner): get SIGTERM when the runner dies, so
    no orphan keeps training into the checkpoint directory the runner's retry will use."""
    ppid = env.get("MLB_PARENT_PID")
    if not ppid or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        return
    if str(os.getppid()) != ppid:  # the runner died before prctl took effect
        sigterm._handler(signal.SIGTERM, None)


def run(env: dict[str, str]) -> int:
    sigterm = SigtermFlag()
    sigterm.install()
    _die_with_parent(env, sigterm)
    hps, source = load_hyperparameters(env)
    cfg = Config(hps)
    channel = _env_dir(env, "SM_CHANNEL_TRAIN", DEFAULT_CHANNEL)
    model_dir = _env_dir(env, "SM_MODEL_DIR", DEFAULT_MODEL_DIR)
    output_dir = _env_dir(env, "SM_OUTPUT_DATA_DIR", DEFAULT_OUTPUT_DATA_DIR)
    checkpoint_dir = _env_dir(env, "SM_CHECKPOINT_DIR", DEFAULT_CHECKPOINT_DIR)
    log(
        f"train.py {SCRIPT_VERSION}: xgboost {xgb.__version__}, hyperparameters from {source}, "
        f"{len(cfg.features)} features, label {cfg.label!r}, num_boost_round {cfg.num_boost_round}, "
        f"checkpoint every {cfg.checkpoint_interval:g} s to {checkpoint_dir}"
    )

    t_load = time.perf_counter()
    x, y, info = load_training_data(channel, cfg.features, cfg.label, cfg)
    dtrain = xgb.DMatrix(x, label=y, feature_names=cfg.features, missing=np.nan, nthread=cfg.params["nthread"])
    del x
    load_seconds = time.perf_counter() - t_load
    shape = (
        f"{info['positives']} positive"
        if "positives" in info
        else f"class counts {info['class_counts']}"
        if "class_counts" in info
        else f"label {info['label_range'][0]:g}..{info['label_range'][1]:g}"
    )
    log(
        f"data: {info['rows']} rows ({shape}) from {info['files']} file(s) in "
        f"{load_seconds:.2f} s, fingerprint {info['data_fingerprint'][:16]}; task {cfg.task}, objective {cfg.objective}"
    )

    params_fp = cfg.fingerprint()
    store = ckpt_lib.CheckpointStore(
        checkpoint_dir, info["data_fingerprint"], params_fp, keep=KEEP_CHECKPOINTS, log=log
    )
    store.lock()
    try:
        t_resume = time.perf_counter()
        store.clean_stale()
        bst, resumed = None, None
        for c in store.candidates(max_rounds=cfg.num_boost_round):
            try:
                b = xgb.Booster(cfg.params, [dtrain], model_file=bytearray(c.model))
                if b.num_boosted_rounds() != c.rounds:
                    raise ValueError(f"model has {b.num_boosted_rounds()} rounds")
            except Exception as exc:  # a model this xgboost cannot load: try the next one
                log(f"checkpoint: skipping {c.path.name}: the model does not load ({exc})")
                continue
            bst, resumed = b, c
            store.mark_good(c)
            break
        start = resumed.rounds if resumed else 0
        if bst is None:
            bst = xgb.Booster(cfg.params, [dtrain])
            log(f"no usable checkpoint: training rounds 1..{cfg.num_boost_round}")
        else:
            log(f"resuming from {resumed.path.name}: {start} rounds done, training {start + 1}..{cfg.num_boost_round}")

        resume_seconds = time.perf_counter() - t_resume
        callback = CheckpointCallback(store, dtrain, cfg.num_boost_round, cfg.checkpoint_interval, sigterm, start)
        callback.metric_name = cfg.eval_metric
        if sigterm.set:
            log("SIGTERM before training started: exiting")
            return EXIT_INTERRUPTED
        t_train = time.perf_counter()
        done = train_rounds(bst, dtrain, cfg.params, start, cfg.num_boost_round, callback)
        training_seconds = time.perf_counter() - t_train
        trained = done - start
        value = callback.metric if callback.metric is not None else parse_eval(bst.eval(dtrain, "train", done))
        metrics = {
            "train_metric": cfg.eval_metric,
            f"train_{cfg.eval_metric}": value,
            "rounds": done,
            "num_boost_round": cfg.num_boost_round,
            "rounds_trained_in_this_process": trained,
            "resumed_from_round": resumed.rounds if resumed else None,
            "rows": info["rows"],
            "load_seconds": round(load_seconds, 4),
            "resume_seconds": round(resume_seconds, 4),
            "training_seconds": round(training_seconds, 4),
            "first_round_seconds": round(callback.first_round_seconds or 0.0, 4),
            "seconds_per_round": round(training_seconds / trained, 6) if trained else None,
            "checkpoint_interval_seconds": cfg.checkpoint_interval,
            "checkpoint_count": store.count,
            "checkpoint_seconds": round(store.seconds, 4),
            "checkpoint_share": round(store.seconds / training_seconds, 6) if training_seconds > 0 else 0.0,
            "interrupted": callback.interrupted,
            "wall_seconds": round(time.perf_counter() - _T0, 4),
        }
        if callback.interrupted:
            write_json_atomic(output_dir / METRICS_FILE, metrics)
            log(f"SIGTERM: stopped after round {done}, checkpoint {ckpt_lib.checkpoint_name(done)}; exit 143")
            return EXIT_INTERRUPTED
    finally:
        store.unlock()

    model = bytes(bst.save_raw("ubj"))
    model_dir.mkdir(parents=True, exist_ok=True)
    ckpt_lib.write_file_atomic(model_dir / MODEL_FILE, model)
    write_json_atomic(output_dir / METRICS_FILE, metrics)
    meta = {
        "format": "mlblueprints-xgboost-model/1",
        "model_file": MODEL_FILE,
        "model_sha256": ckpt_lib.sha256_bytes(model),
        "features": cfg.features,
        "label": cfg.label,
        "task": cfg.task,
        "objective": cfg.objective,
        "num_class": cfg.num_class,
        "rounds": done,
        "num_boost_round": cfg.num_boost_round,
        "seed": cfg.seed,
        "params": cfg.params,
        "data_fingerprint": info["data_fingerprint"],
        "params_fingerprint": params_fp,
        "rows": info["rows"],
        **{k: info[k] for k in ("positives", "class_counts", "label_range") if k in info},
        "resumed_from_round": resumed.rounds if resumed else None,
        "rounds_trained_in_this_process": trained,
        "train_metric": cfg.eval_metric,
        f"train_{cfg.eval_metric}": value,
        "checkpoint_interval_seconds": cfg.checkpoint_interval,
        "hyperparameters_source": source,
        "xgboost_version": xgb.__version__,
        "script_version": SCRIPT_VERSION,
    }
    write_json_atomic(output_dir / META_FILE, meta)  # not in the model dir: the container would load it
    log(
        f"done: {done} rounds ({trained} in this process), train-{cfg.eval_metric}={value:.6f}, "
        f"{store.count} checkpoint(s) in {store.seconds:.2f} s, model {model_dir / MODEL_FILE}"
    )
    return EXIT_OK


def _write_failure(env: dict[str, str], message: str) -> None:
    """SageMaker reports the content of /opt/ml/output/failure as the job's FailureReason."""
    out = env.get("SM_OUTPUT_DIR") or ("/opt/ml/output" if os.path.isdir("/opt/ml/output") else "")
    if not out:
        return
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "failure").write_text(message[:1000], encoding="utf-8")
    except OSError:
        pass


def main() -> int:
    env = dict(os.environ)
    try:
        return run(env)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        _write_failure(env, str(exc))
        return EXIT_USAGE
    except ckpt_lib.CheckpointDirBusy as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        _write_failure(env, str(exc))
        return EXIT_ERROR
    except Exception as exc:
        traceback.print_exc()
        sys.stderr.flush()
        _write_failure(env, f"{exc.__class__.__name__}: {exc}")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
