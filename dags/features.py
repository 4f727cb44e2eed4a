"""Feature DAGs: one ``<usecase>__features`` per YAML file in dags/usecases/ that declares
feature views, scheduled on the Gold Assets of the lakehouse DAG.

Configuration only: the pattern is declared in mlblueprints.patterns.features.
"""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).with_name("_mlblueprints_path.py")))  # the package's import path
from mlblueprints.airflow import register_dags  # noqa: E402

register_dags(globals(), "features", Path(__file__).with_name("usecases"))
