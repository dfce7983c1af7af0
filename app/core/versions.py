"""The model versions store: every trained model, kept by version, outside the DVC-owned models/.

    VERSIONS_DIR/
      2026-11-23T03-14-31/      a copy of a model folder (model.joblib, model.json, candidates/, ...)
        version.json            how it got here: origin, promotion gate, job
      serving.json              which version the API serves (survives restarts, read by every worker)
      jobs/<job id>/            retraining jobs: state, log and scratch folders

`dvc repro` replaces models/ wholesale, so models/ is only the pipeline's latest output; the API
records it here at start-up and on /model/reload, and serves from here. Both the API and the
retraining job use this module, which is why it lives in core: it imports nothing but artifacts.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from app.core.artifacts import METADATA_FILE, ModelMetadata, write_json_atomic
from app.core.messages import GateOutcome

RECORD_FILE = "version.json"
SERVING_FILE = "serving.json"
JOBS_DIR = "jobs"
# Versions are training timestamps; anything else would be a path trick.
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

Origin = Literal["pipeline", "retrain"]
Status = Literal["accepted", "rejected"]


class VersionRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    origin: Origin
    recorded_at: str
    # accepted: it was (or may be) served; rejected: a challenger that failed the promotion gate.
    status: Status = "accepted"
    job_id: str | None = None
    gate: GateOutcome | None = None


class Serving(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str
    since: str
    reason: str
    # The version MODEL_DIR held when this was decided: once the pipeline writes another one,
    # that newer output is served at the next start-up rather than this choice.
    model_dir_version: str | None = None


class UnknownVersion(LookupError):
    pass


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def valid_version(version: str) -> bool:
    return bool(_VERSION.match(version)) and version not in {".", ".."}


class VersionStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def jobs_dir(self) -> Path:
        return self.root / JOBS_DIR

    def path(self, version: str) -> Path:
        if not valid_version(version) or version == JOBS_DIR:
            raise UnknownVersion(version)
        return self.root / version

    def exists(self, version: str) -> bool:
        try:
            return (self.path(version) / METADATA_FILE).is_file()
        except UnknownVersion:
            return False

    def metadata(self, version: str) -> ModelMetadata:
        if not self.exists(version):
            raise UnknownVersion(version)
        return ModelMetadata.read(self.path(version))

    def record(self, version: str) -> VersionRecord | None:
        try:
            return VersionRecord.model_validate_json((self.path(version) / RECORD_FILE).read_text())
        except (OSError, ValueError, UnknownVersion):
            return None

    def versions(self) -> list[tuple[str, ModelMetadata]]:
        """Every stored version with its model.json, newest trained first."""
        if not self.root.is_dir():
            return []
        found = []
        for folder in self.root.iterdir():
            try:
                found.append((folder.name, self.metadata(folder.name)))
            except (OSError, ValueError, UnknownVersion):
                continue  # not a version, or one being written
        return sorted(found, key=lambda item: (item[1].trained_at, item[0]), reverse=True)

    def add(self, model_dir: Path, record: VersionRecord) -> str:
        """Copy a model folder in as its version; a version already stored is left as it is."""
        version = ModelMetadata.read(model_dir).version
        target = self.path(version)
        if self.exists(version):
            return version
        self.root.mkdir(parents=True, exist_ok=True)
        # Copied beside, then renamed: a reader sees no version or a whole one.
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{version}.staging-"))
        try:
            shutil.copytree(model_dir, staging, dirs_exist_ok=True)
            write_json_atomic(staging / RECORD_FILE, record)
            staging.rename(target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not self.exists(version):  # not lost to a concurrent add of the same version
                raise
        return version

    def serving(self) -> Serving | None:
        try:
            return Serving.model_validate_json((self.root / SERVING_FILE).read_text())
        except (OSError, ValueError):
            return None

    def set_serving(self, version: str, reason: str, model_dir_version: str | None = None) -> None:
        serving = Serving(version=version, since=now(), reason=reason, model_dir_version=model_dir_version)
        write_json_atomic(self.root / SERVING_FILE, serving)
