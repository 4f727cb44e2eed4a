"""Feature DAGs: one ``<usecase>__features`` per YAML file in dags/usecases/ that declares
feature views, scheduled on the Gold Assets of the lakehouse DAG.

Configuration only: the logic lives in mlblueprints.airflow.features.
"""

import sys
from pathlib import Path

try:
    import mlblueprints  # noqa: F401
except ImportError:  # a checkout or an image where the package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from mlblueprints.airflow import register_dags
from mlblueprints.airflow.features import build_features_dag

register_dags(globals(), build_features_dag, Path(__file__).with_name("usecases"))
