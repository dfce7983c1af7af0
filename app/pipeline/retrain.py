"""A retraining job, as the API starts it: the three stages in a scratch folder, then the promotion gate.

    python -m app.pipeline.retrain --job-dir DIR --versions-dir DIR [--upload FILE --upload-name NAME]
                                   [--champion-dir DIR] [--tolerance 0.01] [--params params.yaml]

The stages are the pipeline's own functions (prepare, train, evaluate), pointed at DIR/work instead
of data/ and models/. An upload goes through prepare's checks exactly as data.source would.
The gate scores the champion on this job's test split, the same held-out rows the new model was
scored on: the new model passes when its test metric is at least the champion's minus the
tolerance (plus it, for metrics where lower is better). Either way the new model is kept in the
versions store, as accepted or as a rejected challenger; swapping it in is the API's business.

Writes DIR/result.json; a problem with the data or params exits 1 with the one-line message there.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import traceback
from pathlib import Path
from typing import Any

from app.core.artifacts import MODEL_FILE, ModelMetadata, write_json_atomic
from app.core.versions import RESULT_FILE, VersionRecord, VersionStore, now
from app.pipeline import layout
from app.pipeline.dataset import RawData, read_split
from app.pipeline.errors import PipelineError
from app.pipeline.evaluate import evaluate
from app.pipeline.metrics import ALL_METRICS
from app.pipeline.params import DEFAULT_PARAMS, Params
from app.pipeline.prepare import prepare
from app.pipeline.train import load_schema, split_xy, test_metrics, train


def champion_score(champion_dir: Path, ws: layout.Workspace, metric: str) -> float:
    """The serving champion's `metric` on this job's test split; PipelineError when it cannot be scored."""
    import joblib

    metadata = ModelMetadata.read(champion_dir)
    schema = load_schema(ws.processed_dir)
    payload = (champion_dir / MODEL_FILE).read_bytes()
    if hashlib.sha256(payload).hexdigest() != metadata.sha256:
        raise PipelineError(f"the champion {metadata.version}: sha256 of {MODEL_FILE} does not match")
    if metadata.task != schema.task:
        raise PipelineError(f"the champion {metadata.version} does {metadata.task}, this data {schema.task}")
    theirs = [(f.name, f.type) for f in metadata.features]
    ours = [(f.name, f.type) for f in schema.features]
    if theirs != ours:
        raise PipelineError(
            f"the champion {metadata.version} takes other features "
            f"({', '.join(n for n, _ in theirs)}) than this data ({', '.join(n for n, _ in ours)})"
        )
    model = joblib.load(io.BytesIO(payload))
    test = read_split(ws.processed_dir / layout.TEST_FILE, schema.features, schema.target, schema.task)
    x_test, y_test = split_xy(test, schema)
    scores = test_metrics(model, x_test, y_test, schema)
    if metric not in scores:
        raise PipelineError(f"the champion {metadata.version} cannot be scored on {metric}")
    return scores[metric]


def gate(
    challenger: ModelMetadata, champion_dir: Path | None, ws: layout.Workspace, tolerance: float
) -> dict:
    metric = challenger.metric
    score = challenger.metrics[metric]
    result: dict[str, Any] = {"metric": metric, "challenger": score, "tolerance": tolerance}
    if champion_dir is None:
        return result | {"champion": None, "passed": True, "reason": "no champion was serving"}
    result["champion_version"] = ModelMetadata.read(champion_dir).version
    try:
        incumbent = champion_score(champion_dir, ws, metric)
    except (PipelineError, ValueError) as exc:
        return result | {"champion": None, "passed": False, "reason": f"not comparable: {exc}"}
    higher = ALL_METRICS[metric].greater_is_better
    passed = score >= incumbent - tolerance if higher else score <= incumbent + tolerance
    relation = ">=" if higher else "<="
    bound = round(incumbent - tolerance if higher else incumbent + tolerance, 6)
    verdict = "passes" if passed else "fails"
    reason = (
        f"test {metric} {score:.4f} {verdict} the gate {relation} {bound:.4f} "
        f"(champion {incumbent:.4f} on the same test split, tolerance {tolerance})"
    )
    return result | {"champion": incumbent, "passed": passed, "reason": reason}


def run(args: argparse.Namespace) -> dict[str, Any]:
    job_dir: Path = args.job_dir
    ws = layout.Workspace.under(job_dir / "work")
    params = Params.load(args.params)
    raw = None
    if args.upload is not None:
        raw = RawData(name=args.upload_name or args.upload.name, csv_bytes=args.upload.read_bytes())
    prepare(params, ws, raw)
    metadata = train(params, ws, set_alias=False)
    evaluate(params, ws)
    outcome = gate(metadata, args.champion_dir, ws, args.tolerance)
    store = VersionStore(args.versions_dir)
    record = VersionRecord(
        origin="retrain",
        recorded_at=now(),
        status="accepted" if outcome["passed"] else "rejected",
        job_id=job_dir.name,
        gate=outcome,
    )
    store.add(ws.models_dir, record)
    print(f"retrain: version {metadata.version}: {outcome['reason']}")
    return {
        "version": metadata.version,
        "name": metadata.name,
        "metric": metadata.metric,
        "metrics": metadata.metrics,
        "mlflow_run_id": metadata.mlflow_run_id,
        "registered_model": metadata.registered_model,
        "registered_version": metadata.registered_version,
        "gate": outcome,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m app.pipeline.retrain", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--job-dir", type=Path, required=True)
    parser.add_argument("--versions-dir", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--upload", type=Path)
    parser.add_argument("--upload-name")
    parser.add_argument("--champion-dir", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.0)
    args = parser.parse_args()
    result_file = args.job_dir / RESULT_FILE
    try:
        result = run(args)
    except PipelineError as exc:
        write_json_atomic(result_file, {"error": str(exc)})
        print(f"retrain: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as exc:
        # The log keeps the traceback; the job's answer gets one line.
        traceback.print_exc()
        write_json_atomic(result_file, {"error": f"internal error: {type(exc).__name__}: {exc}"})
        raise SystemExit(2) from None
    write_json_atomic(result_file, result)
    print(json.dumps({"version": result["version"], "passed": result["gate"]["passed"]}))


if __name__ == "__main__":
    main()
