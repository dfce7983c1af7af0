"""The model versions store on a local folder and on a real S3 server (moto): what is published is what
a fetch serves, byte for byte, and nothing half written, tampered or out of reach is ever served."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.adapters.model_store import ModelStore
from app.core.artifacts import METADATA_FILE, ONNX_FILE, ModelMetadata, write_json_atomic
from app.core.loading import ChecksumMismatch, ModelLoadError
from app.core.versions import (
    MANIFEST_FILE,
    RECORD_FILE,
    Origin,
    StoreUnavailable,
    UnknownVersion,
    VersionRecord,
    now,
)
from tests.support.models import write_model
from tests.support.paths import ROOT
from tests.support.s3 import CREDENTIALS, S3Server, moto_s3
from tests.support.servers import free_port

CANDIDATE = "candidates/logistic_regression.onnx"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with moto_s3() as server:
        yield server


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three model folders, one fitted model under three versions trained on different days."""
    root = tmp_path_factory.mktemp("models")
    write_model(root / "v1", version="v1")
    trained = {
        "v1": "2026-11-01T00:00:00+00:00",
        "v2": "2026-11-03T00:00:00+00:00",
        "v3": "2026-11-02T00:00:00+00:00",
    }
    for version, trained_at in trained.items():
        if version != "v1":
            shutil.copytree(root / "v1", root / version)
        metadata = ModelMetadata.read(root / version)
        write_json_atomic(
            root / version / METADATA_FILE,
            metadata.model_copy(update={"version": version, "trained_at": trained_at}),
        )
    return {version: root / version for version in trained}


@dataclass
class Place:
    """Where a store lives, and the back door a test uses to damage it as a disk or a bucket could be."""

    url: str
    cache: Path
    put: Callable[[str, bytes], None]  # "v1/model.onnx" -> those bytes, written behind the store's back
    delete: Callable[[str], None]

    def open(self) -> ModelStore:
        """A fresh store object: nothing from an earlier one remembered in memory."""
        return ModelStore.from_url(self.url, self.cache)


def _local_place(tmp_path: Path) -> Place:
    root = tmp_path / "store"

    def put(relative: str, payload: bytes) -> None:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(payload)

    return Place(str(root), tmp_path / "cache", put, lambda relative: (root / relative).unlink())


def _s3_place(tmp_path: Path, server: S3Server) -> Place:
    prefix = f"runs/{uuid.uuid4().hex[:8]}"  # one bucket for the module, a prefix per test
    client = server.client()

    def put(relative: str, payload: bytes) -> None:
        client.put_object(Bucket=server.bucket, Key=f"{prefix}/{relative}", Body=payload)

    def delete(relative: str) -> None:
        client.delete_object(Bucket=server.bucket, Key=f"{prefix}/{relative}")

    return Place(server.url(prefix), tmp_path / "cache", put, delete)


@pytest.fixture(params=["local", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Place:
    if request.param == "local":
        return _local_place(tmp_path)
    return _s3_place(tmp_path, request.getfixturevalue("s3"))


def _record(origin: Origin = "pipeline") -> VersionRecord:
    return VersionRecord(origin=origin, recorded_at=now())


def _digests(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in folder.rglob("*")
        if path.is_file()
    }


def _cache_entries(place: Place) -> list[str]:
    return sorted(p.name for p in place.cache.iterdir()) if place.cache.exists() else []


def test_publish_then_fetch_serves_the_same_bytes(place: Place, models: dict[str, Path]):
    record = _record()
    assert place.open().publish(models["v1"], record) == "v1"

    store = place.open()
    folder = store.fetch("v1")
    fetched = _digests(folder)
    assert {k: v for k, v in fetched.items() if k not in {MANIFEST_FILE, RECORD_FILE}} == _digests(
        models["v1"]
    )
    assert store.record("v1") == record
    assert store.metadata("v1") == ModelMetadata.read(models["v1"])
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["version"] == "v1"
    assert set(manifest["files"]) == set(fetched) - {MANIFEST_FILE}
    if place.url.startswith("s3://"):
        assert folder == place.cache / "v1"
    else:
        assert folder == Path(place.url) / "v1"  # served in place, no copy
        assert _cache_entries(place) == []


def test_publish_leaves_a_stored_version_as_it_is(place: Place, models: dict[str, Path], tmp_path: Path):
    first = place.open()
    first.publish(models["v1"], _record("pipeline"))
    changed = tmp_path / "changed"
    shutil.copytree(models["v1"], changed)
    (changed / ONNX_FILE).write_bytes(b"another model under the same version")

    for store in (first, place.open()):  # the same process, and another one knowing nothing yet
        assert store.publish(changed, _record("retrain")) == "v1"
    store = place.open()
    record = store.record("v1")
    assert record is not None and record.origin == "pipeline"
    assert (store.fetch("v1") / ONNX_FILE).read_bytes() == (models["v1"] / ONNX_FILE).read_bytes()


def test_hidden_files_are_not_published(place: Place, models: dict[str, Path], tmp_path: Path):
    source = tmp_path / "source"
    shutil.copytree(models["v1"], source)
    (source / ".model.json.swp").write_bytes(b"an editor's")
    (source / ".v1.staging-abc").mkdir()
    (source / ".v1.staging-abc" / "model.json").write_bytes(b"{}")
    place.open().publish(source, _record())
    names = set(_digests(place.open().fetch("v1")))
    assert not any(name.startswith(".") for name in names)


def test_versions_newest_trained_first_and_only_complete_ones(place: Place, models: dict[str, Path]):
    store = place.open()
    for version in ("v1", "v2", "v3"):
        store.publish(models[version], _record())
    # Half published: every file there, but not its manifest (the last thing a publish writes).
    for path in sorted(models["v1"].rglob("*")):
        if path.is_file():
            place.put(f"v9/{path.relative_to(models['v1']).as_posix()}", path.read_bytes())
    if not place.url.startswith("s3://"):
        # On a disk a folder appears whole (renamed in), so a manifest-less folder with a model.json is a
        # version from an earlier release (see the legacy test); a half-copied one is a hidden staging folder.
        shutil.move(Path(place.url) / "v9", Path(place.url) / ".v9.staging-1234")

    for reader in (store, place.open()):
        assert [version for version, _ in reader.versions()] == ["v2", "v3", "v1"]
        assert not reader.exists("v9")
        with pytest.raises(UnknownVersion):
            reader.fetch("v9")
        with pytest.raises(UnknownVersion):
            reader.metadata("v9")
        assert reader.record("v9") is None


def test_a_damaged_version_is_left_out_of_the_list(place: Place, models: dict[str, Path]):
    store = place.open()
    store.publish(models["v1"], _record())
    store.publish(models["v2"], _record())
    place.put(f"v2/{METADATA_FILE}", b'{"version": "v2"}')
    assert [version for version, _ in place.open().versions()] == ["v1"]
    with pytest.raises(ChecksumMismatch):
        place.open().metadata("v2")


def test_a_tampered_file_is_refused_and_leaves_the_cache_clean(place: Place, models: dict[str, Path]):
    place.open().publish(models["v1"], _record())
    place.put(f"v1/{CANDIDATE}", b"not the model that was published")

    store = place.open()
    with pytest.raises(ChecksumMismatch, match=r"logistic_regression\.onnx"):
        store.fetch("v1")
    assert _cache_entries(place) == []
    with pytest.raises(ChecksumMismatch):
        store.fetch("v1")  # refused every time, not only the first


def test_a_file_the_manifest_lists_but_the_store_lost_is_refused(place: Place, models: dict[str, Path]):
    place.open().publish(models["v1"], _record())
    place.delete(f"v1/{CANDIDATE}")
    with pytest.raises(ChecksumMismatch, match="missing"):
        place.open().fetch("v1")
    assert _cache_entries(place) == []


def test_a_cached_version_is_verified_again_on_every_fetch(place: Place, models: dict[str, Path]):
    store = place.open()
    store.publish(models["v1"], _record())
    folder = store.fetch("v1")
    original = (folder / CANDIDATE).read_bytes()
    (folder / CANDIDATE).write_bytes(b"changed on the replica's disk")

    if place.url.startswith("s3://"):
        # The cache is only a copy: a damaged one is downloaded again.
        assert store.fetch("v1") == folder
        assert (folder / CANDIDATE).read_bytes() == original
        assert _cache_entries(place) == ["v1"]
    else:
        with pytest.raises(ChecksumMismatch):
            store.fetch("v1")  # the store itself is damaged: nothing to fall back on


def test_concurrent_publishes_and_fetches_of_one_version(place: Place, models: dict[str, Path]):
    """Two processes (here threads with stores of their own) publishing, then fetching, the same version:
    each gets the whole version, and the cache keeps one copy."""

    def both(call: Callable[[ModelStore], object]) -> list[object]:
        stores = [place.open(), place.open()]
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(call, stores))

    assert both(lambda store: store.publish(models["v1"], _record())) == ["v1", "v1"]
    folders = both(lambda store: store.fetch("v1"))
    assert folders[0] == folders[1]
    assert _digests(models["v1"]).items() <= _digests(Path(str(folders[0]))).items()
    if place.url.startswith("s3://"):
        assert _cache_entries(place) == ["v1"]


def test_metadata_and_records_are_read_once(s3: S3Server, tmp_path: Path, models: dict[str, Path]):
    place = _s3_place(tmp_path, s3)
    place.open().publish(models["v1"], _record())
    store = place.open()
    assert [v for v, _ in store.versions()] == ["v1"]
    assert store.record("v1") is not None
    place.put(f"v1/{METADATA_FILE}", b"changed behind the store's back")
    place.put(f"v1/{RECORD_FILE}", b"changed too")
    # A complete version is immutable: what this process read of it stands (fetch still verifies).
    assert [v for v, _ in store.versions()] == ["v1"]
    assert store.record("v1") is not None


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".", "..", ".v1.staging-1234", "v1/../v1", "/etc"])
def test_a_name_that_is_a_path_trick_is_an_unknown_version(place: Place, models: dict[str, Path], name: str):
    store = place.open()
    store.publish(models["v1"], _record())
    assert not store.exists(name)
    assert store.record(name) is None
    with pytest.raises(UnknownVersion):
        store.metadata(name)
    with pytest.raises(UnknownVersion):
        store.fetch(name)


def test_a_manifest_cannot_write_outside_the_version(place: Place, models: dict[str, Path]):
    store = place.open()
    store.publish(models["v1"], _record())
    escape = {"version": "v1", "files": {"../../escaped": {"sha256": "0" * 64, "size": 1}}}
    place.put(f"v1/{MANIFEST_FILE}", json.dumps(escape).encode())
    reader = place.open()
    assert reader.versions() == []
    assert reader.exists("v1")  # damaged, yet there: a publish never writes over it
    with pytest.raises(ModelLoadError, match="not valid"):
        reader.fetch("v1")
    assert not (place.cache.parent / "escaped").exists()


def test_a_version_from_an_earlier_release_is_listed_and_served(tmp_path: Path, models: dict[str, Path]):
    """Versions written before manifests (a copy of the model folder and version.json) keep serving."""
    root = tmp_path / "store"
    shutil.copytree(models["v1"], root / "v1")
    (root / "v1" / RECORD_FILE).write_text(_record().model_dump_json())
    (root / "jobs" / "abc").mkdir(parents=True)  # the old store's retraining jobs: not a version
    (root / "serving.json").write_text("{}")

    store = ModelStore.from_url(str(root), tmp_path / "cache")
    assert [version for version, _ in store.versions()] == ["v1"]
    assert store.fetch("v1") == root / "v1"
    record = store.record("v1")
    assert record is not None and record.origin == "pipeline"
    # Written on first use, so later reads verify against it like any other version's.
    manifest = json.loads((root / "v1" / MANIFEST_FILE).read_text())
    assert RECORD_FILE in manifest["files"] and ONNX_FILE in manifest["files"]
    (root / "v1" / ONNX_FILE).write_bytes(b"tampered after adoption")
    with pytest.raises(ChecksumMismatch):
        ModelStore.from_url(str(root), tmp_path / "cache").fetch("v1")


def test_an_empty_or_missing_store_has_no_versions(place: Place):
    store = place.open()
    store.ping()  # answers: a store nothing was published to yet is not an unavailable one
    assert store.versions() == []
    assert not store.exists("v1")
    with pytest.raises(UnknownVersion):
        store.fetch("v1")


def _quickly_unavailable(call: Callable[[], object], where: str) -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        call()
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert where in message and "\n" not in message
    assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in message


def test_a_closed_port_is_an_unavailable_store(
    s3: S3Server, tmp_path: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    store = ModelStore.from_url(s3.url("anywhere"), tmp_path / "cache")
    _quickly_unavailable(store.ping, "s3://models/anywhere")
    _quickly_unavailable(store.versions, "s3://models/anywhere")
    _quickly_unavailable(lambda: store.publish(models["v1"], _record()), "s3://models/anywhere")
    _quickly_unavailable(lambda: store.fetch("v1"), "s3://models/anywhere")


def test_a_stopped_server_is_an_unavailable_store(tmp_path: Path, models: dict[str, Path]):
    with moto_s3("short-lived") as server:
        store = ModelStore.from_url(server.url("m"), tmp_path / "cache")
        store.publish(models["v1"], _record())
    # It knows v1's manifest from publishing it, so the fetch gets as far as downloading.
    _quickly_unavailable(lambda: store.fetch("v1"), "s3://short-lived/m")
    assert not (tmp_path / "cache" / "v1").exists()
    _quickly_unavailable(store.versions, "s3://short-lived/m")
    _quickly_unavailable(store.ping, "s3://short-lived/m")


def test_a_missing_bucket_is_an_unavailable_store(s3: S3Server, tmp_path: Path):
    store = ModelStore.from_url("s3://no-such-bucket/models", tmp_path / "cache")
    _quickly_unavailable(store.ping, "s3://no-such-bucket/models")
    _quickly_unavailable(store.versions, "s3://no-such-bucket/models")
    _quickly_unavailable(lambda: store.exists("v1"), "s3://no-such-bucket/models")


def test_no_credentials_is_an_unavailable_store(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = ModelStore.from_url(s3.url("m"), tmp_path / "cache")
    _quickly_unavailable(store.versions, "s3://models/m")


def test_an_unreadable_local_store_is_unavailable(tmp_path: Path):
    (tmp_path / "file").write_text("a file where the store's folder should be")
    store = ModelStore.from_url(str(tmp_path / "file"), tmp_path / "cache")
    _quickly_unavailable(store.ping, str(tmp_path / "file"))
    _quickly_unavailable(store.versions, str(tmp_path / "file"))


def test_a_local_store_never_imports_boto3(tmp_path: Path, models: dict[str, Path]):
    script = (
        "import sys; from pathlib import Path; from app.adapters.model_store import ModelStore\n"
        "from app.core.versions import VersionRecord\n"
        f"store = ModelStore.from_url({str(tmp_path / 'store')!r}, Path({str(tmp_path / 'cache')!r}))\n"
        f"store.publish(Path({str(models['v1'])!r}), VersionRecord(origin='pipeline', recorded_at='x'))\n"
        "store.fetch('v1'); store.versions()\n"
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'boto3 imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True, timeout=60)
