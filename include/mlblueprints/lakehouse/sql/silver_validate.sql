-- Bronze -> Silver, step 1: type every column and give each row a verdict.
--
-- Input  (the source relation): Bronze rows (every declared column as received, as text), with their
--                      lineage columns.
-- Output: one row per input row: the original text values, the typed values (prefixed __v__),
--         event_date, the lineage columns, and _reason_code / _reason_column / _reason_detail,
--         which are NULL when the row is valid. The first failing check, in this order, names
--         the reason: malformed_record, missing_required, invalid_type, out_of_range,
--         unknown_category; _reason_detail lists every failing check.
--
-- Written in DuckDB SQL; on the aws target sqlglot transpiles it to Trino for Athena.
WITH normalized AS (
  SELECT
    b.*,
{%- for c in columns %}
    NULLIF(TRIM(b.{{ c.ident }}), '') AS {{ c.s }}{{ "," if not loop.last }}
{%- endfor %}
  FROM {{ source }} AS b
),
typed AS (
  SELECT
    n.*,
{%- for c in columns %}
    {{ c.cast }} AS {{ c.v }}{{ "," if not loop.last }}
{%- endfor %}
  FROM normalized AS n
),
checked AS (
  SELECT
    t.*,
    CASE
{%- for chk in checks %}
      WHEN {{ chk.cond }} THEN '{{ chk.code }}'
{%- endfor %}
    END AS _reason_code,
    CASE
{%- for chk in checks %}
      WHEN {{ chk.cond }} THEN {{ chk.column_literal }}
{%- endfor %}
    END AS _reason_column,
    CASE
      WHEN _raw_record IS NOT NULL THEN CONCAT('malformed_record: ', COALESCE(_parse_error, 'unparseable record'))
      ELSE NULLIF(CONCAT_WS('; ',
{%- for chk in checks if chk.code != 'malformed_record' %}
        CASE WHEN {{ chk.cond }} THEN '{{ chk.code }}:{{ chk.column }}' END{{ "," if not loop.last }}
{%- endfor %}
      ), '')
    END AS _reason_detail
  FROM typed AS t
)
SELECT
  *,
  CAST({{ event_time_v }} AS DATE) AS event_date
FROM checked
