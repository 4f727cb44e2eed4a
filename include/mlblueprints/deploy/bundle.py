"""What a deployment ships, read from the checkout: the DAG files and use cases, the quality
suites, the package and the plugins. Shared by the MWAA bundle and the Astro project."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

SKIP_DIRS = frozenset({"__pycache__", ".pytest_cache", ".ruff_cache"})
SKIP_SUFFIXES = (".pyc", ".pyo", ".partial")
# what the bundle adds to dags/.airflowignore: the suites copied into dags/ are not DAG files
EXTRA_IGNORES = ("expectations/",)


def files(base: Path) -> Iterator[Path]:
    """The files under ``base`` a deployment ships (no caches, no byte code), sorted."""
    for p in sorted(base.rglob("*")):
        rel = p.relative_to(base)
        if p.is_file() and not SKIP_DIRS.intersection(rel.parts) and not p.name.endswith(SKIP_SUFFIXES):
            yield p


def copy_tree(src: Path, dst: Path) -> list[Path]:
    out = []
    for f in files(src):
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
        out.append(target)
    return out


def dag_files(root: Path, dst: Path, *, expectations_inside: bool) -> None:
    """``dags/`` as deployed: the DAG files, ``usecases/``, the ``.airflowignore`` (plus the
    suites under ``dags/expectations`` when the target syncs only ``dags/``)."""
    copy_tree(root / "dags", dst)
    ignore = (root / "dags" / ".airflowignore").read_text()
    if expectations_inside:
        copy_tree(root / "expectations", dst / "expectations")
        extra = [line for line in EXTRA_IGNORES if line not in ignore.splitlines()]
        if extra:
            ignore = (
                ignore.rstrip("\n") + "\n# the quality suites, copied into dags/ for targets that sync only dags/\n"
            )
            ignore += "\n".join(extra) + "\n"
    (dst / ".airflowignore").write_text(ignore)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
