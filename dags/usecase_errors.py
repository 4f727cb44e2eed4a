"""Not a DAG: reports every use-case YAML in dags/usecases/ that does not load as an Airflow
import error of this file (one line per problem), so a broken use case is visible in the UI and
in ``airflow dags list-import-errors``; the pattern DAG files skip it and keep the others.
"""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).with_name("_mlblueprints_path.py")))  # the package's import path
from mlblueprints.airflow import report_broken_usecases  # noqa: E402

report_broken_usecases(Path(__file__).with_name("usecases"))
