"""The explainability benchmark's smoke run: it runs end to end, Kernel SHAP on the margin agrees
with the exact interventional TreeSHAP it estimates, and every bias metric computes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_explainability_benchmark_quick(tmp_path):
    out = tmp_path / "explainability.json"
    proc = subprocess.run(
        [sys.executable, str(PROJECT / "bench" / "explainability.py"), "--quick", "--json", str(out)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Explainability benchmark" in proc.stdout and "bias metrics" in proc.stdout
    s = json.loads(out.read_text())["summary"]
    assert s["speed_ratio"] > 1
    # every method's attributions add up to the model's log-odds (Kernel SHAP as Clarify to its link)
    assert max(s["additivity_max_error"].values()) < 1e-3
    # with the same baseline, Kernel SHAP on the margin estimates interventional TreeSHAP's values
    exact = s["agreement"]["interventional vs kernel_margin"]
    assert exact["pearson_median"] > 0.99 and exact["mad_relative"] < 0.05
    assert s["base_values"]["kernel_margin"] == pytest.approx(s["base_values"]["interventional"], abs=1e-6)
    (bias,) = s["bias"].values()
    assert bias["metrics"] == 17 and bias["failed"] == []
