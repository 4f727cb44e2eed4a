"""Monitoring DAGs: one ``<usecase>__monitoring`` per YAML file in dags/usecases/ with a
``monitoring`` section, scheduled on its predictions Asset; a drift alert it emits triggers the
use case's training DAG.

Configuration only: the pattern is declared in mlblueprints.patterns.monitoring.
"""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).with_name("_mlblueprints_path.py")))  # the package's import path
from mlblueprints.airflow import register_dags  # noqa: E402

register_dags(globals(), "monitoring", Path(__file__).with_name("usecases"))
