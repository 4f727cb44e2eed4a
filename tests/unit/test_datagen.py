"""Tests of the synthetic fraud data generator (mlblueprints.datagen).

The central test re-derives every expectation of the manifest from the written files alone, with
an independent mini consumer driven by the use-case YAML (parse, validate, deduplicate).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import mlblueprints
from mlblueprints.datagen import (
    AGE_BANDS,
    CATEGORIES,
    CHANNELS,
    CURRENCIES,
    CUSTOMER_COLUMNS,
    DUPLICATE,
    EXTRA_COLUMN,
    FILE_DEFECTS,
    MANIFEST_PATH,
    MERCHANT_COLUMNS,
    REASON_CODES,
    REGIONS,
    RISKY_CATEGORIES,
    ROW_DEFECTS,
    SUPERSEDES,
    TRANSACTION_COLUMNS,
    BiasConfig,
    DefectConfig,
    DriftConfig,
    GenerationManifest,
    generate_fraud,
    read_manifest,
)

USE_CASE = Path(__file__).resolve().parents[2] / "dags" / "usecases" / "fraud_detection.yaml"
START = date(2024, 3, 1)
ROWS = 200_000
DAYS = 14
SMALL = {"start": START, "days": 5, "rows": 20_000}
DENSE = DefectConfig(**{name: 0.003 for name in ROW_DEFECTS})


# ---------------------------------------------------------------- an independent mini consumer


@dataclass
class Line:
    """One physical data line of a landed file, with the consumer's verdict."""

    dataset: str
    landing_date: str
    path: str
    line: int
    text: str
    values: dict[str, str | None] | None  # None: the line could not be parsed
    reason: tuple[str, str | None] | None = None
    typed: tuple[Any, ...] | None = None


def _schemas() -> dict[str, list[dict[str, Any]]]:
    spec = yaml.safe_load(USE_CASE.read_text())
    return {name: ds["schema"] for name, ds in spec["datasets"].items()}


_STRICT_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def _caster(col: dict[str, Any]) -> Callable[[str], Any]:
    """A function typing the text of ``col``; it raises ValueError when the text cannot be cast."""
    kind = col["type"]
    if kind == "string":
        return str
    if kind == "int":
        return int
    if kind == "timestamp":
        assert col["format"] == "%Y-%m-%dT%H:%M:%SZ"

        def timestamp(text: str) -> datetime:
            if not _STRICT_TIMESTAMP.fullmatch(text):
                raise ValueError(text)
            return datetime.fromisoformat(text[:-1])  # validates month, day, hour, ...

        return timestamp
    assert kind.startswith("decimal")

    def decimal(text: str) -> Decimal:
        try:
            value = Decimal(text)
        except InvalidOperation as exc:
            raise ValueError(text) from exc
        if not value.is_finite():
            raise ValueError(text)
        return value.quantize(Decimal("0.01"))

    return decimal


@dataclass(frozen=True)
class _Col:
    name: str
    required: bool
    cast: Callable[[str], Any]
    min: float | None
    max: float | None
    allowed: frozenset[str] | None


def _columns(schema: list[dict[str, Any]]) -> list[_Col]:
    return [
        _Col(
            c["name"],
            bool(c.get("required")),
            _caster(c),
            c.get("min"),
            c.get("max"),
            frozenset(c["allowed"]) if "allowed" in c else None,
        )
        for c in schema
    ]


def _validate(cols: list[_Col], values: dict[str, str | None] | None) -> tuple[Any, ...]:
    """Typed values, or raise _Rejected with the first failing check (same order as Silver)."""
    if values is None:
        raise _Rejected("malformed_record", None)
    text = [(values.get(c.name) or "").strip() or None for c in cols]
    for c, raw in zip(cols, text):
        if c.required and raw is None:
            raise _Rejected("missing_required", c.name)
    typed = []
    for c, raw in zip(cols, text):
        try:
            typed.append(None if raw is None else c.cast(raw))
        except ValueError:
            raise _Rejected("invalid_type", c.name) from None
    for c, v in zip(cols, typed):
        if v is not None and ((c.min is not None and v < c.min) or (c.max is not None and v > c.max)):
            raise _Rejected("out_of_range", c.name)
    for c, v in zip(cols, typed):
        if v is not None and c.allowed is not None and v not in c.allowed:
            raise _Rejected("unknown_category", c.name)
    return tuple(typed)


class _Rejected(Exception):
    def __init__(self, reason: str, column: str | None):
        super().__init__(reason)
        self.reason = (reason, column)


def _read_file(root: Path, path: Path) -> list[Line]:
    rel = path.relative_to(root).as_posix()
    dataset, landing_date = rel.split("/")[:2]
    physical = path.read_bytes().decode().splitlines(keepends=True)
    out = []
    if path.suffix == ".csv":
        if not physical:
            return out
        header = next(csv.reader([physical[0]]))
        for number, text in enumerate(physical[1:], start=2):
            fields = next(csv.reader([text]))
            values = dict(zip(header, fields)) if len(fields) == len(header) else None
            out.append(Line(dataset, landing_date, rel, number, text, values))
    else:
        for number, text in enumerate(physical, start=1):
            try:
                obj = json.loads(text, parse_float=str, parse_int=str)
                values = {k: None if v is None else str(v) for k, v in obj.items()}
            except json.JSONDecodeError:
                values = None
            out.append(Line(dataset, landing_date, rel, number, text, values))
    return out


@dataclass
class Consumed:
    """What the mini consumer derived from the files."""

    lines: dict[tuple[str, int], Line]
    landed: Counter[str]
    ingested: Counter[str]
    skipped_files: dict[str, str]  # a file whose content was already ingested -> the first such file
    quarantined: dict[tuple[str, int], tuple[str, str | None]]
    duplicates: Counter[str]
    duplicate_kinds: Counter[str]
    silver: dict[str, dict[str, Line]]


def consume(root: Path) -> Consumed:
    """Parse, validate and deduplicate every landed file (the manifest is not consulted).

    Files are taken in landing date and name order; a file whose checksum was already seen is
    skipped (as the lakehouse does).
    """
    schemas = {name: _columns(schema) for name, schema in _schemas().items()}
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.relative_to(root).parts[0].startswith("_"))
    lines: dict[tuple[str, int], Line] = {}
    landed: Counter[str] = Counter()
    ingested: Counter[str] = Counter()
    seen: dict[str, str] = {}
    skipped: dict[str, str] = {}
    quarantined = {}
    versions: dict[str, dict[str, list[Line]]] = defaultdict(lambda: defaultdict(list))
    for path in files:
        rel = path.relative_to(root).as_posix()
        content = _read_file(root, path)
        landed[rel.split("/")[0]] += len(content)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen:
            skipped[rel] = seen[digest]
            continue
        seen[digest] = rel
        for ln in content:
            schema = schemas[ln.dataset]
            lines[(ln.path, ln.line)] = ln
            ingested[ln.dataset] += 1
            try:
                ln.typed = _validate(schema, ln.values)
            except _Rejected as rejected:
                ln.reason = rejected.reason
                quarantined[(ln.path, ln.line)] = rejected.reason
                continue
            assert ln.values is not None
            versions[ln.dataset][ln.values[schema[0].name]].append(ln)
    duplicates: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    silver: dict[str, dict[str, Line]] = {}
    for dataset, by_key in versions.items():
        silver[dataset] = {}
        for key, vs in by_key.items():
            vs.sort(key=lambda x: (x.landing_date, x.path, x.line))
            kept = vs[-1]
            silver[dataset][key] = kept
            duplicates[dataset] += len(vs) - 1
            for v in vs[:-1]:
                if dataset == "transactions":
                    kinds["exact_duplicate" if v.typed == kept.typed else "key_duplicate"] += 1
    return Consumed(lines, landed, ingested, skipped, quarantined, duplicates, kinds, silver)


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _base_lines(root: Path, manifest: GenerationManifest) -> Counter[str]:
    """Valid original transaction lines: everything except injected rows and extra files.

    Lines of ``extra_column`` files are dropped as they differ by the extra field.
    """
    injected = {(d.path, d.line) for d in manifest.row_defects}
    regular = {f.path for f in manifest.files if f.dataset == "transactions" and f.kind == "data"}
    out: Counter[str] = Counter()
    for path in regular:
        for ln in _read_file(root, root / path):
            if (ln.path, ln.line) not in injected:
                out[json.dumps(ln.values, sort_keys=True)] += 1
    return out


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerationManifest]:
    root = tmp_path_factory.mktemp("landing")
    return root, generate_fraud(root, start=START, days=DAYS, rows=ROWS, seed=7)


@pytest.fixture(scope="module")
def consumed(landed: tuple[Path, GenerationManifest]) -> Consumed:
    return consume(landed[0])


@pytest.fixture(scope="module")
def transactions(consumed: Consumed) -> Any:
    """Silver transactions as a DataFrame, with the customer's home country."""
    import pandas as pd

    rows = [ln.values | {"_landing_date": ln.landing_date} for ln in consumed.silver["transactions"].values()]
    df = pd.DataFrame(rows)
    df["amount"] = df["amount"].astype(float)
    df["is_fraud"] = df["is_fraud"].astype(int)
    df["event_time"] = pd.to_datetime(df["event_time"], format="%Y-%m-%dT%H:%M:%SZ")
    homes = {k: ln.values["home_country"] for k, ln in consumed.silver["customers"].items()}
    df["home_country"] = df["customer_id"].map(homes)
    return df


# ---------------------------------------------------------------- layout, formats, manifest


def test_schema_matches_use_case_yaml() -> None:
    schemas = _schemas()
    assert tuple(c["name"] for c in schemas["transactions"]) == TRANSACTION_COLUMNS
    assert tuple(c["name"] for c in schemas["customers"]) == CUSTOMER_COLUMNS
    assert tuple(c["name"] for c in schemas["merchants"]) == MERCHANT_COLUMNS
    allowed = {c["name"]: c.get("allowed") for c in schemas["transactions"]}
    assert tuple(allowed["currency"]) == CURRENCIES
    assert tuple(allowed["channel"]) == CHANNELS
    assert tuple(allowed["merchant_category"]) == CATEGORIES


def test_manifest_lists_every_file_with_checksum_and_records(landed: tuple[Path, GenerationManifest]) -> None:
    root, manifest = landed
    on_disk = _digests(root)
    assert on_disk.pop(MANIFEST_PATH)
    assert {f.path: f.sha256 for f in manifest.files} == on_disk
    for f in manifest.files:
        dataset, landing_date, name = f.path.split("/")
        assert (dataset, landing_date) == (f.dataset, f.landing_date)
        assert name.startswith("part-") and name.endswith("." + f.format)
        text = (root / f.path).read_text()
        assert f.records == text.count("\n") - (1 if f.format == "csv" and text else 0)
        assert f.bytes == len(text.encode())
    days = {f.landing_date for f in manifest.files if f.dataset == "transactions"}
    assert days == {(START + timedelta(days=d)).isoformat() for d in range(DAYS)}
    assert read_manifest(root) == manifest
    assert GenerationManifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest


def test_formats_are_mixed_and_parse(landed: tuple[Path, GenerationManifest]) -> None:
    root, manifest = landed
    malformed = {(d.path, d.line) for d in manifest.row_defects if d.defect == "malformed_record"}
    regular = [f for f in manifest.files if f.dataset == "transactions" and f.kind == "data"]
    assert {f.format for f in regular} == {"csv", "jsonl"}
    assert any(f.amount_as_number for f in regular) and any(
        f.format == "jsonl" and not f.amount_as_number for f in regular
    )
    for f in manifest.files:
        if f.format != "csv" or not f.records:
            continue
        with open(root / f.path, newline="") as fh:
            rows = list(csv.reader(fh))
        expected = {"transactions": TRANSACTION_COLUMNS, "customers": CUSTOMER_COLUMNS, "merchants": MERCHANT_COLUMNS}[
            f.dataset
        ]
        extra = (EXTRA_COLUMN,) if f.kind == "extra_column" else ()
        assert tuple(rows[0]) == expected + extra == tuple(f.columns)
        bad = [n for n, r in enumerate(rows[1:], start=2) if len(r) != len(rows[0])]
        assert all((f.path, n) in malformed for n in bad)
    with open(root / f"merchants/{START.isoformat()}/part-000.csv", newline="") as fh:
        names = [r["merchant_name"] for r in csv.DictReader(fh)]
    assert any("," in n for n in names) and any('"' in n for n in names)


# ---------------------------------------------------------------- expectations re-derived from the files


def test_expectations_rederived_from_files(landed: tuple[Path, GenerationManifest], consumed: Consumed) -> None:
    _, manifest = landed
    exp = manifest.expected
    assert dict(consumed.landed) == exp.landed_records
    assert dict(consumed.ingested) == exp.ingested_records
    expected_q = {(d.path, d.line): (d.expected, d.column) for d in manifest.row_defects if d.expected in REASON_CODES}
    assert consumed.quarantined == expected_q
    for dataset in exp.quarantined:
        per_reason = Counter(r for (path, _), (r, _) in consumed.quarantined.items() if path.startswith(dataset + "/"))
        assert {r: per_reason.get(r, 0) for r in REASON_CODES} == exp.quarantined[dataset]
        assert sum(per_reason.values()) == exp.quarantined_total[dataset]
        assert consumed.duplicates[dataset] == exp.duplicates[dataset]
        assert len(consumed.silver[dataset]) == exp.silver_rows[dataset]
        assert exp.ingested_records[dataset] == (
            exp.silver_rows[dataset] + exp.quarantined_total[dataset] + exp.duplicates[dataset]
        )
    assert exp.landed_records["transactions"] == exp.ingested_records["transactions"] + exp.duplicate_file_records
    assert consumed.duplicate_kinds == Counter(exp.duplicate_breakdown)
    assert exp.silver_rows["transactions"] == exp.distinct_valid_transactions == ROWS
    schema = _columns(_schemas()["transactions"])
    for tid, final in exp.key_duplicate_final.items():
        assert consumed.silver["transactions"][tid].typed == _validate(schema, final)


def test_every_defect_is_at_its_stated_line(landed: tuple[Path, GenerationManifest], consumed: Consumed) -> None:
    _, manifest = landed
    counts = Counter(d.defect for d in manifest.row_defects)
    assert set(counts) == set(ROW_DEFECTS)
    assert min(counts.values()) >= 30, counts
    columns = {d.defect: set() for d in manifest.row_defects}
    for d in manifest.row_defects:
        columns[d.defect].add(d.column)
        ln = consumed.lines[(d.path, d.line)]
        if d.transaction_id is not None and ln.values is not None:
            assert ln.values["transaction_id"] == d.transaction_id
        if d.defect == "exact_duplicate":
            assert d.expected == DUPLICATE
            assert ln.text == consumed.lines[(d.original_path, d.original_line)].text
        elif d.defect == "key_duplicate":
            assert d.expected == SUPERSEDES
            original = consumed.lines[(d.original_path, d.original_line)]
            assert original.landing_date < ln.landing_date
            assert original.values["transaction_id"] == d.transaction_id
            assert original.typed != ln.typed and original.reason is None and ln.reason is None
            assert consumed.silver["transactions"][d.transaction_id] is ln
        else:
            assert ln.reason == (d.expected, d.column) and d.expected == d.defect
    assert columns["invalid_type"] == {"amount", "event_time", "is_fraud"}
    assert columns["missing_required"] == {"transaction_id", "card_id", "merchant_id", "amount", "event_time"}
    assert columns["unknown_category"] == {"currency", "channel", "merchant_category"}
    assert columns["out_of_range"] == {"amount"}
    # Fresh ids of invalid rows never collide with valid ones.
    fresh = {d.transaction_id for d in manifest.row_defects if d.expected in REASON_CODES} - {None}
    assert not fresh & set(consumed.silver["transactions"])
    # Duplicates in the same file, another file of the same day and a later day all occur.
    where = Counter(
        "file"
        if d.path == d.original_path
        else "day"
        if d.path.split("/")[1] == d.original_path.split("/")[1]
        else "later"
        for d in manifest.row_defects
        if d.defect == "exact_duplicate"
    )
    assert set(where) == {"file", "day", "later"}


def test_file_level_defects(landed: tuple[Path, GenerationManifest], consumed: Consumed) -> None:
    root, manifest = landed
    by_defect = defaultdict(list)
    for fd in manifest.file_defects:
        by_defect[fd.defect].append(fd)
    assert set(by_defect) == set(FILE_DEFECTS)
    (extra,) = by_defect["extra_column"]
    lines = [ln for (path, _), ln in consumed.lines.items() if path == extra.path]
    assert len(lines) == extra.records > 0 and all(ln.reason is None for ln in lines)
    assert all(consumed.silver["transactions"][ln.values["transaction_id"]] is ln for ln in lines)
    empties = {fd.detail: root / fd.path for fd in by_defect["empty_file"]}
    assert empties["zero bytes"].stat().st_size == 0
    assert empties["header only"].read_text() == ",".join(TRANSACTION_COLUMNS) + "\n"
    (copy,) = by_defect["file_landed_twice"]
    assert (root / copy.path).read_bytes() == (root / copy.source_path).read_bytes()
    assert copy.path != copy.source_path and copy.source_path.split("/")[1] <= copy.path.split("/")[1]
    assert copy.records == manifest.expected.duplicate_file_records > 0
    assert consumed.skipped_files == {copy.path: copy.source_path}
    assert not [d for d in manifest.row_defects if copy.source_path in (d.path, d.original_path)]


# ---------------------------------------------------------------- determinism and switches


def test_same_seed_same_files_different_seed_different(tmp_path: Path) -> None:
    a = generate_fraud(tmp_path / "a", seed=1, defects=DENSE, **SMALL)
    b = generate_fraud(tmp_path / "b", seed=1, defects=DENSE, **SMALL)
    c = generate_fraud(tmp_path / "c", seed=2, defects=DENSE, **SMALL)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert a == b
    assert [f.sha256 for f in a.files] != [f.sha256 for f in c.files]
    assert a.row_defects != c.row_defects


def test_switching_defects_off(tmp_path: Path) -> None:
    on = generate_fraud(tmp_path / "on", seed=3, defects=DENSE, **SMALL)
    off_cfg = replace(DENSE, invalid_type=0, key_duplicate=0, file_landed_twice=0, zero_byte_file=0)
    off = generate_fraud(tmp_path / "off", seed=3, defects=off_cfg, **SMALL)
    assert Counter(d.defect for d in on.row_defects).keys() == set(ROW_DEFECTS)
    assert {d.defect for d in off.row_defects} == set(ROW_DEFECTS) - {"invalid_type", "key_duplicate"}
    assert {fd.defect for fd in off.file_defects} == {"extra_column", "empty_file"}
    assert not off.expected.key_duplicate_final and off.expected.duplicate_file_records == 0
    assert not any(fd.detail == "zero bytes" for fd in off.file_defects)

    clean = generate_fraud(tmp_path / "clean", seed=3, defects=DefectConfig.none(), **SMALL)
    assert not clean.row_defects and not clean.file_defects
    assert all(f.kind in ("data", "snapshot", "update") for f in clean.files)
    assert clean.expected.landed_records["transactions"] == SMALL["rows"]
    assert clean.expected.duplicates["transactions"] == clean.expected.quarantined_total["transactions"] == 0
    # The valid data does not depend on the defects: same records, same placement of
    # the files that carry no file-level defect.
    assert _base_lines(tmp_path / "on", on) <= _base_lines(tmp_path / "clean", clean)
    for name in ("customers", "merchants"):
        assert _digests(tmp_path / "on" / name) == _digests(tmp_path / "clean" / name)


def test_refuses_non_empty_landing_root(tmp_path: Path) -> None:
    (tmp_path / "transactions" / "2024-01-01").mkdir(parents=True)
    (tmp_path / "transactions" / "2024-01-01" / "x.csv").write_text("x\n")
    with pytest.raises(FileExistsError):
        generate_fraud(tmp_path, start=START, days=1, rows=100)
    with pytest.raises(ValueError):
        DefectConfig(invalid_type=0.5)


# ---------------------------------------------------------------- realism


def test_late_events(landed: tuple[Path, GenerationManifest], consumed: Consumed) -> None:
    _, manifest = landed
    late = Counter()
    first_seen: dict[str, Line] = {}
    for ln in sorted(consumed.lines.values(), key=lambda x: (x.landing_date, x.path, x.line)):
        if ln.dataset != "transactions" or ln.typed is None:
            continue
        lag = (date.fromisoformat(ln.landing_date) - ln.typed[1].date()).days
        assert lag >= 0, "no event lands before it happens"
        first_seen.setdefault(ln.values["transaction_id"], ln)
    for ln in first_seen.values():
        late[(date.fromisoformat(ln.landing_date) - ln.typed[1].date()).days] += 1
    assert set(late) == {0, 1, 2, 3}
    assert sum(v for k, v in late.items() if k) == manifest.expected.late_records
    assert 0.01 < manifest.expected.late_records / ROWS < 0.03


def test_fraud_is_learnable(transactions: Any) -> None:
    df = transactions
    fraud = df["is_fraud"] == 1
    assert 0.01 <= fraud.mean() <= 0.02
    foreign = df["country"] != df["home_country"]
    night = df["event_time"].dt.hour < 6
    risky = df["merchant_category"].isin(RISKY_CATEGORIES)
    online = df["channel"] == "online"
    assert df.loc[fraud, "amount"].mean() > 2 * df.loc[~fraud, "amount"].mean()
    for signal in (foreign, night, risky, online):
        assert signal[fraud].mean() > signal[~fraud].mean() + 0.25
    # Bursts: most fraud rows have another transaction of the same card within two hours.
    df = df.sort_values(["card_id", "event_time"])
    gap_prev = df.groupby("card_id")["event_time"].diff().dt.total_seconds()
    gap_next = -df.groupby("card_id")["event_time"].diff(-1).dt.total_seconds()
    burst = (gap_prev < 7200) | (gap_next < 7200)
    assert burst[df["is_fraud"] == 1].mean() > 0.9 > burst[df["is_fraud"] == 0].mean() + 0.3
    # A hand-made score already separates the classes well.
    usual = df.groupby("card_id")["amount"].transform("median")
    score = (
        np.log(df["amount"] / usual)
        + 1.5 * (df["country"] != df["home_country"])
        + online.loc[df.index]
        + risky.loc[df.index]
        + (df["event_time"].dt.hour < 6)
        + burst
    ).to_numpy(float)
    y = df["is_fraud"].to_numpy()
    ranks = score.argsort().argsort() + 1
    auc = (ranks[y == 1].sum() - y.sum() * (y.sum() + 1) / 2) / (y.sum() * (len(y) - y.sum()))
    assert auc > 0.9


def test_entities_are_consistent(consumed: Consumed) -> None:
    merchants = {k: ln.values for k, ln in consumed.silver["merchants"].items()}
    customers = consumed.silver["customers"]
    for ln in consumed.silver["transactions"].values():
        v = ln.values
        assert merchants[v["merchant_id"]]["category"] == v["merchant_category"]
        assert merchants[v["merchant_id"]]["country"] == v["country"]
        assert v["customer_id"] in customers
        assert v["transaction_id"].startswith("tx_") and len(v["transaction_id"]) == 15
        assert v["card_id"].startswith("card_") and v["merchant_id"].startswith("m_")


def test_reference_updates(landed: tuple[Path, GenerationManifest], consumed: Consumed) -> None:
    _, manifest = landed
    updates = [f for f in manifest.files if f.kind == "update"]
    update_day = (START + timedelta(days=7)).isoformat()
    assert {(f.dataset, f.landing_date) for f in updates} == {("customers", update_day), ("merchants", update_day)}
    snapshot = {
        (ln.dataset, ln.values[f"{ln.dataset[:-1]}_id"]): ln
        for ln in consumed.lines.values()
        if ln.dataset in ("customers", "merchants") and ln.landing_date == START.isoformat()
    }
    for ln in consumed.lines.values():
        if ln.dataset in ("customers", "merchants") and ln.landing_date == update_day:
            before = snapshot[(ln.dataset, ln.values[f"{ln.dataset[:-1]}_id"])]
            assert ln.typed[1] > before.typed[1]
            assert ln.typed[2:] != before.typed[2:]
            assert ln.values["updated_at"] < update_day


def test_drift(tmp_path: Path) -> None:
    drift_start = START + timedelta(days=4)
    generate_fraud(
        tmp_path,
        start=START,
        days=8,
        rows=60_000,
        defects=DefectConfig.none(),
        late_share=0.0,
        drift=DriftConfig(start=drift_start),
    )
    import pandas as pd

    df = pd.concat(
        [pd.read_csv(p, dtype=str) for p in tmp_path.glob("transactions/*/*.csv")]
        + [
            pd.read_json(p, lines=True, dtype=False, convert_dates=False)
            for p in tmp_path.glob("transactions/*/*.jsonl")
        ]
    )
    df["amount"] = df["amount"].astype(float)
    df["is_fraud"] = df["is_fraud"].astype(int)
    drifted = df["event_time"] >= drift_start.isoformat()
    before, after = df[~drifted], df[drifted]
    assert after["amount"].median() > 1.4 * before["amount"].median()
    assert (after["channel"] == "online").mean() > (before["channel"] == "online").mean() + 0.15
    assert after["is_fraud"].mean() > 1.6 * before["is_fraud"].mean()
    homes = pd.read_csv(tmp_path / "customers" / START.isoformat() / "part-000.csv", dtype=str)
    df = df.merge(homes[["customer_id", "home_country"]], on="customer_id")
    foreign = df["country"] != df["home_country"]
    assert (
        foreign[df["event_time"] >= drift_start.isoformat()].mean()
        > foreign[df["event_time"] < drift_start.isoformat()].mean() + 0.1
    )


def test_sensitive_attributes_follow_the_customer_and_do_not_drive_fraud(transactions: Any, consumed: Consumed) -> None:
    df = transactions
    births = {k: int(ln.values["birth_year"]) for k, ln in consumed.silver["customers"].items()}
    age = START.year - df["customer_id"].map(births)
    lower = {"18-29": 0, "30-44": 30, "45-59": 45, "60+": 60}
    upper = {"18-29": 30, "30-44": 45, "45-59": 60, "60+": 200}
    assert set(df["age_band"]) == set(AGE_BANDS) and set(df["region"]) == set(REGIONS)
    assert (age >= df["age_band"].map(lower)).all() and (age < df["age_band"].map(upper)).all()
    regions = {"US": "north_america", "GB": "british_isles", "IE": "british_isles", "ES": "southern_europe"}
    known = df["home_country"].isin(list(regions))
    assert (df.loc[known, "region"] == df.loc[known, "home_country"].map(regions)).all()
    assert df.groupby("customer_id")[["age_band", "region"]].nunique().max().max() == 1
    # without the knob no group's fraud rate is far from the overall one
    overall = df["is_fraud"].mean()
    for column in ("age_band", "region"):
        rates = df.groupby(column)["is_fraud"].mean()
        assert (rates / overall).between(0.6, 1.6).all(), rates


def _fraud_by_group(root: Path, column: str):
    import pandas as pd

    frames = [pd.read_csv(p, dtype=str) for p in root.glob("transactions/*/*.csv")] + [
        pd.read_json(p, lines=True, dtype=False, convert_dates=False) for p in root.glob("transactions/*/*.jsonl")
    ]
    df = pd.concat(frames)
    return df.assign(is_fraud=df["is_fraud"].astype(int)).groupby(column)["is_fraud"].mean()


def test_bias_knob_makes_fraud_target_the_group(tmp_path: Path) -> None:
    bias = BiasConfig(column="region", groups=("southern_europe",), factor=6.0)
    m = generate_fraud(tmp_path / "on", **SMALL, seed=3, defects=DefectConfig.none(), bias=bias)
    rates = _fraud_by_group(tmp_path / "on", "region")
    others = rates.drop("southern_europe")
    assert rates["southern_europe"] > 3 * others.max(), rates
    assert m.parameters["bias"] == {"column": "region", "groups": ["southern_europe"], "factor": 6.0}
    generate_fraud(tmp_path / "off", **SMALL, seed=3, defects=DefectConfig.none())
    assert read_manifest(tmp_path / "off").parameters["bias"] is None
    off = _fraud_by_group(tmp_path / "off", "region")
    assert off["southern_europe"] < 2 * off.drop("southern_europe").min(), off


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"column": "segment"}, "BiasConfig.column: 'segment' is not a sensitive attribute (age_band, region)"),
        ({"groups": ("70+",)}, "BiasConfig.groups: ['70+'] - age_band takes 18-29, 30-44, 45-59, 60+"),
        ({"factor": 0.5}, "BiasConfig.factor: must be within [1, 100], got 0.5"),
    ],
)
def test_bias_knob_refuses_bad_settings_in_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        BiasConfig(**kwargs)
    assert str(err.value) == message


@pytest.mark.slow
def test_memory_stays_bounded_for_one_million_rows(tmp_path: Path) -> None:
    code = (
        "import resource, sys\n"
        "from datetime import date\n"
        "from pathlib import Path\n"
        "from mlblueprints.datagen import generate_fraud\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "generate_fraud(Path(sys.argv[1]), start=date(2024, 3, 1), days=30, rows=1_000_000)\n"
        "print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    include = str(Path(mlblueprints.__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": include, "PATH": "/usr/bin:/bin"},
    )
    before_kb, after_kb = map(int, done.stdout.split())
    assert (after_kb - before_kb) / 1024 < 600


def test_generate_command_takes_the_bias_knob(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mlblueprints import cli

    argv = ["generate", "fraud", "--out", str(tmp_path / "a"), "--days", "2", "--rows", "3000", "--clean"]
    assert cli.main([*argv, "--bias", "age_band=45-59,60+", "--bias-factor", "4"]) == 0
    assert read_manifest(tmp_path / "a").parameters["bias"] == {
        "column": "age_band",
        "groups": ["45-59", "60+"],
        "factor": 4.0,
    }
    capsys.readouterr()
    argv[3] = str(tmp_path / "b")
    assert cli.main([*argv, "--bias", "region=south"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "--bias region=south: BiasConfig.groups: ['south'] - region takes "
        "north_america, british_isles, western_europe, southern_europe\n"
    )
    assert not (tmp_path / "b").exists()
