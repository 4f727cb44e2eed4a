"""Promotion DAGs: one ``<usecase>__promotion`` per YAML file in dags/usecases/ with a
``promotion`` section, scheduled on the Asset of a challenger that passed the fairness gate (or
of a registered challenger, without explainability): canary on the endpoint, guardrails,
promote or roll back.

Configuration only: the pattern is declared in mlblueprints.patterns.promotion.
"""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).with_name("_mlblueprints_path.py")))  # the package's import path
from mlblueprints.airflow import register_dags  # noqa: E402

register_dags(globals(), "promotion", Path(__file__).with_name("usecases"))
