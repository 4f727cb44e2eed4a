-- Gold: one row per claim, with the policy's attributes and what its policy and its region saw
-- before it.
--
-- `claims` and `policies` are the Silver tables of those data sets (claims restricted by the
-- engine to the event dates being recomputed plus `lookback_days` of history; policies is
-- unpartitioned reference data). Windows are RANGE ... PRECEDING over event_time and exclude
-- the claim itself (1 MICROSECOND PRECEDING): a feature is what was known when the claim was
-- filed, never its own cost.
WITH c AS (
  SELECT c.*, p.region, p.vehicle_age, p.driver_age, p.annual_mileage, p.premium, p.garaged
  FROM claims AS c
  JOIN policies AS p ON p.policy_id = c.policy_id
)
SELECT
  claim_id,
  policy_id,
  region,
  event_time,
  claim_type,
  CASE WHEN claim_type = 'collision' THEN 1 ELSE 0 END AS is_collision,
  CASE WHEN claim_type = 'theft' THEN 1 ELSE 0 END AS is_theft,
  CASE WHEN claim_type = 'weather' THEN 1 ELSE 0 END AS is_weather,
  CASE WHEN claim_type = 'glass' THEN 1 ELSE 0 END AS is_glass,
  report_delay_days,
  vehicle_age,
  driver_age,
  annual_mileage,
  premium,
  CASE WHEN garaged THEN 1 ELSE 0 END AS garaged_flag,
  COUNT(*) OVER (
    PARTITION BY policy_id ORDER BY event_time
    RANGE BETWEEN INTERVAL 30 DAY PRECEDING AND INTERVAL 1 MICROSECOND PRECEDING) AS policy_claims_30d,
  COUNT(*) OVER (
    PARTITION BY region ORDER BY event_time
    RANGE BETWEEN INTERVAL 24 HOUR PRECEDING AND INTERVAL 1 MICROSECOND PRECEDING) AS region_claims_24h,
  COALESCE(AVG(claim_cost) OVER (
    PARTITION BY region ORDER BY event_time
    RANGE BETWEEN INTERVAL 7 DAY PRECEDING AND INTERVAL 1 MICROSECOND PRECEDING), 0.0) AS region_avg_cost_7d,
  claim_cost,
  severity,
  event_date
FROM c
