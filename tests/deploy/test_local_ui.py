"""`make up` for real: the Airflow API server, scheduler, DAG processor and triggerer started by
`mlblueprints up` on a private runtime directory and a free loopback port; the DAGs listed and one
lakehouse run triggered through the REST API; the reports plugin driven in a real headless
Chromium (Debian's package): log in, open the reports view from the UI's menu, see the last run's
reports listed and rendered, and a report whose files are gone say so; then `mlblueprints down`
and no process left behind.

Screenshots are kept in ``test-artifacts/`` (``MLB_TEST_ARTIFACTS`` overrides).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("MLB_TEST_ARTIFACTS") or ROOT / "test-artifacts")
LANDING_DAY = "2024-03-01"
RUN_ID = "ui_e2e"
DAG = "fraud_detection__lakehouse"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlblueprints.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _processes_with(home: Path) -> list[int]:
    """Live processes whose environment names this runtime directory."""
    needle = f"MLB_HOME={home}".encode()
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if stat[0] == "Z":
                continue
            if needle in (proc / "environ").read_bytes().split(b"\x00"):
                out.append(int(proc.name))
        except OSError:
            continue
    return out


class Api:
    def __init__(self, url: str, user: str, password: str):
        self.url = url
        body = json.dumps({"username": user, "password": password}).encode()
        req = urllib.request.Request(f"{url}/auth/token", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            self.token = json.loads(r.read())["access_token"]

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        req = urllib.request.Request(f"{self.url}/api/v2{path}", data, headers, method=method)
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("mlb-up")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLB_"))}
    env.update(MLB_HOME=str(home), MLB_PROJECT_ROOT=str(ROOT), PYTHONPATH=str(ROOT / "include"))
    gen = _cli(env, "generate", "fraud", "--rows", "3000", "--days", "1", "--start", LANDING_DAY)
    assert gen.returncode == 0, gen.stderr[-3000:]
    port = _free_port()
    started = time.monotonic()
    up = _cli(env, "up", "--port", str(port), "--timeout", "240")
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-4000:]
        lines = dict(line.split(": ", 1) for line in up.stdout.splitlines() if ": " in line)
        url = lines["Airflow UI"]
        assert url == f"http://127.0.0.1:{port}"
        user, password = lines["login"].split(" / ")
        print(f"\n`mlblueprints up`: {time.monotonic() - started:.0f} s to healthy; {up.stdout.splitlines()[3]}")
        yield {
            "home": home,
            "env": env,
            "url": url,
            "user": user,
            "password": password,
            "api": Api(url, user, password),
        }
    finally:
        down = _cli(env, "down", timeout=120)
        left = _processes_with(home)
        assert down.returncode == 0, down.stderr
        assert "stopped api-server" in down.stdout
        assert left == [], f"processes left behind: {left}"


def test_dags_listed_and_a_run_triggered_through_the_api_succeeds(stack):
    api = stack["api"]
    dags = api.call("GET", "/dags?limit=100")
    ids = {d["dag_id"] for d in dags["dags"]}
    patterns = ("lakehouse", "features", "training", "scoring")
    expected = {f"{uc}__{p}" for uc in ("fraud_detection", "claim_cost") for p in patterns}
    # the use case with explainability, monitoring and promotion sections
    expected |= {"fraud_detection__explainability", "fraud_detection__monitoring", "fraud_detection__promotion"}
    assert ids == expected
    assert api.call("GET", "/importErrors")["total_entries"] == 0

    api.call("PATCH", f"/dags/{DAG}", {"is_paused": False})
    # the run of landing day D has logical date D + 1 (the DAG's data interval is the day before)
    run = api.call("POST", f"/dags/{DAG}/dagRuns", {"dag_run_id": RUN_ID, "logical_date": "2024-03-02T00:00:00Z"})
    assert run["state"] == "queued"
    deadline = time.monotonic() + 900
    state = run["state"]
    while state not in ("success", "failed") and time.monotonic() < deadline:
        time.sleep(5)
        state = api.call("GET", f"/dags/{DAG}/dagRuns/{RUN_ID}")["state"]
    tis = api.call("GET", f"/dags/{DAG}/dagRuns/{RUN_ID}/taskInstances")["task_instances"]
    assert state == "success", {t["task_id"]: t["state"] for t in tis}
    assert {t["state"] for t in tis} == {"success"}
    took = sorted(((t.get("duration") or 0.0), t["task_id"]) for t in tis)[::-1]
    print(f"\nthe run: {len(tis)} tasks, longest {', '.join(f'{n} {d:.0f} s' for d, n in took[:5])}")
    report = json.loads((stack["home"] / "runs" / "fraud_detection" / "lakehouse" / f"{RUN_ID}.json").read_text())
    assert report["landing_dates"] == [LANDING_DAY] and report["missing"] == []
    assert report["tasks"]["reconcile"]["ok"] is True


def _browser(p):
    return p.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            # nothing but this machine's loopback: the Data Docs pages name CDN stylesheets
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        ],
    )


def _loopback_only(page) -> list[str]:
    blocked: list[str] = []

    def route(r):
        if r.request.url.startswith(("http://127.0.0.1", "about:", "data:")):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    return blocked


def _login(page, stack) -> None:
    page.goto(stack["url"] + "/")
    page.wait_for_url("**/auth/login**")
    page.fill("input[name=username]", stack["user"])
    page.fill("input[name=password]", stack["password"])
    page.keyboard.press("Enter")
    page.wait_for_url(stack["url"] + "/", timeout=60_000)


def _frame(page, part: str):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for f in page.frames:
            if part in f.url and f != page.main_frame:
                f.wait_for_load_state()
                return f
        page.wait_for_timeout(250)
    raise AssertionError(f"no frame showing {part} among {[f.url for f in page.frames]}")


def _reports_frame(page):
    return _frame(page, "/mlblueprints/reports/")


def test_reports_plugin_in_chromium(stack):
    from playwright import sync_api

    assert Path(CHROMIUM).exists(), "Chromium is not installed: run `make browser`"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        _loopback_only(page)
        # not logged in: the reports app says so instead of showing anything
        page.goto(stack["url"] + "/mlblueprints/reports/")
        assert "Log in to Airflow" in page.inner_text("body")

        _login(page, stack)
        page.get_by_role("button", name="Browse").click()
        page.get_by_role("menuitem", name="ML reports").click()
        frame = _reports_frame(page)
        body = frame.inner_text("body")
        assert "fraud_detection" in body and "lakehouse" in body
        assert RUN_ID in body  # the last run is listed
        assert f"{DAG}  run {RUN_ID}  landing dates {LANDING_DAY}" in body  # its report text
        page.screenshot(path=str(ARTIFACTS / "reports-overview.png"))

        frame.get_by_role("link", name=RUN_ID).first.click()
        frame = _reports_frame(page)
        frame.wait_for_selector("text=step results")
        body = frame.inner_text("body")
        assert f"fraud_detection / lakehouse / {RUN_ID}" in body
        assert "reconciliation: OK" in body
        assert frame.locator(".missing").count() == 0  # every file the run names is there
        # the first gate's Data Docs page renders inside the report
        frame.locator("details[open] iframe").first.scroll_into_view_if_needed()
        docs = _frame(page, "/mlblueprints/files/quality/")
        assert "transactions" in docs.inner_text("body")
        page.screenshot(path=str(ARTIFACTS / "reports-run.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "reports-overview.png").stat().st_size > 10_000


def test_a_report_with_missing_files_says_so(stack):
    from playwright import sync_api

    home = stack["home"]
    runs = home / "runs" / "fraud_detection" / "lakehouse"
    report = json.loads((runs / f"{RUN_ID}.json").read_text())
    gate = report["tasks"]["gate_silver__transactions"]
    gone = Path(gate["docs_path"]).with_name("removed-page.html")
    gate["docs_path"] = str(gone)
    report["run_id"] = "gone_files"
    (runs / "gone_files.json").write_text(json.dumps(report))
    (runs / "garbage.json").write_text("{not json")
    with sync_api.sync_playwright() as p:
        browser = _browser(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        _loopback_only(page)
        _login(page, stack)
        resp = page.goto(stack["url"] + "/mlblueprints/reports/fraud_detection/lakehouse/gone_files.json")
        assert resp.status == 200
        body = page.inner_text("body")
        assert "1 file(s) this report names are missing" in body
        assert f"missing: {gone}" in body and "is not there any more" in body
        assert "Traceback" not in body and "Internal Server Error" not in body
        page.screenshot(path=str(ARTIFACTS / "reports-missing-file.png"))

        resp = page.goto(stack["url"] + "/mlblueprints/reports/fraud_detection/lakehouse/garbage.json")
        assert resp.status == 200
        assert "garbage.json cannot be read as a run report" in page.inner_text("body")
        resp = page.goto(stack["url"] + "/mlblueprints/files/..%2F..%2F..%2Fetc%2Fpasswd")
        assert resp.status == 404 and "root:" not in page.content()
        browser.close()
