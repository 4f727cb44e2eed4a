"""Feature views, target-independent: names, column checks, and the SQL of both targets.

A feature view (``features.<view>`` in the use-case YAML) names a Gold table, the entity key
columns, the event-time column and the feature columns. Materializing it for a range of event
dates computes one *batch* from Gold:

* one row per (entity, event time) - the offline store's history rows; when a Gold table has
  two rows for the same entity and instant, the one with the greatest Gold primary key wins, so
  the result does not depend on file order;
* rows whose entity key or event time is null are skipped and counted, never stored.

The online store gets the newest row per entity of the same batch. Everything here is pure
(string work and small data classes), shared by ``features.local`` and ``features.aws``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from mlblueprints.config import FEATURE_TYPES, UseCase
from mlblueprints.errors import PermanentError

OFFLINE_PREFIX = "fv_"
TRAINING_PREFIX = "ts_"
# SageMaker Feature Store needs one record identifier; composite keys are joined with this
RECORD_ID = "record_id"
RECORD_ID_SEPARATOR = "#"
FEATURE_GROUP_NAME_RE = re.compile(r"^[a-zA-Z0-9]([-_]*[a-zA-Z0-9]){0,63}$")


class FeatureViewError(PermanentError, ValueError):
    """A feature view that cannot be materialized; the message names the view and the column."""

    def __init__(self, uc: UseCase | str, view: str, column: str | None, reason: str):
        self.usecase = uc if isinstance(uc, str) else uc.name
        self.view = view
        self.column = column
        self.reason = reason
        where = f"features.{view}" + (f": column {column!r}" if column else "")
        super().__init__(f"{self.usecase}: {where}: {reason}")


class TrainingSetError(PermanentError, ValueError):
    """A training set that cannot be built; the message names the training set and the column."""

    def __init__(self, uc: UseCase | str, name: str, column: str | None, reason: str):
        self.usecase = uc if isinstance(uc, str) else uc.name
        self.name = name
        self.column = column
        where = f"training_sets.{name}" + (f": column {column!r}" if column else "")
        super().__init__(f"{self.usecase}: {where}: {reason}")


def check_label_columns(uc: UseCase, name: str, label_types: Mapping[str, str]) -> str:
    """Check a training set's label table (column -> type) has every column the set needs: the
    event time (a timestamp), the label, the carried columns and each view's entity keys.
    Returns the label event-time column; raises :class:`TrainingSetError` naming the column."""
    ts = uc.training_sets[name]
    types = {k: normalize_type(t) for k, t in label_types.items()}
    label_time = ts.labels.event_time or uc.gold[ts.labels.source].event_time
    needed = {label_time: "event time", ts.labels.label: "label"}
    needed.update({c: "carried" for c in ts.labels.columns})
    for vname in ts.features:
        needed.update({k: f"entity key of {vname}" for k in uc.features[vname].entity})
    for c, role in needed.items():
        if c not in types:
            raise TrainingSetError(
                uc, name, c, f"{role} column is not in {ts.labels.source!r} (it has: {', '.join(types)})"
            )
    if types[label_time] != "timestamp":
        raise TrainingSetError(uc, name, label_time, f"event time must be a timestamp, got {types[label_time]}")
    return label_time


def positive_sql(label: str) -> str:
    """True where a label is a positive of a binary label (1 / true), whatever its type; a
    training set reports the count (for a multiclass or regression label it is just a count)."""
    return f"lower(trim(CAST({_q(label)} AS VARCHAR))) IN ('1', 'true', '1.0')"


def offline_table(uc: UseCase, view: str) -> str:
    """Iceberg table of a view's history: ``fv_<view>_v<version>`` (a new version is a new table)."""
    return f"{OFFLINE_PREFIX}{view}_v{uc.features[view].version}"


def online_table(uc: UseCase, view: str) -> str:
    """Table of the local online store (one SQLite file per use case)."""
    return offline_table(uc, view)


def asset_uri(uc: UseCase, view: str) -> str:
    """URI of a view's Airflow Asset (its offline store location; a new version is a new Asset)."""
    return uc.feature_view_uri(view, offline_table(uc, view), feature_group_name(uc, view))


def training_table(name: str) -> str:
    return f"{TRAINING_PREFIX}{name}"


def feature_group_name(uc: UseCase, view: str) -> str:
    """SageMaker feature group of a view: ``<usecase>-<view>-v<version>`` (at most 64 characters)."""
    name = f"{uc.name}-{view}-v{uc.features[view].version}".replace("_", "-")
    if not FEATURE_GROUP_NAME_RE.match(name):
        raise FeatureViewError(uc, view, None, f"feature group name {name!r} is not valid (at most 64 characters)")
    return name


def record_id(values: Iterable[Any]) -> str:
    """The record identifier of an entity in SageMaker Feature Store (keys joined with ``#``)."""
    return RECORD_ID_SEPARATOR.join("" if v is None else str(v) for v in values)


def event_time_column(uc: UseCase, view: str) -> str:
    v = uc.features[view]
    return v.event_time or uc.gold[v.source].event_time


def normalize_type(t: str) -> str:
    """Iceberg / Glue / DuckDB type names -> the names of ``config.FEATURE_TYPES``."""
    t = str(t).strip().lower()
    aliases = {
        "integer": "int",
        "int32": "int",
        "long": "bigint",
        "int64": "bigint",
        "varchar": "string",
        "float64": "double",
        "float32": "float",
        "real": "float",
        "bool": "boolean",
        "timestamptz": "timestamp",
        "timestamp with time zone": "timestamp",
        "timestamp(6)": "timestamp",
        "timestamp(3)": "timestamp",
        "timestamp_ns": "timestamp",
        "timestamp_us": "timestamp",
    }
    return aliases.get(t, t)


@dataclass(frozen=True)
class ViewColumns:
    """The typed columns of a view, resolved against its Gold table."""

    view: str
    entity: tuple[tuple[str, str], ...]
    event_time: str
    features: tuple[tuple[str, str], ...]

    @property
    def entity_names(self) -> list[str]:
        return [n for n, _ in self.entity]

    @property
    def feature_names(self) -> list[str]:
        return [n for n, _ in self.features]

    def types(self) -> dict[str, str]:
        """Column -> type as the stores hold them (the event time is always ``event_time``)."""
        return {**dict(self.entity), "event_time": "timestamp", **dict(self.features)}

    def as_dict(self) -> dict[str, Any]:
        """JSON form (a service call carries it from the step's prepare to its finish)."""
        return {
            "view": self.view,
            "entity": [list(c) for c in self.entity],
            "event_time": self.event_time,
            "features": [list(c) for c in self.features],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ViewColumns:
        return cls(
            view=d["view"],
            entity=tuple((str(n), str(t)) for n, t in d["entity"]),
            event_time=d["event_time"],
            features=tuple((str(n), str(t)) for n, t in d["features"]),
        )


def resolve_columns(uc: UseCase, view: str, gold_types: Mapping[str, str]) -> ViewColumns:
    """Check a view against its Gold table's columns (name -> type); raise naming the column."""
    v = uc.features[view]
    types = {k: normalize_type(t) for k, t in gold_types.items()}
    et = event_time_column(uc, view)

    def need(col: str, role: str) -> str:
        if col not in types:
            raise FeatureViewError(
                uc, view, col, f"{role} column is not in Gold table {v.source!r} (it has: {', '.join(types)})"
            )
        return types[col]

    if need(et, "event-time") != "timestamp":
        raise FeatureViewError(uc, view, et, f"event-time column must be a timestamp, Gold has {types[et]}")
    entity = []
    for k in v.entity:
        t = need(k, "entity")
        if t not in ("string", "int", "bigint"):
            raise FeatureViewError(uc, view, k, f"entity key must be string, int or bigint, Gold has {t}")
        entity.append((k, t))
    feats = []
    for f in v.features:
        t = need(f, "feature")
        if t not in FEATURE_TYPES:
            hint = " (CAST it to DOUBLE in the Gold SQL)" if t.startswith("decimal") else ""
            raise FeatureViewError(
                uc, view, f, f"type {t} cannot be stored as a feature; use one of {', '.join(FEATURE_TYPES)}{hint}"
            )
        feats.append((f, t))
    return ViewColumns(view=view, entity=tuple(entity), event_time=et, features=tuple(feats))


def check_store_types(uc: UseCase, view: str, cols: ViewColumns, stored: Mapping[str, str], store: str) -> None:
    """A store created earlier must hold the same columns with the same types (else: a new version)."""
    want = cols.types()
    for name, t in want.items():
        have = stored.get(name)
        if have is None:
            raise FeatureViewError(
                uc, view, name, f"the {store} store has no such column; bump features.{view}.version for a new layout"
            )
        if normalize_type(have) != t and (normalize_type(have), t) not in (("bigint", "int"), ("double", "float")):
            raise FeatureViewError(
                uc,
                view,
                name,
                f"type changed: the {store} store holds {normalize_type(have)}, Gold now gives {t}; "
                f"bump features.{view}.version to start a new store",
            )


def date_range(dates: Iterable[date | str]) -> tuple[date, date] | None:
    """The contiguous range a materialization replaces: [min, max] of the dates given."""
    ds = sorted(d if isinstance(d, date) else date.fromisoformat(str(d)[:10]) for d in dates)
    return (ds[0], ds[-1]) if ds else None


def dates_of(lo: date, hi: date) -> list[date]:
    return [lo + timedelta(days=i) for i in range((hi - lo).days + 1)]


def range_from_asset_extras(extras: Iterable[Mapping[str, Any] | None]) -> tuple[date, date] | None:
    """The event dates to materialize, from the Gold Asset events that triggered a run.

    The Gold gate attaches ``{"range": [lo, hi]}`` (the event dates it recomputed) to its event;
    several events (runs queued while this DAG was busy) are merged into one covering range.
    """
    los, his = [], []
    for e in extras:
        rng = (e or {}).get("range")
        if rng and len(rng) == 2:
            los.append(date.fromisoformat(str(rng[0])[:10]))
            his.append(date.fromisoformat(str(rng[1])[:10]))
    if not los:
        return None
    return min(los), max(his)


# ------------------------------------------------------------------ SQL (DuckDB dialect)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def batch_sql(cols: ViewColumns, source: str, tiebreak: Iterable[str], lo: date, hi: date) -> str:
    """The materialization batch of [lo, hi] from the relation ``source`` (a Gold view).

    One row per (entity, event time); columns: entity keys, ``event_time``, the features,
    ``event_date``. Rows with a null key or event time are left out (see :func:`skipped_sql`).
    """
    keys = [_q(k) for k in cols.entity_names]
    not_null = " AND ".join(f"{c} IS NOT NULL" for c in [*keys, _q(cols.event_time)])
    order = ", ".join(f"{_q(c)} DESC NULLS LAST" for c in tiebreak) or "1"
    select = ", ".join(
        [*keys, f"CAST({_q(cols.event_time)} AS TIMESTAMP) AS event_time", *(_q(f) for f in cols.feature_names)]
    )
    return (
        f"SELECT {select}, CAST({_q(cols.event_time)} AS DATE) AS event_date FROM {source} "
        f"WHERE {not_null} AND CAST({_q(cols.event_time)} AS DATE) BETWEEN DATE {_lit(lo)} AND DATE {_lit(hi)} "
        f"QUALIFY row_number() OVER (PARTITION BY {', '.join(keys)}, {_q(cols.event_time)} ORDER BY {order}) = 1"
    )


def skipped_sql(cols: ViewColumns, source: str, lo: date, hi: date) -> str:
    """Counts of the rows of [lo, hi] a batch leaves out: ``(null_key, null_event_time, total)``."""
    any_null_key = " OR ".join(f"{_q(k)} IS NULL" for k in cols.entity_names)
    et = _q(cols.event_time)
    return (
        f"SELECT count(*) FILTER (WHERE ({any_null_key}) AND {et} IS NOT NULL), "
        f"count(*) FILTER (WHERE {et} IS NULL), count(*) FROM {source} "
        f"WHERE {et} IS NULL OR CAST({et} AS DATE) BETWEEN DATE {_lit(lo)} AND DATE {_lit(hi)}"
    )


def latest_sql(cols: ViewColumns, batch: str) -> str:
    """The newest row per entity of a batch (what the online store receives)."""
    keys = ", ".join(_q(k) for k in cols.entity_names)
    return f"SELECT * FROM {batch} QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY event_time DESC) = 1"


@dataclass(frozen=True)
class PitView:
    """One feature view as the point-in-time join sees it."""

    name: str
    relation: str  # a relation with the view's entity keys, event_time and features
    cols: ViewColumns
    ttl_seconds: int


def pit_sql(
    labels: str,
    label_time: str,
    label: str | None,
    carry: Iterable[str],
    views: list[PitView],
    label_start: date | None = None,
    label_end: date | None = None,
) -> str:
    """Point-in-time training set: each label event joined, per view, to the newest feature row
    of its entity with ``feature time <= label time``, nulled when older than the view's TTL.

    An ``ASOF LEFT JOIN`` picks the newest row at or before the label time; the TTL test comes
    after it, so an expired value is null rather than replaced by an even older one. A label
    event with no row (new entity) keeps null features. Output: entity keys, ``event_time`` (the
    label time), the carried columns, the label, every feature, ``<view>__feature_time`` per
    view, and ``event_date``.

    ``label=None`` joins rows that have no label (the rows a model scores: the same join, so a
    row is scored with exactly the features a training set would give it).
    """
    keys: list[str] = []
    for v in views:
        for k in v.cols.entity_names:
            if k not in keys:
                keys.append(k)
    carry = [c for c in dict.fromkeys(carry) if c not in keys and c not in (label, label_time)]
    where = [f"{_q(label_time)} IS NOT NULL"] + ([f"{_q(label)} IS NOT NULL"] if label else [])
    if label_start:
        where.append(f"{_q(label_time)} >= TIMESTAMP {_lit(label_start)}")
    if label_end:
        where.append(f"{_q(label_time)} < TIMESTAMP {_lit(label_end)}")
    base_cols = [*(_q(k) for k in keys), f"CAST({_q(label_time)} AS TIMESTAMP) AS event_time"]
    base_cols += [_q(c) for c in carry] + ([_q(label)] if label else [])
    out = [f"l.{_q(k)}" for k in keys] + ["l.event_time"] + [f"l.{_q(c)}" for c in carry]
    out += [f"l.{_q(label)}"] if label else []
    joins = []
    for i, v in enumerate(views):
        a = f"v{i}"
        fresh = f"{a}.event_time >= l.event_time - INTERVAL {int(v.ttl_seconds)} SECOND"
        for f in v.cols.feature_names:
            out.append(f"CASE WHEN {fresh} THEN {a}.{_q(f)} END AS {_q(f)}")
        out.append(f"CASE WHEN {fresh} THEN {a}.event_time END AS {_q(v.name + '__feature_time')}")
        on = " AND ".join(f"l.{_q(k)} = {a}.{_q(k)}" for k in v.cols.entity_names)
        joins.append(f"ASOF LEFT JOIN {v.relation} {a} ON {on} AND l.event_time >= {a}.event_time")
    out.append("CAST(l.event_time AS DATE) AS event_date")
    return (
        f"SELECT {', '.join(out)} FROM (SELECT {', '.join(base_cols)} FROM {labels} WHERE {' AND '.join(where)}) l "
        + " ".join(joins)
    )


def check_against_gold_sql(uc: UseCase) -> list[str]:
    """Problems a view or training set has against the columns its Gold SQL outputs (read with
    sqlglot, without running anything): one line each, for ``mlblueprints check-config``."""
    from mlblueprints.lakehouse.sqlgen import output_columns

    outputs: dict[str, list[str]] = {}
    problems: list[str] = []
    for g in uc.gold:
        try:
            outputs[g] = [*output_columns(uc.gold_sql_path(g).read_text()), "event_date"]
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            problems.append(f"{uc.source_path}: gold.{g}.sql: {exc}")
    for view, v in uc.features.items():
        have = outputs.get(v.source)
        if have is None:
            continue
        for col in [*v.entity, event_time_column(uc, view), *v.features]:
            if col not in have:
                problems.append(
                    f"{uc.source_path}: features.{view}: column {col!r} is not an output of gold.{v.source}"
                )
    for name, t in uc.training_sets.items():
        have = outputs.get(t.labels.source)
        if have is None:
            continue
        wanted = [t.labels.label, t.labels.event_time or uc.gold[t.labels.source].event_time, *t.labels.columns]
        wanted += [k for vname in t.features for k in uc.features[vname].entity]
        for col in dict.fromkeys(wanted):
            if col not in have:
                problems.append(
                    f"{uc.source_path}: training_sets.{name}: column {col!r} is not an output of gold.{t.labels.source}"
                )
    return problems
