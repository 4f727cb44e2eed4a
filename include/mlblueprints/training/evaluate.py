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

from mlblueprints.config import LOWER_IS_BETTER, METRICS, Gate, ThresholdRule

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


def baseline_floors(rules: Gate, positive_rate: float | None) -> dict[str, dict[str, Any]]:
    """The baseline every registered model must reach, metric by metric, and where each value
    comes from: ``configured`` (``gate.baseline``) or ``no skill`` (derived from the holdout's
    positive rate). A configured ROC-AUC or PR-AUC below the no-skill value is raised to it."""
    derived = no_skill(positive_rate)
    out: dict[str, dict[str, Any]] = {}
    for m in METRICS:
        conf, ns = rules.baseline.get(m), derived.get(m)  # type: ignore[call-overload]
        why = "no skill" + (": the holdout's positive rate" if m == "pr_auc" else "")
        if conf is None and ns is None:
            continue
        if conf is None:
            out[m] = {"value": ns, "source": why}
        elif ns is not None and conf < ns:
            out[m] = {"value": ns, "source": f"{why}; the configured {conf:g} is below it"}
        else:
            out[m] = {"value": float(conf), "source": "configured"}
    return out


def _positive_rate(metrics: dict[str, float]) -> float | None:
    rows, pos = metrics.get("rows"), metrics.get("positives")
    return float(pos) / float(rows) if rows and pos is not None else None


def gate(candidate: dict[str, float], reference: dict[str, float] | None, rules: Gate, against: str) -> GateDecision:
    """Decide whether ``candidate`` (metrics from :func:`evaluate`) is registered.

    ``reference`` is the reference model's metrics on the same holdout (the champion, or with no
    champion the newest registered version), or None when no model is registered yet; ``against``
    names it. The baseline floors (:func:`baseline_floors`, derived from the candidate's
    ``rows`` and ``positives``) are checked in both cases.
    """
    pm = rules.primary_metric
    floors = baseline_floors(rules, _positive_rate(candidate))
    d = GateDecision(passed=True, against=against, primary_metric=pm, baseline=floors)

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
        delta = candidate[metric] - ref
        ok = delta >= rules.min_improvement and (delta > 0 or rules.min_improvement == 0)
        row(
            metric,
            ref,
            f"primary: improve on {what} by >= {rules.min_improvement:g}",
            ok,
            f"{metric} {candidate[metric]:.4f} does not beat the {what}'s {ref:.4f} by {rules.min_improvement:g}",
        )

    if reference is not None:
        beats(pm, reference[pm], "reference")
        for metric, tol in rules.tolerances.items():
            if metric == pm or metric not in reference:
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
    else:  # the configuration requires a baseline for precision/recall; kept for direct callers
        d.passed = False
        d.reasons.append(f"no baseline value for the primary metric {pm} (set training.gate.baseline.{pm})")
    for metric, b in floors.items():
        if reference is None and metric == pm:
            continue  # checked above, with min_improvement
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
