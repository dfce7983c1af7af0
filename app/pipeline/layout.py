"""Where the stages read and write, relative to the project root (DVC runs stages from there)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

RAW_FILE = Path("data/raw/dataset.csv")
PROCESSED_DIR = Path("data/processed")
TRAIN_FILE = "train.csv"
TEST_FILE = "test.csv"
SCHEMA_FILE = "schema.json"
PROFILE_FILE = "profile.json"
MODELS_DIR = Path("models")
EVALUATION_DIR = Path("data/evaluation")


@contextlib.contextmanager
def staged_output(final: Path) -> Iterator[Path]:
    """Yield an empty sibling folder; on success it replaces `final`, on failure it vanishes.

    So a failed stage never leaves half-written outputs, and a reader sees the old or the new.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.staging-"))
    try:
        yield staging
        retired = final.with_name(f".{final.name}.retired")
        shutil.rmtree(retired, ignore_errors=True)
        if final.exists():
            final.rename(retired)
        staging.rename(final)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
