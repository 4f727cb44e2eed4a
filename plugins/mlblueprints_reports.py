"""Airflow plugin: the reports the patterns write (quality gates and their Data Docs, feature
runs, training comparison and lineage, and whatever a later pattern writes) in the Airflow UI.

A FastAPI app at ``/mlblueprints`` (the logic is ``mlblueprints.reports``) and an external view
``ML reports`` in the UI's navigation that shows it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from airflow.plugins_manager import AirflowPlugin

try:
    import mlblueprints  # noqa: F401
except ImportError:  # a checkout or an Astro project: the package lives in include/ beside plugins/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

from mlblueprints.reports.web import PREFIX, TITLE, create_app  # noqa: E402


class MlblueprintsReportsPlugin(AirflowPlugin):
    name = "mlblueprints_reports"
    fastapi_apps = [{"app": create_app(), "url_prefix": PREFIX, "name": TITLE}]
    external_views = [
        {
            "name": TITLE,
            "href": f"{PREFIX}/reports/",
            "url_route": "mlblueprints-reports",
            "destination": "nav",
            "category": "browse",
        }
    ]
