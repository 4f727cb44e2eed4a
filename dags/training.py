"""Training DAGs: one ``<usecase>__training`` per YAML file in dags/usecases/ with a ``training``
section, scheduled on its feature views' Assets (and on its drift-alert Asset).

Configuration only: the logic lives in mlblueprints.airflow.training.
"""

import sys
from pathlib import Path

try:
    import mlblueprints  # noqa: F401
except ImportError:  # a checkout or an image where the package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from mlblueprints.airflow import register_dags
from mlblueprints.airflow.training import build_training_dag

register_dags(globals(), build_training_dag, Path(__file__).with_name("usecases"))
