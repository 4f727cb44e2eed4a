-- Gold: one row per transaction with per-card and per-merchant rolling aggregates.
--
-- `transactions` is the Silver table of the data set of that name, restricted by the engine to
-- the event dates being (re)computed plus `lookback_days` of history before them.
--
-- Every window is RANGE ... PRECEDING AND CURRENT ROW over event_time (or, for the previous
-- transaction, bounded by the same lookback): a feature of a
-- transaction aggregates the transactions of the same card (or merchant) whose event time is in
-- [event_time - window, event_time], the transaction itself included. Nothing after its event
-- time is ever used, so the values are what a real-time system could have computed when the
-- transaction happened.
--
-- Written in DuckDB SQL; on the aws target sqlglot transpiles it to Trino for Athena.
SELECT
  transaction_id,
  event_time,
  card_id,
  customer_id,
  merchant_id,
  CAST(amount AS DOUBLE) AS amount,
  currency,
  channel,
  merchant_category,
  country,
  is_fraud,
  age_band,
  region,
  HOUR(event_time) AS event_hour,
  COUNT(*) OVER (
    PARTITION BY card_id ORDER BY event_time
    RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW) AS card_txn_count_1h,
  COUNT(*) OVER (
    PARTITION BY card_id ORDER BY event_time
    RANGE BETWEEN INTERVAL 24 HOUR PRECEDING AND CURRENT ROW) AS card_txn_count_24h,
  CAST(SUM(amount) OVER (
    PARTITION BY card_id ORDER BY event_time
    RANGE BETWEEN INTERVAL 24 HOUR PRECEDING AND CURRENT ROW) AS DOUBLE) AS card_amount_sum_24h,
  CAST(AVG(amount) OVER (
    PARTITION BY card_id ORDER BY event_time
    RANGE BETWEEN INTERVAL 7 DAY PRECEDING AND CURRENT ROW) AS DOUBLE) AS card_amount_avg_7d,
  CAST(MAX(amount) OVER (
    PARTITION BY card_id ORDER BY event_time
    RANGE BETWEEN INTERVAL 7 DAY PRECEDING AND CURRENT ROW) AS DOUBLE) AS card_amount_max_7d,
  COUNT(*) OVER (
    PARTITION BY card_id ORDER BY event_time
    RANGE BETWEEN INTERVAL 7 DAY PRECEDING AND CURRENT ROW) AS card_txn_count_7d,
  COUNT(*) OVER (
    PARTITION BY merchant_id ORDER BY event_time
    RANGE BETWEEN INTERVAL 1 HOUR PRECEDING AND CURRENT ROW) AS merchant_txn_count_1h,
  COUNT(*) OVER (
    PARTITION BY merchant_id ORDER BY event_time
    RANGE BETWEEN INTERVAL 24 HOUR PRECEDING AND CURRENT ROW) AS merchant_txn_count_24h,
  CAST(AVG(amount) OVER (
    PARTITION BY merchant_id ORDER BY event_time
    RANGE BETWEEN INTERVAL 7 DAY PRECEDING AND CURRENT ROW) AS DOUBLE) AS merchant_amount_avg_7d,
  CAST(amount AS DOUBLE) / CAST(AVG(amount) OVER (
    PARTITION BY card_id ORDER BY event_time
    RANGE BETWEEN INTERVAL 7 DAY PRECEDING AND CURRENT ROW) AS DOUBLE) AS amount_to_card_avg_7d,
  -- the card's previous transaction, if within the 7-day lookback (NULL otherwise): a feature
  -- never depends on history older than lookback_days, so any recompute gives the same value
  CASE WHEN LAG(event_time) OVER (PARTITION BY card_id ORDER BY event_time, transaction_id)
              >= event_time - INTERVAL 7 DAY
    THEN DATE_DIFF('second',
      LAG(event_time) OVER (PARTITION BY card_id ORDER BY event_time, transaction_id),
      event_time)
  END AS seconds_since_prev_card_txn,
  event_date
FROM transactions
