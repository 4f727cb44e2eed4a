"""The explainability DAG end to end through dag.test(): the training DAG registers a version on
the shared pipeline's features; the explainability DAG explains that version, logs analysis.json
(Clarify's layout) with it, and tags it when a bound must break - and not when it passes. Then the
shipped fairness gate on data whose fraud targets a group (the generator's bias knob) and on the
same data without the knob."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import jsonschema
import pytest
import yaml

from helpers import ROOT, run_days, runtime_home
from mlblueprints.config import load_usecase

pytestmark = pytest.mark.slow

FACETS = [{"name": "channel", "value_or_threshold": ["online"]}]
# CI (class imbalance) lies in [-1, 1] by definition: a minimum of 2 must break, [-1, 1] must pass
BREAKS = {"CI": {"min": 2.0}}
PASSES = {"CI": {"min": -1.0, "max": 1.0}}


SHIPPED = yaml.safe_load((ROOT / "dags/usecases/fraud_detection.yaml").read_text())["explainability"]


def _write(uc_dir: Path, gate: dict | None = None) -> None:
    """The explainability section: channel with ``gate``, or (None) the shipped section."""
    path = uc_dir / "fraud_detection.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["explainability"] = SHIPPED if gate is None else {"facets": FACETS, "gate": gate, "sample_size": 200}
    path.write_text(yaml.safe_dump(doc))


def _results(dr) -> dict:
    return {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in dr.get_task_instances()}


@contextmanager
def _trained(warehouse: Path, base: Path, gate: dict | None):
    """A copy of ``warehouse`` with both feature views materialized and a version trained by the
    training DAG (40 rounds, one holdout day) under its own use-case directory."""
    uc_dir = base / "usecases"
    shutil.copytree(ROOT / "dags" / "usecases", uc_dir)
    doc = yaml.safe_load((uc_dir / "fraud_detection.yaml").read_text())
    doc["retry_delay_seconds"] = 0
    doc["training"].update(num_boost_round=40, checkpoint_interval_seconds=0, holdout_days=1)
    (uc_dir / "fraud_detection.yaml").write_text(yaml.safe_dump(doc))
    _write(uc_dir, gate)
    home = base / "home"
    shutil.copytree(warehouse, home / "warehouse")
    old = os.environ.get("MLB_USECASES_DIR")
    os.environ["MLB_USECASES_DIR"] = str(uc_dir)
    try:
        with runtime_home(home):
            from mlblueprints.airflow import localrun
            from mlblueprints.features import local as features
            from mlblueprints.lakehouse.local import latest_gold_range
            from mlblueprints.lineage import RunInfo

            uc = load_usecase(uc_dir / "fraud_detection.yaml")
            lo, hi = latest_gold_range(uc, ["transaction_features"])
            for view in uc.features:
                features.materialize(uc, view, lo, hi, RunInfo.for_usecase(uc, run_id="features"))
            trained = localrun.get_dag("fraud_detection__training").test()
            yield {"home": home, "uc_dir": uc_dir, "trained": trained, "training": _results(trained)}
    finally:
        if old is None:
            os.environ.pop("MLB_USECASES_DIR", None)
        else:
            os.environ["MLB_USECASES_DIR"] = old


@pytest.fixture(scope="module")
def world(pipeline, tmp_path_factory, airflow_db):
    with _trained(pipeline.home / "warehouse", tmp_path_factory.mktemp("explainability"), BREAKS) as w:
        yield w


def test_a_registered_version_is_explained_tagged_when_a_bound_breaks_and_untagged_when_it_passes(world):
    from mlblueprints.airflow import localrun
    from mlblueprints.explain import core
    from mlblueprints.registry import local as registry

    assert world["trained"].state == "success"
    reg = world["training"]["register"]
    assert reg["verdict"] == "registered" and world["training"]["publish"]["version"] == reg["version"]
    version = reg["version"]
    with runtime_home(world["home"]):
        uc = load_usecase(world["uc_dir"] / "fraud_detection.yaml")
        dr = localrun.get_dag("fraud_detection__explainability").test(run_conf={"version": version})
        res = _results(dr)
        assert dr.state == "success", {ti.task_id: ti.state for ti in dr.get_task_instances()}
        assert res["target"]["version"] == version and res["target"]["chosen_by"] == "the version Param"

        # analysis.json, fetched from the version's run, has Clarify's layout
        got = registry.fetch_artifact(uc, version, "explainability/analysis.json", world["home"] / "check")
        doc = core.read_analysis(got)
        schema = json.loads((ROOT / "include/mlblueprints/explain/analysis.schema.json").read_text())
        jsonschema.validate(doc, schema)
        assert doc["pre_training_bias_metrics"]["label"] == "is_fraud"
        [group] = doc["post_training_bias_metrics"]["facets"]["channel"]
        assert group["value_or_threshold"] == "online"
        assert {m["name"] for m in group["metrics"]} >= {"DI", "DPPL"}
        shap = doc["explanations"]["kernel_shap"]["label0"]["global_shap_values"]
        assert set(shap) == set(uc.model_features()) and any(v > 0 for v in shap.values())

        # the bound that must break: the version is tagged, promotion refuses it in one line
        tag = registry.client(uc).get_model_version(uc.model_name, str(version)).tags.get(registry.FAIRNESS_FAILED_TAG)
        assert res["gate"]["passed"] is False
        assert tag and tag.startswith("CI of channel=online (pre_training) = ") and "outside [2, inf]" in tag
        with pytest.raises(registry.PromotionRefused) as refused:
            registry.promote(uc, version)
        assert "\n" not in str(refused.value) and "CI of channel=online" in str(refused.value)
        text = (world["home"] / "runs" / "fraud_detection" / "explainability" / "latest.txt").read_text()
        assert "fairness gate: FAILED" in text and "promotion refuses it" in text

        # the same version under a bound it meets: no tag, and it can be promoted
        _write(world["uc_dir"], PASSES)
        dr = localrun.get_dag("fraud_detection__explainability").test(run_conf={"version": version})
        assert dr.state == "success" and _results(dr)["gate"]["passed"] is True
        tags = registry.client(uc).get_model_version(uc.model_name, str(version)).tags
        assert registry.FAIRNESS_FAILED_TAG not in tags
        registry.promote(uc, version)
        assert registry.model_version(uc, registry.CHAMPION)["version"] == version


@pytest.fixture(scope="module")
def biased(pipeline, tmp_path_factory, airflow_db):
    """The shared pipeline's data set (same seed, size and defects) generated with the bias knob
    on - fraud targets card holders aged 60 and over - run through the lakehouse DAG, then trained
    with the shipped explainability section."""
    from mlblueprints.airflow import localrun
    from mlblueprints.datagen import BiasConfig, DefectConfig, generate_fraud

    shared = pipeline.manifest.parameters
    base = tmp_path_factory.mktemp("biased")
    lake = base / "lake"
    with runtime_home(lake):
        generate_fraud(
            lake / "landing",
            start=pipeline.days[0],
            days=len(pipeline.days),
            rows=shared["rows"],
            seed=shared["seed"],
            defects=DefectConfig(**shared["defects"]),
            bias=BiasConfig(column="age_band", groups=("60+",), factor=6.0),
        )
        runs = run_days(localrun.get_dag("fraud_detection__lakehouse"), pipeline.days)
        assert [r.state for r in runs] == ["success"] * len(runs)
    with _trained(lake / "warehouse", base, None) as w:
        yield w


def _shipped_gate(w: dict) -> tuple[dict, dict, str | None]:
    """The explainability DAG on ``w``'s version under the shipped section: its results, the DI of
    every facet (post-training) and the version's fairness tag."""
    from mlblueprints.airflow import localrun
    from mlblueprints.explain import core
    from mlblueprints.registry import local as registry

    assert w["trained"].state == "success"
    version = w["training"]["register"]["version"]
    _write(w["uc_dir"])
    with runtime_home(w["home"]):
        uc = load_usecase(w["uc_dir"] / "fraud_detection.yaml")
        dr = localrun.get_dag("fraud_detection__explainability").test(run_conf={"version": version})
        assert dr.state == "success", {ti.task_id: ti.state for ti in dr.get_task_instances()}
        got = registry.fetch_artifact(uc, version, "explainability/analysis.json", w["home"] / f"di-{version}")
        doc = core.read_analysis(got)
        di = {
            f"{name}={group['value_or_threshold']}": next(m["value"] for m in group["metrics"] if m["name"] == "DI")
            for name, groups in doc["post_training_bias_metrics"]["facets"].items()
            for group in groups
        }
        tags = registry.client(uc).get_model_version(uc.model_name, str(version)).tags
        return _results(dr), di, tags.get(registry.FAIRNESS_FAILED_TAG)


def test_the_shipped_gate_blocks_a_model_trained_on_biased_fraud_and_says_which_bound_broke(biased):
    from mlblueprints.registry import local as registry

    res, di, tag = _shipped_gate(biased)
    assert res["gate"]["passed"] is False
    assert di["age_band=60+"] > 1.25, di  # the group's transactions are flagged far more often
    assert tag and "DI of age_band=60+ (post_training) = " in tag and "is outside [0.8, 1.25]" in tag
    with runtime_home(biased["home"]), pytest.raises(registry.PromotionRefused) as refused:
        uc = load_usecase(biased["uc_dir"] / "fraud_detection.yaml")
        registry.promote(uc, biased["training"]["register"]["version"])
    assert "DI of age_band=60+" in str(refused.value) and "\n" not in str(refused.value)


def test_the_shipped_gate_passes_a_model_trained_without_the_knob(world):
    res, di, tag = _shipped_gate(world)
    assert res["gate"]["passed"] is True, (di, res["gate"])
    assert all(0.8 <= v <= 1.25 for v in di.values()) and tag is None, di


def test_the_explain_commands_run_the_dag_and_explain_one_record_from_its_holdout(world, capsys):
    import math

    import numpy as np
    import pandas as pd

    from mlblueprints import cli
    from mlblueprints.registry import local as registry

    version = world["training"]["register"]["version"]
    _write(world["uc_dir"])
    old = os.environ.get("MLB_USECASES_DIR")
    os.environ["MLB_USECASES_DIR"] = str(world["uc_dir"])
    try:
        with runtime_home(world["home"]):
            capsys.readouterr()
            assert cli.main(["explain", "fraud_detection", "--version", str(version)]) == 0
            out = capsys.readouterr().out
            assert "fraud_detection__explainability: success" in out
            assert f"fraud_detection_model version {version} (the version Param)" in out
            assert "fairness gate: passed" in out and "age_band=60+" in out
            assert "report with plots: " in out

            uc = load_usecase(world["uc_dir"] / "fraud_detection.yaml")
            # the HTML report and its plots are artifacts of the version, beside analysis.json
            page = registry.fetch_artifact(uc, version, "explainability/report.html", world["home"] / "html")
            assert "fairness gate: passed" in page.read_text() and "age_band=60+" in page.read_text()
            for plot in ("global_importance", "shap_beeswarm", "bias_metrics"):
                png = registry.fetch_artifact(uc, version, f"explainability/plots/{plot}.png", world["home"] / plot)
                assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plots/{plot}.png" in page.read_text()
            holdout = pd.read_parquet(
                registry.fetch_artifact(uc, version, "evaluation/holdout.parquet", world["home"] / "record")
            )
            row = holdout[holdout["is_fraud"] == 1].iloc[[0]]
            key = row["transaction_id"].iloc[0]
            assert cli.main(["explain", "record", "fraud_detection", key]) == 0
            text = capsys.readouterr().out
            lines = text.splitlines()
            assert (
                lines[0]
                == f"fraud_detection_model version {version}: transaction_id {key} (is_fraud = 1 in the holdout)"
            )
            # the score printed is the model's own, and base value + contributions is its log-odds
            model = registry.MlflowRegistry(uc).load_version(version, "binary", uc.model_features())
            score = float(model.scores(row[uc.model_features()].to_numpy(np.float64))[0])
            assert lines[1].startswith(f"score {score:.4f} ")
            margin, base = (float(w) for w in lines[2].split()[1:6:4])
            assert margin == pytest.approx(math.log(score / (1 - score)), abs=2e-3)
            shap = [float(ln.split()[2]) for ln in lines[4:14]]
            rest = float(lines[14].split()[-1].rstrip(")")) if len(lines) > 14 else 0.0
            assert base + sum(shap) + rest == pytest.approx(margin, abs=2e-3)
            assert [abs(v) for v in shap] == sorted((abs(v) for v in shap), reverse=True)

            assert cli.main(["explain", "record", "fraud_detection", "tx_999999999999"]) == 1
            err = capsys.readouterr().err
            assert err.startswith(
                f"fraud_detection_model version {version}: no row with transaction_id = tx_999999999999 in the holdout"
            )
            assert err.count("\n") == 1
            assert cli.main(["explain", "record", "fraud_detection"]) == 2
    finally:
        if old is None:
            os.environ.pop("MLB_USECASES_DIR", None)
        else:
            os.environ["MLB_USECASES_DIR"] = old
