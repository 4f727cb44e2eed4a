"""Batch scoring: the registered model predicts every new interval of rows into an Iceberg table."""
