"""A retraining job, as the worker starts it: the three stages in a scratch folder, then the promotion gate.

    python -m app.pipeline.retrain JOB_DIR        # reads JOB_DIR/request.json (app/core/messages.py)

The stages are the pipeline's own functions (prepare, train, evaluate), pointed at DIR/work instead
of data/ and models/. An upload goes through prepare's checks exactly as data.source would, and
so do the labelled predictions a job with feedback adds to either (app/pipeline/feedback.py).
The gate scores the champion on this job's test split, the same held-out rows the new model was
scored on: the new model passes when its test metric is at least the champion's minus the
tolerance (plus it, for metrics where lower is better). Either way the new model is published to
the model store, as accepted or as a rejected challenger; serving it is the worker's business.

Writes JOB_DIR/result.json (a RetrainResult); a problem with the data or params exits 1 with the
one-line message there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

from app.adapters.model_store import ModelStore
from app.core.artifacts import ModelMetadata, write_json_atomic
from app.core.loading import ModelLoadError, load_pipeline
from app.core.messages import (
    REQUEST_FILE,
    RESULT_FILE,
    FeedbackOutcome,
    GateOutcome,
    RetrainFailed,
    RetrainRequest,
    RetrainSucceeded,
)
from app.core.versions import CacheFull, StoreUnavailable, VersionRecord, now
from app.pipeline import layout
from app.pipeline.dataset import RawData, load_source, read_split, target_name
from app.pipeline.errors import PipelineError
from app.pipeline.evaluate import evaluate
from app.pipeline.feedback import add_feedback
from app.pipeline.gate import not_comparable, promotion_gate
from app.pipeline.params import Params
from app.pipeline.prepare import prepare
from app.pipeline.scoring import ALL_METRICS
from app.pipeline.train import load_schema, score_split, split_xy, train


def champion_score(champion_dir: Path, ws: layout.Workspace, metric: str) -> float:
    """The serving champion's `metric` on this job's test split; PipelineError when it cannot be scored."""
    metadata = ModelMetadata.read(champion_dir)
    schema = load_schema(ws.processed_dir)
    if metadata.task != schema.task:
        raise PipelineError(f"the champion {metadata.version} does {metadata.task}, this data {schema.task}")
    theirs = [(f.name, f.type) for f in metadata.features]
    ours = [(f.name, f.type) for f in schema.features]
    if theirs != ours:
        raise PipelineError(
            f"the champion {metadata.version} takes other features "
            f"({', '.join(n for n, _ in theirs)}) than this data ({', '.join(n for n, _ in ours)})"
        )
    try:
        _, model = load_pipeline(champion_dir, metadata)
    except ModelLoadError as exc:
        raise PipelineError(f"the champion {metadata.version}: {exc}") from None
    test = read_split(ws.processed_dir / layout.TEST_FILE, schema.features, schema.target, schema.task)
    x_test, y_test = split_xy(test, schema)
    scores = score_split(model, x_test, y_test, schema)
    if metric not in scores:
        raise PipelineError(f"the champion {metadata.version} cannot be scored on {metric}")
    return scores[metric]


def gate(
    challenger: ModelMetadata, champion_dir: Path | None, ws: layout.Workspace, tolerance: float
) -> GateOutcome:
    metric = challenger.metric
    score = challenger.metrics[metric]
    higher = ALL_METRICS[metric].greater_is_better
    if champion_dir is None:
        return promotion_gate(metric, score, None, tolerance, higher)
    version = ModelMetadata.read(champion_dir).version
    try:
        incumbent = champion_score(champion_dir, ws, metric)
    except (PipelineError, ValueError) as exc:
        return not_comparable(metric, score, tolerance, version, str(exc))
    return promotion_gate(metric, score, incumbent, tolerance, higher, champion_version=version)


def run(job_dir: Path, request: RetrainRequest) -> RetrainSucceeded:
    ws = layout.Workspace.under(job_dir / "work")
    params = Params.load(request.params)
    if request.upload is not None:
        data = RawData(name=request.upload_name or request.upload.name, csv_bytes=request.upload.read_bytes())
    else:
        data = load_source(params.data)
    raw, feedback = data, None
    if request.feedback is not None:
        raw, feedback = add_feedback(data, request.feedback, params.data)
        print(f"retrain: {_feedback_summary(feedback)}")
        # prepare reads the data under its new name: the target it would have found by the old one.
        target = target_name(data, params.data)
        params = params.model_copy(update={"data": params.data.model_copy(update={"target": target})})
    prepare(params, ws, raw)
    metadata = train(params, ws, set_alias=False)
    evaluate(params, ws)
    outcome = gate(metadata, request.champion_dir, ws, request.tolerance)
    store = ModelStore.from_url(request.model_store_url, request.cache_dir)
    record = VersionRecord(
        origin="retrain",
        recorded_at=now(),
        status="accepted" if outcome.passed else "rejected",
        job_id=job_dir.name,
        gate=outcome,
    )
    store.publish(ws.models_dir, record)
    print(f"retrain: version {metadata.version}: {outcome.reason}")
    return RetrainSucceeded(
        version=metadata.version,
        name=metadata.name,
        data=data.name,
        metric=metadata.metric,
        metrics=metadata.metrics,
        mlflow_run_id=metadata.mlflow_run_id,
        registered_model=metadata.registered_model,
        registered_version=metadata.registered_version,
        gate=outcome,
        feedback=feedback,
    )


def _feedback_summary(feedback: FeedbackOutcome) -> str:
    summary = f"{feedback.rows} labelled predictions added to the data"
    if feedback.refused:
        summary += f", {feedback.refused} left out ({feedback.reason})"
    return summary


# Set by the worker that starts this job: a job whose worker died (kill -9) must not train on unseen.
PARENT_PID = "PREDICTOR_PARENT_PID"


def _exit_with_parent() -> None:
    """A daemon thread that ends this process once the worker that started it is gone (its lease is
    lost with it: the job is failed, and what this process would publish is nobody's)."""
    parent = os.environ.get(PARENT_PID)
    if parent is None:
        return

    def watch() -> None:
        while str(os.getppid()) == parent:
            time.sleep(1)
        print("retrain: the worker that started this job is gone: stopping", file=sys.stderr, flush=True)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main() -> None:
    _exit_with_parent()
    parser = argparse.ArgumentParser(
        prog="python -m app.pipeline.retrain", description=__doc__.split("\n")[0]
    )
    parser.add_argument("job_dir", type=Path, help=f"the job's folder, holding {REQUEST_FILE}")
    args = parser.parse_args()
    result_file = args.job_dir / RESULT_FILE
    result: RetrainSucceeded | RetrainFailed
    try:
        request = RetrainRequest.model_validate_json((args.job_dir / REQUEST_FILE).read_text())
        result = run(args.job_dir, request)
    except (PipelineError, StoreUnavailable, CacheFull) as exc:
        write_json_atomic(result_file, RetrainFailed(error=str(exc)))
        print(f"retrain: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as exc:
        # The log keeps the traceback; the job's answer gets one line.
        traceback.print_exc()
        write_json_atomic(result_file, RetrainFailed(error=f"internal error: {type(exc).__name__}: {exc}"))
        raise SystemExit(2) from None
    write_json_atomic(result_file, result)
    print(json.dumps({"version": result.version, "passed": result.gate.passed}))


if __name__ == "__main__":
    main()
