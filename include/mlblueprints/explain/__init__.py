"""Explainability and bias: SHAP attributions and SageMaker Clarify's bias metrics of a model,
in Clarify's own output layout (``core``), and the fairness gate."""
