"""The model versions store: every published model, kept by version, in a local folder or in S3.

    MODEL_STORE_URL/               var/model-versions, or s3://bucket/prefix
      2026-11-23T03-14-31/         a model folder as train wrote it (model.json, model.onnx, candidates/, ...)
        version.json               how it got here: origin, promotion gate, job
        manifest.json              every other file's sha256 and size, written last

A version exists only once its manifest.json does: a reader never sees half a version, and every
byte a replica serves is checked against the manifest first. `dvc repro` replaces models/ wholesale,
so models/ is only the pipeline's latest output; publishing copies it here, where every replica
(and the retraining worker) finds it. Versions are immutable: a version already stored is never
overwritten, which is also why what was read of one can be kept in memory.

A local store is served in place. An S3 store is downloaded into the replica's cache (MODEL_CACHE_DIR)
and boto3 is imported only then, so a local store's cold start never pays for it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from app.core.artifacts import METADATA_FILE, ModelMetadata, write_json_atomic
from app.core.loading import ChecksumMismatch, ModelLoadError
from app.core.versions import (
    MANIFEST_FILE,
    RECORD_FILE,
    CacheFull,
    Manifest,
    ManifestEntry,
    StoreUnavailable,
    UnknownVersion,
    VersionRecord,
    valid_version,
)

_CHUNK = 1 << 20


class _Missing(Exception):
    """An object or file that is not there (internal: each caller decides what that means)."""


def _entry_of(data: bytes) -> ManifestEntry:
    return ManifestEntry(sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def _entry_of_file(path: Path) -> ManifestEntry:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
            size += len(block)
    return ManifestEntry(sha256=digest.hexdigest(), size=size)


def _mismatch(what: str, found: ManifestEntry, expected: ManifestEntry) -> ChecksumMismatch:
    return ChecksumMismatch(
        f"{what}: sha256 {found.sha256[:12]}... ({found.size} bytes) does not match {MANIFEST_FILE} "
        f"({expected.sha256[:12]}..., {expected.size} bytes): refusing it"
    )


def _files_in(folder: Path, *, skip: set[str]) -> list[str]:
    """Relative paths of the folder's files, hidden ones (staging, editor swap files) left out.
    Symlinked folders are followed, as a copy of the folder would."""
    found = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        base = Path(parent).relative_to(folder)
        found += [(base / f).as_posix() for f in files if not f.startswith(".")]
    return sorted(f for f in found if f not in skip)


def _record_bytes(record: VersionRecord) -> bytes:
    return (record.model_dump_json(indent=2) + "\n").encode()


def _verify_folder(folder: Path, manifest: Manifest, what: str) -> None:
    for relative, expected in manifest.files.items():
        try:
            found = _entry_of_file(folder / relative)
        except FileNotFoundError:
            raise ChecksumMismatch(f"{what}/{relative} is missing ({MANIFEST_FILE} lists it)") from None
        except OSError as exc:
            raise ModelLoadError(f"{what}/{relative} cannot be read: {exc.strerror}") from None
        if found != expected:
            raise _mismatch(f"{what}/{relative}", found, expected)


def _discard(folder: Path) -> None:
    """Remove a folder others may be reading: moved aside first, so its name is free at once."""
    aside = folder.with_name(f".{folder.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        folder.rename(aside)
    except FileNotFoundError:
        return  # another process discarded it first
    shutil.rmtree(aside, ignore_errors=True)


class ModelStore(ABC):
    """The versions, wherever they are kept. Subclasses move bytes; this class decides what a
    complete, intact version is."""

    def __init__(self, url: str, cache_dir: Path) -> None:
        self.url = url  # for messages and /ready: never holds credentials
        # Where fetch downloads versions to (a local store serves in place and leaves it unused).
        self.cache_dir = cache_dir
        # What was read of complete versions: immutable, so read once per process.
        self._manifests: dict[str, Manifest] = {}
        self._metadata: dict[str, ModelMetadata] = {}
        self._records: dict[str, VersionRecord | None] = {}

    @classmethod
    def from_url(cls, url: str, cache_dir: Path) -> ModelStore:
        """s3://bucket/prefix: an S3 store downloading into cache_dir; anything else: a local folder."""
        if not url.strip():
            raise ValueError("the model store URL is empty (a folder, or s3://bucket/prefix)")
        if url.lower().startswith("s3://"):
            return S3ModelStore(url, cache_dir)
        return LocalModelStore(Path(url), cache_dir)

    # --- what a backend provides ---

    @abstractmethod
    def ping(self) -> None:
        """Nothing when the store answers now (for /ready); StoreUnavailable when it does not."""

    @abstractmethod
    def _names(self) -> list[str]:
        """The names that may be versions, complete or not."""

    @abstractmethod
    def _read(self, version: str, relative: str) -> bytes:
        """One file of a version; _Missing when it is not there."""

    @abstractmethod
    def _store(self, version: str, files: dict[str, Path], record: VersionRecord) -> None:
        """Write a version: its files, the record, and manifest.json last."""

    @abstractmethod
    def _local_copy(self, version: str, manifest: Manifest) -> Path:
        """A local folder holding the version, every file verified against the manifest."""

    def _load_manifest(self, version: str) -> Manifest | None:
        """The version's manifest; None while it is not a complete version."""
        try:
            payload = self._read(version, MANIFEST_FILE)
        except _Missing:
            return None
        return self._parse_manifest(version, payload)

    # --- the store, whatever the backend ---

    def versions(self) -> list[tuple[str, ModelMetadata]]:
        """Every complete version with its model.json, newest trained first; damaged ones left out."""
        found = []
        for version in self._names():
            try:
                found.append((version, self.metadata(version)))
            except (UnknownVersion, ModelLoadError):
                continue  # being published, or damaged
        return sorted(found, key=lambda item: (item[1].trained_at, item[0]), reverse=True)

    def exists(self, version: str) -> bool:
        """Whether the version is stored (StoreUnavailable when the store cannot tell)."""
        try:
            self._manifest(version)
        except UnknownVersion:
            return False
        except ModelLoadError:
            return True  # there, if damaged: so never overwritten, and fetch says what is wrong
        return True

    def metadata(self, version: str) -> ModelMetadata:
        """UnknownVersion; ModelLoadError (a ChecksumMismatch among them) for a damaged version."""
        metadata = self._metadata.get(version)
        if metadata is None:
            payload = self._verified_file(version, METADATA_FILE)
            if payload is None:
                raise UnknownVersion(version)  # a manifest without a model is not a model version
            try:
                metadata = ModelMetadata.model_validate_json(payload)
            except ValidationError:
                raise ModelLoadError(f"{self._where(version)}/{METADATA_FILE} is not valid") from None
            self._metadata[version] = metadata
        return metadata

    def record(self, version: str) -> VersionRecord | None:
        """How the version got here; None for an unknown version or one stored without a record."""
        if version not in self._records:
            try:
                payload = self._verified_file(version, RECORD_FILE)
                record = None if payload is None else VersionRecord.model_validate_json(payload)
            except (UnknownVersion, ModelLoadError, ValidationError):
                return None  # not cached: an unknown version may be published later
            self._records[version] = record
        return self._records[version]

    def publish(self, model_dir: Path, record: VersionRecord) -> str:
        """Store a model folder as the version its model.json names; a version already stored is
        left as it is. Hidden files (staging, swap files) and any version.json in it are not copied."""
        version = ModelMetadata.read(model_dir).version
        self._check(version)
        if self.exists(version):
            return version
        files = {relative: model_dir / relative for relative in _files_in(model_dir, skip=_RESERVED)}
        self._store(version, files, record)
        return version

    def fetch(self, version: str) -> Path:
        """A local folder holding the version, every file's sha256 verified against its manifest.
        UnknownVersion, StoreUnavailable, CacheFull or ChecksumMismatch (then nothing is left in the
        cache)."""
        return self._local_copy(version, self._manifest(version))

    # --- shared by the backends ---

    def _check(self, version: str) -> None:
        if not valid_version(version):
            raise UnknownVersion(version)

    def _where(self, version: str) -> str:
        return f"model store {self.url}: version {version}"

    def _manifest(self, version: str) -> Manifest:
        self._check(version)
        manifest = self._manifests.get(version)
        if manifest is None:
            manifest = self._load_manifest(version)
            if manifest is None:
                raise UnknownVersion(version)
            self._manifests[version] = manifest
        return manifest

    def _parse_manifest(self, version: str, payload: bytes) -> Manifest:
        try:
            manifest = Manifest.model_validate_json(payload)
        except ValidationError:
            raise ModelLoadError(f"{self._where(version)}/{MANIFEST_FILE} is not valid") from None
        if manifest.version != version:
            raise ModelLoadError(f"{self._where(version)}/{MANIFEST_FILE} is for version {manifest.version}")
        return manifest

    def _verified_file(self, version: str, relative: str) -> bytes | None:
        """A file of a complete version, checked against its manifest; None if the manifest has none."""
        expected = self._manifest(version).files.get(relative)
        if expected is None:
            return None
        try:
            payload = self._read(version, relative)
        except _Missing:
            raise self._lost(version, relative) from None
        found = _entry_of(payload)
        if found != expected:
            raise _mismatch(f"{self._where(version)}/{relative}", found, expected)
        return payload

    def _forget(self, version: str) -> None:
        self._manifests.pop(version, None)
        self._metadata.pop(version, None)
        self._records.pop(version, None)

    def _lost(self, version: str, relative: str) -> Exception:
        """What a file its manifest lists yet missing means: the version was deleted meanwhile
        (UnknownVersion), or it is damaged."""
        self._forget(version)
        if self._load_manifest(version) is None:
            return UnknownVersion(version)
        return ChecksumMismatch(f"{self._where(version)}/{relative} is missing ({MANIFEST_FILE} lists it)")


# The files a version gets from the store itself, never from the folder being published.
_RESERVED = {MANIFEST_FILE, RECORD_FILE}


class LocalModelStore(ModelStore):
    """A folder on this machine's disk (or a volume every replica mounts), served in place."""

    def __init__(self, root: Path, cache_dir: Path) -> None:
        super().__init__(str(root), cache_dir)
        self.root = root

    def ping(self) -> None:
        self._names()  # a store not created yet answers: it has no versions

    def _folder(self, version: str) -> Path:
        self._check(version)
        return self.root / version

    def _unavailable(self, exc: OSError, doing: str) -> StoreUnavailable:
        return StoreUnavailable(f"model store {self.url}: cannot {doing}: {exc.strerror or exc}")

    def _names(self) -> list[str]:
        try:
            return [e.name for e in os.scandir(self.root) if e.is_dir() and valid_version(e.name)]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._unavailable(exc, "list its versions") from None

    def _read(self, version: str, relative: str) -> bytes:
        try:
            return (self._folder(version) / relative).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise _Missing(relative) from None
        except OSError as exc:
            raise self._unavailable(exc, f"read {version}/{relative}") from None

    def _load_manifest(self, version: str) -> Manifest | None:
        manifest = super()._load_manifest(version)
        if manifest is not None:
            return manifest
        folder = self._folder(version)
        if not (folder / METADATA_FILE).is_file():
            return None
        # Written by a release before manifests: a folder on the store's own disk, which only ever
        # received whole versions (copied beside, then renamed), so what it holds now is trusted.
        manifest = self._manifest_of(folder, version)
        with contextlib.suppress(OSError):  # a read-only store: the manifest lives in memory only
            write_json_atomic(folder / MANIFEST_FILE, manifest)
        return manifest

    def _manifest_of(self, folder: Path, version: str) -> Manifest:
        try:
            files = {f: _entry_of_file(folder / f) for f in _files_in(folder, skip={MANIFEST_FILE})}
        except OSError as exc:
            raise self._unavailable(exc, f"read {version}") from None
        return Manifest(version=version, files=files)

    def _store(self, version: str, files: dict[str, Path], record: VersionRecord) -> None:
        target = self._folder(version)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # Copied beside, then renamed: a reader sees no version or a whole one.
            staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{version}.staging-"))
        except OSError as exc:
            raise self._unavailable(exc, "write to it") from None
        try:
            for relative, source in files.items():
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, staging / relative)
            (staging / RECORD_FILE).write_bytes(_record_bytes(record))
            # Checksums of the copies: what the store holds, even if the source changed meanwhile.
            write_json_atomic(staging / MANIFEST_FILE, self._manifest_of(staging, version))
            staging.rename(target)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if not self.exists(version):  # not lost to a concurrent publish of the same version
                raise self._unavailable(exc, f"write {version}") from None

    def _local_copy(self, version: str, manifest: Manifest) -> Path:
        folder = self._folder(version)
        if not folder.is_dir():  # deleted since this process read its manifest
            self._forget(version)
            raise UnknownVersion(version)
        _verify_folder(folder, manifest, self._where(version))
        return folder


class S3ModelStore(ModelStore):
    """s3://bucket/prefix, through boto3's own settings (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...);
    a fetched version is kept in cache_dir/<version>."""

    def __init__(self, url: str, cache_dir: Path) -> None:
        parts = urlsplit(url)
        self.bucket = parts.netloc.rpartition("@")[2]  # never keep credentials someone put in the URL
        if not self.bucket:
            raise ValueError(f"{url}: an S3 model store URL names its bucket (s3://bucket/prefix)")
        prefix = parts.path.strip("/")
        super().__init__(f"s3://{self.bucket}/{prefix}".rstrip("/"), cache_dir)
        self._base = f"{prefix}/" if prefix else ""
        self._client: Any = None  # boto3's S3 client (boto3 ships no type information)
        self._client_lock = threading.Lock()

    def _s3(self) -> Any:
        with self._client_lock:
            if self._client is None:
                import boto3  # here, not at import: the API's cold start with a local store skips it
                from botocore.config import Config

                # Short timeouts and few retries: an unreachable store fails a request in seconds.
                config = Config(
                    connect_timeout=3, read_timeout=10, retries={"total_max_attempts": 3, "mode": "standard"}
                )
                try:
                    # Its own session: boto3's default one keeps the credentials it first found.
                    self._client = boto3.session.Session().client("s3", config=config)
                except Exception as exc:  # botocore's own errors: a bad endpoint URL, region, profile
                    raise StoreUnavailable(f"model store {self.url}: {_one_line(exc)}") from None
            return self._client

    @contextlib.contextmanager
    def _calling(self, doing: str) -> Iterator[None]:
        """botocore's errors as this module's: _Missing for an absent key, StoreUnavailable else."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in {"NoSuchKey", "404", "NotFound"}:
                raise _Missing(doing) from None
            raise StoreUnavailable(f"model store {self.url}: cannot {doing}: {_one_line(exc)}") from None
        except BotoCoreError as exc:  # no connection, no credentials, a timeout, a broken stream
            raise StoreUnavailable(f"model store {self.url}: cannot {doing}: {_one_line(exc)}") from None

    def _key(self, version: str, relative: str) -> str:
        self._check(version)
        return f"{self._base}{version}/{relative}"

    def ping(self) -> None:
        # The one permission every reader needs anyway; a single small answer.
        with self._calling("list its versions"):
            self._s3().list_objects_v2(Bucket=self.bucket, Prefix=self._base, MaxKeys=1)

    def _names(self) -> list[str]:
        names = []
        with self._calling("list its versions"):
            pages = self._s3().get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.bucket, Prefix=self._base, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    name = common["Prefix"][len(self._base) :].rstrip("/")
                    if valid_version(name):
                        names.append(name)
        return names

    def _read(self, version: str, relative: str) -> bytes:
        with self._calling(f"read {version}/{relative}"):
            response = self._s3().get_object(Bucket=self.bucket, Key=self._key(version, relative))
            return response["Body"].read()

    def _download(self, version: str, relative: str, target: Path) -> ManifestEntry:
        """One object streamed into a file; its checksum and size, computed on the way."""
        digest, size = hashlib.sha256(), 0
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._calling(f"read {version}/{relative}"), target.open("wb") as out:
            response = self._s3().get_object(Bucket=self.bucket, Key=self._key(version, relative))
            for block in response["Body"].iter_chunks(_CHUNK):
                digest.update(block)
                size += len(block)
                out.write(block)
        return ManifestEntry(sha256=digest.hexdigest(), size=size)

    def _put(self, version: str, relative: str, payload: bytes) -> ManifestEntry:
        with self._calling(f"write {version}/{relative}"):
            self._s3().put_object(Bucket=self.bucket, Key=self._key(version, relative), Body=payload)
        return _entry_of(payload)

    def _store(self, version: str, files: dict[str, Path], record: VersionRecord) -> None:
        # Each file is read once: what is uploaded is what its checksum was computed from.
        entries = {
            relative: self._put(version, relative, source.read_bytes()) for relative, source in files.items()
        }
        entries[RECORD_FILE] = self._put(version, RECORD_FILE, _record_bytes(record))
        manifest = Manifest(version=version, files=entries)
        # Last: until this object exists, no reader lists or fetches the version.
        self._put(version, MANIFEST_FILE, (manifest.model_dump_json(indent=2) + "\n").encode())
        self._manifests[version] = manifest

    def _local_copy(self, version: str, manifest: Manifest) -> Path:
        target = self.cache_dir / version
        where = f"model cache {self.cache_dir}: version {version}"
        if target.is_dir():
            try:
                _verify_folder(target, manifest, where)
                return target
            except ModelLoadError:
                _discard(target)  # damaged or half removed: downloaded again below
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            self._check_room(version, manifest)
            staging = Path(tempfile.mkdtemp(dir=self.cache_dir, prefix=f".{version}.staging-"))
        except OSError as exc:
            raise self._cache_error(version, exc) from None
        try:
            for relative, expected in manifest.files.items():
                try:
                    found = self._download(version, relative, staging / relative)
                except _Missing:
                    raise self._lost(version, relative) from None
                if found != expected:
                    raise _mismatch(f"{self._where(version)}/{relative}", found, expected)
            write_json_atomic(staging / MANIFEST_FILE, manifest)
            try:
                staging.rename(target)
            except OSError:
                if not target.is_dir():
                    raise
                # Another process of this replica downloaded it first: serve its copy, verified.
                _verify_folder(target, manifest, where)
        except OSError as exc:
            raise self._cache_error(version, exc) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _check_room(self, version: str, manifest: Manifest) -> None:
        """Refuse before downloading a byte when the version cannot fit (a partial copy would only
        fill the disk further); ENOSPC during the download is caught as well, by _cache_error."""
        needed = sum(entry.size for entry in manifest.files.values())
        free = shutil.disk_usage(self.cache_dir).free
        if needed > free:
            raise CacheFull(
                f"model cache {self.cache_dir} is full: version {version} needs {needed} bytes, "
                f"{free} are free"
            )

    def _cache_error(self, version: str, exc: OSError) -> Exception:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return CacheFull(f"model cache {self.cache_dir} is full: version {version}: {exc.strerror}")
        return StoreUnavailable(f"model cache {self.cache_dir}: {exc.strerror or exc}")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
