"""Bring your own data: a use case nobody here shaped (tests/usecases/policy_renewals.yaml) goes
from landing files to a registered model through the documented commands only, each run as a
user runs it (``python -m mlblueprints.cli ...`` in its own process, its own runtime directory
and Airflow metadata DB).

The data is generated here the way docs/own-data.md tells a user to prepare theirs: a table with
no ids and no timestamps, ten yes/no columns and a yes/no label true for about two thirds of the
rows, given a row id and event times over eight days and landed as one CSV per day.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import ROOT, read_table, runtime_home

pytestmark = pytest.mark.slow

USECASE = "policy_renewals"
START = date(2024, 5, 1)
DAYS = 8
ROWS_PER_DAY = 400
YES_NO = [
    "has_claims",
    "paperless",
    "autopay",
    "multi_policy",
    "agent_contact",
    "price_increase",
    "complaint",
    "online_quote",
    "loyalty_member",
    "late_payment",
]


def source_table(rows: int, seed: int = 11) -> pd.DataFrame:
    """The user's data as it arrives: no id, no time; yes/no answers; a common yes/no label."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "region": rng.choice(["north", "south", "east", "west"], size=rows),
            "tenure_years": rng.integers(0, 30, size=rows),
            "premium": np.round(rng.gamma(4.0, 300.0, size=rows), 2),
            "age": rng.integers(18, 90, size=rows),
        }
    )
    flags = {c: rng.random(rows) < p for c, p in zip(YES_NO, [0.2, 0.6, 0.5, 0.3, 0.25, 0.35, 0.1, 0.4, 0.3, 0.15])}
    logit = (
        0.2
        + 1.4 * flags["autopay"]
        + 0.9 * flags["loyalty_member"]
        + 0.6 * flags["multi_policy"]
        - 1.6 * flags["price_increase"]
        - 1.4 * flags["complaint"]
        - 1.0 * flags["late_payment"]
        + 0.04 * df["tenure_years"].to_numpy()
        + rng.normal(scale=0.6, size=rows)
    )
    renewed = rng.random(rows) < 1 / (1 + np.exp(-logit))
    for c, v in flags.items():
        df[c] = np.where(v, "yes", "no")
    df["renewed"] = np.where(renewed, "yes", "no")
    df.loc[rng.random(rows) < 0.05, "age"] = None  # an optional column with gaps
    df.loc[rng.random(rows) < 0.05, "paperless"] = "Yes"  # booleans are read case-insensitively
    return df


def land(df: pd.DataFrame, landing: Path) -> dict[date, int]:
    """What docs/own-data.md does: a row id, event times spread over the days, one CSV per day."""
    df = df.copy()
    df.insert(0, "row_id", [f"r{i:06d}" for i in range(len(df))])
    seconds = np.sort(np.random.default_rng(3).integers(0, DAYS * 86400, size=len(df)))
    times = [datetime.combine(START, datetime.min.time()) + timedelta(seconds=int(s)) for s in seconds]
    df.insert(1, "event_time", [t.strftime("%Y-%m-%d %H:%M:%S") for t in times])
    counts = {}
    for d in (START + timedelta(days=i) for i in range(DAYS)):
        out = landing / "policies" / d.isoformat()
        out.mkdir(parents=True, exist_ok=True)
        day = df[df["event_time"].str.startswith(d.isoformat())]
        day.to_csv(out / "policies.csv", index=False)
        counts[d] = len(day)
    return counts


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("owndata")
    usecases = base / "usecases"
    shutil.copytree(ROOT / "tests" / "usecases", usecases)
    home = base / "home"
    source = source_table(DAYS * ROWS_PER_DAY)
    counts = land(source, home / "landing")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        MLB_HOME=str(home),
        MLB_USECASES_DIR=str(usecases),
        MLB_EXPECTATIONS_DIR=str(base / "expectations"),
        MLB_PROJECT_ROOT=str(ROOT),
    )
    return {
        "home": home,
        "env": env,
        "days": sorted(counts),
        "counts": counts,
        "source": source,
        "usecases": usecases,
        "base": base,
    }


def mlb(world, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "mlblueprints.cli", *args],
        env=world["env"],
        cwd=world["base"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    print(f"$ mlblueprints {' '.join(args)}\n{out.stdout}\n{out.stderr[-5000:]}")
    return out


def test_from_landing_files_to_a_registered_model(world):
    home, days = world["home"], world["days"]
    yaml_path = world["usecases"] / f"{USECASE}.yaml"
    suites = world["base"] / "expectations" / USECASE
    total = DAYS * ROWS_PER_DAY

    # 1. check-config before any suite exists: every missing suite named, with the command that writes them
    out = mlb(world, "check-config")
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"{suites / f'{t}.json'}: missing: the {layer} gate of {table} needs suite '{USECASE}/{t}' "
        f"({yaml_path}: {field}); write starter suites with: mlblueprints suites init {USECASE}"
        for t, layer, table, field in [
            ("policies.bronze", "bronze", "policies", "datasets.policies.quality.bronze"),
            ("policies.silver", "silver", "policies", "datasets.policies.quality.silver"),
            ("renewal_features.gold", "gold", "renewal_features", "gold.renewal_features.quality"),
        ]
    ]

    # 2. starter suites from the schema; a second init keeps them
    out = mlb(world, "suites", "init", USECASE)
    assert out.returncode == 0, out.stderr
    for t in ("policies.bronze", "policies.silver", "renewal_features.gold"):
        assert f"written: {suites / f'{t}.json'}" in out.stdout
    silver = json.loads((suites / "policies.silver.json").read_text())
    assert {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "row_id"}, "severity": "critical"} in [
        {k: e[k] for k in ("type", "kwargs", "severity")} for e in silver["expectations"]
    ]
    (suites / "policies.silver.json").write_text(json.dumps(silver, indent=1))  # "edited by the user"
    out = mlb(world, "suites", "init", USECASE)
    assert out.stdout.count("(exists; --force overwrites it)") == 3
    assert json.loads((suites / "policies.silver.json").read_text()) == silver

    # 3. the configuration and its suites check out
    out = mlb(world, "check-config")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{yaml_path}: ok"

    # 4. backfill: one DAG run per landing date, a progress line per date, one summary table
    first, later = days[:6], days[6:]
    out = mlb(world, "lakehouse", USECASE, "--from", first[0].isoformat(), "--to", first[-1].isoformat())
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == len(first)
    for i, (line, d) in enumerate(zip(progress, first), 1):
        assert line.startswith(f"[{i}/{len(first)}] {USECASE}__lakehouse landing date {d}: success in "), line
        n = world["counts"][d]
        assert line.endswith(f"{n:,} rows landed, {n:,} into Silver, 0 quarantined, 0 duplicates"), line
    header = next(i for i, line in enumerate(lines) if line.startswith("landing date"))
    rows = lines[header + 1 : header + 1 + len(first)]
    assert [r.split()[0] for r in rows] == [d.isoformat() for d in first]
    assert all(r.split()[1] == "success" for r in rows)
    n = sum(world["counts"][d] for d in first)
    total_line = lines[header + 1 + len(first)].split()
    assert total_line[:2] == ["total", "6/6"] and total_line[4:8] == [f"{n:,}", f"{n:,}", "0", "0"]
    assert (
        f"feature views: Gold event dates {first[0]}..{first[-1]} are not materialized yet; "
        f"run: mlblueprints features run {USECASE}" in out.stdout
    )

    # 5. features follow what was loaded: the whole backfilled range, not the last Gold commit
    out = mlb(world, "features", "run", USECASE)
    assert out.returncode == 0, out.stderr
    assert f"{USECASE}__features event dates {first[0]}..{first[-1]}: success" in out.stdout
    # ... and after the next load, what Gold recomputed since the views last read it
    out = mlb(world, "lakehouse", USECASE, "--from", later[0].isoformat(), "--to", later[-1].isoformat())
    assert out.returncode == 0, out.stderr
    assert f"feature views: Gold event dates {later[0]}..{later[-1]} are not materialized yet" in out.stdout
    out = mlb(world, "features", "run", USECASE)
    assert out.returncode == 0, out.stderr
    assert f"{USECASE}__features event dates {later[0]}..{later[-1]}: success" in out.stdout
    from mlblueprints.config import load_usecase

    with runtime_home(home):
        uc = load_usecase(world["usecases"] / f"{USECASE}.yaml")
        offline = read_table(uc, "fv_policy_v1")
        silver_rows = read_table(uc, "policies_silver")
    assert len(offline) == total and offline["row_id"].nunique() == total
    assert sorted(offline["event_date"].astype(str).unique()) == [d.isoformat() for d in days]
    # yes/no (any case) became booleans; the label too
    assert silver_rows["paperless"].dtype == bool and silver_rows["renewed"].dtype == bool
    expected = world["source"]["renewed"].eq("yes").mean()
    assert silver_rows["renewed"].mean() == pytest.approx(expected) and 0.55 < expected < 0.8
    out = mlb(world, "features", "run", USECASE)
    assert out.returncode == 0 and "the feature views are up to date with Gold" in out.stdout
    assert "__features event dates" not in out.stdout and "offline rows" not in out.stdout  # nothing ran

    # 6. training, interrupted after 10 boosting rounds like a Spot reclaim; the retry resumes
    out = mlb(world, "training", "run", USECASE, "--interrupt", "SIGTERM", "--after", "10")
    assert out.returncode == 0, out.stderr
    report = json.loads(sorted((home / "runs" / USECASE / "training").glob("*.json"))[-1].read_text())
    text = report["text"]
    assert "resumed from the checkpoint at round" in text
    resumed = report["tasks"]["train"]["meta"]["resumed_from_round"]
    assert resumed >= 10 and report["tasks"]["train"]["try_number"] == 2
    ev = report["tasks"]["evaluate"]
    assert ev["decision"]["passed"] and ev["decision"]["against"] == "baseline"
    holdout_rate = ev["candidate"]["positives"] / ev["candidate"]["rows"]
    assert ev["decision"]["baseline"]["pr_auc"] == {
        "value": pytest.approx(holdout_rate),
        "source": "no skill: the holdout's positive rate",
    }
    assert ev["candidate"]["precision"] >= 0.8  # the min_precision rule chose the threshold
    assert f"registered {USECASE}_model version 1" in text

    # 7. the registered version and its lineage
    out = mlb(world, "models", "lineage", USECASE, "--version", "1")
    assert out.returncode == 0, out.stderr
    lineage = json.loads(out.stdout)
    assert lineage["aliases"] == ["challenger"]
    assert lineage["lineage"]["training_set"] == f"{USECASE}.ts_renewals" and lineage["lineage"]["feature_views"] == {
        "policy": 1
    }
