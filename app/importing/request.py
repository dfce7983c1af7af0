"""What `models import` was asked: the command line's arguments, or POST /models/import's form."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ImportRequest:
    source: str  # an MLflow URI or a path
    sample: Path | None = None  # a CSV: the schema's columns, the parity rows, the gate's, drift's
    target: str | None = None  # the sample's column of ground truth
    name: str | None = None
    serve: bool = False
    force: bool = False  # with --serve: skip the promotion gate
    tolerance: float | None = None  # parity's, None: DEFAULT_TOLERANCE
    allow_code: bool = True  # False over HTTP: no pickle, no MLflow model (they may run code)
    upload_name: str | None = None  # an uploaded file's own name (source is then its saved path)
    sample_name: str | None = None  # an uploaded sample's own name, for messages
