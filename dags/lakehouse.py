"""Lakehouse DAGs: one ``<usecase>__lakehouse`` per YAML file in dags/usecases/.

Configuration only: the pattern is declared in mlblueprints.patterns.lakehouse and rendered by
mlblueprints.airflow.builder. A YAML that fails to load is reported as one warning line (file,
field, reason) and only that use case is missing.
"""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).with_name("_mlblueprints_path.py")))  # the package's import path
from mlblueprints.airflow import register_dags  # noqa: E402

register_dags(globals(), "lakehouse", Path(__file__).with_name("usecases"))
