"""The training job's source dir: uploaded alone to SageMaker, so nothing here imports mlblueprints."""
