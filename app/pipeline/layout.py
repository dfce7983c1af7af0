"""Where the stages read and write, relative to the project root (DVC runs stages from there)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RAW_FILE = Path("data/raw/dataset.csv")
PROCESSED_DIR = Path("data/processed")
TRAIN_FILE = "train.csv"
TEST_FILE = "test.csv"
SCHEMA_FILE = "schema.json"
TRAINING_PROFILE_FILE = "profile.json"
MODELS_DIR = Path("models")
EVALUATION_DIR = Path("data/evaluation")


@dataclass(frozen=True)
class Workspace:
    """The folders one run of the stages reads and writes.

    DVC runs use the project's (the default); a retraining job from the API gets its own, so
    it never touches data/ or models/, which `dvc repro` owns.
    """

    raw_file: Path = RAW_FILE
    processed_dir: Path = PROCESSED_DIR
    models_dir: Path = MODELS_DIR
    evaluation_dir: Path = EVALUATION_DIR

    @classmethod
    def under(cls, root: Path) -> Workspace:
        """The same layout, below another folder."""
        return cls(root / RAW_FILE, root / PROCESSED_DIR, root / MODELS_DIR, root / EVALUATION_DIR)


PROJECT = Workspace()


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
