"""The reports index finds whatever the patterns write, without knowing the patterns, and serves
nothing outside the runtime directory."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from mlblueprints.core import reporting
from mlblueprints.reports import index, web

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def _home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "mlb"
    monkeypatch.setenv("MLB_HOME", str(home))
    return home


def test_a_new_patterns_report_shows_up_with_its_files(tmp_path, monkeypatch):
    home = _home(tmp_path, monkeypatch)
    # a pattern the index has never heard of writes a plot, an HTML report and a JSON summary
    out = home / "monitoring" / "fraud_detection"
    out.mkdir(parents=True)
    (out / "drift.png").write_bytes(PNG)
    (out / "drift.html").write_text("<html><body>drift report</body></html>")
    (out / "summary.json").write_text(json.dumps({"drifted_columns": 2, "share": 0.25}))
    results = {
        "detect": {
            "plot": str(out / "drift.png"),
            "html": str(out / "drift.html"),
            "summary": str(out / "summary.json"),
        },
        "alert": {"uri": "s3://bucket/prefix/drift.json", "gone": str(out / "removed.html")},
        "notify": None,
    }
    reporting.write_run_report(
        "fraud_detection", "monitoring", "manual__2024-03-09T00:00:00+00:00", "drift: 2 columns", results
    )

    [uc] = index.usecases(home)
    assert uc.name == "fraud_detection" and [p.name for p in uc.patterns] == ["monitoring"]
    [summary] = uc.patterns[0].reports
    assert uc.patterns[0].latest_text == "drift: 2 columns\n"
    r = index.load(home, "fraud_detection", "monitoring", summary.name)
    assert r.run_id == "manual__2024-03-09T00:00:00+00:00" and r.missing_steps == ["notify"]
    kinds = {a.label: (a.kind, a.exists) for a in r.artifacts}
    assert kinds == {
        "detect.plot": ("image", True),
        "detect.html": ("html", True),
        "detect.summary": ("json", True),
        "alert.uri": ("s3", True),
        "alert.gone": ("html", False),
    }
    assert [a.label for a in r.missing_files] == ["alert.gone"]
    page = web._artifact(home, next(a for a in r.artifacts if a.kind == "image"))
    assert "<img class='plot' src='/mlblueprints/files/monitoring/fraud_detection/drift.png'" in page
    assert "<th>drifted_columns</th><td>2</td>" in web._artifact(home, next(a for a in r.artifacts if a.kind == "json"))
    gone = web._artifact(home, r.missing_files[0])
    assert f"missing: <code>{out / 'removed.html'}</code>" in gone


def test_mlflow_artifacts_are_found_through_the_tracking_db(tmp_path, monkeypatch):
    home = _home(tmp_path, monkeypatch)
    art = home / "mlflow" / "artifacts" / "1" / "abc123" / "artifacts"
    (art / "evaluation").mkdir(parents=True)
    (art / "evaluation" / "evaluation.json").write_text("{}")
    (art / "roc.png").write_bytes(PNG)
    con = sqlite3.connect(home / "mlflow" / "mlflow.db")
    con.execute("CREATE TABLE runs (run_uuid TEXT, artifact_uri TEXT)")
    con.execute("INSERT INTO runs VALUES ('abc123', ?)", (art.as_uri(),))
    con.commit()
    con.close()
    reporting.write_run_report(
        "uc", "training", "r1", "t", {"register": {"mlflow_run_id": "abc123"}, "x": {"mlflow_run_id": "nope"}}
    )
    r = index.load(home, "uc", "training", "r1.json")
    labels = sorted((a.label, a.exists) for a in r.artifacts)
    assert labels == [
        ("mlflow run abc123: evaluation/evaluation.json", True),
        ("mlflow run abc123: roc.png", True),
        ("mlflow run nope", False),
    ]


def test_nothing_outside_the_runtime_directory_is_served(tmp_path, monkeypatch):
    home = _home(tmp_path, monkeypatch)
    (home / "runs").mkdir(parents=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("no")
    (home / "runs" / "link.txt").symlink_to(secret)
    (home / "runs" / "ok.txt").write_text("yes")
    assert index.safe_file(home, "runs/ok.txt") == (home / "runs" / "ok.txt").resolve()
    for bad in ("../secret.txt", "runs/../../secret.txt", "runs/link.txt", str(secret), "runs", "runs/ok.txt\x00"):
        assert index.safe_file(home, bad) is None, bad
    # a report naming a file outside the runtime directory does not get it listed
    reporting.write_run_report("uc", "p", "r", "t", {"s": {"path": str(secret), "etc": "/etc/passwd"}})
    assert index.load(home, "uc", "p", "r.json").artifacts == []
    for args in (("uc", "p", "../r.json"), ("..", "p", "r.json"), ("uc", "p", "r.txt"), ("uc", "p", "none.json")):
        assert index.load(home, *args) is None, args


def test_an_unreadable_report_says_why(tmp_path, monkeypatch):
    home = _home(tmp_path, monkeypatch)
    d = home / "runs" / "uc" / "lakehouse"
    d.mkdir(parents=True)
    (d / "bad.json").write_text("{truncated")
    (d / "list.json").write_text("[1, 2]")
    assert "bad.json cannot be read as a run report" in index.load(home, "uc", "lakehouse", "bad.json").error
    assert "not a JSON object" in index.load(home, "uc", "lakehouse", "list.json").error
    assert index.usecases(home)[0].patterns[0].latest_text is None


def test_the_plugin_declares_its_app_and_view():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "mlb_plugin", Path(__file__).resolve().parents[2] / "plugins" / "mlblueprints_reports.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    plugin = mod.MlblueprintsReportsPlugin
    [app] = plugin.fastapi_apps
    assert app["url_prefix"] == "/mlblueprints"
    paths = {r.path for r in app["app"].routes}
    assert {"/reports/", "/reports/{usecase}/{pattern}/{name}", "/files/{rel:path}"} <= paths
    [view] = plugin.external_views
    assert view["href"] == "/mlblueprints/reports/" and view["url_route"] and view["destination"] == "nav"
    assert os.environ.get("MLB_HOME")  # the conftest's private runtime dir, which the app reads at request time
