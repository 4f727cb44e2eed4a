-- Gold: one row per policy decision. Booleans go through unchanged (features and the label may
-- be boolean); the region becomes one boolean per value, because a model input must be a number.
SELECT
  row_id,
  event_time,
  tenure_years,
  premium,
  age,
  region = 'north' AS region_north,
  region = 'south' AS region_south,
  region = 'east' AS region_east,
  has_claims,
  paperless,
  autopay,
  multi_policy,
  agent_contact,
  price_increase,
  complaint,
  online_quote,
  loyalty_member,
  late_payment,
  renewed
FROM policies
