"""`models import`, the whole way: read, schema, compile, parity, then a model folder published.

Each step that refuses raises Refused naming itself, before anything is written to the model store.
What gets published is a model folder like train's, without the pickle: model.onnx (the compiled
graph, carrying its probe rows and answers so every replica checks onnxruntime again at load),
model.json (the schema, the source with its sha256 and library versions, the parity figures, the
metrics on the sample when it has the target), and reference_profile.json when the sample can make
one (drift is off for the version otherwise, and /model-info's drift says so). The promotion gate
and --serve are `models publish`'s; the MLflow registry gets the compiled graph with its lineage.
"""

from __future__ import annotations

import json
import platform
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app.adapters.onnx_model import PROBE_KEY, SPEC_KEY, OnnxModel, OnnxSpec, encode_rows
from app.core.artifacts import (
    METADATA_FILE,
    MISSING_CATEGORY,
    ONNX_FILE,
    REFERENCE_PROFILE_FILE,
    ModelFile,
    ModelMetadata,
    Parity,
    sha256_of,
    write_json_atomic,
)
from app.core.config import Settings
from app.core.messages import ImportOutcome
from app.core.versions import now
from app.importing.compile import compile_model, native_answers
from app.importing.errors import Refused
from app.importing.parity import DEFAULT_TOLERANCE, check_parity, matrix_of, parity_rows
from app.importing.publishing import publish_import
from app.importing.request import ImportRequest
from app.importing.schema import ModelSchema, infer_schema
from app.importing.scoring import score_answers
from app.importing.sources import Loaded, read_file, read_source

PROBE_ROWS = 96
PROFILE_BINS = 10


def import_model(
    settings: Settings, request: ImportRequest, say: Callable[[str], None] = print
) -> ImportOutcome:
    """Run the import, saying each step's result as it goes; the outcome says what was published,
    or which step refused and why (nothing published then)."""
    lines: list[str] = []

    def said(line: str) -> None:
        lines.append(line)
        say(line)

    try:
        outcome = _run(settings, request, said)
    except Refused as exc:
        return ImportOutcome(status="refused", step=exc.step, error=exc.message, lines=lines)
    return outcome.model_copy(update={"lines": lines})


def _run(settings: Settings, request: ImportRequest, say: Callable[[str], None]) -> ImportOutcome:
    if request.tolerance is not None and request.tolerance < 0:
        raise Refused("parity", "--tolerance must be 0 or more")
    if request.upload_name is not None:
        loaded = read_file(Path(request.source), request.upload_name, request.allow_code)
    else:
        loaded = read_source(request.source, request.allow_code)
    say(f"source: {loaded.source.uri} ({loaded.flavor}, sha256 {loaded.source.sha256[:12]}...)")
    sample = read_sample(request.sample, request.target, request.sample_name)
    schema = infer_schema(loaded, sample, request.target)
    say(
        f"schema: {schema.task}, {len(schema.features)} columns ({_column_summary(schema)})"
        + (f", classes {', '.join(schema.classes)}" if schema.classes else "")
    )
    for note in schema.notes:
        say(f"schema: {note}")
    graph, compiled = compiled_model(loaded, schema)
    layout = "one matrix" if compiled.spec.numeric else "one input per column"
    say(f"compile: {len(graph.graph.node)} ONNX nodes, {layout} in")
    rows, rows_from = parity_rows(schema, sample, loaded.example)
    tolerance = DEFAULT_TOLERANCE if request.tolerance is None else request.tolerance
    parity = check_parity(compiled, native_answers(loaded, schema), rows, rows_from, schema, tolerance)
    where = f"{rows_from} rows"
    if rows_from == "input_example":
        where = f"rows ({len(loaded.example)} from MLflow's input example, the rest drawn from the schema)"
    say(
        f"parity: {parity.rows} {where}, labels identical, largest difference "
        f"{parity.max_difference:.2g} (tolerance {tolerance:g})"
    )
    probe = _probe_rows(rows[:PROBE_ROWS], schema)
    with np.errstate(all="ignore"):
        _set_metadata(graph, PROBE_KEY, json.dumps(encode_rows(probe, compiled(probe))))
    name = _slug(request.name or loaded.name)
    metric, metrics = _sample_metrics(compiled, schema, sample, request.target)
    if metrics:
        say(f"metrics on the sample: {', '.join(f'{k} {v:.4f}' for k, v in metrics.items())}")
    with tempfile.TemporaryDirectory(prefix="import-") as scratch:
        folder = Path(scratch)
        metadata = _write_folder(
            folder, graph, loaded, schema, parity, name, metric, metrics, sample, request
        )
        if not (folder / REFERENCE_PROFILE_FILE).exists():
            say("drift: off for this version (the sample with its --target makes the reference profile)")
        published = publish_import(settings, folder, compiled, schema, sample, request, say)
    return ImportOutcome(
        status="imported",
        version=published.metadata.version,
        name=metadata.name,
        task=metadata.task,
        flavor=loaded.flavor,
        parity=parity,
        gate=published.gate,
        served=published.served,
    )


def compiled_model(loaded: Loaded, schema: ModelSchema) -> tuple[Any, OnnxModel]:
    """The compiled graph (its spec recorded in it) and the onnxruntime session serving would run."""
    graph, numeric = compile_model(loaded, schema)
    spec = OnnxSpec(task=schema.task, classes=schema.classes, features=schema.names, numeric=numeric)
    _set_metadata(graph, SPEC_KEY, spec.model_dump_json())
    try:
        return graph, OnnxModel.from_bytes(graph.SerializeToString(), check=False)
    except Exception as exc:
        message = f"onnxruntime cannot run the compiled graph: {exc}".splitlines()[0]
        raise Refused("compile", message) from None


def read_sample(path: Path | None, target: str | None, name: str | None = None) -> pd.DataFrame | None:
    """The --sample CSV (`name`: what the user called it, when it was uploaded)."""
    if path is None:
        if target is not None:
            raise Refused("schema", "--target names a column of --sample: pass the sample too")
        return None
    try:
        sample = pd.read_csv(path)
    except Exception as exc:
        raise Refused(
            "schema", f"the sample {name or path} is not a CSV pandas reads: {exc}".splitlines()[0]
        ) from None
    if sample.empty:
        raise Refused("schema", f"the sample {name or path} has no rows")
    if target is not None and target not in sample.columns:
        raise Refused(
            "schema",
            f"the sample has no column {target!r} (--target); it has {', '.join(sample.columns[:20])}",
        )
    return sample


def _column_summary(schema: ModelSchema) -> str:
    categorical = [f.name for f in schema.features if f.type == "categorical"]
    return f"categorical: {', '.join(categorical)}" if categorical else "all numeric"


def _probe_rows(rows: np.ndarray, schema: ModelSchema) -> np.ndarray:
    """The rows as the probe metadata stores them: a category gap as the gap marker, not None."""
    probe = rows.copy()
    for j, feature in enumerate(schema.features):
        if feature.type == "categorical":
            probe[:, j] = [MISSING_CATEGORY if v is None else v for v in probe[:, j]]
    return probe


def _sample_metrics(
    compiled: OnnxModel, schema: ModelSchema, sample: pd.DataFrame | None, target: str | None
) -> tuple[str, dict[str, float]]:
    """The default metric of the task, and every metric on the sample when it has the target."""
    from app.pipeline.scoring import DEFAULT_METRIC

    metric = DEFAULT_METRIC[schema.task]
    if sample is None or target is None:
        return metric, {}
    labelled = sample[sample[target].notna()]
    with np.errstate(all="ignore"):
        answers = compiled(matrix_of(labelled, schema))
    return metric, score_answers(schema, answers, labelled[target])


def _write_folder(
    folder: Path,
    graph: Any,
    loaded: Loaded,
    schema: ModelSchema,
    parity: Parity,
    name: str,
    metric: str,
    metrics: dict[str, float],
    sample: pd.DataFrame | None,
    request: ImportRequest,
) -> ModelMetadata:
    (folder / ONNX_FILE).write_bytes(graph.SerializeToString())
    if sample is not None and request.target is not None:
        from app.pipeline.profile import build_profile

        labelled = sample[sample[request.target].notna()].copy()
        if schema.task == "classification":
            labelled[request.target] = labelled[request.target].astype(str)
        profile = build_profile(labelled, schema.features, request.target, schema.task, PROFILE_BINS)
        write_json_atomic(folder / REFERENCE_PROFILE_FILE, profile)
    stamp = now().replace(":", "-").removesuffix("+00-00")
    import sklearn

    metadata = ModelMetadata(
        version=f"{stamp}-{name}-{loaded.source.sha256[:6]}",
        name=name,
        task=schema.task,
        target=request.target or "prediction",
        features=schema.features,
        classes=schema.classes,
        metric=metric,
        metrics=metrics,
        params={"imported": loaded.flavor},
        trained_at=now(),
        git_commit="",
        data_md5="",
        sha256=None,
        onnx=ModelFile(path=ONNX_FILE, sha256=sha256_of(folder / ONNX_FILE)),
        mlflow_run_id=loaded.source.mlflow_run_id,
        python_version=platform.python_version(),
        sklearn_version=sklearn.__version__,
        source=loaded.source,
        parity=parity,
    )
    write_json_atomic(folder / METADATA_FILE, metadata)
    return metadata


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:40]
    return slug or "imported"


def _set_metadata(model: Any, key: str, value: str) -> None:
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value
