"""Training DAGs: one ``<usecase>__training`` per YAML file in dags/usecases/ with a ``training``
section, scheduled on its feature views' Assets (and on its drift-alert Asset).

Configuration only: the pattern is declared in mlblueprints.patterns.training.
"""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).with_name("_mlblueprints_path.py")))  # the package's import path
from mlblueprints.airflow import register_dags  # noqa: E402

register_dags(globals(), "training", Path(__file__).with_name("usecases"))
