"""The SageMaker framework images the aws target trains and serves with, as a table the project
keeps (``sagemaker_images.json`` beside this module), so that an Airflow worker needs no
SageMaker Python SDK: sagemaker 3.x pins ``importlib-metadata<7`` and Airflow on Python 3.12
(MWAA's and Astro's images) needs ``>=7``, so the SDK cannot be installed there.

The table is the SDK's own ``sagemaker/core/image_uri_config/<framework>.json`` for the
frameworks and scopes we use (training and inference), and SageMaker Clarify's processing image. ``python -m mlblueprints.aws.image_table`` rewrites
it from the installed SDK (``make image-table``); a test fails when the two disagree.
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("sagemaker_images.json")
FRAMEWORKS = ("xgboost", "sklearn", "clarify")
SCOPES = ("training", "inference", "processing")


@lru_cache(maxsize=1)
def table() -> dict[str, Any]:
    return json.loads(TABLE.read_text(encoding="utf-8"))


def config(framework: str) -> dict[str, Any]:
    """The image table of one framework: ``{scope: {"versions": ..., "version_aliases": ...}}``."""
    try:
        return table()[framework]
    except KeyError:
        raise ValueError(
            f"no SageMaker image table for framework {framework!r}; known: {', '.join(FRAMEWORKS)}"
        ) from None


def from_sdk(framework: str) -> dict[str, Any]:
    """The same table, read from the installed SageMaker SDK's JSON (without importing it)."""
    spec = importlib.util.find_spec("sagemaker")
    for base in list(spec.submodule_search_locations or []) if spec else []:
        path = Path(base, "core", "image_uri_config", f"{framework}.json")
        if path.is_file():
            return _keep(json.loads(path.read_text(encoding="utf-8")))
    raise RuntimeError(
        f"cannot find sagemaker/core/image_uri_config/{framework}.json: install the sagemaker package (3.x)"
    )


def _keep(config: dict[str, Any]) -> dict[str, Any]:
    return {scope: config[scope] for scope in SCOPES if scope in config}


def write() -> Path:
    data = {f: from_sdk(f) for f in FRAMEWORKS}
    TABLE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    table.cache_clear()
    return TABLE


if __name__ == "__main__":
    print(write())
