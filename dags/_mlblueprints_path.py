"""Makes the ``mlblueprints`` package importable from the DAG files of a checkout or a bundle
where it is not installed (it lives in ``include/`` beside ``dags/``). Not a DAG file: listed in
``.airflowignore``; each DAG file runs it first (``runpy.run_path``), whatever is on ``sys.path``."""

import sys
from pathlib import Path

try:
    import mlblueprints  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))
