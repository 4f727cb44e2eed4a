"""The CloudFormation template: cfn-lint with no error, checkov with no failed check outside the
checked-in skip list (each with its reason, each still needed), parameters from the use case."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from mlblueprints import infra
from mlblueprints.config import load_usecase

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "iac" / "bin"
TEMPLATES = sorted((ROOT / "infra").glob("*.yaml"))
TEMPLATES = [t for t in TEMPLATES if t.name != "checkov-skips.yaml"]


def _tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{name} is not installed: run `make tools` (make test does)")
    return str(path)


def _checkov(template: Path, skips: list[str]) -> dict:
    cmd = [
        _tool("checkov"),
        "-f",
        str(template),
        "--framework",
        "cloudformation",
        "--output",
        "json",
        "--quiet",
        "--skip-download",
    ]
    if skips:
        cmd += ["--skip-check", ",".join(skips)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={"BC_SKIP_MAPPING": "TRUE", "PATH": "/usr/bin:/bin"})
    data = json.loads(out.stdout) if out.stdout.strip() else {}
    return data if isinstance(data, dict) else data[0]


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_cfn_lint_finds_no_error(template):
    out = subprocess.run([_tool("cfn-lint"), str(template)], capture_output=True, text=True)
    assert out.returncode & 2 == 0, out.stdout  # bit 2: errors (4: warnings, printed but allowed)


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_checkov_fails_nothing_outside_the_skip_list(template):
    skips = yaml.safe_load((ROOT / "infra" / "checkov-skips.yaml").read_text()) or {}
    assert all(isinstance(v, str) and len(v) > 40 for v in skips.values()), "every skip needs its reason"
    result = _checkov(template, list(skips))
    failed = {c["check_id"] for c in result.get("results", {}).get("failed_checks", [])}
    assert failed == set(), failed
    assert result["summary"]["passed"] > 50
    # every skip is still needed: without the list, exactly the skipped checks fail
    unskipped = _checkov(template, [])
    assert {c["check_id"] for c in unskipped["results"]["failed_checks"]} == set(skips)


def test_parameters_from_the_usecase_are_the_templates():
    uc = load_usecase(ROOT / "dags/usecases/fraud_detection.yaml")
    params = infra.parameters(uc, image_tag="abc")
    template = yaml.load((ROOT / infra.TEMPLATE).read_text(), Loader=_cfn_loader())
    declared = template["Parameters"]
    required = {k for k, v in declared.items() if "Default" not in v}
    assert required <= set(params) <= set(declared)
    assert params["BucketName"] == uc.aws.bucket and params["SageMakerRoleName"] == "mlblueprints-execution"
    assert params["LakehouseScheduleExpression"] == "cron(0 0 * * ? *)"
    assert params["BronzePrefix1"] == "fraud_detection/warehouse/transactions_bronze/"
    assert params["GoldAssetNames"] == "fraud_detection.transaction_features"
    assert infra.schedule_expression("30 6 * * 1-5") == "cron(30 6 ? * 2-6 *)"
    with pytest.raises(ValueError):
        infra.schedule_expression("0 0 1 * 1")


def _cfn_loader():
    class Loader(yaml.SafeLoader):
        pass

    def any_tag(loader, suffix, node):
        if isinstance(node, yaml.ScalarNode):
            return loader.construct_scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node)
        return loader.construct_mapping(node)

    Loader.add_multi_constructor("!", any_tag)
    return Loader
