-- Bronze -> Silver, step 2: resolve duplicates on the primary key.
--
-- Input  (the candidates relation): every stored or new version of every key this run touches (new valid
--                          rows of the landing date, plus the Silver and duplicate rows already
--                          stored for those keys), each physical record once.
-- Output: the same rows with _version_rank (1 = the version Silver keeps) and, for the others,
--         _duplicate_kind ('exact': same content as the kept version; 'key': same key, other
--         content) and the kept version's file and line.
--
-- The latest ingest wins: landing date, then ingest time, then source file, then line number.
-- The order is total, so the result does not depend on the order in which runs happen.
WITH hashed AS (
  SELECT
    c.*,
    MD5(CONCAT_WS(CHR(31),
{%- for c in columns %}
      COALESCE(CAST(c.{{ c.ident }} AS VARCHAR), CHR(0)){{ "," if not loop.last }}
{%- endfor %}
    )) AS _content_hash
  FROM {{ candidates }} AS c
),
ranked AS (
  SELECT
    h.*,
    ROW_NUMBER() OVER (
      PARTITION BY {{ primary_key }}
      ORDER BY _landing_date DESC, _ingest_time DESC, _source_file DESC, _line_number DESC
    ) AS _version_rank,
    FIRST_VALUE(_content_hash) OVER (
      PARTITION BY {{ primary_key }}
      ORDER BY _landing_date DESC, _ingest_time DESC, _source_file DESC, _line_number DESC
    ) AS _kept_hash,
    FIRST_VALUE(_source_file) OVER (
      PARTITION BY {{ primary_key }}
      ORDER BY _landing_date DESC, _ingest_time DESC, _source_file DESC, _line_number DESC
    ) AS _kept_source_file,
    FIRST_VALUE(_line_number) OVER (
      PARTITION BY {{ primary_key }}
      ORDER BY _landing_date DESC, _ingest_time DESC, _source_file DESC, _line_number DESC
    ) AS _kept_line_number
  FROM hashed AS h
)
SELECT
  r.*,
  CASE
    WHEN _version_rank = 1 THEN NULL
    WHEN _content_hash = _kept_hash THEN 'exact'
    ELSE 'key'
  END AS _duplicate_kind
FROM ranked AS r
