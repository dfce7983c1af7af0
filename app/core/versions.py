"""What a stored model version is: its record, its manifest of checksums, its name, and the ways a
store can fail. The stores themselves (a folder, S3, the replica's cache) are app.adapters.model_store.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from app.core.messages import GateOutcome

MANIFEST_FILE = "manifest.json"
RECORD_FILE = "version.json"
# Versions are training timestamps; anything else would be a path trick.
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

Origin = Literal["pipeline", "retrain", "import"]
Status = Literal["accepted", "rejected"]


class StoreUnavailable(Exception):
    """The store cannot be reached or read (network, credentials, permissions); says which store."""


class UnknownVersion(LookupError):
    pass


class CacheFull(Exception):
    """The replica's model cache has no room for a version: the store is fine, this disk is not.
    Nothing of the version is left behind, and it can be fetched again once room is made."""


class VersionRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    origin: Origin
    recorded_at: str
    # accepted: it was (or may be) served; rejected: a challenger that failed the promotion gate.
    status: Status = "accepted"
    job_id: str | None = None
    gate: GateOutcome | None = None


class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str
    size: int


class Manifest(BaseModel):
    """manifest.json: what a complete version holds, file by file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    files: dict[str, ManifestEntry]

    @field_validator("files")
    @classmethod
    def _paths_stay_inside(cls, files: dict[str, ManifestEntry]) -> dict[str, ManifestEntry]:
        # A fetch writes each of these paths under the cache: none may climb out of it.
        for relative in files:
            parts = PurePosixPath(relative).parts
            if not parts or relative.startswith("/") or "\\" in relative or {".", ".."} & set(parts):
                raise ValueError(f"manifest path {relative!r} leaves the version folder")
        return files


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def valid_version(version: str) -> bool:
    return bool(_VERSION.match(version)) and version not in {".", ".."}
