"""Synthetic motor insurance claims: a regression target (the claim's cost) and a class label (its
severity band), for the ``claim_cost`` example use case.

Two data sets, landed as one CSV file per data set and day under ``<out>/<dataset>/<YYYY-MM-DD>/``:

* ``policies`` - reference data, landed once on the first day: policy id, region, vehicle age,
  driver age, annual mileage, yearly premium, whether the car sleeps in a garage;
* ``claims`` - the claims filed each day: claim id, policy id, filing time, claim type, days between
  the incident and the report, the cost (the regression target) and its severity band (low /
  medium / high, the multiclass label).

The cost is log-normal around a mean that depends on the claim type, the vehicle's age, the
driver's age, the mileage and the region, plus a regional level that drifts slowly over the days
- so the per-region rolling features of the Gold table carry signal the policy attributes do not.
Deterministic for a seed. No defects are injected (the fraud generator does that part).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

REGIONS = ("north", "south", "east", "west", "central")
CLAIM_TYPES = ("collision", "theft", "weather", "glass")
SEVERITIES = ("low", "medium", "high")
SEVERITY_BOUNDS = (800.0, 4000.0)  # cost < 800 low, < 4000 medium, else high
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
POLICY_COLUMNS = (
    "policy_id",
    "updated_at",
    "region",
    "vehicle_age",
    "driver_age",
    "annual_mileage",
    "premium",
    "garaged",
)
CLAIM_COLUMNS = (
    "claim_id",
    "policy_id",
    "event_time",
    "claim_type",
    "report_delay_days",
    "claim_cost",
    "severity",
)

_TYPE_WEIGHTS = (0.5, 0.1, 0.25, 0.15)
_TYPE_LOG_MEAN = (7.3, 8.1, 7.0, 5.9)  # collision ~1.5k, theft ~3.3k, weather ~1.1k, glass ~370
_REGION_LOG_SHIFT = (0.0, 0.15, -0.1, 0.25, 0.35)
_SIGMA = 0.55


@dataclass
class ClaimsManifest:
    start: str
    days: int
    policies: int
    claims: int
    seed: int
    files: list[str] = field(default_factory=list)
    severity_counts: dict[str, int] = field(default_factory=dict)


def severity_of(cost: float) -> str:
    low, high = SEVERITY_BOUNDS
    return SEVERITIES[0] if cost < low else SEVERITIES[1] if cost < high else SEVERITIES[2]


def _write(path: Path, columns: tuple[str, ...], rows: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("_" + path.name + ".partial")  # '_' files are never ingested
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)
    tmp.replace(path)


def generate_claims(
    out: Path, *, start: date, days: int = 10, policies: int = 2000, claims_per_day: int = 500, seed: int = 7
) -> ClaimsManifest:
    """Write the landing files; returns what was written (also in ``_generator/manifest.json``)."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    region = rng.choice(len(REGIONS), size=policies, p=(0.25, 0.2, 0.2, 0.2, 0.15))
    vehicle_age = rng.integers(0, 21, size=policies)
    driver_age = np.clip(rng.normal(45, 14, size=policies).round(), 18, 90).astype(int)
    mileage = np.clip(rng.lognormal(9.4, 0.45, size=policies), 1000, 80000).round(-1)
    garaged = rng.random(policies) < 0.45
    premium = (300 + 0.012 * mileage + 9 * np.maximum(30 - driver_age, 0) + 60 * (region >= 3)).round(2)
    t0 = datetime.combine(start, datetime.min.time())
    policy_rows = [
        (
            f"pol_{i:06d}",
            (t0 - timedelta(days=30)).strftime(TIMESTAMP_FORMAT),
            REGIONS[region[i]],
            int(vehicle_age[i]),
            int(driver_age[i]),
            float(mileage[i]),
            float(premium[i]),
            "true" if garaged[i] else "false",
        )
        for i in range(policies)
    ]
    manifest = ClaimsManifest(start=start.isoformat(), days=days, policies=policies, claims=0, seed=seed)
    first = out / "policies" / start.isoformat() / "part-000.csv"
    _write(first, POLICY_COLUMNS, policy_rows)
    manifest.files.append(first.relative_to(out).as_posix())
    # claim frequency grows with mileage and for young drivers
    freq = mileage / mileage.mean() * (1 + 0.6 * (driver_age < 25))
    freq = freq / freq.sum()
    n = 0
    counts = dict.fromkeys(SEVERITIES, 0)
    for d in range(days):
        day = start + timedelta(days=d)
        drift = 0.05 * np.sin(2 * np.pi * (d / 14.0) + np.arange(len(REGIONS)))  # regional level, slowly moving
        k = int(rng.poisson(claims_per_day))
        who = rng.choice(policies, size=k, p=freq)
        kind = rng.choice(len(CLAIM_TYPES), size=k, p=_TYPE_WEIGHTS)
        seconds = np.sort(rng.integers(0, 86400, size=k))
        delay = rng.geometric(0.35, size=k) - 1
        log_mean = (
            np.asarray(_TYPE_LOG_MEAN)[kind]
            + 0.025 * vehicle_age[who] * (kind == 0)
            + 0.012 * np.maximum(30 - driver_age[who], 0)
            + 0.000004 * mileage[who]
            + np.asarray(_REGION_LOG_SHIFT)[region[who]]
            + drift[region[who]]
            - 0.3 * (garaged[who] & (kind == 1))
            + 0.02 * delay
        )
        cost = np.round(np.exp(log_mean + rng.normal(0, _SIGMA, size=k)), 2)
        rows = []
        for j in range(k):
            sev = severity_of(float(cost[j]))
            counts[sev] += 1
            rows.append(
                (
                    f"clm_{n + j:07d}",
                    f"pol_{who[j]:06d}",
                    (datetime.combine(day, datetime.min.time()) + timedelta(seconds=int(seconds[j]))).strftime(
                        TIMESTAMP_FORMAT
                    ),
                    CLAIM_TYPES[kind[j]],
                    int(delay[j]),
                    float(cost[j]),
                    sev,
                )
            )
        n += k
        path = out / "claims" / day.isoformat() / "part-000.csv"
        _write(path, CLAIM_COLUMNS, rows)
        manifest.files.append(path.relative_to(out).as_posix())
    manifest.claims = n
    manifest.severity_counts = counts
    meta = out / "_generator" / "claims_manifest.json"
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(asdict(manifest), indent=1))
    return manifest
