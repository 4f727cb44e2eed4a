"""SQL of the lakehouse transforms: rendered from the templates in ``sql/`` and the use case.

The transforms are written once, in DuckDB SQL. The local target runs them on DuckDB; the aws
target transpiles them with sqlglot to Trino and runs them on Athena. Everything here is pure
string work (jinja2 + sqlglot): no engine, no I/O beyond reading the templates.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jinja2
import sqlglot
import sqlglot.errors
from sqlglot import exp
from sqlglot.tokens import TokenType

from mlblueprints.config import Column, Dataset, UseCase
from mlblueprints.errors import PermanentError

SQL_DIR = Path(__file__).with_name("sql")

# Columns every Bronze row carries besides the declared ones (all text in Bronze).
BRONZE_META = (
    "_extra",
    "_raw_record",
    "_parse_error",
    "_source_file",
    "_file_checksum",
    "_line_number",
    "_ingest_run_id",
    "_ingest_time",
    "_landing_date",
)
# Lineage columns that follow a row from Bronze into Silver, quarantine and duplicates.
LINEAGE = (
    "_source_file",
    "_file_checksum",
    "_line_number",
    "_ingest_run_id",
    "_ingest_time",
    "_landing_date",
)
REASON_CODES = (
    "malformed_record",
    "missing_required",
    "invalid_type",
    "implausible_event_time",
    "out_of_range",
    "unknown_category",
)


def ident(name: str) -> str:
    """A quoted SQL identifier (same quoting in DuckDB and Trino)."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def sql_type(col_type: str) -> str:
    """DuckDB SQL type of a config column type."""
    return {
        "string": "VARCHAR",
        "boolean": "BOOLEAN",
        "int": "INTEGER",
        "bigint": "BIGINT",
        "double": "DOUBLE",
        "date": "DATE",
        "timestamp": "TIMESTAMP",
    }.get(col_type) or col_type.upper()


_INT_RE = "^[+-]?[0-9]+([.]0*)?$"  # 45.0 is 45 (pandas writes an int column with gaps so)
_DOUBLE_RE = "^[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][+-]?[0-9]+)?$"
_DOUBLE_MAX = "1.7976931348623157e308"


def _decimal_re(scale: int) -> str:
    """Digits with at most ``scale`` digits after the point (more only as trailing zeros)."""
    if scale == 0:
        return "^[+-]?([0-9]+([.]0*)?|[.]0+)$"
    return f"^[+-]?([0-9]+([.][0-9]{{0,{scale}}}0*)?|[.][0-9]{{1,{scale}}}0*)$"


def cast_expr(col: Column, text: str) -> str:
    """Expression that types the trimmed text ``text`` of a column; NULL unless the text is
    exactly a value of the type: an integer is digits, a point only with zeros after it (``45.0``; no exponent, hex or '_'), a
    decimal has no more digits after the point than its scale (``12.505`` is not a
    ``decimal(12,2)``: it is not rounded), a double is a finite decimal number."""
    t = col.type
    if t == "string":
        return text
    if t == "boolean":
        return (
            f"CASE WHEN LOWER({text}) IN ('true','t','1','yes','y') THEN TRUE "
            f"WHEN LOWER({text}) IN ('false','f','0','no','n') THEN FALSE END"
        )
    if t in ("timestamp", "date") and col.format:
        parsed = f"TRY(STRPTIME({text}, {literal(col.format)}))"
        return parsed if t == "timestamp" else f"CAST({parsed} AS DATE)"
    if t in ("int", "bigint"):
        return f"CASE WHEN REGEXP_MATCHES({text}, {literal(_INT_RE)}) THEN TRY_CAST({text} AS {sql_type(t)}) END"
    if t == "double":
        value = f"TRY_CAST({text} AS DOUBLE)"
        return (
            f"CASE WHEN REGEXP_MATCHES({text}, {literal(_DOUBLE_RE)}) AND {value} BETWEEN -{_DOUBLE_MAX} "
            f"AND {_DOUBLE_MAX} THEN {value} END"
        )
    if t.startswith("decimal"):
        scale = int(t[t.index(",") + 1 : -1])
        return f"CASE WHEN REGEXP_MATCHES({text}, {literal(_decimal_re(scale))}) THEN TRY_CAST({text} AS {sql_type(t)}) END"
    return f"TRY_CAST({text} AS {sql_type(t)})"


@dataclass(frozen=True)
class _Col:
    name: str
    ident: str
    s: str  # trimmed text, NULL when empty
    v: str  # typed value
    cast: str


@dataclass(frozen=True)
class _Check:
    code: str
    column: str
    cond: str

    @property
    def column_literal(self) -> str:
        return literal(self.column) if self.column else "NULL"


def _cols(ds: Dataset) -> list[_Col]:
    out = []
    for c in ds.columns:
        s = ident(f"__s__{c.name}")
        out.append(_Col(c.name, ident(c.name), s, ident(f"__v__{c.name}"), cast_expr(c, s)))
    return out


def _checks(ds: Dataset) -> list[_Check]:
    cols = {c.name: c for c in _cols(ds)}
    checks = [_Check("malformed_record", "", "_raw_record IS NOT NULL")]
    for c in ds.columns:
        if c.required:
            checks.append(_Check("missing_required", c.name, f"{cols[c.name].s} IS NULL"))
    for c in ds.columns:
        if c.type != "string":
            k = cols[c.name]
            checks.append(_Check("invalid_type", c.name, f"{k.s} IS NOT NULL AND {k.v} IS NULL"))
    # an event time outside the data set's window, relative to the landing date of its file
    w = ds.event_time_window
    et = cols[ds.event_time].v
    checks.append(
        _Check(
            "implausible_event_time",
            ds.event_time,
            f"({et} < TIMESTAMP {literal(w.earliest.isoformat() + ' 00:00:00')} OR {et} >= "
            f"CAST(_landing_date AS TIMESTAMP) + INTERVAL '{w.max_days_after_landing + 1}' DAY)",
        )
    )
    for c in ds.columns:
        k = cols[c.name]
        if c.min is not None:
            checks.append(_Check("out_of_range", c.name, f"{k.v} < {literal(c.min)}"))
        if c.max is not None:
            checks.append(_Check("out_of_range", c.name, f"{k.v} > {literal(c.max)}"))
    for c in ds.columns:
        if c.allowed:
            k = cols[c.name]
            values = ", ".join(literal(v) for v in c.allowed)
            checks.append(_Check("unknown_category", c.name, f"{k.v} NOT IN ({values})"))
    return checks


@cache
def _template(name: str) -> jinja2.Template:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string((SQL_DIR / name).read_text())


def silver_validate_sql(ds: Dataset, source: str) -> str:
    """Type and check Bronze rows of ``source`` (see sql/silver_validate.sql)."""
    return _template("silver_validate.sql").render(
        source=source,
        columns=_cols(ds),
        checks=_checks(ds),
        event_time_v=ident(f"__v__{ds.event_time}"),
    )


def silver_resolve_sql(ds: Dataset, candidates: str) -> str:
    """Rank every version of each key (see sql/silver_resolve.sql)."""
    return _template("silver_resolve.sql").render(
        candidates=candidates,
        columns=_cols(ds),
        primary_key=", ".join(ident(k) for k in ds.primary_key),
    )


def typed_projection(ds: Dataset, prefix: str = "") -> str:
    """SELECT list of the typed Silver columns out of a validated relation."""
    cols = [f"{prefix}{ident(f'__v__{c.name}')} AS {ident(c.name)}" for c in ds.columns]
    return ", ".join(cols + ["event_date"] + [prefix + ident(m) for m in LINEAGE])


def silver_columns(ds: Dataset) -> list[str]:
    return [c.name for c in ds.columns] + ["event_date", *LINEAGE]


def quarantine_columns(ds: Dataset) -> list[str]:
    return [c.name for c in ds.columns] + [
        "_extra",
        "_raw_record",
        "_parse_error",
        *LINEAGE,
        "_reason_code",
        "_reason_column",
        "_reason_detail",
    ]


def duplicate_columns(ds: Dataset) -> list[str]:
    return silver_columns(ds) + ["_duplicate_kind", "_kept_source_file", "_kept_line_number"]


# ---------------------------------------------------------------- dialects


def to_trino(sql: str) -> str:
    """Transpile DuckDB SQL to Trino (Athena engine v3). Raises on SQL sqlglot cannot parse."""
    out = sqlglot.transpile(sql, read="duckdb", write="trino", pretty=True)
    if len(out) != 1:
        raise ValueError(f"expected one statement, got {len(out)}")
    return out[0]


def validate_trino(sql: str) -> None:
    """Raise ``sqlglot.errors.ParseError`` unless ``sql`` parses as Trino."""
    sqlglot.parse_one(sql, read="trino", error_level=sqlglot.ErrorLevel.RAISE)


def gold_with_inputs(sql: str, inputs: dict[str, str], dialect: str = "duckdb") -> str:
    """Prefix a Gold query with CTEs that bind its input names to relations.

    ``inputs`` maps the name the Gold SQL uses (a data set) to a SELECT that produces it (the
    Silver table restricted to the dates needed). The query's own CTEs are kept after ours.
    """
    tree = sqlglot.parse_one(sql, read="duckdb")
    if not isinstance(tree, exp.Query):
        raise ValueError("the Gold SQL must be a single SELECT query")
    ours = [
        exp.CTE(this=sqlglot.parse_one(select, read="duckdb"), alias=exp.TableAlias(this=exp.to_identifier(name)))
        for name, select in inputs.items()
    ]
    existing = tree.args.get("with_")
    if existing is not None:
        clash = {c.alias for c in existing.expressions} & set(inputs)
        if clash:
            raise ValueError(f"the Gold SQL defines CTEs named like its inputs: {sorted(clash)}")
        existing.set("expressions", ours + list(existing.expressions))
    else:
        tree.set("with_", exp.With(expressions=ours))
    return tree.sql(dialect=dialect, pretty=True)


def output_columns(sql: str) -> list[str]:
    """Names of the columns a SELECT produces (every projection must be named)."""
    tree, _ = parse_gold_sql(sql)
    names = []
    for proj in tree.selects:
        if isinstance(proj, exp.Star):
            raise ValueError("the Gold SQL must name its columns (no SELECT *)")
        if not proj.alias_or_name:
            raise ValueError(f"unnamed column in the Gold SQL: {proj.sql()}")
        names.append(proj.alias_or_name)
    return names


# ---------------------------------------------------------------- use-case SQL


class GoldSqlError(ValueError, PermanentError):
    """A use case's Gold SQL that is not one SELECT over its inputs (configuration: the same
    SQL fails the same way, a retry cannot fix it)."""


# statements and clauses a SELECT over the inputs never needs
_FORBIDDEN_NODES = tuple(
    getattr(exp, n)
    for n in (
        "Insert",
        "Delete",
        "Update",
        "Merge",
        "Create",
        "Drop",
        "Alter",
        "Command",
        "Copy",
        "Attach",
        "Detach",
        "Set",
        "Pragma",
        "Use",
        "Into",
        "LoadData",
        "Export",
    )
    if hasattr(exp, n)
)
# functions that read files, the network, the environment or the engine's state; the engine's
# sandbox refuses them too (enable_external_access = false), this names them in one line
_FORBIDDEN_FUNCTIONS = frozenset(
    {
        "read_text",
        "read_blob",
        "read_csv",
        "read_csv_auto",
        "read_json",
        "read_json_auto",
        "read_json_objects",
        "read_json_objects_auto",
        "read_ndjson",
        "read_ndjson_auto",
        "read_ndjson_objects",
        "read_parquet",
        "parquet_scan",
        "parquet_metadata",
        "parquet_schema",
        "parquet_file_metadata",
        "parquet_kv_metadata",
        "parquet_bloom_probe",
        "read_xlsx",
        "glob",
        "getenv",
        "query",
        "query_table",
        "sniff_csv",
        "iceberg_scan",
        "iceberg_metadata",
        "iceberg_snapshots",
        "delta_scan",
        "sqlite_scan",
        "sqlite_attach",
        "postgres_scan",
        "postgres_attach",
        "mysql_scan",
        "current_setting",
        "getvariable",
        "which_secret",
        "load_aws_credentials",
        "st_read",
        "http_get",
        "http_post",
        "checkpoint",
        "force_checkpoint",
        "export_database",
        "import_database",
    }
)
_FORBIDDEN_PREFIXES = ("duckdb_", "pragma_", "read_", "parquet_", "iceberg_", "http")


def _function_name(f: exp.Func) -> str:
    return (f.name if isinstance(f, exp.Anonymous) else f.sql_name()).lower()


def parse_gold_sql(sql: str, inputs: list[str] | None = None) -> tuple[exp.Query, str]:
    """Check a use case's Gold SQL: exactly one SELECT query (WITH, UNION, ... allowed) that
    reads only ``inputs`` (when given) and its own CTEs, with no file, network, environment or
    engine-state function. Returns its tree and its text without trailing comments and
    semicolons (so it can be wrapped). Raises :class:`GoldSqlError` with one readable line.
    """
    try:
        trees = [t for t in sqlglot.parse(sql, read="duckdb") if t is not None and not isinstance(t, exp.Semicolon)]
    except sqlglot.errors.SqlglotError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GoldSqlError(f"not valid SQL: {first}") from None
    if not trees:
        raise GoldSqlError("holds no statement")
    if len(trees) > 1:
        raise GoldSqlError(f"holds {len(trees)} statements; write exactly one SELECT")
    tree = trees[0]
    if not isinstance(tree, exp.Query):
        kind = tree.key.upper() if tree.key else type(tree).__name__.upper()
        raise GoldSqlError(f"is a {kind} statement; the Gold SQL must be one SELECT query")
    bad = tree.find(*_FORBIDDEN_NODES) if _FORBIDDEN_NODES else None
    if bad is not None:
        raise GoldSqlError(f"contains {bad.key.upper()}; the Gold SQL must be one SELECT query")
    for f in tree.find_all(exp.Func):
        name = _function_name(f)
        if name in _FORBIDDEN_FUNCTIONS or name.startswith(_FORBIDDEN_PREFIXES):
            raise GoldSqlError(
                f"calls {name}(): the Gold SQL may read only its input tables, not files, the network, "
                "the environment or settings"
            )
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    allowed = {i.lower() for i in inputs} if inputs is not None else None
    for t in tree.find_all(exp.Table):
        if not isinstance(t.this, exp.Identifier):
            what = _function_name(t.this) + "()" if isinstance(t.this, exp.Func) else t.this.sql(dialect="duckdb")
            raise GoldSqlError(f"reads from {what}: the Gold SQL may read only its input tables")
        if t.args.get("db") or t.args.get("catalog"):
            raise GoldSqlError(f"reads {t.sql(dialect='duckdb')}: name input tables without a schema or catalog")
        name = t.name.lower()
        if name in ctes:
            continue
        if allowed is not None and name not in allowed:
            known = ", ".join(sorted(inputs or [])) or "none"
            raise GoldSqlError(f"reads {t.name!r}, which is not one of its inputs ({known}) or a CTE")
    return tree, _statement_text(sql)


def _statement_text(sql: str) -> str:
    """``sql`` up to the end of its last token: trailing comments and semicolons removed."""
    tokens = [t for t in sqlglot.Dialect.get_or_raise("duckdb").tokenize(sql) if t.token_type != TokenType.SEMICOLON]
    return sql[: tokens[-1].end + 1] if tokens else sql


def gold_sql_problems(uc: UseCase) -> list[str]:
    """Every Gold SQL of a use case checked (no engine run): one line per problem."""
    problems = []
    for name, g in uc.gold.items():
        path = uc.gold_sql_path(name)
        try:
            parse_gold_sql(path.read_text(encoding="utf-8"), list(g.inputs))
        except GoldSqlError as exc:
            problems.append(f"{uc.source_path}: gold.{name}.sql: {path.name} {exc}")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{uc.source_path}: gold.{name}.sql: cannot read {path}: {exc}")
    return problems
