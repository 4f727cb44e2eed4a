"""Pure builders of AWS requests, shared by the Airflow operators and the state machines.

Nothing here calls AWS or imports boto3: each function returns the request parameters (a dict
shaped like the service API) so tests can validate them against botocore's service model.
"""
