"""An imported model's answers scored against the sample's ground truth, with the pipeline's metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd

from app.importing.schema import ModelSchema


def score_answers(schema: ModelSchema, answers: np.ndarray, truth: pd.Series) -> dict[str, float]:
    """Every metric of the task: probabilities (rows x classes) or values, against `truth`."""
    from app.pipeline.scoring import classification_metrics, regression_metrics

    if schema.task == "regression":
        return regression_metrics(pd.to_numeric(truth, errors="coerce").to_numpy(dtype=np.float64), answers)
    predicted = np.array(schema.classes, dtype=object)[answers.argmax(axis=1)]
    return classification_metrics(truth.astype(str).to_numpy(), predicted, answers, schema.classes)
