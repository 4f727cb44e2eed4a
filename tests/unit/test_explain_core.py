"""SHAP attributions, Clarify's bias metrics, analysis.json and the fairness gate (explain.core)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest

from mlblueprints.explain.core import (
    POST_TRAINING,
    PRE_TRAINING,
    ExplainDataError,
    Facet,
    analysis,
    bias_report,
    gate,
    metric_values,
    read_analysis,
    tree_shap,
    write_analysis,
)

# Ten rows: the advantaged group "a" (6 rows) and the disadvantaged group "d" (4 rows).
#            a  a  a  a  a  a  d  d  d  d
LABELS = [1, 1, 1, 0, 0, 0, 1, 0, 0, 0]  # a: 3/6 positive, d: 1/4
PREDICTED = [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]  # a: TP 3 FP 1 FN 0 TN 2; d: TP 0 FP 1 FN 1 TN 2

# By hand, with Clarify's definitions (n_a = 6, n_d = 4; q = positive share of labels, q^ of predictions)
EXPECTED = {
    PRE_TRAINING: {
        "CI": (6 - 4) / 10,  # (n_a - n_d) / n
        "DPL": 3 / 6 - 1 / 4,  # q_a - q_d
        # label distributions P_a = (0.5, 0.5), P_d = (0.75, 0.25)
        "KL": 0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25),
        "JS": 0.5
        * (
            0.5 * np.log(0.5 / 0.625)
            + 0.5 * np.log(0.5 / 0.375)
            + 0.75 * np.log(0.75 / 0.625)
            + 0.25 * np.log(0.25 / 0.375)
        ),
        "LP": np.sqrt(0.25**2 + 0.25**2),
        "TVD": 0.5 * (0.25 + 0.25),
        "KS": 0.25,
    },
    POST_TRAINING: {
        "DPPL": 4 / 6 - 1 / 4,  # q^_a - q^_d
        "DI": (1 / 4) / (4 / 6),  # q^_d / q^_a
        "AD": 5 / 6 - 2 / 4,  # accuracy_a - accuracy_d
        "RD": 3 / 3 - 0 / 1,  # recall_a - recall_d
        "DAR": 3 / 4 - 0 / 1,  # precision_a - precision_d
        "DRR": 2 / 3 - 2 / 2,  # TN_d / n^_d(0) - TN_a / n^_a(0)
        "DCA": 3 / 4 - 1 / 1,  # n_a(1)/n^_a(1) - n_d(1)/n^_d(1)
        "DCR": 3 / 3 - 3 / 2,  # n_d(0)/n^_d(0) - n_a(0)/n^_a(0)
        "TE": 1 / 1 - 0 / 1,  # FN_d/FP_d - FN_a/FP_a
        "SD": 2 / 3 - 2 / 3,  # specificity_d - specificity_a
    },
}


def table() -> pd.DataFrame:
    return pd.DataFrame(
        {"group": list("aaaaaadddd"), "y": LABELS, "amount": np.arange(10.0), "age": [25] * 6 + [70] * 4}
    )


def report(facet: Facet | None = None, **kw):
    return bias_report(
        table(),
        [facet or Facet("group", ("d",))],
        "y",
        1,
        kw.pop("predicted", PREDICTED),
        pre_training=tuple(EXPECTED[PRE_TRAINING]),
        post_training=tuple(EXPECTED[POST_TRAINING]),
        **kw,
    )


def values(doc, stage: str) -> dict[str, float]:
    short = stage.removesuffix("_bias_metrics")
    return {r["name"]: r["value"] for r in metric_values(doc) if r["stage"] == short}


@pytest.mark.parametrize("stage", [PRE_TRAINING, POST_TRAINING])
def test_bias_metrics_equal_hand_computed_values(stage):
    got = values(report(), stage)
    assert set(got) == set(EXPECTED[stage])
    for name, want in EXPECTED[stage].items():
        assert got[name] == pytest.approx(want, abs=1e-12), name


def test_a_numeric_facet_with_a_threshold_is_the_rows_above_it():
    # age > 60 is exactly the "d" rows: the same metrics as the categorical facet
    by_threshold = report(Facet("age", (60,)))
    by_value = report()
    for stage in (PRE_TRAINING, POST_TRAINING):
        assert values(by_threshold, stage) == pytest.approx(values(by_value, stage))
    assert by_threshold[PRE_TRAINING]["facets"]["age"][0]["value_or_threshold"] == "(60.0, 70.0]"


def test_the_report_has_clarify_s_layout():
    doc = report()
    pre = doc[PRE_TRAINING]
    assert pre["label"] == "y" and pre["label_value_or_threshold"] == "1"
    [group] = pre["facets"]["group"]
    assert group["value_or_threshold"] == "d"
    ci = next(m for m in group["metrics"] if m["name"] == "CI")
    assert ci["description"] == "Class Imbalance (CI)"


def test_bad_input_gets_one_line_naming_what_is_wrong():
    with pytest.raises(ExplainDataError, match=r"facet 'sex': no such column .*columns: group, y, amount, age"):
        report(Facet("sex", ("f",)))
    with pytest.raises(ExplainDataError, match=r"facet 'group': value\(s\) \['x'\] do not occur .*\['a', 'd'\]"):
        report(Facet("group", ("x",)))
    with pytest.raises(ExplainDataError, match=r"threshold 80 puts no row in the group \(the column ranges 25..70"):
        report(Facet("age", (80,)))
    with pytest.raises(ExplainDataError, match=r"every value present"):
        report(Facet("group", ("a", "d")))
    with pytest.raises(ExplainDataError, match=r"unknown bias metric\(s\) \['XYZ'\]"):
        bias_report(table(), [Facet("group", ("d",))], "y", 1, pre_training=("XYZ",))
    with pytest.raises(ExplainDataError, match=r"the positive value 2 does not occur"):
        bias_report(table(), [Facet("group", ("d",))], "y", 2)
    with pytest.raises(ExplainDataError) as e:
        report(Facet("sex", ("f",)))
    assert "\n" not in str(e.value)


def test_an_integer_coded_facet_stays_categorical():
    # a 0/1 facet in ten rows is not a threshold: value 1 is the group, not "above 1"
    df = table().assign(code=[0] * 6 + [1] * 4)
    doc = bias_report(df, [Facet("code", ("1",))], "y", 1, PREDICTED, pre_training=("CI",), post_training=("DI",))
    assert values(doc, PRE_TRAINING)["CI"] == pytest.approx(0.2)
    assert values(doc, POST_TRAINING)["DI"] == pytest.approx(0.375)


# ---------------------------------------------------------------- SHAP


@pytest.fixture(scope="module")
def booster():
    import xgboost as xgb

    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 4))
    y = ((x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + rng.normal(scale=0.5, size=400)) > 0).astype(int)
    params = {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "seed": 7}
    model = xgb.train(params, xgb.DMatrix(x, label=y, feature_names=FEATS), num_boost_round=25)
    return model, x


FEATS = ["f0", "f1", "f2", "f3"]


def test_base_value_plus_attributions_is_the_margin(booster):
    import xgboost as xgb

    model, x = booster
    att = tree_shap(model, x, FEATS)
    margin = model.predict(xgb.DMatrix(x, feature_names=FEATS), output_margin=True)
    assert att.values.shape == (400, 4)
    np.testing.assert_allclose(att.base + att.values.sum(axis=1), margin, atol=1e-4)
    # f3 is noise the trees may never split on: the least important feature
    g = att.global_importance()["label0"]
    assert min(g, key=g.get) == "f3" and max(g, key=g.get) == "f0"


def test_tree_shap_agrees_with_the_shap_package(booster):
    import shap

    model, x = booster
    ours = tree_shap(model, x[:50], FEATS)
    theirs = shap.TreeExplainer(model).shap_values(x[:50])
    np.testing.assert_allclose(ours.values, theirs, atol=1e-4)


def test_a_multiclass_model_has_one_output_per_class():
    import xgboost as xgb

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 3))
    y = np.digitize(x[:, 0], [-0.5, 0.5])
    params = {"objective": "multi:softprob", "num_class": 3, "max_depth": 2, "seed": 3}
    model = xgb.train(params, xgb.DMatrix(x, label=y, feature_names=FEATS[:3]), num_boost_round=10)
    att = tree_shap(model, x, FEATS[:3], classes=["low", "mid", "high"])
    margin = model.predict(xgb.DMatrix(x, feature_names=FEATS[:3]), output_margin=True)
    np.testing.assert_allclose(att.base + att.values.sum(axis=2), margin, atol=1e-4)
    assert list(att.global_importance()) == ["low", "mid", "high"]
    assert list(att.table("mid").columns) == FEATS[:3]
    with pytest.raises(ExplainDataError, match="expected rows of 3 features"):
        tree_shap(model, x[:, :2], FEATS[:3])


# ---------------------------------------------------------------- analysis.json and the gate


def schema() -> dict:
    return json.loads(resources.files("mlblueprints.explain").joinpath("analysis.schema.json").read_text())


def test_analysis_json_validates_and_round_trips(booster, tmp_path: Path):
    model, x = booster
    att = tree_shap(model, x[:100], FEATS)
    doc = analysis(report(), att, model_version=3)
    path = write_analysis(doc, tmp_path, att)
    on_disk = json.loads(path.read_text())
    jsonschema.validate(on_disk, schema())
    back = read_analysis(path)
    assert metric_values(back) == metric_values(doc)
    ks = back["explanations"]["kernel_shap"]["label0"]
    assert ks["global_shap_values"] == pytest.approx(att.global_importance()["label0"])
    assert ks["expected_value"] == pytest.approx(float(np.mean(att.base)))
    assert back["mlblueprints"] == {"shap_method": "tree_shap", "model_version": 3}
    out = pd.read_csv(tmp_path / "explanations_shap" / "out.csv")
    assert list(out.columns) == FEATS and len(out) == 100
    np.testing.assert_allclose(out.to_numpy(), att.values, atol=1e-6)


def test_infinite_values_are_written_as_clarify_writes_them(tmp_path: Path):
    # every advantaged row predicted negative: DI divides by a zero share
    predicted = [0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    doc = analysis(report(predicted=predicted), None)
    assert values(doc, POST_TRAINING)["DI"] == float("inf")
    path = write_analysis(doc, tmp_path)
    raw = json.loads(path.read_text())
    di = next(m for m in raw[POST_TRAINING]["facets"]["group"][0]["metrics"] if m["name"] == "DI")
    assert di["value"] == "Infinity"
    jsonschema.validate(raw, schema())
    assert values(read_analysis(path), POST_TRAINING)["DI"] == float("inf")


def test_read_analysis_refuses_what_is_not_one(tmp_path: Path):
    with pytest.raises(ExplainDataError, match="no analysis.json there"):
        read_analysis(tmp_path / "analysis.json")
    (tmp_path / "analysis.json").write_text('{"foo": 1}')
    with pytest.raises(ExplainDataError, match="not a Clarify analysis.json"):
        read_analysis(tmp_path / "analysis.json")


def test_the_gate_says_which_metric_broke_which_threshold():
    doc = report()  # DI 0.375, DPPL 0.4167
    failed = gate(doc, {"DI": (0.8, 1.25), "CI": (-0.5, 0.5)})
    assert not failed.passed
    assert failed.reasons == ["DI of group=d (post_training) = 0.375 is outside [0.8, 1.25]"]
    assert [c["passed"] for c in failed.checked] == [False, True]
    ok = gate(doc, {"DI": (0.3, None), "DPPL": (None, 0.5)})
    assert ok.passed and ok.reasons == [] and len(ok.checked) == 2
    missing = gate(doc, {"KL": (None, 1.0), "GE": (None, 1.0)})
    assert not missing.passed and missing.reasons == ["GE is gated but the analysis does not hold it"]
    assert "FAILED" in failed.text() and "DI of group=d" in failed.text()


def _has_colour(png: Path, hex_colour: str) -> bool:
    from matplotlib.image import imread

    rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    pixels = imread(png)[..., :3]
    return bool((np.abs(pixels - rgb).max(axis=-1) < 0.02).any())


def test_the_html_report_marks_the_broken_bound_and_plots_what_the_gate_sees(booster, tmp_path: Path):
    from mlblueprints.explain import html

    model, x = booster
    att = tree_shap(model, x[:100], FEATS)
    doc = analysis(report(), att, model_name="m", model_version=3, holdout_rows=10)  # DI 0.375, CI 0.2
    path = html.write_report(doc, {"DI": (0.8, 1.25), "CI": (-0.5, 0.5)}, tmp_path / "broken", att, x[:100])
    page = path.read_text()
    assert "<title>Explainability and bias: m version 3</title>" in page
    assert "DI of group=d (post_training) = 0.375 is outside [0.8, 1.25]" in page
    di_row = next(r for r in page.split("<tr>") if r.startswith("<td>DI</td>"))
    ci_row = next(r for r in page.split("<tr>") if r.startswith("<td>CI</td>"))
    assert "[0.8, 1.25] <span class='broken'>BROKEN</span>" in di_row and "[-0.5, 0.5] ok" in ci_row
    assert "BROKEN" not in page.replace(di_row, "")
    plots = sorted(p.name for p in (tmp_path / "broken" / "plots").iterdir())
    assert plots == ["bias_metrics.png", "global_importance.png", "shap_beeswarm.png"]
    assert all(f"src='plots/{p}'" in page for p in plots)
    broken_plot = tmp_path / "broken" / "plots" / "bias_metrics.png"
    assert _has_colour(broken_plot, "#c0392b") and _has_colour(broken_plot, "#2a7a2a")  # DI out, CI in

    html.write_report(doc, {"DI": (0.3, None)}, tmp_path / "passes", att, x[:100])
    passing = tmp_path / "passes" / "plots" / "bias_metrics.png"
    assert _has_colour(passing, "#2a7a2a") and not _has_colour(passing, "#c0392b")
    assert "fairness gate: passed" in (tmp_path / "passes" / "report.html").read_text()

    no_shap = html.write_report(analysis(report(), None), {}, tmp_path / "bare")
    assert "No SHAP values" in no_shap.read_text() and not (tmp_path / "bare" / "plots").exists()
