"""The serving benchmark's smoke run: it runs end to end, every request is answered, and the
canary's measured share is its weight."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_serving_benchmark_quick(tmp_path):
    out = tmp_path / "serving.json"
    proc = subprocess.run(
        [sys.executable, str(PROJECT / "bench" / "serving.py"), "--quick", "--json", str(out)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Online serving" in proc.stdout and "goal: the canary's second variant" in proc.stdout
    table = json.loads(out.read_text())["summary"]["table"]
    assert {(t["mode"], t["clients"]) for t in table} == {
        (m, c) for m in ("predict", "endpoint", "canary") for c in (1, 8)
    }
    assert all(t["errors"] == 0 and t["per_second"] > 0 for t in table)
    for t in table:
        if t["mode"] == "canary":
            assert abs(t["challenger_share"] - 0.1) < 0.01
        if t["mode"] != "predict":  # each request's server time is inside its client time
            assert t["server_p99"] is not None and t["server_p99"] <= t["client_p99"]
