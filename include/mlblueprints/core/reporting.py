"""The one run-report writer and the one table renderer, for every pattern and the CLI.

A pattern's last task renders its text (a :class:`Table` or two and a few lines) and calls
:func:`write_run_report`, which writes ``<runtime>/runs/<usecase>/<pattern>/<run id>.json``
(the text, every task's result, the tasks that produced none) and ``latest.txt`` beside it, the
file the CLI and the demo print.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlblueprints import runtime
from mlblueprints.core.naming import safe


def fmt(n: Any) -> str:
    """A count with thousands separators; ``-`` for unknown; anything else as text."""
    if isinstance(n, bool):
        return str(n)
    if isinstance(n, int):
        return f"{n:,}"
    return "-" if n is None else str(n)


def size(n: int | None) -> str:
    """Bytes as kB / MB."""
    if n is None:
        return "-"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


@dataclass
class Table:
    """A text table: columns left-aligned, except those named in ``right`` (numbers)."""

    header: Sequence[str]
    rows: list[Sequence[Any]] = field(default_factory=list)
    right: Iterable[int] = ()
    indent: str = ""

    def add(self, *cells: Any) -> None:
        self.rows.append(cells)

    def render(self) -> str:
        table = [list(self.header)] + [[fmt(c) if not isinstance(c, str) else c for c in r] for r in self.rows]
        widths = [max(len(str(r[i])) for r in table) for i in range(len(self.header))]
        right = set(self.right)
        lines = []
        for r in table:
            cells = [str(v).rjust(w) if i in right else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths))]
            lines.append((self.indent + "  ".join(cells)).rstrip())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def with_failures(text: str, failures: dict[str, str]) -> str:
    """The report text followed by why each failed step failed (its error's first lines)."""
    if not failures:
        return text
    lines = ["", "failed steps:"]
    for step, reason in failures.items():
        first, *rest = reason.strip().splitlines() or [""]
        lines.append(f"  {step}: {first}")
        lines += [f"    {r}" for r in rest[:8]]
    return text + "\n" + "\n".join(lines)


def missing_tasks(results: dict[str, Any]) -> list[str]:
    """The steps that produced no result (failed, upstream failed, or not run)."""
    return sorted(t for t, v in results.items() if v is None)


def report_dir(usecase: str, pattern: str) -> Path:
    return runtime.path("runs", usecase, pattern)


def write_run_report(
    usecase: str, pattern: str, run_id: str, text: str, results: dict[str, Any], **extra: Any
) -> tuple[Path, list[str]]:
    """Write the run's JSON report and ``latest.txt``; return (path, steps with no result)."""
    missing = missing_tasks(results)
    path = report_dir(usecase, pattern) / f"{safe(run_id, '-_.+')}.json"
    payload = {"usecase": usecase, "pattern": pattern, "run_id": run_id, **extra, "missing": missing}
    payload.update(tasks=results, text=text)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(path)
    latest = path.parent / "latest.txt"
    latest.with_name("latest.txt.partial").write_text(text + "\n")
    latest.with_name("latest.txt.partial").replace(latest)
    return path, missing


def finish_run(ctx: Any, pattern: str, text: str, results: dict[str, Any]) -> dict[str, str]:
    """What every pattern's ``report`` step ends with: the text (plus why steps failed) written as
    the run's report and logged; the step fails, naming the report, when a step has no result."""
    import logging

    text = with_failures(text, ctx.failures)
    path, missing = write_run_report(ctx.uc.name, pattern, ctx.run.run_id, text, results)
    logging.getLogger(f"mlblueprints.{pattern}").info("\n%s", text)
    if missing:
        raise RuntimeError(f"run incomplete: step(s) {missing} did not succeed; report: {path}")
    return {"report": str(path)}


def latest_text(usecase: str, pattern: str) -> str | None:
    """The text of the newest run report of a pattern, or None when it never ran."""
    p = runtime.home() / "runs" / usecase / pattern / "latest.txt"
    return p.read_text() if p.is_file() else None
