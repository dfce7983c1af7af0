"""Stage 3: score the champion on the held-out test split, for `dvc metrics show` and `dvc plots show`.

    python -m app.pipeline.evaluate [--params params.yaml]

Writes data/evaluation/metrics.json and, under data/evaluation/plots/, the per-row predictions
(confusion data), per-class scores and an image; all of it is also logged to the champion's MLflow run.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from app.core.artifacts import MODEL_FILE, ModelMetadata
from app.core.loading import ModelLoadError, load_pipeline
from app.pipeline import layout, tracking
from app.pipeline.dataset import read_split
from app.pipeline.errors import PipelineError
from app.pipeline.params import Params
from app.pipeline.stage import run_stage
from app.pipeline.train import load_schema, score_split, split_xy

METRICS_FILE = "metrics.json"
PLOTS_DIR = "plots"


def _confusion_image(path: Path, y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = confusion_matrix(y_true, y_pred, labels=classes)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 3, 1.2 * len(classes) + 2.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(
            j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black"
        )
    ax.set_title("Confusion matrix (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _scatter_image(path: Path, y_true: np.ndarray, y_pred: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(y_true, y_pred, s=10, alpha=0.6)
    low, high = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    ax.plot([low, high], [low, high], color="grey", linestyle="--")
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title("Predicted vs actual (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(params: Params, ws: layout.Workspace = layout.PROJECT) -> dict[str, float]:
    schema = load_schema(ws.processed_dir)
    model_path = ws.models_dir / MODEL_FILE
    if not model_path.is_file():
        raise PipelineError(f"{model_path} not found: run the train stage first")
    try:
        metadata, model = load_pipeline(ws.models_dir)
    except ModelLoadError as exc:
        raise PipelineError(f"{ws.models_dir}: {exc}; retrain instead of editing models/") from None

    test = read_split(ws.processed_dir / layout.TEST_FILE, schema.features, schema.target, schema.task)
    x_test, y_test = split_xy(test, schema)
    predicted = model.predict(x_test)
    scores = score_split(model, x_test, y_test, schema)

    with layout.staged_output(ws.evaluation_dir) as out:
        plots = out / PLOTS_DIR
        plots.mkdir()
        pd.DataFrame({"actual": y_test, "predicted": predicted}).to_csv(
            plots / "predictions.csv", index=False
        )
        if schema.task == "classification":
            precision, recall, f1, support = precision_recall_fscore_support(
                y_test, predicted, labels=schema.classes, zero_division=0
            )
            pd.DataFrame(
                {
                    "class": schema.classes,
                    "precision": precision,
                    "recall": recall,
                    "f1": f1,
                    "support": support,
                }
            ).round(6).to_csv(plots / "per_class.csv", index=False)
            _confusion_image(plots / "confusion_matrix.png", y_test, predicted, schema.classes)
        else:
            _scatter_image(plots / "predicted_vs_actual.png", y_test.astype(float), predicted.astype(float))
        (out / METRICS_FILE).write_text(json.dumps(scores, indent=2, sort_keys=True) + "\n")
        _log_to_champion_run(metadata, scores, plots, params)

    print(f"evaluate: champion {metadata.name} v{metadata.version} on {len(y_test)} test rows")
    for name, value in sorted(scores.items()):
        print(f"evaluate:   {name:<16} {value:.4f}")
    print(f"evaluate: wrote {ws.evaluation_dir / METRICS_FILE} and {ws.evaluation_dir / PLOTS_DIR}/")
    return scores


def _log_to_champion_run(
    metadata: ModelMetadata, scores: dict[str, float], plots: Path, params: Params
) -> None:
    if metadata.mlflow_run_id is None:
        return
    import mlflow

    tracking.configure(params.train.experiment)
    with warnings.catch_warnings(), mlflow.start_run(run_id=metadata.mlflow_run_id):
        warnings.simplefilter("ignore")
        mlflow.log_metrics({f"eval_{k}": v for k, v in scores.items()})
        mlflow.log_artifacts(str(plots), artifact_path="evaluation")


def main() -> None:
    run_stage("evaluate", __doc__ or "", evaluate)


if __name__ == "__main__":
    main()
