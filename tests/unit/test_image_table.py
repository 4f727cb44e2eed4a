"""The SageMaker image table the project keeps agrees with the SDK's own tables, so a worker
without the SDK builds the same image URIs as ``sagemaker.core.image_uris.retrieve``."""

import subprocess
import sys
from pathlib import Path

from mlblueprints.aws import image_table
from mlblueprints.aws import training as tr

ROOT = Path(__file__).resolve().parents[2]


def test_table_is_the_sdks_table():
    for framework in image_table.FRAMEWORKS:
        assert image_table.config(framework) == image_table.from_sdk(framework), (
            f"{framework}: the SageMaker SDK's image table changed; run `make image-table` and commit the result"
        )


def test_image_uris_build_without_the_sdk_installed():
    # a worker has no sagemaker package: hide it and build both frameworks' images
    code = (
        "import sys; sys.modules['sagemaker'] = None\n"
        "from mlblueprints.aws import training as tr\n"
        "print(tr.xgboost_image_uri('eu-west-1', '1.7-1')); print(tr.sklearn_image_uri('eu-west-1', '1.2-1'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT / "include"), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        tr.xgboost_image_uri("eu-west-1", "1.7-1"),
        tr.sklearn_image_uri("eu-west-1", "1.2-1"),
    ]
