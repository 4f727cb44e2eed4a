"""The reports view: a FastAPI app, mounted into the Airflow API server by the plugin in
plugins/, that lists per use case, pattern and run the reports of :mod:`.index` and renders them
- the report's text tables, every task's result as a table, the Data Docs HTML, plots as images,
JSON and text files - and serves the files it names from the runtime directory only.

Every page needs an Airflow login (the UI's session cookie or a bearer token), checked by the
auth manager the API server runs with.
"""

from __future__ import annotations

import html
import json
import mimetypes
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from mlblueprints import runtime
from mlblueprints.reports import index

PREFIX = "/mlblueprints"
TITLE = "ML reports"
MAX_INLINE = 2_000_000  # bytes of a JSON or text file shown inline

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.2rem;color:#1f2933;background:#fff}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:1.6rem;border-bottom:1px solid #d9e2ec}h3{font-size:1rem}
pre{background:#f5f7fa;padding:.7rem;overflow:auto;font-size:.8rem;line-height:1.25}
table{border-collapse:collapse;font-size:.82rem;margin:.4rem 0}td,th{border:1px solid #d9e2ec;padding:.2rem .45rem;text-align:left;vertical-align:top}
.missing{color:#9b1c1c;background:#fdecec;padding:.5rem;border-left:4px solid #c81e1e}
.ok{color:#05603a}.muted{color:#616e7c}iframe{width:100%;height:640px;border:1px solid #d9e2ec}
img.plot{max-width:100%;border:1px solid #d9e2ec}a{color:#0b69a3}
"""


class LoginRequired(Exception):
    pass


async def _user(request: Request) -> Any:
    """The logged-in Airflow user, as the API server's auth manager sees it."""
    from mlblueprints.airflow import logged_in_user

    user = await logged_in_user(request)
    if user is None:
        raise LoginRequired()
    return user


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>{body}</body></html>"
    )
    return HTMLResponse(doc, status_code=status)


def _e(x: Any) -> str:
    return html.escape(str(x))


def _file_url(rel: str) -> str:
    return f"{PREFIX}/files/{quote(rel)}"


def _run_url(r: index.Report) -> str:
    return f"{PREFIX}/reports/{quote(r.usecase)}/{quote(r.pattern)}/{quote(r.name)}"


def _value(v: Any) -> str:
    if isinstance(v, dict | list):
        text = json.dumps(v, indent=1, default=str)
        return f"<pre>{_e(text[:20000])}</pre>" if len(text) > 80 else f"<code>{_e(text)}</code>"
    return _e(v)


def _kv_table(d: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_value(v)}</td></tr>" for k, v in d.items())
    return f"<table>{rows}</table>"


def _artifact(home: Path, a: index.Artifact, first_html: bool = False) -> str:
    head = f"<h3>{_e(a.label)}</h3>"
    if a.kind == "s3":
        return head + f"<p class='muted'>on S3: <code>{_e(a.path)}</code> (not on this machine)</p>"
    if not a.exists or a.rel is None:
        return head + (
            f"<p class='missing'>missing: <code>{_e(a.path)}</code> - this report names the file, but it is not "
            "there any more (the runtime directory was cleaned, moved or copied in part). Rerun the run to "
            "write it again.</p>"
        )
    url = _file_url(a.rel)
    link = f"<p><a href='{url}' target='_blank'>{_e(a.path)}</a></p>"
    if a.kind == "image":
        return head + link + f"<img class='plot' src='{url}' alt='{_e(Path(a.path).name)}'>"
    if a.kind == "dir":
        files = index.listing(home, a.rel)
        items = "".join(f"<li><a href='{_file_url(rel)}' target='_blank'>{_e(name)}</a></li>" for name, rel in files)
        return head + f"<p class='muted'>folder <code>{_e(a.path)}</code></p><ul>{items or '<li>(empty)</li>'}</ul>"
    if a.kind == "html":  # the first page open, the others one click away (each loads a whole site)
        frame = f"<iframe loading='{'eager' if first_html else 'lazy'}' src='{url}' title='{_e(a.label)}'></iframe>"
        return (
            head + link + f"<details{' open' if first_html else ''}><summary>show the page</summary>{frame}</details>"
        )
    if a.kind in ("json", "text"):
        p = index.safe_file(home, a.rel)
        if p is None or p.stat().st_size > MAX_INLINE:
            return head + link
        text = p.read_text(errors="replace")
        if a.kind == "json":
            try:
                data = json.loads(text)
            except ValueError:
                return head + link + f"<pre>{_e(text)}</pre>"
            if isinstance(data, dict) and all(not isinstance(v, dict | list) for v in data.values()):
                return head + link + _kv_table(data)
            text = json.dumps(data, indent=1, default=str)
        return head + link + f"<pre>{_e(text)}</pre>"
    return head + link


def create_app() -> FastAPI:
    app = FastAPI(title=TITLE, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> HTMLResponse:
        nxt = quote(str(request.url.path))
        return _page(
            TITLE,
            f"<h1>{TITLE}</h1><p class='missing'>Log in to Airflow to see the reports: "
            f"<a href='/auth/login?next={nxt}' target='_top'>log in</a>.</p>",
            status=401,
        )

    @app.get("/")
    async def root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/reports/")

    @app.get("/reports/", response_class=HTMLResponse)
    async def overview(user: Any = Depends(_user)) -> HTMLResponse:
        home = runtime.home()
        ucs = index.usecases(home)
        parts = [f"<h1>{TITLE}</h1><p class='muted'>run reports under <code>{_e(home / 'runs')}</code></p>"]
        if not ucs:
            parts.append(
                f"<p>No run reports yet in <code>{_e(home / 'runs')}</code>. Run a DAG (or <code>make demo</code>): "
                "each pattern writes one report per run there.</p>"
            )
        for uc in ucs:
            parts.append(f"<h2 id='{_e(uc.name)}'>{_e(uc.name)}</h2>")
            for d in uc.data_docs:
                parts.append(f"<p>Great Expectations <a href='{_file_url(d.rel or '')}'>Data Docs</a></p>")
            rows = []
            for p in uc.patterns:
                latest = p.reports[0] if p.reports else None
                older = " ".join(f"<a href='{_run_url(r)}'>{_e(r.run_id)}</a>" for r in p.reports[1:6])
                rows.append(
                    f"<tr><td>{_e(p.name)}</td><td>{len(p.reports)}</td>"
                    f"<td>{f'<a href={chr(39)}{_run_url(latest)}{chr(39)}>{_e(latest.run_id)}</a>' if latest else '-'}</td>"
                    f"<td>{older}</td></tr>"
                )
            parts.append(
                "<table><tr><th>pattern</th><th>runs</th><th>last run</th><th>earlier runs</th></tr>"
                + "".join(rows)
                + "</table>"
            )
            for p in uc.patterns:
                if p.latest_text is not None:
                    parts.append(f"<h3>{_e(p.name)}: last report</h3><pre>{_e(p.latest_text)}</pre>")
        return _page(TITLE, "".join(parts))

    @app.get("/reports/{usecase}/{pattern}/{name}", response_class=HTMLResponse)
    async def run(usecase: str, pattern: str, name: str, user: Any = Depends(_user)) -> HTMLResponse:
        home = runtime.home()
        r = index.load(home, usecase, pattern, name)
        back = f"<p><a href='{PREFIX}/reports/'>all reports</a></p>"
        if r is None:
            return _page(
                TITLE, back + f"<p class='missing'>No report {_e(name)} for {_e(usecase)} / {_e(pattern)}.</p>", 404
            )
        parts = [back, f"<h1>{_e(r.usecase)} / {_e(r.pattern)} / {_e(r.run_id)}</h1>"]
        if r.error:
            parts.append(f"<p class='missing'>{_e(r.error)}</p>")
            return _page(TITLE, "".join(parts))
        if r.missing_steps:
            parts.append(f"<p class='missing'>steps with no result: {_e(', '.join(r.missing_steps))}</p>")
        gone = r.missing_files
        if gone:
            parts.append(
                f"<p class='missing'>{len(gone)} file(s) this report names are missing; each is marked below.</p>"
            )
        parts.append(f"<h2>report</h2><pre>{_e(r.text)}</pre>")
        if r.artifacts:
            parts.append("<h2>files</h2>")
            first = next((a for a in r.artifacts if a.kind == "html" and a.exists), None)
            parts += [_artifact(home, a, a is first) for a in r.artifacts]
        parts.append("<h2>step results</h2>")
        for step, result in r.tasks.items():
            body = _kv_table(result) if isinstance(result, dict) else _value(result)
            parts.append(f"<details><summary>{_e(step)}</summary>{body}</details>")
        return _page(f"{TITLE}: {r.run_id}", "".join(parts))

    @app.get("/files/{rel:path}")
    async def files(rel: str, user: Any = Depends(_user)) -> Any:
        home = runtime.home()
        p = index.safe_file(home, rel)
        if p is None:
            return _page(
                TITLE,
                f"<p class='missing'>missing: <code>{_e(rel)}</code> is not a file under the runtime directory "
                f"<code>{_e(home)}</code> (cleaned or moved?).</p>",
                404,
            )
        media = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
        return FileResponse(p, media_type=media)

    return app
