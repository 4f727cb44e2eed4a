"""Explainability DAGs: one ``<usecase>__explainability`` per YAML file in dags/usecases/ with an
``explainability`` section, scheduled on the Asset the training DAG emits when it registers a
challenger (and run by hand for any version).

Configuration only: the pattern is declared in mlblueprints.patterns.explainability.
"""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).with_name("_mlblueprints_path.py")))  # the package's import path
from mlblueprints.airflow import register_dags  # noqa: E402

register_dags(globals(), "explainability", Path(__file__).with_name("usecases"))
