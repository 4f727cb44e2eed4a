"""Scoring DAGs: one ``<usecase>__scoring`` per YAML file in dags/usecases/ with a ``scoring``
section, scheduled on its feature views' Assets, its Gold Asset or a timetable.

Configuration only: the pattern is declared in mlblueprints.patterns.scoring.
"""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).with_name("_mlblueprints_path.py")))  # the package's import path
from mlblueprints.airflow import register_dags  # noqa: E402

register_dags(globals(), "scoring", Path(__file__).with_name("usecases"))
