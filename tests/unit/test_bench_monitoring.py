"""The drift monitoring benchmark's smoke run: it runs end to end, and its verdicts agree with
Evidently's on every column."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_monitoring_benchmark_quick(tmp_path):
    out = tmp_path / "monitoring.json"
    proc = subprocess.run(
        [sys.executable, str(PROJECT / "bench" / "monitoring.py"), "--quick", "--json", str(out)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Drift monitoring benchmark" in proc.stdout and "Sampling the window" in proc.stdout
    (size,) = json.loads(out.read_text())["summary"].values()
    assert size["columns"] == 30 and size["drifted_columns"] > 0
    assert size["verdict_disagreements"] == [] and size["method_disagreements"] == []
    assert size["max_abs_diff"]["jensenshannon"] < 1e-9
