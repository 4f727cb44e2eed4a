"""Drift monitoring: Evidently-equivalent drift tests against a per-version reference sketch, the alert policy, and the monitoring table."""
