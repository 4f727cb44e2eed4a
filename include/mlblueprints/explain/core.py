"""SHAP attributions and Clarify's bias metrics, written in a Clarify job's own output layout.

Pure: a model, a table and plain arguments in; plain dicts and arrays out. No use case, no I/O
besides :func:`write_analysis` / :func:`read_analysis`.

* :func:`tree_shap` - exact TreeSHAP of an XGBoost booster (``pred_contribs``): per record, the
  base value plus the attributions add up to the model's margin (log-odds for a binary model),
  which is what a Clarify job reports with ``use_logit``.
* :func:`bias_report` - the pre-training (on labels) and post-training (on predicted labels) bias
  metrics of each facet, computed by ``smclarify`` - the library a Clarify job runs - so the names,
  descriptions and values are Clarify's.
* :func:`analysis` - ``analysis.json`` as a Clarify job writes it::

    {"version": "1.0",
     "pre_training_bias_metrics":  {"label": ..., "label_value_or_threshold": ...,
                                    "facets": {<facet>: [{"value_or_threshold": ...,
                                                          "metrics": [{"name", "description", "value"}]}]}},
     "post_training_bias_metrics": {... the same ...},
     "explanations": {"kernel_shap": {"label0": {"global_shap_values": {<feature>: mean |SHAP|},
                                                 "expected_value": ...}}}}

  A consumer of Clarify output looks for the global attributions under ``kernel_shap`` whatever
  produced them; ours are exact (tree-path-dependent) TreeSHAP, which the top-level
  ``mlblueprints`` key says (a key Clarify readers ignore). They are not a Clarify job's values:
  Kernel SHAP is interventional against a baseline (docs/explainability.md gives the measured
  agreement).
* :func:`gate` - the fairness gate: every gated metric of every facet within its bounds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlblueprints.errors import PermanentError

ANALYSIS_VERSION = "1.0"
PRE_TRAINING = "pre_training_bias_metrics"
POST_TRAINING = "post_training_bias_metrics"
# the metrics smclarify registers, by stage (FT and GE and the conditional ones need more than
# a facet and labels: a nearest-neighbour model of the features, a group variable)
PRE_TRAINING_METRICS = ("CDDL", "CI", "DPL", "JS", "KL", "KS", "LP", "TVD")
POST_TRAINING_METRICS = ("AD", "CDDPL", "DAR", "DCA", "DCR", "DI", "DPPL", "DRR", "FT", "GE", "RD", "SD", "TE")
NEEDS_GROUP = {"CDDL", "CDDPL"}


class ExplainDataError(PermanentError, ValueError):
    """The table cannot be analysed as configured (a facet column missing, a facet value absent)."""


@dataclass(frozen=True)
class Facet:
    """A sensitive attribute: the column, and the values (categorical) or the one threshold
    (numeric: the group is the rows above it) that define the disadvantaged group."""

    name: str
    value_or_threshold: tuple[Any, ...]

    @property
    def is_threshold(self) -> bool:
        return len(self.value_or_threshold) == 1 and _is_number(self.value_or_threshold[0])


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# ---------------------------------------------------------------- SHAP


@dataclass
class Attributions:
    """Per-record SHAP values ``values`` (records x features, or records x classes x features)
    and the base value each record starts from (``base``: one per record, or per record and class)."""

    features: list[str]
    values: Any
    base: Any
    outputs: list[str]  # "label0" for one output; the class names of a multiclass model

    def global_importance(self) -> dict[str, dict[str, float]]:
        """Mean |SHAP| per feature, per output (Clarify's ``global_shap_values``)."""
        import numpy as np

        v = np.abs(self.values)
        per = v.mean(axis=0)  # features, or classes x features
        per = per.reshape(len(self.outputs), len(self.features))
        return {o: {f: float(per[i, j]) for j, f in enumerate(self.features)} for i, o in enumerate(self.outputs)}

    def expected_values(self) -> dict[str, float]:
        import numpy as np

        b = np.asarray(self.base, dtype=np.float64).reshape(len(self.base), len(self.outputs))
        return {o: float(b[:, i].mean()) for i, o in enumerate(self.outputs)}

    def table(self, output: str | None = None) -> Any:
        """One output's per-record attributions as a frame (Clarify's ``explanations_shap/out.csv``:
        one column per feature)."""
        import pandas as pd

        i = self.outputs.index(output or self.outputs[0])
        v = self.values if self.values.ndim == 2 else self.values[:, i, :]
        return pd.DataFrame(v, columns=self.features)


def tree_shap(booster: Any, x: Any, features: Sequence[str], classes: Sequence[str] | None = None) -> Attributions:
    """Exact TreeSHAP of an XGBoost booster on the rows ``x`` (columns in ``features`` order).

    ``classes``: a multiclass model's class names (its outputs, in order); None for a model with
    one output (binary: the positive class's log-odds; regression: the prediction).
    """
    import numpy as np
    import xgboost as xgb

    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(features):
        raise ExplainDataError(f"expected rows of {len(features)} features {list(features)}, got shape {x.shape}")
    contribs = booster.predict(xgb.DMatrix(x, feature_names=list(features)), pred_contribs=True)
    outputs = list(classes) if classes else ["label0"]
    if contribs.ndim == 3:  # records x classes x (features + bias)
        if contribs.shape[1] != len(outputs):
            raise ExplainDataError(f"the model has {contribs.shape[1]} outputs, {len(outputs)} classes were named")
        return Attributions(list(features), contribs[:, :, :-1], contribs[:, :, -1], outputs)
    return Attributions(list(features), contribs[:, :-1], contribs[:, -1], outputs)


# ---------------------------------------------------------------- bias


def _facet_column(df: Any, facet: Facet) -> tuple[Any, list[Any]]:
    """The facet column as smclarify should read it, and the values to pass it: a numeric column
    and one float threshold, or a categorical column of strings and the group's values as strings
    (so smclarify's type guess cannot turn a small integer-coded facet into a threshold)."""
    import pandas as pd

    if facet.name not in df.columns:
        raise ExplainDataError(
            f"facet {facet.name!r}: no such column in the analysed table (columns: {', '.join(map(str, df.columns))})"
        )
    col = df[facet.name]
    if col.isna().all():
        raise ExplainDataError(f"facet {facet.name!r}: the column is empty (all values missing)")
    if facet.is_threshold:
        if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            raise ExplainDataError(
                f"facet {facet.name!r}: a numeric threshold {facet.value_or_threshold[0]} was given, but the "
                f"column holds {col.dtype} values; give the group's values as a list of strings instead"
            )
        t = float(facet.value_or_threshold[0])
        above = int((col > t).sum())
        if above == 0 or above == int(col.notna().sum()):
            raise ExplainDataError(
                f"facet {facet.name!r}: threshold {t:g} puts {'no' if above == 0 else 'every'} row in the group "
                f"(the column ranges {col.min():g}..{col.max():g} in the analysed table)"
            )
        return col.astype("float64"), [t]
    text = col.astype("string").astype("category")
    wanted = [str(v) for v in facet.value_or_threshold]
    seen = set(text.dropna().unique())
    missing = [v for v in wanted if v not in seen]
    if missing:
        raise ExplainDataError(
            f"facet {facet.name!r}: value(s) {missing} do not occur in the analysed table "
            f"(values present: {sorted(seen)[:20]})"
        )
    if set(wanted) >= seen:
        raise ExplainDataError(
            f"facet {facet.name!r}: values {wanted} are every value present: no group to compare with"
        )
    return text, wanted


def _labels(values: Any, positive: Any) -> tuple[Any, list[str]]:
    import pandas as pd

    return pd.Series(values).astype("string").astype("category").reset_index(drop=True), [str(positive)]


def bias_report(
    df: Any,
    facets: Sequence[Facet],
    label: str,
    positive_label: Any,
    predicted: Any | None = None,
    pre_training: Sequence[str] = ("CI", "DPL"),
    post_training: Sequence[str] = ("DPPL", "DI"),
    group_variable: str | None = None,
) -> dict[str, Any]:
    """Clarify's bias sections for ``df`` (a frame holding the label, the facets and, for
    metrics that need them, the features): ``{"pre_training_bias_metrics": ...,
    "post_training_bias_metrics": ...}``; the post-training section only with ``predicted``
    (the predicted labels, in the label's values)."""
    import pandas as pd
    from smclarify.bias import report as sm

    unknown = [m for m in pre_training if m not in PRE_TRAINING_METRICS]
    unknown += [m for m in post_training if m not in POST_TRAINING_METRICS]
    if unknown:
        raise ExplainDataError(
            f"unknown bias metric(s) {unknown}: pre-training ones are {', '.join(PRE_TRAINING_METRICS)}; "
            f"post-training ones {', '.join(POST_TRAINING_METRICS)}"
        )
    if label not in df.columns:
        raise ExplainDataError(f"label {label!r}: no such column in the analysed table")
    if not (df[label].astype("string") == str(positive_label)).any():
        raise ExplainDataError(f"label {label!r}: the positive value {positive_label!r} does not occur in the table")
    if any(m in NEEDS_GROUP for m in (*pre_training, *post_training)) and group_variable is None:
        raise ExplainDataError("CDDL and CDDPL need a group variable (explainability.group_variable)")
    df = df.reset_index(drop=True)
    y, positive = _labels(df[label], positive_label)
    group = df[group_variable].reset_index(drop=True) if group_variable else None
    if predicted is not None and len(predicted) != len(df):
        raise ExplainDataError(f"{len(predicted)} predicted labels for {len(df)} rows")
    base = df.drop(columns=[c for c in (label, group_variable) if c], errors="ignore")
    out: dict[str, Any] = {}
    stages: list[tuple[str, Sequence[str]]] = [(PRE_TRAINING, pre_training)]
    if predicted is not None:
        stages.append((POST_TRAINING, post_training))
    for section, names in stages:
        if not names:
            continue
        facets_out: dict[str, list[dict[str, Any]]] = {}
        for facet in facets:
            col, values = _facet_column(df, facet)
            frame = pd.concat([base.drop(columns=[facet.name]), col.rename(facet.name)], axis=1)
            kwargs: dict[str, Any] = {
                "df": frame,
                "facet_column": sm.FacetColumn(facet.name, values),
                "label_column": sm.LabelColumn(label, y, positive),
                "metrics": list(names),
                "group_variable": group,
            }
            if section == POST_TRAINING:
                yhat, _ = _labels(predicted, positive_label)
                kwargs["stage_type"] = sm.StageType.POST_TRAINING
                kwargs["predicted_label_column"] = sm.LabelColumn("predicted_label", yhat, positive)
            else:
                kwargs["stage_type"] = sm.StageType.PRE_TRAINING
            facets_out[facet.name] = sm.bias_report(**kwargs)
        out[section] = {
            "label": label,
            "label_value_or_threshold": str(positive_label),
            "facets": facets_out,
        }
    return out


# ---------------------------------------------------------------- analysis.json


def analysis(
    bias: Mapping[str, Any] | None, shap: Attributions | None, method: str = "tree_shap", **extra: Any
) -> dict[str, Any]:
    """``analysis.json`` of a Clarify job from :func:`bias_report` and :func:`tree_shap`."""
    out: dict[str, Any] = {"version": ANALYSIS_VERSION, **(bias or {})}
    if shap is not None:
        g, e = shap.global_importance(), shap.expected_values()
        out["explanations"] = {
            "kernel_shap": {o: {"global_shap_values": g[o], "expected_value": e[o]} for o in shap.outputs}
        }
    out["mlblueprints"] = {"shap_method": method if shap is not None else None, **extra}
    return out


def write_analysis(doc: Mapping[str, Any], out_dir: Path, shap: Attributions | None = None) -> Path:
    """``<out_dir>/analysis.json`` (and ``explanations_shap/out.csv`` with the per-record
    attributions of the first output), each written to a temporary name and renamed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "analysis.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_json_safe(doc), indent=1, allow_nan=False))
    tmp.replace(path)
    if shap is not None:
        (out_dir / "explanations_shap").mkdir(exist_ok=True)
        csv = out_dir / "explanations_shap" / "out.csv"
        shap.table().to_csv(csv.with_suffix(".csv.tmp"), index=False)
        csv.with_suffix(".csv.tmp").replace(csv)
    return path


def _json_safe(x: Any) -> Any:
    """Infinite and missing metric values as Clarify writes them: "Infinity", "-Infinity", null."""
    if isinstance(x, Mapping):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, float):
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "Infinity" if x > 0 else "-Infinity"
    return x


def read_analysis(path: Path) -> dict[str, Any]:
    """An ``analysis.json`` (ours or a Clarify job's), checked for the sections it must have."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ExplainDataError(f"{path}: no analysis.json there") from None
    except json.JSONDecodeError as e:
        raise ExplainDataError(f"{path}: not JSON ({e})") from None
    if not isinstance(doc, dict) or not any(k in doc for k in (PRE_TRAINING, POST_TRAINING, "explanations")):
        raise ExplainDataError(f"{path}: no bias metrics and no explanations: not a Clarify analysis.json")
    for section in (PRE_TRAINING, POST_TRAINING):
        if section in doc and not isinstance(doc[section].get("facets"), dict):
            raise ExplainDataError(f"{path}: {section} has no facets object")
    return doc


def metric_values(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every bias metric of an analysis, flat: stage, facet, value_or_threshold, name,
    description, value (a float; inf for Clarify's "Infinity"; None when it failed), error."""
    rows = []
    for section in (PRE_TRAINING, POST_TRAINING):
        for facet, groups in ((doc.get(section) or {}).get("facets") or {}).items():
            for g in groups:
                for m in g.get("metrics", []):
                    rows.append(
                        {
                            "stage": section.removesuffix("_bias_metrics"),
                            "facet": facet,
                            "value_or_threshold": g.get("value_or_threshold"),
                            "name": m["name"],
                            "description": m.get("description", ""),
                            "value": _number(m.get("value")),
                            "error": m.get("error"),
                        }
                    )
    return rows


def _number(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, str):  # Clarify writes infinities as strings
        return {"Infinity": math.inf, "-Infinity": -math.inf}.get(v)
    return float(v)


# ---------------------------------------------------------------- the gate


@dataclass
class FairnessDecision:
    passed: bool
    checked: list[dict[str, Any]] = field(default_factory=list)  # one per gated metric and facet
    reasons: list[str] = field(default_factory=list)  # one line per broken threshold

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        if not self.checked:
            return "fairness gate: no bias metric is gated"
        head = "fairness gate: passed" if self.passed else "fairness gate: FAILED"
        return "\n".join([head, *(f"  - {r}" for r in self.reasons)])


def gate(doc: Mapping[str, Any], thresholds: Mapping[str, tuple[float | None, float | None]]) -> FairnessDecision:
    """Check every gated metric (name -> (min, max), either bound None) of every facet of the
    analysis: a value outside its bounds, a gated metric that failed to compute, or one the
    analysis does not hold, fails the gate."""
    rows = metric_values(doc)
    decision = FairnessDecision(passed=True)
    for name, (lo, hi) in thresholds.items():
        found = [r for r in rows if r["name"] == name]
        if not found:
            decision.passed = False
            decision.reasons.append(f"{name} is gated but the analysis does not hold it")
            continue
        for r in found:
            v = r["value"]
            where = f"{name} of {r['facet']}={r['value_or_threshold']} ({r['stage']})"
            bounds = f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"
            ok = v is not None and (lo is None or v >= lo) and (hi is None or v <= hi)
            decision.checked.append({**r, "min": lo, "max": hi, "passed": ok})
            if v is None:
                decision.passed = False
                decision.reasons.append(f"{where} could not be computed ({r['error'] or 'no value'}): gate {bounds}")
            elif not ok:
                decision.passed = False
                decision.reasons.append(f"{where} = {v:.4g} is outside {bounds}")
    return decision
