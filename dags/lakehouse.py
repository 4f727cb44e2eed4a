"""Lakehouse DAGs: one ``<usecase>__lakehouse`` per YAML file in dags/usecases/.

Configuration only: the logic lives in mlblueprints.airflow.lakehouse. A YAML that fails to load
is reported as one warning line (file, field, reason) and only that use case is missing.
"""

import sys
from pathlib import Path

try:
    import mlblueprints  # noqa: F401
except ImportError:  # a checkout or an image where the package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from mlblueprints.airflow import register_dags
from mlblueprints.airflow.lakehouse import build_lakehouse_dag

register_dags(globals(), build_lakehouse_dag, Path(__file__).with_name("usecases"))
