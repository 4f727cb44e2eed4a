"""Loading a trained model, whatever wrote it, and scoring with it the same way.

A training job leaves its model in ``SM_MODEL_DIR``. The built-in script writes an XGBoost booster
(``xgboost-model``, UBJSON: the SageMaker XGBoost serving name, and the only file there); a team's
own script (``training.entry_point``) declares what it writes with ``training.model_format``:

* ``xgboost`` - a booster file: ``xgboost-model``, ``model.ubj``, ``model.json``, ``model.bin`` or
  ``model.xgb``;
* ``sklearn`` - a fitted scikit-learn estimator (or pipeline) saved with joblib as
  ``model.joblib`` (or ``model.pkl``);
* ``mlflow`` - an MLflow model directory (an ``MLmodel`` file at the root of SM_MODEL_DIR, or in
  one sub-directory).

:func:`load_model` returns a :class:`Model` whose :meth:`~Model.scores` gives what evaluation
needs for the task: the probability of the positive class (binary), one probability per class
in ``training.classes`` order (multiclass), the predicted value (regression). A model directory
holding no model, or a model of another format than declared, is refused with one line naming
what was found.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlblueprints.errors import PermanentError
from mlblueprints.training.core import BOOSTER_FILES, MODEL_FILE

SKLEARN_FILES = ("model.joblib", "model.pkl")
FORMATS = ("xgboost", "sklearn", "mlflow")


class ModelFormatError(PermanentError, ValueError):
    """The model directory holds no model, or not one of the declared format."""


def _what(model_dir: Path) -> list[str]:
    if not model_dir.is_dir():
        return []
    return sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())[:20]


def detect_format(model_dir: Path) -> str | None:
    """The format of what is in ``model_dir`` (None when nothing a model loader knows)."""
    model_dir = Path(model_dir)
    if (model_dir / MODEL_FILE).is_file() or any((model_dir / f).is_file() for f in BOOSTER_FILES):
        return "xgboost"
    if any((model_dir / f).is_file() for f in SKLEARN_FILES):
        return "sklearn"
    if (model_dir / "MLmodel").is_file() or any(p.is_file() for p in model_dir.glob("*/MLmodel")):
        return "mlflow"
    return None


@dataclass
class Model:
    """A loaded model: ``flavor`` (xgboost | sklearn | mlflow), ``raw`` (the booster, estimator
    or pyfunc model), what it was trained for (``task``) and its input columns."""

    flavor: str
    raw: Any
    task: str
    features: list[str]
    source: str

    def scores(self, x: Any) -> Any:
        """Scores of the rows ``x`` (a 2-D float array, columns in ``features`` order)."""
        import numpy as np

        x = np.asarray(x, dtype=np.float64)
        if self.flavor == "xgboost":
            import xgboost as xgb

            out = self.raw.predict(xgb.DMatrix(x, feature_names=self.features))
        elif self.flavor == "sklearn":
            if self.task == "regression":
                out = self.raw.predict(x)
            else:
                if not hasattr(self.raw, "predict_proba"):
                    raise ModelFormatError(
                        f"{self.source}: a {self.task} model must have predict_proba (class probabilities)"
                    )
                out = self.raw.predict_proba(x)
        else:
            import pandas as pd

            out = self.raw.predict(pd.DataFrame(x, columns=self.features))
            out = out.to_numpy() if hasattr(out, "to_numpy") else np.asarray(out)
        return _shape(np.asarray(out, dtype=np.float64), self.task, self.source)


def _shape(out: Any, task: str, source: str) -> Any:
    """Scores as evaluation takes them: (n,) for binary and regression, (n, classes) for multiclass."""
    if task == "binary":
        if out.ndim == 2 and out.shape[1] == 2:
            out = out[:, 1]  # predict_proba: the positive class
        if out.ndim != 1:
            raise ModelFormatError(f"{source}: a binary model gave scores of shape {out.shape}")
    elif task == "multiclass":
        if out.ndim != 2:
            raise ModelFormatError(f"{source}: a multiclass model must give one probability per class, got {out.shape}")
    else:
        out = out.reshape(len(out), -1)
        if out.shape[1] != 1:
            raise ModelFormatError(f"{source}: a regression model gave {out.shape[1]} outputs per row")
        out = out[:, 0]
    return out


def load_booster(path: Path) -> Any:
    """An XGBoost booster from a file in any of its formats (JSON, UBJSON or the old binary one),
    whatever the file is called: read as bytes, so the format comes from the content, not from
    the name (``xgboost-model`` has no extension)."""
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(Path(path).read_bytes()))
    return booster


def load_model(model_dir: Path, model_format: str, task: str, features: list[str]) -> Model:
    """The model a training job left in ``model_dir``, of the declared ``model_format``."""
    model_dir = Path(model_dir)
    if model_format not in FORMATS:
        raise ModelFormatError(f"unknown model_format {model_format!r}; use one of {', '.join(FORMATS)}")
    found = detect_format(model_dir)
    if found is None:
        raise ModelFormatError(
            f"the training script wrote no model to {model_dir} (model_format {model_format}: expected "
            f"{_expected(model_format)}); found {_what(model_dir) or 'nothing'}"
        )
    if found != model_format:
        raise ModelFormatError(
            f"the training script wrote a {found} model to {model_dir} ({', '.join(_what(model_dir))}), "
            f"but training.model_format is {model_format}: declare what the script writes"
        )
    if model_format == "xgboost":
        path = next(p for p in (model_dir / MODEL_FILE, *(model_dir / f for f in BOOSTER_FILES)) if p.is_file())
        return Model("xgboost", load_booster(path), task, list(features), str(path))
    if model_format == "sklearn":
        import joblib

        path = next(model_dir / f for f in SKLEARN_FILES if (model_dir / f).is_file())
        return Model("sklearn", joblib.load(path), task, list(features), str(path))
    import mlflow.pyfunc

    root = model_dir if (model_dir / "MLmodel").is_file() else next(p.parent for p in model_dir.glob("*/MLmodel"))
    return Model("mlflow", mlflow.pyfunc.load_model(str(root)), task, list(features), str(root))


def _expected(model_format: str) -> str:
    return {
        "xgboost": f"a booster file: {MODEL_FILE} or one of {', '.join(BOOSTER_FILES)}",
        "sklearn": f"a joblib file: {' or '.join(SKLEARN_FILES)}",
        "mlflow": "an MLflow model directory (an MLmodel file)",
    }[model_format]


def from_registry(model_uri: str, task: str, features: list[str]) -> Model:
    """A registered version (``models:/<name>/<version>``) loaded in its own flavor."""
    from mlflow.models import Model as MlflowModel

    flavors = MlflowModel.load(model_uri).flavors
    if "xgboost" in flavors:
        import mlflow.xgboost

        return Model("xgboost", mlflow.xgboost.load_model(model_uri), task, list(features), model_uri)
    if "sklearn" in flavors:
        import mlflow.sklearn

        return Model("sklearn", mlflow.sklearn.load_model(model_uri), task, list(features), model_uri)
    import mlflow.pyfunc

    return Model("mlflow", mlflow.pyfunc.load_model(model_uri), task, list(features), model_uri)
