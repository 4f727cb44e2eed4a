"""Every physical record of every landed file is accounted for exactly once.

Hypothesis draws the shape of a landing day (formats, sizes, line ends, blank lines, how many
records carry which defect); the files are generated record by record (``landing_corpus``), so the
physical line and the outcome of each record are known. After ingest and Silver each record must
be in exactly one place - Silver, duplicates, or quarantine with the expected reason code - under
its own file and line, and reconciliation must balance.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from helpers import fraud_usecase, read_table, runtime_home
from landing_corpus import Expected, csv_file, jsonl_file
from mlblueprints.lakehouse import local
from mlblueprints.lineage import RunInfo

DAY = date(2024, 3, 1)
UC = fraud_usecase()
PROPERTY = settings(
    deadline=None,
    derandomize=True,  # the same examples on every run; widen locally with --hypothesis-seed
    phases=[Phase.explicit, Phase.generate],  # each example ingests for real: no slow shrinking
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def land_and_check(tmp: Path, files: dict[str, tuple[bytes, Expected]]) -> None:
    day_dir = tmp / "landing" / "transactions" / DAY.isoformat()
    day_dir.mkdir(parents=True)
    for name, (data, _) in files.items():
        (day_dir / name).write_bytes(data)
    with runtime_home(tmp):
        run = RunInfo.for_usecase(UC, run_id="property")
        ing = local.ingest_bronze(UC, "transactions", [DAY], run)
        silver = local.build_silver(UC, "transactions", [DAY], run)
        rec = local.reconcile(UC, [silver], [ing])
        assert rec["ok"], rec["problems"]
        assert rec["files_checked"] == len(files)
        bronze = read_table(UC, "transactions_bronze")
        places = {
            "silver": read_table(UC, "transactions_silver"),
            "dup": read_table(UC, "transactions_duplicates"),
            "quarantine": read_table(UC, "transactions_quarantine"),
        }
    outcome = {f["source_file"].rsplit("/", 1)[1]: f for f in ing["files"]}
    seen: Counter[tuple[str, int]] = Counter()
    where: dict[tuple[str, int], tuple[str, str | None]] = {}
    for place, df in places.items():
        for src, line, reason in zip(
            df["_source_file"], df["_line_number"], df.get("_reason_code", [None] * len(df)), strict=True
        ):
            key = (src.rsplit("/", 1)[1], int(line))
            seen[key] += 1
            where[key] = (place, reason)
    assert all(n == 1 for n in seen.values()), [k for k, n in seen.items() if n > 1][:5]
    kept = 0
    for name, (_, exp) in files.items():
        f = outcome[name]
        assert f["status"] == "ingested", (name, f["reason"])
        assert f["records"] == exp.records and f["blank_lines"] == exp.blank_lines
        rows = bronze[bronze["_source_file"].str.endswith("/" + name)]
        assert sorted(rows["_line_number"].tolist()) == sorted(exp.outcomes)
        for line, expected in exp.outcomes.items():
            place, reason = where[(name, line)]
            if expected in ("silver", "dup"):
                kept += 1
                assert place in ("silver", "dup"), (name, line, place, reason)
            else:
                assert (place, reason) == ("quarantine", expected), (name, line)
    silver_ids = places["silver"]["transaction_id"].tolist()
    assert len(silver_ids) == len(set(silver_ids))  # one version per key
    assert len(places["silver"]) + len(places["dup"]) == kept


def day_shapes(records: st.SearchStrategy[int], max_files: int) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {
            "seed": st.integers(0, 2**32 - 1),
            "files": st.lists(
                st.fixed_dictionaries(
                    {
                        "fmt": st.sampled_from(["csv", "jsonl"]),
                        "records": records,
                        "defect_rate": st.sampled_from([0.0, 0.05, 0.3, 1.0]),
                        "terminator": st.sampled_from(["\n", "\r\n", "\r"]),
                        "blank_rate": st.sampled_from([0.0, 0.0, 0.1]),
                    }
                ),
                min_size=1,
                max_size=max_files,
            ),
        }
    )


def build(shape: dict) -> dict[str, tuple[bytes, Expected]]:
    rng = random.Random(shape["seed"])
    files = {}
    for i, f in enumerate(shape["files"]):
        make = csv_file if f["fmt"] == "csv" else jsonl_file
        files[f"part-{i:03d}.{f['fmt']}"] = make(
            rng, f["records"], f["defect_rate"], f["terminator"], f["blank_rate"], prefix=f"f{i}"
        )
    return files


@settings(PROPERTY, max_examples=20)
@given(shape=day_shapes(st.integers(1, 400), 3))
def test_every_physical_record_is_accounted_for_exactly_once(tmp_path_factory, shape):
    land_and_check(tmp_path_factory.mktemp("property"), build(shape))


@pytest.mark.slow
@settings(PROPERTY, max_examples=4)
@given(shape=day_shapes(st.integers(60_000, 150_000), 2))
def test_every_physical_record_of_large_files_is_accounted_for_exactly_once(tmp_path_factory, shape):
    """The same with files of 6-20 MB, which the reader splits between threads and buffers."""
    land_and_check(tmp_path_factory.mktemp("property-large"), build(shape))


malformed_rows = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "records": st.one_of(st.integers(1, 20), st.integers(200, 400), st.integers(3000, 6000)),
        "malformed": st.integers(1, 5),
        "terminator": st.sampled_from(["\n", "\r\n"]),
        "last_without_line_end": st.booleans(),
    }
)


def malformed_csv(spec: dict) -> tuple[bytes, Expected]:
    """A CSV of good records with short or long rows at random positions (first, last, any)."""
    rng = random.Random(spec["seed"])
    data, exp = csv_file(rng, spec["records"], 0.0, spec["terminator"], prefix="m")
    lines = data.decode().split(spec["terminator"])[:-1]  # header + one line per record
    positions = rng.sample(range(1, len(lines)), min(spec["malformed"], len(lines) - 1))
    for pos in positions:
        fields = lines[pos].split(",")
        lines[pos] = ",".join(fields[: rng.randrange(1, len(fields))] if rng.random() < 0.5 else [*fields, "extra"])
        exp.outcomes[pos + 1] = "malformed_record"
    text = spec["terminator"].join(lines) + ("" if spec["last_without_line_end"] else spec["terminator"])
    return text.encode(), exp


@settings(PROPERTY, max_examples=25)
@given(spec=malformed_rows)
def test_malformed_rows_are_quarantined_wherever_they_are_and_whatever_the_file_size(tmp_path_factory, spec):
    land_and_check(tmp_path_factory.mktemp("malformed"), {"part-000.csv": malformed_csv(spec)})


@pytest.mark.slow
@settings(PROPERTY, max_examples=3)
@given(spec=malformed_rows.map(lambda s: {**s, "records": s["records"] * 40, "malformed": s["malformed"] * 4}))
def test_malformed_rows_in_files_the_reader_splits(tmp_path_factory, spec):
    land_and_check(tmp_path_factory.mktemp("malformed-large"), {"part-000.csv": malformed_csv(spec)})
