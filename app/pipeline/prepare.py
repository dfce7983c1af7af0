"""Stage 1: load the data set, check it, split it, and profile the training part.

python -m app.pipeline.prepare [--params params.yaml]
"""

from __future__ import annotations

from sklearn.model_selection import train_test_split

from app.core.artifacts import write_json_atomic
from app.pipeline import layout
from app.pipeline.dataset import DatasetSchema, RawData, data_md5, load_source, parse
from app.pipeline.errors import PipelineError
from app.pipeline.params import Params
from app.pipeline.profile import build_profile, describe_features
from app.pipeline.stage import run_stage


def prepare(
    params: Params, ws: layout.Workspace = layout.PROJECT, raw: RawData | None = None
) -> DatasetSchema:
    """`raw` replaces data.source, e.g. a CSV uploaded to the API; it goes through the same checks."""
    raw = raw if raw is not None else load_source(params.data)
    print(f"prepare: loading {raw.name} ({len(raw.csv_bytes):,} bytes)")
    data = parse(raw, params.data)
    stratify = data.frame[data.target] if data.task == "classification" else None
    try:
        train, test = train_test_split(
            data.frame, test_size=params.data.test_size, random_state=params.seed, stratify=stratify
        )
    except ValueError as exc:
        raise PipelineError(f"data.test_size: cannot split {len(data.frame)} rows: {exc}") from None

    features = describe_features(train, data.features)
    schema = DatasetSchema(
        source=raw.name,
        target=data.target,
        task=data.task,
        features=features,
        classes=data.classes,
        data_md5=data_md5(raw),
        rows=len(data.frame),
        train_rows=len(train),
        test_rows=len(test),
    )
    profile = build_profile(train, features, data.target, data.task, params.prepare.profile_bins)

    # Everything is checked; only now touch the outputs.
    ws.raw_file.parent.mkdir(parents=True, exist_ok=True)
    ws.raw_file.write_bytes(raw.csv_bytes)
    with layout.staged_output(ws.processed_dir) as out:
        train.to_csv(out / layout.TRAIN_FILE, index=False)
        test.to_csv(out / layout.TEST_FILE, index=False)
        write_json_atomic(out / layout.SCHEMA_FILE, schema)
        write_json_atomic(out / layout.TRAINING_PROFILE_FILE, profile)

    kinds = ", ".join(f"{f.name}:{f.type}" for f in features)
    print(f"prepare: {schema.rows} rows, task={data.task}, target={data.target}, features: {kinds}")
    if data.classes:
        balance = ", ".join(f"{k}={v:.2f}" for k, v in (profile.target.class_balance or {}).items())
        print(f"prepare: classes {balance}")
    print(f"prepare: split {len(train)} train / {len(test)} test -> {ws.processed_dir}/")
    return schema


def main() -> None:
    run_stage("prepare", __doc__ or "", prepare)


if __name__ == "__main__":
    main()
