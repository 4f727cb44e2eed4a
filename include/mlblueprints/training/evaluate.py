"""Evaluation on a time-based holdout and the registration gate (pure: numpy + scikit-learn).

The holdout is the last ``holdout_days`` days of label events: a model is judged on data from
after everything it learned from, as it will be in production (a random split would leak the
future through correlated neighbours in time).

:func:`evaluate` gives ROC-AUC, PR-AUC (average precision), precision and recall at the
operating threshold, and the expected calibration error. The threshold is chosen per model by
the configured rule on the same holdout (e.g. the lowest threshold whose false-positive rate is
at most 1 %), so candidate and champion are compared at the operating point each would run at.

:func:`gate` decides registration. Against a reference model (the champion; with no champion, the
newest registered version, see :mod:`mlblueprints.registry.reference`) the candidate must beat
it on the primary metric by ``min_improvement`` and may not regress any metric in ``tolerances``
by more than its tolerance. Every model must also reach the baseline, metric by metric: the
configured ``gate.baseline`` values, with ROC-AUC and PR-AUC never below what a model without
skill scores on the same holdout (0.5, and the holdout's positive rate) - so a baseline fitted to
a rare label cannot wave through a useless model of a common one. With no reference model the
primary metric must beat its baseline by ``min_improvement``. The decision says where each
baseline value came from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mlblueprints.config import (
    DEFAULT_PRIMARY_METRIC,
    DEFAULT_TOLERANCES,
    LOWER_IS_BETTER,
    TASK_METRICS,
    Gate,
    ThresholdRule,
)

CALIBRATION_BINS = 10


def choose_threshold(y: np.ndarray, scores: np.ndarray, rule: ThresholdRule) -> float:
    """The operating threshold (predict positive when score >= threshold) chosen by ``rule``.

    ``max_fpr``: the lowest threshold whose false-positive rate is at most max_fpr (the most
    recall the FPR budget allows). ``min_precision``: the lowest threshold whose precision is at
    least min_precision. With no threshold satisfying the rule: the highest score + epsilon
    (nothing flagged).
    """
    y = np.asarray(y, dtype=np.int8)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # candidate thresholds: each distinct score; flagged = scores >= threshold
    distinct = np.r_[True, s_sorted[1:] != s_sorted[:-1]]
    last_of_run = np.r_[distinct[1:], True]
    tp = np.cumsum(y_sorted)[last_of_run]
    fp = np.cumsum(1 - y_sorted)[last_of_run]
    thresholds = s_sorted[last_of_run]
    negatives = max(int((y == 0).sum()), 1)
    if rule.max_fpr is not None:
        ok = fp / negatives <= rule.max_fpr
    else:
        flagged = tp + fp
        ok = (flagged > 0) & (tp / np.maximum(flagged, 1) >= float(rule.min_precision))
    if not ok.any():
        return float(np.nextafter(s.max(initial=1.0), np.inf))
    # thresholds are descending; the last ok one (lowest threshold) flags the most
    return float(thresholds[np.flatnonzero(ok)[-1]])


def calibration_error(y: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error over equal-width probability bins: the mean |observed rate -
    mean predicted probability|, weighted by the share of rows in each bin."""
    y = np.asarray(y, dtype=np.float64)
    s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    if len(s) == 0:
        return 0.0
    idx = np.minimum((s * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(y[m].mean() - s[m].mean())
    return float(total)


def evaluate(y: np.ndarray, scores: np.ndarray, rule: ThresholdRule) -> dict[str, float]:
    """Every metric the gate uses, plus the threshold, counts and the false-positive rate."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y, dtype=np.int8)
    s = np.asarray(scores, dtype=np.float64)
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        raise ValueError(f"the holdout has {positives} positives out of {len(y)} rows: cannot evaluate")
    t = choose_threshold(y, s, rule)
    flagged = s >= t
    tp = int((flagged & (y == 1)).sum())
    fp = int((flagged & (y == 0)).sum())
    return {
        "roc_auc": float(roc_auc_score(y, s)),
        "pr_auc": float(average_precision_score(y, s)),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / positives,
        "fpr": fp / int((y == 0).sum()),
        "calibration_error": calibration_error(y, s),
        "threshold": t,
        "rows": int(len(y)),
        "positives": positives,
    }


def _summary(values: np.ndarray) -> dict[str, float]:
    q = np.quantile(values, [0.05, 0.5, 0.95]) if len(values) else [np.nan] * 3
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "p05": float(q[0]),
        "p50": float(q[1]),
        "p95": float(q[2]),
        "max_abs": float(np.max(np.abs(values))),
    }


def evaluate_multiclass(
    y: np.ndarray, probs: np.ndarray, classes: list[str]
) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics of class probabilities ``probs`` (rows x classes, columns in ``classes`` order)
    against class indexes ``y``; the decision is the most probable class (argmax). Returns the
    metrics the gate can use and the details a person reads (per-class precision / recall / F1,
    the confusion matrix, what a model without skill scores)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, precision_recall_fscore_support

    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    if p.ndim != 2 or p.shape[1] != k:
        raise ValueError(f"expected class probabilities with {k} columns, got shape {p.shape}")
    if len(y) == 0:
        raise ValueError("the holdout is empty: cannot evaluate")
    labels = list(range(k))
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300)  # float32 outputs: rows sum to 1 +- 1e-7
    pred = p.argmax(axis=1)
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    metrics = {
        "log_loss": float(log_loss(y, np.clip(p, 1e-15, 1.0), labels=labels)),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, labels=labels, average="weighted", zero_division=0)),
        "rows": int(len(y)),
    }
    priors = np.bincount(y, minlength=k) / len(y)
    top = float(priors.max())
    details = {
        "decision": "argmax",
        "classes": list(classes),
        "per_class": {
            c: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),  # rows: actual, columns: predicted
        "no_skill": {  # always predicting the class priors (log loss) or the most frequent class
            "log_loss": float(-(priors[priors > 0] * np.log(priors[priors > 0])).sum()),
            "accuracy": top,
            "macro_f1": 2 * top / ((1 + top) * k),
            "weighted_f1": top * 2 * top / (1 + top),
        },
    }
    return metrics, details


def evaluate_regression(y: np.ndarray, pred: np.ndarray) -> tuple[dict[str, float], dict[str, Any]]:
    """RMSE, MAE, R² and - over the rows whose target is not 0, where it is defined - MAPE; the
    residual summary; and what predicting the mean (RMSE, R²) or median (MAE) scores."""
    y = np.asarray(y, dtype=np.float64)
    f = np.asarray(pred, dtype=np.float64).reshape(-1)
    if len(y) == 0:
        raise ValueError("the holdout is empty: cannot evaluate")
    if len(f) != len(y):
        raise ValueError(f"{len(f)} predictions for {len(y)} rows")
    resid = f - y
    sst = float(((y - y.mean()) ** 2).sum())
    nonzero = y != 0
    metrics: dict[str, float] = {
        "rmse": float(np.sqrt(np.mean(resid**2))),
        "mae": float(np.mean(np.abs(resid))),
        "r2": float(1.0 - (resid**2).sum() / sst) if sst > 0 else 0.0,
        "rows": int(len(y)),
    }
    if nonzero.any():
        metrics["mape"] = float(np.mean(np.abs(resid[nonzero] / y[nonzero])))
    details = {
        "decision": "none (the prediction is the value)",
        "residuals": _summary(resid),
        "target": {"min": float(y.min()), "max": float(y.max()), "mean": float(y.mean())},
        "mape_rows": int(nonzero.sum()),
        "no_skill": {
            "rmse": float(np.std(y)),
            "mae": float(np.mean(np.abs(y - np.median(y)))),
            "r2": 0.0,
        },
    }
    return metrics, details


def evaluate_task(
    task: str,
    y: np.ndarray,
    scores: np.ndarray,
    *,
    rule: ThresholdRule | None = None,
    classes: list[str] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, details) of a model of ``task`` on the holdout: :func:`evaluate` (binary, at the
    threshold ``rule`` chooses), :func:`evaluate_multiclass` or :func:`evaluate_regression`."""
    if task == "binary":
        if rule is None:
            raise ValueError("a binary model needs a threshold rule")
        m = evaluate(y, scores, rule)
        rate = m["positives"] / m["rows"]
        return m, {"decision": f"score >= {m['threshold']:.6g} ({rule.describe()})", "no_skill": no_skill(rate)}
    if task == "multiclass":
        if not classes:
            raise ValueError("a multiclass model needs its classes")
        return evaluate_multiclass(y, scores, classes)
    if task == "regression":
        return evaluate_regression(y, scores)
    raise ValueError(f"unknown task {task!r}")


@dataclass
class GateDecision:
    passed: bool
    against: str  # "champion v<N>", "v<N> (newest registered version; no champion)" or "baseline"
    primary_metric: str
    reasons: list[str] = field(default_factory=list)
    comparison: list[dict[str, Any]] = field(default_factory=list)
    # metric -> {"value": floor, "source": where it came from}
    baseline: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        head = f"gate: {'PASSED' if self.passed else 'NOT PROMOTED'} against {self.against}"
        rows = [("metric", "candidate", "reference", "delta", "rule", "ok")]
        for c in self.comparison:
            rows.append(
                (
                    c["metric"],
                    _f(c["candidate"]),
                    _f(c["reference"]),
                    _f(c["delta"], signed=True),
                    c["rule"],
                    "yes" if c["ok"] else "NO",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head] + ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
        if self.baseline:
            lines.append(
                "  baseline: " + "; ".join(f"{m} {b['value']:.4f} ({b['source']})" for m, b in self.baseline.items())
            )
        return "\n".join(lines + [f"  - {r}" for r in self.reasons])


def _f(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def no_skill(positive_rate: float | None) -> dict[str, float]:
    """What a model without skill (random scores) gets on a holdout with this positive rate."""
    out = {"roc_auc": 0.5}
    if positive_rate is not None:
        out["pr_auc"] = float(positive_rate)
    return out


def baseline_floors(
    rules: Gate, positive_rate: float | None = None, *, task: str = "binary", no_skill_values: dict | None = None
) -> dict[str, dict[str, Any]]:
    """The baseline every registered model must reach, metric by metric (a ceiling for a metric
    that is better when lower), and where each value comes from: ``configured``
    (``gate.baseline``) or ``no skill`` (what a model that ignores its inputs scores on the same
    holdout). A configured value worse than the no-skill one is replaced by it."""
    derived = dict(no_skill_values) if no_skill_values is not None else no_skill(positive_rate)
    out: dict[str, dict[str, Any]] = {}
    for m in TASK_METRICS[task]:
        conf, ns = rules.baseline.get(m), derived.get(m)
        why = "no skill" + (": the holdout's positive rate" if m == "pr_auc" else "")
        if conf is None and ns is None:
            continue
        lower = m in LOWER_IS_BETTER
        if conf is None:
            out[m] = {"value": float(ns), "source": why}
        elif ns is not None and (conf > ns if lower else conf < ns):
            out[m] = {
                "value": float(ns),
                "source": f"{why}; the configured {conf:g} is {'above' if lower else 'below'} it",
            }
        else:
            out[m] = {"value": float(conf), "source": "configured"}
    return out


def _positive_rate(metrics: dict[str, float]) -> float | None:
    rows, pos = metrics.get("rows"), metrics.get("positives")
    return float(pos) / float(rows) if rows and pos is not None else None


def gate(
    candidate: dict[str, float],
    reference: dict[str, float] | None,
    rules: Gate,
    against: str,
    *,
    task: str = "binary",
    no_skill_values: dict[str, float] | None = None,
) -> GateDecision:
    """Decide whether ``candidate`` (metrics of :func:`evaluate_task`) is registered.

    ``reference`` is the reference model's metrics on the same holdout (the champion, or with no
    champion the newest registered version), or None when no model is registered yet; ``against``
    names it. The baseline (:func:`baseline_floors`, with the no-skill values of the holdout, for
    a binary task derivable from the candidate's ``rows`` and ``positives``) is checked in both
    cases. Each metric is compared in its direction (``LOWER_IS_BETTER``).
    """
    pm = rules.primary_metric or DEFAULT_PRIMARY_METRIC[task]
    tolerances = rules.tolerances if rules.tolerances is not None else DEFAULT_TOLERANCES[task]
    floors = baseline_floors(rules, _positive_rate(candidate), task=task, no_skill_values=no_skill_values)
    d = GateDecision(passed=True, against=against, primary_metric=pm, baseline=floors)
    if candidate.get(pm) is None:
        d.passed = False
        d.reasons.append(f"the primary metric {pm} is not defined on this holdout")
        return d

    def row(metric: str, ref: float, rule: str, ok: bool, reason: str) -> None:
        d.comparison.append(
            {
                "metric": metric,
                "candidate": candidate[metric],
                "reference": ref,
                "delta": candidate[metric] - ref,
                "rule": rule,
                "ok": ok,
            }
        )
        if not ok:
            d.passed = False
            d.reasons.append(reason)

    def beats(metric: str, ref: float, what: str) -> None:
        lower = metric in LOWER_IS_BETTER
        gain = (ref - candidate[metric]) if lower else (candidate[metric] - ref)
        ok = gain >= rules.min_improvement and (gain > 0 or rules.min_improvement == 0)
        verb = "lower" if lower else "higher"
        row(
            metric,
            ref,
            f"primary: improve on {what} by >= {rules.min_improvement:g} ({verb} is better)",
            ok,
            f"{metric} {candidate[metric]:.4f} does not beat the {what}'s {ref:.4f} by {rules.min_improvement:g} "
            f"({verb} is better)",
        )

    if reference is not None and reference.get(pm) is not None:
        beats(pm, reference[pm], "reference")
        for metric, tol in tolerances.items():
            if metric == pm or reference.get(metric) is None or candidate.get(metric) is None:
                continue
            delta = candidate[metric] - reference[metric]
            regression = delta if metric in LOWER_IS_BETTER else -delta
            row(
                metric,
                reference[metric],
                f"regress <= {tol:g}",
                regression <= tol,
                f"{metric} regresses by {regression:.4f} (tolerance {tol:g})",
            )
    elif pm in floors:
        beats(pm, floors[pm]["value"], "baseline")
    else:  # the configuration requires a baseline for such a metric; kept for direct callers
        d.passed = False
        d.reasons.append(f"no baseline value for the primary metric {pm} (set training.gate.baseline.{pm})")
    for metric, b in floors.items():
        if (reference is None or reference.get(pm) is None) and metric == pm:
            continue  # checked above, with min_improvement
        if candidate.get(metric) is None:
            continue
        lower = metric in LOWER_IS_BETTER
        ok = candidate[metric] <= b["value"] if lower else candidate[metric] >= b["value"]
        row(
            metric,
            b["value"],
            f"baseline: {'<=' if lower else '>='} {b['value']:.4f}",
            ok,
            f"{metric} {candidate[metric]:.4f} does not reach the baseline {b['value']:.4f} ({b['source']})",
        )
    return d
