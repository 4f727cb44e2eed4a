"""Model training: the SageMaker script-mode training script and its local runner."""

from pathlib import Path

# the training job's source dir (uploaded alone to SageMaker) and its entry point
SCRIPT_DIR = Path(__file__).resolve().parent / "script"
ENTRY_POINT = "train.py"
