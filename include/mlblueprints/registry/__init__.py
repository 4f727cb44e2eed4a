"""Model registry: MLflow locally (``local``); SageMaker Model Registry requests in ``mlblueprints.aws``."""
