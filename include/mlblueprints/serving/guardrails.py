"""The canary's guardrails, pure: from the captured requests of one bake, each variant's error
rate, latency and scores, and the verdicts that promote the challenger or roll it back.

Judged on the challenger's requests, against the champion's on the same traffic (the router
interleaves them):

* ``error_rate`` - its 5xx answers over its requests, at most ``max_error_rate``;
* ``p99_latency_ms`` - the 99th percentile of its server-side latency, at most ``max_p99_latency_ms``;
* ``score_shift`` - PSI (10 bins at the champion's deciles) or the two-sample Kolmogorov-Smirnov
  statistic of its scores against the champion's, at most the threshold; not judged with fewer
  than :data:`MIN_SCORES` scores on a side;
* ``quality`` - where the requests' labels are known (replayed rows), its ROC-AUC at most
  ``max_roc_auc_drop`` below the champion's; not judged (and said so) with fewer than
  ``min_positives`` positives or negatives per variant;
* ``min_requests`` - too few challenger requests to judge is a failure: a canary nobody called
  is not evidence.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import Any

from mlblueprints.config import Guardrails
from mlblueprints.serving.core import percentile

PSI_BINS = 10
PSI_EPSILON = 1e-4  # an empty bin's share (as Evidently's PSI)
# scores per variant below which a shift is not judged: with 10 bins, PSI's sampling noise alone
# is about (bins - 1) / n per side (0.09 at 100 scores; 0.9 at 10)
MIN_SCORES = 100


def samples(captures: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant: requests, 5xx errors, latencies (ms) and (id, score) of each answered record."""
    out: dict[str, dict[str, Any]] = {}
    for c in captures:
        v = c.get("variant")
        if v is None:  # a request refused before routing (malformed): nobody's
            continue
        s = out.setdefault(v, {"requests": 0, "errors": 0, "client_errors": 0, "latencies": [], "scored": []})
        s["requests"] += 1
        status = int(c["status"])
        if status >= 500:
            s["errors"] += 1
        elif status >= 400:
            s["client_errors"] += 1
        if c.get("latency_ms") is not None and status < 400:
            s["latencies"].append(float(c["latency_ms"]))
        resp = c.get("response")
        if status == 200 and isinstance(resp, Mapping):
            for p in resp.get("predictions", [resp]):
                if isinstance(p, Mapping) and "score" in p:
                    s["scored"].append((p.get("id"), float(p["score"])))
    return out


def psi(expected: Sequence[float], actual: Sequence[float], bins: int = PSI_BINS) -> float:
    """Population stability index of ``actual`` against ``expected``, over ``bins`` bins cut at
    ``expected``'s quantiles (ties merged), empty shares floored at :data:`PSI_EPSILON`."""
    if not expected or not actual:
        return math.nan
    e = sorted(expected)
    cuts = sorted({percentile(e, i / bins) for i in range(1, bins)})  # type: ignore[type-var]

    def shares(values: Sequence[float]) -> list[float]:
        counts = [0] * (len(cuts) + 1)
        for x in values:
            counts[bisect.bisect_right(cuts, x)] += 1
        return [max(c / len(values), PSI_EPSILON) for c in counts]

    pe, pa = shares(expected), shares(actual)
    return float(sum((a - b) * math.log(a / b) for a, b in zip(pa, pe)))


def ks(a: Sequence[float], b: Sequence[float]) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical
    distribution functions (scipy's ``ks_2samp`` statistic)."""
    if not a or not b:
        return math.nan
    xa, xb = sorted(a), sorted(b)
    na, nb = len(xa), len(xb)
    d = 0.0
    for x in sorted(set(xa) | set(xb)):
        d = max(d, abs(bisect.bisect_right(xa, x) / na - bisect.bisect_right(xb, x) / nb))
    return d


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """ROC-AUC by ranks (the Mann-Whitney U statistic; ties count half), as scikit-learn's."""
    pairs = sorted(zip(scores, labels))
    pos = sum(1 for _, y in pairs if y)
    neg = len(pairs) - pos
    if pos == 0 or neg == 0:
        return math.nan
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        mid = (i + 1 + j) / 2  # the average rank of the tie group (1-based)
        rank_sum += mid * sum(1 for k in range(i, j) if pairs[k][1])
        i = j
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def _verdict(name: str, value: float | None, threshold: float, ok: bool | None, detail: str) -> dict[str, Any]:
    return {
        "guardrail": name,
        "value": None if value is None or (isinstance(value, float) and math.isnan(value)) else round(value, 6),
        "threshold": threshold,
        "ok": ok,
        "detail": detail,
    }


def evaluate(
    g: Guardrails,
    by_variant: Mapping[str, Mapping[str, Any]],
    champion: str,
    challenger: str,
    labels: Mapping[Any, int] | None = None,
) -> list[dict[str, Any]]:
    """The verdict of every guardrail on one bake (``ok`` None: not judged, with the reason)."""
    empty = {"requests": 0, "errors": 0, "client_errors": 0, "latencies": [], "scored": []}
    ch, base = by_variant.get(challenger, empty), by_variant.get(champion, empty)
    n = ch["requests"]
    out = [
        _verdict(
            "min_requests",
            float(n),
            float(g.min_requests),
            n >= g.min_requests,
            f"{n} challenger requests ({base['requests']} champion)",
        )
    ]
    rate = ch["errors"] / n if n else math.nan
    out.append(
        _verdict(
            "error_rate",
            rate,
            g.max_error_rate,
            None if not n else rate <= g.max_error_rate,
            f"{ch['errors']} of {n} requests answered 5xx (champion: {base['errors']} of {base['requests']})",
        )
    )
    lat = sorted(ch["latencies"])
    p99 = percentile(lat, 0.99)
    base_p99 = percentile(sorted(base["latencies"]), 0.99)
    out.append(
        _verdict(
            "p99_latency_ms",
            p99,
            g.max_p99_latency_ms,
            None if p99 is None else p99 <= g.max_p99_latency_ms,
            f"p99 {_ms(p99)} over {len(lat)} answered requests (champion: {_ms(base_p99)})",
        )
    )
    ch_scores = [s for _, s in ch["scored"]]
    base_scores = [s for _, s in base["scored"]]
    if g.score_shift is not None:
        m = g.score_shift
        value = (psi if m.method == "psi" else ks)(base_scores, ch_scores)
        judged = len(ch_scores) >= MIN_SCORES and len(base_scores) >= MIN_SCORES
        out.append(
            _verdict(
                f"score_shift_{m.method}",
                value,
                m.threshold,
                (value <= m.threshold) if judged else None,
                f"{m.method.upper()} of {len(ch_scores)} challenger scores against {len(base_scores)} champion scores"
                + ("" if judged else ": too few scores to judge"),
            )
        )
    if g.quality.enabled and labels:
        q = g.quality
        aucs, counts = {}, {}
        for name, s in ((challenger, ch), (champion, base)):
            pts = [(sc, int(labels[i])) for i, sc in s["scored"] if i in labels]
            pos = sum(y for _, y in pts)
            counts[name] = (pos, len(pts) - pos)
            aucs[name] = roc_auc([a for a, _ in pts], [y for _, y in pts])
        enough = all(min(c) >= q.min_positives for c in counts.values())
        drop = aucs[champion] - aucs[challenger] if enough else math.nan
        out.append(
            _verdict(
                "roc_auc_drop",
                drop,
                q.max_roc_auc_drop,
                (drop <= q.max_roc_auc_drop) if enough else None,
                f"ROC-AUC {aucs[challenger]:.4f} against the champion's {aucs[champion]:.4f} on labelled requests "
                f"(positives/negatives: challenger {counts[challenger]}, champion {counts[champion]})"
                + ("" if enough else f": fewer than {q.min_positives} of a class, not judged"),
            )
        )
    return out


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def tripped(verdicts: Sequence[Mapping[str, Any]]) -> list[str]:
    """The guardrails that failed, each in one line."""
    return [
        f"{v['guardrail']} {v['value']} > {v['threshold']}"
        if v["guardrail"] != "min_requests"
        else f"min_requests: {v['detail']} < {int(v['threshold'])}"
        for v in verdicts
        if v["ok"] is False
    ]
