"""Seeded synthetic card-transaction fraud data, landed as files with documented defects.

:func:`generate_fraud` writes the three landed data sets of ``dags/usecases/fraud_detection.yaml``
under one landing root::

    <out_dir>/transactions/<YYYY-MM-DD>/part-000.csv, part-001.jsonl, ...   daily, CSV and JSON Lines
    <out_dir>/customers/<YYYY-MM-DD>/part-000.csv      full snapshot on ``start``, updates every 7th day
    <out_dir>/merchants/<YYYY-MM-DD>/part-000.csv      same as customers
    <out_dir>/_generator/manifest.json                 the :class:`GenerationManifest` (not landed data)

The directory date is the landing date. Everything is deterministic given the seed, and the valid
data does not depend on the defect configuration (separate random streams), so switching a defect
off removes only that defect.

**The data.** ``rows`` distinct valid transactions are spread over ``days`` with weekly seasonality
and an hour-of-day profile, generated and written one day at a time (memory is bounded by one
day's rows plus the entity tables). Customers (~rows/40) hold 1-2 cards each; each card has a usual
spend level; merchants (~rows/400) have a category and a country. Fraud comes in episodes: a
compromised card makes a burst of 2-6 transactions within a few hours, at risky categories
(electronics, travel, gaming, money_transfer), mostly online, often abroad and at night, for several
times the card's usual amount. A little label noise is added. The fraud rate is about 1.3 %.
Each transaction also carries two sensitive attributes of the card holder, derived from the
customer reference data without a random draw: ``age_band`` (:data:`AGE_BANDS`, the age in the
start year) and ``region`` (:data:`REGIONS`, of the home country). Fraud does not depend on them unless :class:`BiasConfig` (off by default) says so.
About ``late_share`` of the records landed on a day have an event time 1-3 days earlier.

**Formats.** UTF-8, ``\\n`` line ends, every file ends with a newline. CSV: header row, comma
delimiter, minimal quoting (RFC 4180 doubling of quotes). JSON Lines: one object per line, keys in
schema order, every value a JSON string, except ``amount``, which is a JSON number in the files
whose manifest entry has ``amount_as_number`` (consumers should read every value as text).

**Defects** (:class:`DefectConfig`). Each defective row carries exactly one defect; its expected
outcome is in the manifest (:class:`RowDefect`). Row-level: ``malformed_record``,
``invalid_type``, ``missing_required``, ``out_of_range`` and ``unknown_category`` rows are fresh
records (fresh transaction ids, never colliding with valid ones) that must be quarantined with that
reason code; ``exact_duplicate`` rows repeat a valid line byte for byte (same file, another file of
the same format on the same day, or one 1-3 days later) and count as one duplicate each;
``key_duplicate`` rows re-send a valid transaction 1-3 landing days later with a corrected
amount: the re-sent row survives, the earlier row counts as one duplicate. File-level:
``extra_column`` (a CSV file with an unexpected trailing ``device_fingerprint`` column; its rows are
valid and survive), ``empty_file`` (a header-only CSV file, and a zero-byte JSONL file), and
``file_landed_twice`` (a clean data file copied byte for byte under the next free part name, on the
next landing day or the same day; skipped by checksum, see :class:`Expectations`). Reference data
(customers, merchants) has no defects; its update files supersede earlier versions of the same key.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# ---------------------------------------------------------------- schema and vocabularies

TRANSACTION_COLUMNS = (
    "transaction_id",
    "event_time",
    "card_id",
    "customer_id",
    "merchant_id",
    "amount",
    "currency",
    "channel",
    "merchant_category",
    "country",
    "is_fraud",
    "age_band",
    "region",
)
CUSTOMER_COLUMNS = ("customer_id", "updated_at", "home_country", "birth_year", "segment", "credit_limit")
MERCHANT_COLUMNS = ("merchant_id", "updated_at", "merchant_name", "category", "country")
DATASETS = ("transactions", "customers", "merchants")
CATEGORIES = ("grocery", "restaurants", "fuel", "fashion", "electronics", "travel", "gaming", "money_transfer")
RISKY_CATEGORIES = ("electronics", "travel", "gaming", "money_transfer")
CHANNELS = ("pos", "online", "atm", "contactless")
CURRENCIES = ("USD", "EUR", "GBP")
SEGMENTS = ("retail", "premium", "business", "student")
HOME_COUNTRIES = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "IE", "PT", "BE")
COUNTRIES = (*HOME_COUNTRIES, "TH", "MX", "AE", "BR", "NG", "CN", "TR")
# Sensitive attributes of the card holder, carried on each transaction (bias metrics need them
# beside the label): the age band in the start year, and the region of the home country.
AGE_BANDS = ("18-29", "30-44", "45-59", "60+")
_AGE_BAND_LOWER = (18, 30, 45, 60)
REGIONS = ("north_america", "british_isles", "western_europe", "southern_europe")
_HOME_REGION = (0, 1, 2, 2, 3, 3, 2, 1, 3, 2)  # per HOME_COUNTRIES entry
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
EXTRA_COLUMN = "device_fingerprint"
MANIFEST_PATH = "_generator/manifest.json"

REASON_CODES = ("malformed_record", "missing_required", "invalid_type", "out_of_range", "unknown_category")
ROW_DEFECTS = (*REASON_CODES, "exact_duplicate", "key_duplicate")
FILE_DEFECTS = ("extra_column", "empty_file", "file_landed_twice")
DUPLICATE = "duplicate"
SUPERSEDES = "supersedes"

# ---------------------------------------------------------------- model parameters

_FRAUD_RATE = 0.013  # share of transactions in fraud episodes, before drift and label noise
_BURST_SIZES = (2, 6)  # inclusive bounds of an episode's number of transactions
_BURST_GAP_S = 1200.0  # mean seconds between transactions of an episode
_BURST_GAP_MAX_S = 3600
_FRAUD_NIGHT = 0.45  # share of episodes that start between 00:00 and 06:00
_FRAUD_FOREIGN = 0.65
_FRAUD_AMOUNT_LOG_MEAN = 1.25  # fraud amount / usual amount ~ lognormal(1.25, 0.5)
_NOISE_POSITIVE = 0.0005  # normal transactions labelled fraud
_NOISE_NEGATIVE = 0.03  # fraud transactions labelled normal
_FOREIGN_SHARE = 0.05
_HOME_WEIGHTS = (0.30, 0.20, 0.12, 0.10, 0.07, 0.07, 0.05, 0.03, 0.03, 0.03)
_SEGMENT_WEIGHTS = (0.60, 0.15, 0.10, 0.15)
_SEGMENT_LIMIT = (5000.0, 20000.0, 50000.0, 1500.0)
_SEGMENT_SPEND = (1.0, 1.8, 1.5, 0.6)
_CATEGORY_WEIGHTS = (0.22, 0.20, 0.10, 0.12, 0.09, 0.09, 0.09, 0.09)
_CATEGORY_AMOUNT = np.array([1.0, 0.8, 1.3, 1.8, 4.0, 6.0, 0.6, 3.0])
# P(channel | category) for normal spend, columns in CHANNELS order.
_CHANNEL_BY_CATEGORY = np.array(
    [
        [0.45, 0.08, 0.02, 0.45],
        [0.45, 0.10, 0.00, 0.45],
        [0.60, 0.00, 0.05, 0.35],
        [0.40, 0.35, 0.00, 0.25],
        [0.35, 0.55, 0.00, 0.10],
        [0.15, 0.80, 0.00, 0.05],
        [0.05, 0.93, 0.00, 0.02],
        [0.10, 0.50, 0.40, 0.00],
    ]
)
_FRAUD_CHANNEL = np.array([0.05, 0.85, 0.05, 0.05])
# Relative volume per hour of day (UTC), 00:00 first.
_HOUR_WEIGHTS = np.array(
    [
        [1.0, 0.6, 0.4, 0.3, 0.3, 0.5],
        [1.2, 2.5, 4.0, 5.0, 5.5, 6.5],
        [7.5, 7.0, 6.0, 5.8, 6.0, 6.5],
        [7.0, 6.5, 5.5, 4.5, 3.0, 1.8],
    ]
).ravel()
_WEEKDAY_FACTOR = np.array([0.95, 0.97, 1.00, 1.02, 1.12, 1.10, 0.84])  # Monday first
_COUNTRY_CURRENCY = tuple(
    CURRENCIES.index({"US": "USD", "GB": "GBP"}.get(c, "EUR" if c in HOME_COUNTRIES else "USD")) for c in COUNTRIES
)
_LATE_DAYS = (1, 2, 3)
_LATE_DAY_WEIGHTS = (0.6, 0.3, 0.1)
_JSON_NUMBER_SHARE = 0.35  # share of JSONL files whose amount is a JSON number
_UPDATE_EVERY_DAYS = 7
_CUSTOMER_UPDATE_SHARE = 0.03
_MERCHANT_UPDATE_SHARE = 0.02
_REFERENCE_YEAR = 2024  # birth years are drawn relative to it, so they stay within 1900-2010
_MAX_REDRAWS = 25

_INVALID_VALUES = {
    "amount": ("12,50", "abc", "1.2.3", "EUR 10"),
    "event_time": ("31/02/2024 25:61", "yesterday", "2024-13-45T99:00:00Z"),
    "is_fraud": ("yes", "fraud", "N"),
}
_MISSING_COLUMNS = ("transaction_id", "card_id", "merchant_id", "amount", "event_time")
_UNKNOWN_VALUES = {"currency": "XYZ", "channel": "telepathy", "merchant_category": "unicorns"}
_OUT_OF_RANGE_AMOUNTS = ("negative", "0.00", "10000000.00", "50000.01")
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?")

_NAME_WORDS = ("Green", "Blue", "Golden", "Silver", "Urban", "Royal", "Sunny", "North", "Metro", "Prime", "Oak")
_NAME_NOUNS = (
    ("Market", "Grocer", "Foods", "Pantry"),
    ("Bistro", "Grill", "Kitchen", "Diner"),
    ("Fuel", "Petrol", "Gas Station"),
    ("Boutique", "Apparel", "Outfitters"),
    ("Electronics", "Gadgets", "Tech Store"),
    ("Travel", "Airways", "Tours"),
    ("Games", "Arcade", "Play"),
    ("Remit", "Transfer", "Pay"),
)
_SURNAMES = ("Smith", "Jones", "Garcia", "Martin", "Rossi", "Dubois", "Murphy", "Silva", "Jansen", "Brown")

_LS = pa.large_string()

# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class DefectConfig:
    """Which defects are injected into ``transactions``, and how often.

    Row-level fields are rates: on each landing day, the number of rows with that defect is drawn
    from Binomial(records landed that day, rate). The defaults (3e-4) give about 60 rows of each
    kind per 200,000 transactions. File-level fields are counts of files; a file-level defect is
    skipped when there are not enough data files to host it (see :func:`generate_fraud`).

    Attributes:
        malformed_record: CSV line with one field too few or too many, or truncated JSON.
        invalid_type: ``amount``, ``event_time`` or ``is_fraud`` that cannot be cast.
        missing_required: empty (CSV) or null/absent (JSON) transaction_id, card_id,
            merchant_id, amount or event_time.
        out_of_range: amount negative, zero, 50000.01 or 10000000.00.
        unknown_category: currency ``XYZ``, channel ``telepathy`` or merchant_category ``unicorns``.
        exact_duplicate: a valid line repeated byte for byte.
        key_duplicate: a valid transaction re-sent on a later landing day with a corrected amount.
        extra_column: CSV files with an unexpected trailing ``device_fingerprint`` column.
        empty_file: header-only CSV files (added to a day besides its data files).
        zero_byte_file: zero-byte JSONL files (reported as defect ``empty_file``).
        file_landed_twice: data files copied byte for byte under another name.
    """

    malformed_record: float = 3e-4
    invalid_type: float = 3e-4
    missing_required: float = 3e-4
    out_of_range: float = 3e-4
    unknown_category: float = 3e-4
    exact_duplicate: float = 3e-4
    key_duplicate: float = 3e-4
    extra_column: int = 1
    empty_file: int = 1
    zero_byte_file: int = 1
    file_landed_twice: int = 1

    def __post_init__(self) -> None:
        for name in ROW_DEFECTS:
            rate = getattr(self, name)
            if not 0.0 <= rate <= 0.05:
                raise ValueError(f"DefectConfig.{name}: rate must be within [0, 0.05], got {rate}")
        for name in ("extra_column", "empty_file", "zero_byte_file", "file_landed_twice"):
            if getattr(self, name) < 0:
                raise ValueError(f"DefectConfig.{name}: count must be >= 0")

    @classmethod
    def none(cls) -> DefectConfig:
        """A configuration that injects no defect at all."""
        return cls(**{f.name: 0 for f in fields(cls)})


@dataclass(frozen=True)
class DriftConfig:
    """Distribution shift applied to every transaction whose event date is on or after ``start``.

    Attributes:
        start: first drifted event date.
        amount_scale: factor on every amount (normal and fraud).
        online_shift: added to P(online) of normal transactions (other channels scaled down).
        foreign_shift: added to the share of normal transactions at a merchant abroad.
        fraud_rate_scale: factor on the number of fraud episodes.
    """

    start: date
    amount_scale: float = 1.6
    online_shift: float = 0.25
    foreign_shift: float = 0.15
    fraud_rate_scale: float = 2.0


@dataclass(frozen=True)
class BiasConfig:
    """Fraud that targets one group of card holders: a test of the fairness gate.

    Each fraud episode picks its card with weight ``factor`` for cards of customers in ``groups``
    of the sensitive attribute ``column`` (``age_band`` or ``region``) and 1 for the others, so the
    group's fraud rate is about ``factor`` times the others' - and a model that flags fraud flags
    the group more often (disparate impact), without ever seeing the attribute. Everything else
    is drawn as without the knob; the number of fraud episodes is unchanged.
    """

    column: str = "age_band"
    groups: tuple[str, ...] = ("60+",)
    factor: float = 6.0

    def __post_init__(self) -> None:
        vocab = {"age_band": AGE_BANDS, "region": REGIONS}
        if self.column not in vocab:
            raise ValueError(f"BiasConfig.column: {self.column!r} is not a sensitive attribute (age_band, region)")
        unknown = [g for g in self.groups if g not in vocab[self.column]]
        if not self.groups or unknown:
            raise ValueError(
                f"BiasConfig.groups: {unknown or 'none given'} - {self.column} takes {', '.join(vocab[self.column])}"
            )
        if not 1.0 <= self.factor <= 100.0:
            raise ValueError(f"BiasConfig.factor: must be within [1, 100], got {self.factor}")

    def card_weights(self, ents: _Entities) -> np.ndarray:
        """The weight of each card in the draw of a fraud episode's card."""
        values = ents.card_age_band if self.column == "age_band" else ents.card_region
        codes = {"age_band": AGE_BANDS, "region": REGIONS}[self.column]
        member = np.isin(values, [codes.index(g) for g in self.groups])
        return np.where(member, self.factor, 1.0)


# ---------------------------------------------------------------- manifest


@dataclass
class LandedFile:
    """One written file.

    ``kind`` is ``data`` (a regular transactions part), ``extra_column``, ``empty`` (header-only
    CSV or zero-byte JSONL), ``copy`` (file landed twice), ``snapshot`` or ``update`` (reference
    data). ``records`` counts physical data lines (the CSV header excluded). ``columns`` is the
    CSV header or the JSONL keys (empty for a zero-byte file).
    """

    dataset: str
    landing_date: str
    path: str
    format: str
    kind: str
    records: int
    sha256: str
    bytes: int
    columns: list[str]
    amount_as_number: bool = False


@dataclass
class RowDefect:
    """One injected row, located by ``path`` (relative to the landing root) and 1-based ``line``.

    Line numbers are physical lines: in CSV the header is line 1 and the first data row line 2;
    in JSONL the first record is line 1. ``expected`` is a reason code of :data:`REASON_CODES`
    (the row must be quarantined with it), ``duplicate`` (``exact_duplicate``: this line repeats
    the line at ``original_path``/``original_line``; one of the two is counted as duplicate) or
    ``supersedes`` (``key_duplicate``: this line survives and the earlier line at
    ``original_path``/``original_line`` is counted as duplicate). ``column`` names the offending
    column where there is one; ``transaction_id`` is the id the line carries (None when the id
    is the missing value); ``detail`` says what was done.
    """

    dataset: str
    path: str
    line: int
    defect: str
    expected: str
    column: str | None = None
    transaction_id: str | None = None
    detail: str | None = None
    original_path: str | None = None
    original_line: int | None = None


@dataclass
class FileDefect:
    """One file-level defect.

    ``expected``: ``accepted`` (extra_column: the rows are valid and survive, the extra column is
    not part of the schema), ``no_records`` (empty_file), ``duplicate_file`` (file_landed_twice:
    same bytes and checksum as ``source_path``).
    """

    defect: str
    dataset: str
    path: str
    expected: str
    records: int
    detail: str | None = None
    source_path: str | None = None


@dataclass
class Expectations:
    """What a correct consumer ends up with after ingesting every landed file.

    Files landed twice are skipped by checksum: their records are counted in ``landed_records``
    and ``duplicate_file_records`` but not in ``ingested_records``. For every data set::

        ingested_records = silver_rows + quarantined_total + duplicates
        landed_records = ingested_records + duplicate_file_records (transactions; 0 elsewhere)

    Exact duplicates count each extra copy (the copies are identical, so which one is kept does
    not matter); key duplicates count the superseded earlier row; for reference data each update
    row supersedes an earlier version of its key. Rows of an ``extra_column`` file survive. A
    consumer that ingests a file landed twice row by row instead sees every one of its records as
    an exact duplicate: add ``duplicate_file_records`` to its ``duplicates``.

    Attributes:
        distinct_valid_transactions: equals ``rows``.
        landed_records: physical data lines over all files, per data set.
        ingested_records: landed records minus the records of files landed twice, per data set.
        quarantined: per data set, per reason code.
        quarantined_total: per data set.
        duplicates: row-level duplicates per data set.
        duplicate_breakdown: transactions duplicates by defect (``exact_duplicate``,
            ``key_duplicate``).
        duplicate_file_records: records of transactions files landed twice.
        silver_rows: rows that survive into Silver, per data set.
        late_records: distinct valid transactions landed after their event date.
        fraud_transactions: distinct valid transactions with is_fraud = 1.
        key_duplicate_final: transaction_id -> final values (the later version), as landed text.
    """

    distinct_valid_transactions: int
    landed_records: dict[str, int]
    ingested_records: dict[str, int]
    quarantined: dict[str, dict[str, int]]
    quarantined_total: dict[str, int]
    duplicates: dict[str, int]
    duplicate_breakdown: dict[str, int]
    duplicate_file_records: int
    silver_rows: dict[str, int]
    late_records: int
    fraud_transactions: int
    key_duplicate_final: dict[str, dict[str, str]]


@dataclass
class GenerationManifest:
    """Everything a test needs to check a consumer of the generated files exactly.

    ``parameters`` holds the call's arguments (dates as ISO strings, ``defects`` and ``drift``
    as dicts, ``drift`` None when off) and the entity counts. ``files`` lists every written file,
    landing data first, in write order; ``row_defects`` is sorted by path and line.
    """

    parameters: dict[str, Any]
    files: list[LandedFile]
    row_defects: list[RowDefect]
    file_defects: list[FileDefect]
    expected: Expectations
    schema_version: int = 1

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON-serialisable data."""
        return asdict(self)

    def write(self, path: Path) -> None:
        """Write the manifest as JSON to ``path`` (parents created)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationManifest:
        """Rebuild a manifest from :meth:`to_dict` output."""
        return cls(
            parameters=data["parameters"],
            files=[LandedFile(**f) for f in data["files"]],
            row_defects=[RowDefect(**d) for d in data["row_defects"]],
            file_defects=[FileDefect(**d) for d in data["file_defects"]],
            expected=Expectations(**data["expected"]),
            schema_version=data["schema_version"],
        )

    @classmethod
    def load(cls, path: Path) -> GenerationManifest:
        """Read a manifest written by :meth:`write` (e.g. ``<out_dir>/_generator/manifest.json``)."""
        return cls.from_dict(json.loads(Path(path).read_text()))


# ---------------------------------------------------------------- entities and simulation


@dataclass
class _Batch:
    """Transactions as parallel arrays; times are seconds since ``start`` 00:00:00 UTC."""

    tx: np.ndarray  # transaction number (the id's digits)
    ts: np.ndarray  # event time
    card: np.ndarray
    merchant: np.ndarray
    cents: np.ndarray
    channel: np.ndarray
    fraud: np.ndarray
    arrival: np.ndarray  # when the record reached the landing zone (orders the files)

    def __len__(self) -> int:
        return len(self.tx)

    def take(self, idx: np.ndarray | slice) -> _Batch:
        return _Batch(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @staticmethod
    def concat(batches: Sequence[_Batch]) -> _Batch:
        return _Batch(**{f.name: np.concatenate([getattr(b, f.name) for b in batches]) for f in fields(_Batch)})


class _MerchantPool:
    """Popularity-weighted sampling from a subset of merchants, at home or abroad."""

    def __init__(self, members: np.ndarray, country: np.ndarray, weight: np.ndarray):
        order = members[np.argsort(country[members], kind="stable")]
        self._members = order
        self._country = country[order]
        self._cum = np.concatenate([[0.0], np.cumsum(weight[order])])
        codes = np.arange(len(COUNTRIES))
        self._lo = np.searchsorted(self._country, codes, side="left")
        self._hi = np.searchsorted(self._country, codes, side="right")

    def _draw(self, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        u = self._cum[lo] + rng.random(len(lo)) * (self._cum[hi] - self._cum[lo])
        return np.clip(np.searchsorted(self._cum, u, side="right") - 1, lo, hi - 1)

    def sample(self, rng: np.random.Generator, home: np.ndarray, foreign: np.ndarray) -> np.ndarray:
        """One merchant per row: in the row's ``home`` country, or elsewhere where ``foreign``.

        A home country without merchants in the pool falls back to any merchant; abroad is drawn
        by rejection, and the rare row still at home after the redraws keeps its merchant.
        """
        pos = np.empty(len(home), dtype=np.int64)
        lo, hi = self._lo[home], self._hi[home]
        domestic = ~foreign & (hi > lo)
        pos[domestic] = self._draw(rng, lo[domestic], hi[domestic])
        todo = np.flatnonzero(~domestic)
        for _ in range(_MAX_REDRAWS):
            if not len(todo):
                break
            pos[todo] = self._draw(rng, np.zeros(len(todo), np.int64), np.full(len(todo), len(self._members)))
            todo = todo[foreign[todo] & (self._country[pos[todo]] == home[todo])]
        return self._members[pos]


@dataclass
class _Entities:
    """Customers, cards and merchants (kept in memory; ~rows/40 customers)."""

    cust_country: np.ndarray
    cust_birth_year: np.ndarray
    cust_segment: np.ndarray
    cust_limit_cents: np.ndarray
    cust_updated: np.ndarray  # seconds since start (negative: before start)
    card_customer: np.ndarray
    card_home: np.ndarray
    card_scale: np.ndarray  # the card's usual spend, in currency units
    card_cum: np.ndarray
    merch_country: np.ndarray
    merch_category: np.ndarray
    merch_name: list[str]
    merch_updated: np.ndarray
    all_merchants: _MerchantPool
    risky_merchants: _MerchantPool
    card_age_band: np.ndarray | None = None  # index into AGE_BANDS, set once the start year is known
    card_region: np.ndarray | None = None  # index into REGIONS

    def sample_cards(self, rng: np.random.Generator, n: int) -> np.ndarray:
        u = rng.random(n) * self.card_cum[-1]
        return np.minimum(np.searchsorted(self.card_cum, u, side="right"), len(self.card_cum) - 1)


def _merchant_name(rng: np.random.Generator, category: int) -> str:
    """A merchant name; some contain commas or double quotes (CSV quoting must be right)."""
    word = _NAME_WORDS[rng.integers(len(_NAME_WORDS))]
    nouns = _NAME_NOUNS[category]
    noun = nouns[rng.integers(len(nouns))]
    a, b = (_SURNAMES[i] for i in rng.choice(len(_SURNAMES), 2, replace=False))
    style = rng.random()
    if style < 0.15:
        return f"{a}, {b} & Co"
    if style < 0.25:
        return f'{a}\'s "{word}" {noun}'
    if style < 0.30:
        return f"{word} {noun}, {a} Street"
    return f"{word} {noun}"


def _build_entities(rng: np.random.Generator, rows: int) -> _Entities:
    n_cust = max(50, rows // 40)
    n_merch = max(20, rows // 400)
    cust_country = rng.choice(len(HOME_COUNTRIES), n_cust, p=_HOME_WEIGHTS)
    segment = rng.choice(len(SEGMENTS), n_cust, p=_SEGMENT_WEIGHTS)
    age = np.clip(rng.normal(42, 15, n_cust), 18, 85).astype(np.int64)
    limit = np.round(np.asarray(_SEGMENT_LIMIT)[segment] * rng.lognormal(0, 0.4, n_cust) / 100) * 100
    cust_updated = -rng.integers(86_400, 365 * 86_400, n_cust)

    cards_per = 1 + (rng.random(n_cust) < 0.45)
    card_customer = np.repeat(np.arange(n_cust), cards_per)
    n_cards = len(card_customer)
    card_scale = rng.lognormal(np.log(35.0), 0.5, n_cards) * np.asarray(_SEGMENT_SPEND)[segment[card_customer]]
    card_cum = np.cumsum(rng.lognormal(0, 0.8, n_cards))

    # Every home country and every category has at least one merchant.
    merch_country = np.where(
        rng.random(n_merch) < 0.9,
        rng.choice(len(HOME_COUNTRIES), n_merch, p=_HOME_WEIGHTS),
        rng.integers(len(HOME_COUNTRIES), len(COUNTRIES), n_merch),
    )
    merch_country[: len(HOME_COUNTRIES)] = np.arange(len(HOME_COUNTRIES))
    merch_category = rng.choice(len(CATEGORIES), n_merch, p=_CATEGORY_WEIGHTS)
    merch_category[: len(CATEGORIES)] = np.arange(len(CATEGORIES))
    popularity = rng.lognormal(0, 1.0, n_merch)
    names = [_merchant_name(rng, int(c)) for c in merch_category]
    merch_updated = -rng.integers(86_400, 365 * 86_400, n_merch)
    risky = np.isin(merch_category, [CATEGORIES.index(c) for c in RISKY_CATEGORIES])
    return _Entities(
        cust_country=cust_country,
        cust_birth_year=_REFERENCE_YEAR - age,
        cust_segment=segment,
        cust_limit_cents=(limit * 100).astype(np.int64),
        cust_updated=cust_updated,
        card_customer=card_customer,
        card_home=cust_country[card_customer],
        card_scale=card_scale,
        card_cum=card_cum,
        merch_country=merch_country,
        merch_category=merch_category,
        merch_name=names,
        merch_updated=merch_updated,
        all_merchants=_MerchantPool(np.arange(n_merch), merch_country, popularity),
        risky_merchants=_MerchantPool(np.flatnonzero(risky), merch_country, popularity),
    )


def _daily_counts(rng: np.random.Generator, start: date, days: int, rows: int) -> np.ndarray:
    """Transactions per event day: weekly seasonality, a slow monthly wave, a little noise."""
    d = np.arange(days)
    weekday = np.array([(start + timedelta(days=int(i))).weekday() for i in d])
    w = _WEEKDAY_FACTOR[weekday] * (1 + 0.08 * np.sin(2 * np.pi * d / 30)) * rng.lognormal(0, 0.04, days)
    exact = rows * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(counts - exact, kind="stable")[: rows - counts.sum()]] += 1
    return counts


def _pick_rows(rng: np.random.Generator, cum: np.ndarray) -> np.ndarray:
    """Index of the category drawn per row from per-row cumulative probabilities."""
    return (rng.random(len(cum))[:, None] > cum).sum(axis=1).astype(np.int8)


def _channel_cum(online_shift: float) -> np.ndarray:
    """Cumulative P(channel | category) of normal spend, with P(online) raised by ``online_shift``."""
    p = _CHANNEL_BY_CATEGORY / _CHANNEL_BY_CATEGORY.sum(axis=1, keepdims=True)
    if online_shift:
        online = np.clip(p[:, 1] + online_shift, 0.0, 1.0)
        rest = 1.0 - p[:, 1]
        scale = np.divide(1.0 - online, rest, out=np.zeros_like(rest), where=rest > 0)
        p = p * scale[:, None]
        p[:, 1] = online
    cum = np.cumsum(p, axis=1)
    cum[:, -1] = 1.0
    return cum


def _simulate_day(
    rng: np.random.Generator,
    ents: _Entities,
    day: int,
    n: int,
    drift: DriftConfig | None,
    fraud_card_cum: np.ndarray | None = None,
) -> _Batch:
    """``n`` valid transactions of event day ``day`` (tx and arrival left 0), sorted by time.

    ``fraud_card_cum``: cumulative weights of the cards a fraud episode picks (the bias knob);
    None picks uniformly.
    """
    amount_scale = drift.amount_scale if drift else 1.0
    hour_p = _HOUR_WEIGHTS / _HOUR_WEIGHTS.sum()
    lo, hi = _BURST_SIZES
    n_ep = rng.poisson(n * _FRAUD_RATE * (drift.fraud_rate_scale if drift else 1.0) / ((lo + hi) / 2))
    sizes = rng.integers(lo, hi + 1, n_ep)
    sizes = sizes[np.cumsum(sizes) <= n]
    n_f = int(sizes.sum())
    n_n = n - n_f

    card_n = ents.sample_cards(rng, n_n)
    foreign_n = rng.random(n_n) < min(1.0, _FOREIGN_SHARE + (drift.foreign_shift if drift else 0.0))
    merch_n = ents.all_merchants.sample(rng, ents.card_home[card_n], foreign_n)
    cat_n = ents.merch_category[merch_n]
    chan_n = _pick_rows(rng, _channel_cum(drift.online_shift if drift else 0.0)[cat_n])
    sec_n = rng.choice(24, n_n, p=hour_p) * 3600 + rng.integers(0, 3600, n_n)
    amount_n = ents.card_scale[card_n] * _CATEGORY_AMOUNT[cat_n] * rng.lognormal(0, 0.55, n_n)
    fraud_n = rng.random(n_n) < _NOISE_POSITIVE

    if fraud_card_cum is None:
        card_f = np.repeat(rng.integers(0, len(ents.card_customer), len(sizes)), sizes)
    else:
        u = rng.random(len(sizes)) * fraud_card_cum[-1]
        picked = np.minimum(np.searchsorted(fraud_card_cum, u, side="right"), len(fraud_card_cum) - 1)
        card_f = np.repeat(picked, sizes)
    foreign_f = np.repeat(rng.random(len(sizes)) < _FRAUD_FOREIGN, sizes)
    merch_f = ents.risky_merchants.sample(rng, ents.card_home[card_f], foreign_f)
    chan_f = _pick_rows(rng, np.broadcast_to(np.cumsum(_FRAUD_CHANNEL), (n_f, len(CHANNELS))))
    first = np.cumsum(sizes) - sizes
    gaps = np.minimum(rng.exponential(_BURST_GAP_S, n_f), _BURST_GAP_MAX_S).astype(np.int64)
    gaps[first] = 0
    cum = np.cumsum(gaps)
    offsets = cum - np.repeat(cum[first], sizes)
    span = offsets[first + sizes - 1] if n_f else np.zeros(0, np.int64)
    night = rng.random(len(sizes)) < _FRAUD_NIGHT
    day_start = rng.choice(24, len(sizes), p=hour_p) * 3600 + rng.integers(0, 3600, len(sizes))
    t0 = np.minimum(np.where(night, rng.integers(0, 6 * 3600, len(sizes)), day_start), 86_399 - span)
    sec_f = np.repeat(t0, sizes) + offsets
    amount_f = (
        ents.card_scale[card_f]
        * _CATEGORY_AMOUNT[ents.merch_category[merch_f]]
        * rng.lognormal(_FRAUD_AMOUNT_LOG_MEAN, 0.5, n_f)
    )
    fraud_f = rng.random(n_f) >= _NOISE_NEGATIVE

    cents = np.concatenate(
        [
            np.clip(np.rint(amount_n * amount_scale * 100), 50, 2_000_000),
            np.clip(np.rint(amount_f * amount_scale * 100), 100, 4_999_999),
        ]
    ).astype(np.int64)
    sec = np.concatenate([sec_n, sec_f]).astype(np.int64)
    order = np.argsort(sec, kind="stable")
    return _Batch(
        tx=np.zeros(n, np.int64),
        ts=day * 86_400 + sec[order],
        card=np.concatenate([card_n, card_f]).astype(np.int64)[order],
        merchant=np.concatenate([merch_n, merch_f]).astype(np.int64)[order],
        cents=cents[order],
        channel=np.concatenate([chan_n, chan_f]).astype(np.int8)[order],
        fraud=np.concatenate([fraud_n, fraud_f]).astype(np.int8)[order],
        arrival=np.zeros(n, np.int64),
    )


# ---------------------------------------------------------------- rendering


def _vocab(values: Any) -> pa.Array:
    return pa.array(list(values), _LS)


def _lit(value: str) -> pa.Scalar:
    return pa.scalar(value, _LS)


def _csv_text(values: Sequence[str]) -> str:
    """One CSV line (minimal quoting, ``\\n``-terminated)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def _json_text(record: dict[str, str | None], amount_as_number: bool) -> str:
    """One compact JSON object line, keys in the record's order, like the vectorized writer."""
    parts = []
    for key, value in record.items():
        raw = amount_as_number and key == "amount" and value is not None and _JSON_NUMBER.fullmatch(value)
        parts.append(f"{json.dumps(key)}:{value if raw else json.dumps(value)}")
    return "{" + ",".join(parts) + "}\n"


def _format_cents(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def _timestamps(start: date, seconds: np.ndarray) -> list[str]:
    base = np.datetime64(start.isoformat(), "s")
    return [s + "Z" for s in np.datetime_as_string(base + seconds.astype("timedelta64[s]"), unit="s")]


class _Renderer:
    """Turns batches into landed text with pyarrow string kernels (no per-row Python)."""

    def __init__(self, start: date, days: int, ents: _Entities):
        self._day_prefix = _vocab((start + timedelta(days=d)).isoformat() + "T" for d in range(days))
        self._hms = _vocab(f"{h:02d}:{m:02d}:{s:02d}Z" for h in range(24) for m in range(60) for s in range(60))
        self._cents = _vocab(f".{c:02d}" for c in range(100))
        self._card_ids = _vocab(f"card_{i:06d}" for i in range(len(ents.card_customer)))
        self._customer_of_card = _vocab(f"cust_{c:06d}" for c in ents.card_customer)
        self._merchant_ids = _vocab(f"m_{i:05d}" for i in range(len(ents.merch_country)))
        self._merchant_currency = _vocab(CURRENCIES[_COUNTRY_CURRENCY[c]] for c in ents.merch_country)
        self._merchant_category = _vocab(CATEGORIES[c] for c in ents.merch_category)
        self._merchant_country = _vocab(COUNTRIES[c] for c in ents.merch_country)
        self._channels = _vocab(CHANNELS)
        self._flags = _vocab(("0", "1"))
        self._card_age_band = _vocab(AGE_BANDS[b] for b in ents.card_age_band)
        self._card_region = _vocab(REGIONS[r] for r in ents.card_region)

    def columns(self, b: _Batch) -> list[pa.Array]:
        """The text of each transaction column, in :data:`TRANSACTION_COLUMNS` order."""
        empty = _lit("")
        merchant = pa.array(b.merchant)
        tid = pc.utf8_replace_slice(pc.cast(pa.array(b.tx + 10**12), _LS), 0, 1, "tx_")
        event_time = pc.binary_join_element_wise(
            pc.take(self._day_prefix, pa.array(b.ts // 86_400)), pc.take(self._hms, pa.array(b.ts % 86_400)), empty
        )
        amount = pc.binary_join_element_wise(
            pc.cast(pa.array(b.cents // 100), _LS), pc.take(self._cents, pa.array(b.cents % 100)), empty
        )
        card = pa.array(b.card)
        return [
            tid,
            event_time,
            pc.take(self._card_ids, card),
            pc.take(self._customer_of_card, card),
            pc.take(self._merchant_ids, merchant),
            amount,
            pc.take(self._merchant_currency, merchant),
            pc.take(self._channels, pa.array(b.channel)),
            pc.take(self._merchant_category, merchant),
            pc.take(self._merchant_country, merchant),
            pc.take(self._flags, pa.array(b.fraud)),
            pc.take(self._card_age_band, card),
            pc.take(self._card_region, card),
        ]

    def record(self, b: _Batch, i: int) -> dict[str, str]:
        """Row ``i`` as a dict of column -> text."""
        cols = self.columns(b.take(slice(i, i + 1)))
        return {name: col[0].as_py() for name, col in zip(TRANSACTION_COLUMNS, cols)}

    def lines(self, b: _Batch, fmt: str, amount_as_number: bool = False, extra: pa.Array | None = None) -> pa.Array:
        """One ``\\n``-terminated line per row (CSV without header, or JSON objects)."""
        cols = self.columns(b)
        if fmt == "csv":
            if extra is not None:
                cols.append(extra)
            return pc.binary_join_element_wise(pc.binary_join_element_wise(*cols, _lit(",")), _lit("\n"), _lit(""))
        pieces: list[Any] = []
        pending = "{"
        for name, col in zip(TRANSACTION_COLUMNS, cols):
            quote = "" if amount_as_number and name == "amount" else '"'
            pieces += [_lit(pending + json.dumps(name) + ":" + quote), col]
            pending = quote + ","
        pieces.append(_lit(pending[:-1] + "}\n"))
        return pc.binary_join_element_wise(*pieces, _lit(""))


@dataclass
class _WriteResult:
    records: int
    sha256: str
    bytes: int


def _write_lines(path: Path, header: str | None, lines: pa.Array, inserts: Sequence[tuple[int, str]]) -> _WriteResult:
    """Write ``header``, the rendered ``lines`` and each insert's text before base row ``pos``.

    ``inserts`` must be sorted by position; the data buffer is written in slices, never copied
    into Python strings.
    """
    digest = hashlib.sha256()
    size = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(lines)
    if n:
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[lines.offset : lines.offset + n + 1]
        data = memoryview(lines.buffers()[2])
    with open(path, "wb") as f:

        def emit(chunk: bytes | memoryview) -> None:
            nonlocal size
            f.write(chunk)
            digest.update(chunk)
            size += len(chunk)

        if header is not None:
            emit(header.encode())
        done = 0
        for pos, text in inserts:
            if pos > done:
                emit(data[offsets[done] : offsets[pos]])
                done = pos
            emit(text.encode())
        if done < n:
            emit(data[offsets[done] : offsets[n]])
    return _WriteResult(n + len(inserts), digest.hexdigest(), size)


def _write_text(path: Path, text: str) -> _WriteResult:
    payload = text.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return _WriteResult(max(text.count("\n") - 1, 0), hashlib.sha256(payload).hexdigest(), len(payload))


# ---------------------------------------------------------------- the generator


@dataclass
class _PlannedFile:
    """A transactions file decided before any data is drawn (its role and format)."""

    day: int
    index: int
    fmt: str
    kind: str  # data | extra_column | copy_source | empty | zero_byte | copy
    amount_as_number: bool = False
    source: _PlannedFile | None = None

    @property
    def name(self) -> str:
        return f"part-{self.index:03d}.{self.fmt}"


@dataclass
class _Insert:
    """A defect line waiting for its position in a file."""

    defect: RowDefect
    text: str
    pos: int = -1


@dataclass
class _OriginalRef:
    """A base row that a duplicate refers to; its line is known once its file is laid out."""

    defect: RowDefect
    part: int
    row: int


class _FraudGenerator:
    """State of one :func:`generate_fraud` call."""

    def __init__(
        self,
        out_dir: Path,
        start: date,
        days: int,
        rows: int,
        seed: int,
        defects: DefectConfig,
        drift: DriftConfig | None,
        csv_fraction: float,
        files_per_day: int,
        late_share: float,
        bias: BiasConfig | None = None,
    ):
        self.out_dir = out_dir
        self.start = start
        self.days = days
        self.rows = rows
        self.defects = defects
        self.drift = drift
        self.csv_fraction = csv_fraction
        self.files_per_day = files_per_day
        self.late_share = late_share
        self.seed = seed
        streams = np.random.SeedSequence(seed).spawn(6)
        rng_entities, self.rng_events, rng_plan, rng_special, self.rng_defects, self.rng_reference = (
            np.random.default_rng(s) for s in streams
        )
        self.ents = _build_entities(rng_entities, rows)
        age = start.year - self.ents.cust_birth_year[self.ents.card_customer]
        self.ents.card_age_band = np.maximum(np.searchsorted(_AGE_BAND_LOWER, age, side="right") - 1, 0)
        self.ents.card_region = np.asarray(_HOME_REGION)[self.ents.card_home]
        self.bias = bias
        self.fraud_card_cum = np.cumsum(bias.card_weights(self.ents)) if bias else None
        self.daily = _daily_counts(self.rng_events, start, days, rows)
        self.renderer = _Renderer(start, days, self.ents)
        self.parts, self.extras = self._plan_files(rng_plan, rng_special)
        self.files: list[LandedFile] = []
        self.row_defects: list[RowDefect] = []
        self.file_defects: list[FileDefect] = []
        self.pending_inserts: dict[int, list[tuple[_PlannedFile, _Insert]]] = defaultdict(list)
        self.key_final: dict[str, dict[str, str]] = {}
        self.landed_by_name: dict[str, LandedFile] = {}
        self.next_invalid = rows + 1
        self.late_records = 0
        self.fraud_transactions = 0
        self.reference_superseded = {"customers": 0, "merchants": 0}

    # ------------------------------------------------------------ planning

    def _plan_files(
        self, rng_plan: np.random.Generator, rng_special: np.random.Generator
    ) -> tuple[list[list[_PlannedFile]], list[list[_PlannedFile]]]:
        """Formats of all data files, then which of them carry file-level defects."""
        days, per_day = self.days, self.files_per_day
        total = days * per_day
        is_csv = np.zeros(total, dtype=bool)
        is_csv[rng_plan.permutation(total)[: round(self.csv_fraction * total)]] = True
        as_number = rng_plan.random(total) < _JSON_NUMBER_SHARE
        parts = [
            [
                _PlannedFile(d, i, "csv" if is_csv[k] else "jsonl", "data", bool(as_number[k] and not is_csv[k]))
                for i, k in enumerate(range(d * per_day, (d + 1) * per_day))
            ]
            for d in range(days)
        ]
        extras: list[list[_PlannedFile]] = [[] for _ in range(days)]
        for _ in range(self.defects.extra_column):
            chosen = self._pick_special(rng_special, parts, lambda f: f.fmt == "csv")
            if chosen is None:
                break
            chosen.kind, chosen.fmt, chosen.amount_as_number = "extra_column", "csv", False
        for i in range(self.defects.file_landed_twice):
            next_day = i % 2 == 0 and days > 1
            prefer = (lambda f: f.day < days - 1) if next_day else (lambda f: True)
            chosen = self._pick_special(rng_special, parts, prefer)
            if chosen is None:
                break
            chosen.kind = "copy_source"
            target = chosen.day + 1 if next_day and chosen.day < days - 1 else chosen.day
            extras[target].append(_PlannedFile(target, 0, chosen.fmt, "copy", chosen.amount_as_number, chosen))
        for _ in range(self.defects.empty_file):
            d = int(rng_special.integers(days))
            extras[d].append(_PlannedFile(d, 0, "csv", "empty"))
        for _ in range(self.defects.zero_byte_file):
            d = int(rng_special.integers(days))
            extras[d].append(_PlannedFile(d, 0, "jsonl", "zero_byte"))
        for day_extras in extras:
            for j, f in enumerate(day_extras):
                f.index = per_day + j
        return parts, extras

    @staticmethod
    def _pick_special(
        rng: np.random.Generator, parts: list[list[_PlannedFile]], prefer: Callable[[_PlannedFile], bool]
    ) -> _PlannedFile | None:
        """A data file to give a file-level role, keeping at least one data file per day if possible."""
        data = [f for day in parts for f in day if f.kind == "data"]

        def keeps_day(f: _PlannedFile) -> bool:
            return sum(g.kind == "data" for g in parts[f.day]) > 1

        for candidates in (
            [f for f in data if prefer(f) and keeps_day(f)],
            [f for f in data if keeps_day(f)],
            [f for f in data if prefer(f)] if len(data) > 1 else [],
            data if len(data) > 1 else [],
        ):
            if candidates:
                return candidates[int(rng.integers(len(candidates)))]
        return None

    # ------------------------------------------------------------ helpers

    def _date(self, day: int) -> str:
        return (self.start + timedelta(days=day)).isoformat()

    def _relpath(self, dataset: str, day: int, name: str) -> str:
        return f"{dataset}/{self._date(day)}/{name}"

    def _record_file(
        self,
        dataset: str,
        day: int,
        name: str,
        fmt: str,
        kind: str,
        result: _WriteResult,
        columns: Sequence[str],
        amount_as_number: bool = False,
    ) -> LandedFile:
        entry = LandedFile(
            dataset=dataset,
            landing_date=self._date(day),
            path=self._relpath(dataset, day, name),
            format=fmt,
            kind=kind,
            records=result.records,
            sha256=result.sha256,
            bytes=result.bytes,
            columns=list(columns),
            amount_as_number=amount_as_number,
        )
        self.files.append(entry)
        self.landed_by_name[entry.path] = entry
        return entry

    # ------------------------------------------------------------ reference data

    def _write_reference(self) -> None:
        """Customers and merchants: a full snapshot on day 0, a few updated entities every 7th day."""
        rng, ents = self.rng_reference, self.ents
        n_cust, n_merch = len(ents.cust_country), len(ents.merch_country)

        def customer_rows(idx: np.ndarray) -> list[list[str]]:
            stamps = _timestamps(self.start, ents.cust_updated[idx])
            return [
                [
                    f"cust_{i:06d}",
                    t,
                    HOME_COUNTRIES[ents.cust_country[i]],
                    str(ents.cust_birth_year[i]),
                    SEGMENTS[ents.cust_segment[i]],
                    _format_cents(int(ents.cust_limit_cents[i])),
                ]
                for i, t in zip(idx.tolist(), stamps)
            ]

        def merchant_rows(idx: np.ndarray) -> list[list[str]]:
            stamps = _timestamps(self.start, ents.merch_updated[idx])
            return [
                [
                    f"m_{i:05d}",
                    t,
                    ents.merch_name[i],
                    CATEGORIES[ents.merch_category[i]],
                    COUNTRIES[ents.merch_country[i]],
                ]
                for i, t in zip(idx.tolist(), stamps)
            ]

        def write(dataset: str, day: int, kind: str, columns: Sequence[str], rows: list[list[str]]) -> None:
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows(rows)
            result = _write_text(self.out_dir / self._relpath(dataset, day, "part-000.csv"), buf.getvalue())
            self._record_file(dataset, day, "part-000.csv", "csv", kind, result, columns)

        write("customers", 0, "snapshot", CUSTOMER_COLUMNS, customer_rows(np.arange(n_cust)))
        write("merchants", 0, "snapshot", MERCHANT_COLUMNS, merchant_rows(np.arange(n_merch)))
        for day in range(_UPDATE_EVERY_DAYS, self.days, _UPDATE_EVERY_DAYS):
            idx = np.sort(rng.choice(n_cust, max(1, round(_CUSTOMER_UPDATE_SHARE * n_cust)), replace=False))
            ents.cust_updated[idx] = day * 86_400 - rng.integers(1, 86_400, len(idx))
            raised = ents.cust_limit_cents[idx] * rng.uniform(1.1, 1.5, len(idx)) / 10_000
            ents.cust_limit_cents[idx] = np.minimum(np.round(raised) * 10_000, 100_000_000).astype(np.int64)
            switch = rng.random(len(idx)) < 0.3
            shift = rng.integers(1, len(SEGMENTS), len(idx))
            ents.cust_segment[idx] = np.where(
                switch, (ents.cust_segment[idx] + shift) % len(SEGMENTS), ents.cust_segment[idx]
            )
            write("customers", day, "update", CUSTOMER_COLUMNS, customer_rows(idx))
            self.reference_superseded["customers"] += len(idx)

            idx = np.sort(rng.choice(n_merch, max(1, round(_MERCHANT_UPDATE_SHARE * n_merch)), replace=False))
            ents.merch_updated[idx] = day * 86_400 - rng.integers(1, 86_400, len(idx))
            for i in idx.tolist():
                renamed = _merchant_name(rng, int(ents.merch_category[i]))
                ents.merch_name[i] = renamed if renamed != ents.merch_name[i] else renamed + " Ltd"
            write("merchants", day, "update", MERCHANT_COLUMNS, merchant_rows(idx))
            self.reference_superseded["merchants"] += len(idx)

    # ------------------------------------------------------------ transactions

    def _event_day(self, day: int, next_tx: int) -> _Batch:
        """Simulate event day ``day``, number its transactions and stamp their arrival."""
        drifted = self.drift is not None and self.start + timedelta(days=day) >= self.drift.start
        b = _simulate_day(
            self.rng_events, self.ents, day, int(self.daily[day]), self.drift if drifted else None, self.fraud_card_cum
        )
        n = len(b)
        rng = self.rng_events
        b.tx = next_tx + np.arange(n, dtype=np.int64)
        late = rng.random(n) < self.late_share
        delay = rng.choice(_LATE_DAYS, n, p=_LATE_DAY_WEIGHTS)
        landing = np.where(late & (day + delay < self.days), day + delay, day)
        on_time = np.minimum(b.ts + rng.exponential(300.0, n).astype(np.int64), (day + 1) * 86_400 - 1)
        b.arrival = np.where(landing == day, on_time, landing * 86_400 + rng.integers(0, 86_400, n))
        self.fraud_transactions += int(b.fraud.sum())
        self.late_records += int((landing > day).sum())
        return b

    def _fresh_invalid(
        self, defect: str, record: dict[str, str], target: _PlannedFile
    ) -> tuple[str, str | None, str | None, str]:
        """Turn a copy of a valid record into a row with exactly one ``defect``.

        Returns the line text, the offending column, the transaction id the line carries and a
        description.
        """
        rng = self.rng_defects
        record = dict(record, transaction_id=f"tx_{self.next_invalid:012d}")
        self.next_invalid += 1
        tid: str | None = record["transaction_id"]
        column: str | None = None
        csv_file = target.fmt == "csv"
        if defect == "malformed_record":
            if csv_file:
                values = list(record.values())
                if rng.random() < 0.5:
                    dropped = int(rng.integers(1, len(values)))
                    detail = f"dropped field {TRANSACTION_COLUMNS[dropped]}"
                    del values[dropped]
                else:
                    values.append("1")
                    detail = "one field too many"
                return _csv_text(values), None, tid, detail
            text = _json_text(record, target.amount_as_number)
            cut = int(rng.integers(len(text) // 3, len(text) - 2))
            return text[:cut] + "\n", None, tid, "truncated JSON object"
        if defect == "invalid_type":
            column = str(rng.choice(list(_INVALID_VALUES)))
            record[column] = str(rng.choice(_INVALID_VALUES[column]))
        elif defect == "missing_required":
            column = str(rng.choice(_MISSING_COLUMNS))
            if column == "transaction_id":
                tid = None
            if csv_file:
                record[column] = ""
            elif rng.random() < 0.5:
                del record[column]
            else:
                record[column] = None  # type: ignore[assignment]
        elif defect == "out_of_range":
            column = "amount"
            value = str(rng.choice(_OUT_OF_RANGE_AMOUNTS))
            record[column] = "-" + record[column] if value == "negative" else value
        else:  # unknown_category
            column = str(rng.choice(list(_UNKNOWN_VALUES)))
            record[column] = _UNKNOWN_VALUES[column]
        if column not in record:
            detail = f"{column} absent"
        elif not record[column]:
            detail = f"{column} {'null' if record[column] is None else 'empty'}"
        else:
            detail = f"{column}={record[column]!r}"
        if csv_file:
            return _csv_text([record[c] for c in TRANSACTION_COLUMNS]), column, tid, detail
        return _json_text(record, target.amount_as_number), column, tid, detail

    def _inject_row_defects(
        self,
        day: int,
        batch: _Batch,
        parts: list[_PlannedFile],
        bounds: np.ndarray,
        rendered: list[pa.Array],
        inserts: list[list[_Insert]],
    ) -> list[_OriginalRef]:
        """Draw this landing day's row defects; return the base rows that duplicates refer to."""
        rng, cfg = self.rng_defects, self.defects
        eligible = [j for j, p in enumerate(parts) if p.kind == "data"]
        rows = np.concatenate([np.arange(bounds[j], bounds[j + 1]) for j in eligible] or [np.zeros(0, np.int64)])
        if not len(rows):
            return []
        n = len(batch)
        for defect in REASON_CODES:
            for _ in range(rng.binomial(n, getattr(cfg, defect))):
                template = int(rows[rng.integers(len(rows))])
                j = eligible[int(rng.integers(len(eligible)))]
                text, column, tid, detail = self._fresh_invalid(defect, self.renderer.record(batch, template), parts[j])
                found = RowDefect(
                    dataset="transactions",
                    path=self._relpath("transactions", day, parts[j].name),
                    line=0,
                    defect=defect,
                    expected=defect,
                    column=column,
                    transaction_id=tid,
                    detail=detail,
                )
                inserts[j].append(_Insert(found, text))

        n_exact = rng.binomial(n, cfg.exact_duplicate)
        n_key = rng.binomial(n, cfg.key_duplicate) if day < self.days - 1 else 0
        n_exact = min(n_exact, len(rows))
        n_key = min(n_key, len(rows) - n_exact)
        chosen = rng.choice(rows, n_exact + n_key, replace=False)
        refs = []
        for k, g in enumerate(chosen.tolist()):
            j = int(np.searchsorted(bounds, g, side="right")) - 1
            i = g - int(bounds[j])
            original = parts[j]
            tid = f"tx_{int(batch.tx[g]):012d}"
            if k < n_exact:
                target, target_day = self._exact_target(day, original, parts, eligible, j)
                text = rendered[j][i].as_py()
                record = None
            else:
                placed = self._key_target(day)
                if placed is None:
                    continue
                target, target_day = placed
                record = self.renderer.record(batch, g)
                cents = int(batch.cents[g])
                new = int(
                    np.clip(round(cents * rng.choice([rng.uniform(0.5, 0.95), rng.uniform(1.05, 1.6)])), 1, 5_000_000)
                )
                record["amount"] = _format_cents(new if new != cents else cents + 1)
                text = (
                    _csv_text(list(record.values()))
                    if target.fmt == "csv"
                    else _json_text(record, target.amount_as_number)
                )
            found = RowDefect(
                dataset="transactions",
                path=self._relpath("transactions", target_day, target.name),
                line=0,
                defect="exact_duplicate" if record is None else "key_duplicate",
                expected=DUPLICATE if record is None else SUPERSEDES,
                column=None if record is None else "amount",
                transaction_id=tid,
                detail=None if record is None else f"amount corrected to {record['amount']}",
                original_path=self._relpath("transactions", day, original.name),
            )
            if record is not None:
                self.key_final[tid] = record
            refs.append(_OriginalRef(found, j, i))
            if target_day == day:
                inserts[target.index].append(_Insert(found, text))
            else:
                self.pending_inserts[target_day].append((target, _Insert(found, text)))
        return refs

    def _exact_target(
        self, day: int, original: _PlannedFile, parts: list[_PlannedFile], eligible: list[int], j: int
    ) -> tuple[_PlannedFile, int]:
        """Where an exact copy goes: the same file, another same-format file today, or 1-3 days later."""
        rng = self.rng_defects
        where = rng.random()
        if where < 0.4:
            return original, day
        if where < 0.7:
            others = [parts[q] for q in eligible if q != j and parts[q].fmt == original.fmt]
            return (others[int(rng.integers(len(others)))], day) if others else (original, day)
        later = day + int(rng.integers(1, 4))
        if later >= self.days:
            return original, day
        same = [f for f in self.parts[later] if f.kind == "data" and f.fmt == original.fmt]
        return (same[int(rng.integers(len(same)))], later) if same else (original, day)

    def _key_target(self, day: int) -> tuple[_PlannedFile, int] | None:
        """A data file 1-3 landing days after ``day`` for a corrected re-send, or None."""
        rng = self.rng_defects
        for later in day + 1 + rng.permutation(min(3, self.days - 1 - day)):
            candidates = [f for f in self.parts[int(later)] if f.kind == "data"]
            if candidates:
                return candidates[int(rng.integers(len(candidates)))], int(later)
        return None

    def _land_day(self, day: int, batch: _Batch) -> None:
        """Write landing day ``day``: its data files with their defect lines, then its extra files."""
        parts = self.parts[day]
        batch = batch.take(np.argsort(batch.arrival, kind="stable"))
        sizes = [len(a) for a in np.array_split(np.arange(len(batch)), len(parts))]
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        part_batches = [batch.take(slice(int(bounds[j]), int(bounds[j + 1]))) for j in range(len(parts))]
        rendered = []
        for part, pb in zip(parts, part_batches):
            extra = None
            if part.kind == "extra_column":
                extra = _vocab(f"{(t * 0x9E3779B97F4A7C15) % 2**64:016x}" for t in pb.tx.tolist())
            rendered.append(self.renderer.lines(pb, part.fmt, part.amount_as_number, extra))
        inserts: list[list[_Insert]] = [[] for _ in parts]
        for target, ins in self.pending_inserts.pop(day, []):
            inserts[target.index].append(ins)
        refs = self._inject_row_defects(day, batch, parts, bounds, rendered, inserts)

        positions = []
        for j, part in enumerate(parts):
            for ins in inserts[j]:
                ins.pos = int(self.rng_defects.integers(0, sizes[j] + 1))
            inserts[j].sort(key=lambda x: x.pos)
            first = 2 if part.fmt == "csv" else 1
            for k, ins in enumerate(inserts[j]):
                ins.defect.line = first + ins.pos + k
                self.row_defects.append(ins.defect)
            positions.append(np.array([ins.pos for ins in inserts[j]], dtype=np.int64))
        for ref in refs:
            first = 2 if parts[ref.part].fmt == "csv" else 1
            ref.defect.original_line = first + ref.row + int(np.searchsorted(positions[ref.part], ref.row, "right"))

        for j, part in enumerate(parts):
            header = None
            columns = list(TRANSACTION_COLUMNS)
            if part.fmt == "csv":
                columns += [EXTRA_COLUMN] if part.kind == "extra_column" else []
                header = ",".join(columns) + "\n"
            path = self.out_dir / self._relpath("transactions", day, part.name)
            result = _write_lines(path, header, rendered[j], [(x.pos, x.text) for x in inserts[j]])
            kind = "extra_column" if part.kind == "extra_column" else "data"
            entry = self._record_file(
                "transactions", day, part.name, part.fmt, kind, result, columns, part.amount_as_number
            )
            if part.kind == "extra_column":
                self.file_defects.append(
                    FileDefect(
                        defect="extra_column",
                        dataset="transactions",
                        path=entry.path,
                        expected="accepted",
                        records=entry.records,
                        detail=f"unexpected column {EXTRA_COLUMN}",
                    )
                )
        for extra in self.extras[day]:
            self._land_extra(day, extra)

    def _land_extra(self, day: int, extra: _PlannedFile) -> None:
        """Write an extra file of landing day ``day``: a copy of an earlier data file, or an empty file."""
        path = self.out_dir / self._relpath("transactions", day, extra.name)
        if extra.kind == "copy":
            assert extra.source is not None
            source = self.landed_by_name[self._relpath("transactions", extra.source.day, extra.source.name)]
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.out_dir / source.path, path)
            result = _WriteResult(source.records, source.sha256, source.bytes)
            entry = self._record_file(
                "transactions", day, extra.name, extra.fmt, "copy", result, source.columns, source.amount_as_number
            )
            self.file_defects.append(
                FileDefect(
                    defect="file_landed_twice",
                    dataset="transactions",
                    path=entry.path,
                    expected="duplicate_file",
                    records=entry.records,
                    detail="byte-for-byte copy",
                    source_path=source.path,
                )
            )
            return
        header_only = extra.kind == "empty"
        result = _write_text(path, ",".join(TRANSACTION_COLUMNS) + "\n" if header_only else "")
        columns = list(TRANSACTION_COLUMNS) if header_only else []
        entry = self._record_file("transactions", day, extra.name, extra.fmt, "empty", result, columns)
        self.file_defects.append(
            FileDefect(
                defect="empty_file",
                dataset="transactions",
                path=entry.path,
                expected="no_records",
                records=0,
                detail="header only" if header_only else "zero bytes",
            )
        )

    # ------------------------------------------------------------ run

    def run(self) -> GenerationManifest:
        """Write every file, day by day, then the manifest."""
        self._write_reference()
        pending_late: dict[int, list[_Batch]] = defaultdict(list)
        next_tx = 1
        for day in range(self.days):
            b = self._event_day(day, next_tx)
            next_tx += len(b)
            landing = b.arrival // 86_400
            for later in np.unique(landing[landing > day]).tolist():
                pending_late[later].append(b.take(landing == later))
            self._land_day(day, _Batch.concat([b.take(landing == day), *pending_late.pop(day, [])]))
        self.row_defects.sort(key=lambda d: (d.path, d.line))
        manifest = GenerationManifest(
            self._parameters(), self.files, self.row_defects, self.file_defects, self._expectations()
        )
        manifest.write(self.out_dir / MANIFEST_PATH)
        return manifest

    def _parameters(self) -> dict[str, Any]:
        drift = None
        if self.drift is not None:
            drift = asdict(self.drift) | {"start": self.drift.start.isoformat()}
        return {
            "generator": "mlblueprints.datagen.fraud",
            "seed": self.seed,
            "start": self.start.isoformat(),
            "days": self.days,
            "rows": self.rows,
            "csv_fraction": self.csv_fraction,
            "files_per_day": self.files_per_day,
            "late_share": self.late_share,
            "defects": asdict(self.defects),
            "drift": drift,
            "bias": asdict(self.bias) | {"groups": list(self.bias.groups)} if self.bias else None,
            "entities": {
                "customers": len(self.ents.cust_country),
                "cards": len(self.ents.card_customer),
                "merchants": len(self.ents.merch_country),
            },
        }

    def _expectations(self) -> Expectations:
        landed = {ds: sum(f.records for f in self.files if f.dataset == ds) for ds in DATASETS}
        copies = {ds: sum(f.records for f in self.files if f.dataset == ds and f.kind == "copy") for ds in DATASETS}
        quarantined = {ds: dict.fromkeys(REASON_CODES, 0) for ds in DATASETS}
        for d in self.row_defects:
            if d.expected in REASON_CODES:
                quarantined[d.dataset][d.expected] += 1
        breakdown = {
            name: sum(d.defect == name for d in self.row_defects) for name in ("exact_duplicate", "key_duplicate")
        }
        return Expectations(
            distinct_valid_transactions=self.rows,
            landed_records=landed,
            ingested_records={ds: landed[ds] - copies[ds] for ds in DATASETS},
            quarantined=quarantined,
            quarantined_total={ds: sum(q.values()) for ds, q in quarantined.items()},
            duplicates={"transactions": sum(breakdown.values()), **self.reference_superseded},
            duplicate_breakdown=breakdown,
            duplicate_file_records=copies["transactions"],
            silver_rows={
                "transactions": self.rows,
                "customers": len(self.ents.cust_country),
                "merchants": len(self.ents.merch_country),
            },
            late_records=self.late_records,
            fraud_transactions=self.fraud_transactions,
            key_duplicate_final=dict(sorted(self.key_final.items())),
        )


def generate_fraud(
    out_dir: Path,
    *,
    start: date,
    days: int,
    rows: int,
    seed: int = 42,
    defects: DefectConfig | None = None,
    drift: DriftConfig | None = None,
    csv_fraction: float = 0.5,
    files_per_day: int = 2,
    late_share: float = 0.02,
    bias: BiasConfig | None = None,
) -> GenerationManifest:
    """Generate ``rows`` valid card transactions over ``days`` landing days from ``start``.

    Args:
        out_dir: the landing root; ``transactions/``, ``customers/``, ``merchants/`` and
            ``_generator/`` must not exist or be empty.
        start: first landing (and event) date.
        days: number of landing days.
        rows: distinct valid transactions in total, before defects.
        seed: everything written depends only on the arguments.
        defects: defects to inject; None means :class:`DefectConfig` defaults (all on, small
            rates); ``DefectConfig.none()`` writes clean data.
        drift: distribution shift from a date on; None means no drift.
        csv_fraction: share of the ``days * files_per_day`` regular transactions files written as
            CSV (the rest JSON Lines), chosen at random from the seed.
        files_per_day: regular transactions files per landing day (``part-000`` ...); extra
            files (empty files, copies) take the next part numbers.
        late_share: share of valid records landed 1-3 days after their event date (never past
            the last day; none on day 0 since events start on ``start``).
        bias: fraud that targets a group of card holders (:class:`BiasConfig`); None (the
            default) leaves fraud independent of ``age_band`` and ``region``.

    Returns:
        The manifest, also written to ``<out_dir>/_generator/manifest.json``.

    File-level defects need data files to host them: each takes one regular file, preferring
    a day that keeps another data file; none is placed if only one data file is left. Data files
    that host a file-level defect get no row defects.
    """
    if rows < 1 or days < 1 or files_per_day < 1:
        raise ValueError("rows, days and files_per_day must be >= 1")
    if not 0.0 <= csv_fraction <= 1.0:
        raise ValueError(f"csv_fraction must be within [0, 1], got {csv_fraction}")
    if not 0.0 <= late_share <= 0.5:
        raise ValueError(f"late_share must be within [0, 0.5], got {late_share}")
    out_dir = Path(out_dir)
    for sub in (*DATASETS, MANIFEST_PATH.split("/")[0]):
        target = out_dir / sub
        if target.exists() and any(target.iterdir()):
            raise FileExistsError(f"{target} is not empty; generate into a fresh landing root")
    generator = _FraudGenerator(
        out_dir,
        start,
        days,
        rows,
        seed,
        defects or DefectConfig(),
        drift,
        csv_fraction,
        files_per_day,
        late_share,
        bias,
    )
    return generator.run()


def read_manifest(out_dir: Path) -> GenerationManifest:
    """The manifest of the generation run whose landing root is ``out_dir``."""
    return GenerationManifest.load(Path(out_dir) / MANIFEST_PATH)
