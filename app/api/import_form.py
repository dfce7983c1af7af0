"""POST /models/import's form: the model file, an optional sample CSV and the options, saved to a
scratch folder for the import command (app.adapters.import_command).

What would run code as it loads is refused here, before any process starts: a pickle (joblib; by its
suffix or its first byte) and an MLflow model (a zip or tar archive, or a folder's files). Both are
imported from the command line only, for files the operator trusts. The form's size is bounded
before it gets here (MAX_BODY_BYTES, app.api.body_limit); starlette spools its files to disk past
1 MiB, and each is copied to the scratch folder under a fixed name: the user's file name is only
ever a message, and the suffix the import reads the format by.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio
from fastapi import HTTPException, Request, status
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from app.adapters.import_command import ImportFiles, ImportOptions
from app.api.uploads import FILE_FIELD, invalid_fields, is_multipart, safe_name
from app.core.model_formats import code_refused, is_pickle

SAMPLE_FIELD = "sample"
OPTION_FIELDS = tuple(ImportOptions.model_fields)  # target, name, serve, force, tolerance
ARCHIVE_MAGIC = (b"PK\x03\x04", b"\x1f\x8b")  # zip, gzip (a .tar.gz)
ARCHIVE_SUFFIXES = (".zip", ".gz", ".tgz", ".tar")
MLFLOW_DESCRIPTOR = "MLmodel"
# An MLflow model uploaded as a folder: its MLmodel, the model's files, its environment's.
MAX_FILES = 32
PICKLE_REFUSED = code_refused("A pickle (joblib) file", "FILE")
MLFLOW_REFUSED = code_refused(
    "An MLflow model (a folder, or one zipped) may be one that", "FOLDER (or its models:/ URI)"
)


@dataclass(frozen=True)
class SavedUpload:
    path: Path
    name: str  # the uploaded file's own name, cleaned by safe_name
    size: int
    sha256: str


@dataclass(frozen=True)
class ImportForm:
    model: SavedUpload
    sample: SavedUpload | None
    options: ImportOptions

    @property
    def files(self) -> ImportFiles:
        sample = self.sample
        return ImportFiles(
            self.model.path,
            self.model.name,
            sample.path if sample else None,
            sample.name if sample else None,
        )


async def read_import_form(request: Request, folder: Path) -> ImportForm:
    """The form, its files saved in `folder`; HTTPException (415, 422) or RequestValidationError
    when it is refused."""
    if not is_multipart(request):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"send the model as multipart/form-data: the file in '{FILE_FIELD}', a sample CSV in "
            f"'{SAMPLE_FIELD}', the options ({', '.join(OPTION_FIELDS)}) as fields",
        )
    form = await request.form(max_files=MAX_FILES, max_fields=2 * len(OPTION_FIELDS))
    try:
        _known_fields_once(form)
        model = _model_file(form)
        options = _options(form)
        sample = _sample_file(form)
        await _refuse_code(model)
        saved_model = await _save(model, folder / "model", "the model file")
        saved_sample = await _save(sample, folder / "sample.csv", "the sample") if sample else None
        return ImportForm(saved_model, saved_sample, options)
    finally:  # its spooled files, also when it is refused
        await form.close()


def _known_fields_once(form: FormData) -> None:
    names = [name for name, _ in form.multi_items()]
    known = [FILE_FIELD, SAMPLE_FIELD, *OPTION_FIELDS]
    unknown = sorted(set(names) - set(known))
    if unknown:  # a misspelt option must not be ignored
        raise _unprocessable(f"unknown form field {unknown[0]!r}: the form takes {', '.join(known)}")
    repeated = sorted({name for name in names if names.count(name) > 1} - {FILE_FIELD})
    if repeated:
        raise _unprocessable(f"the form field {repeated[0]!r} is given more than once")


def _model_file(form: FormData) -> UploadFile:
    parts = form.getlist(FILE_FIELD)
    if not parts:
        raise _unprocessable(f"send the model file in the form field '{FILE_FIELD}'")
    if any(isinstance(part, str) for part in parts):
        raise _unprocessable(f"the form field '{FILE_FIELD}' must be a file")
    files = [part for part in parts if isinstance(part, UploadFile)]
    raw = files[0].filename or ""
    if len(files) > 1 or "/" in raw or "\\" in raw or safe_name(raw) == MLFLOW_DESCRIPTOR:
        raise _unsupported(MLFLOW_REFUSED)
    return files[0]


def _sample_file(form: FormData) -> UploadFile | None:
    part = form.get(SAMPLE_FIELD)
    if isinstance(part, str):
        raise _unprocessable(f"the form field '{SAMPLE_FIELD}' must be a file (a CSV)")
    return part


def _options(form: FormData) -> ImportOptions:
    values: dict[str, Any] = {}
    for name in OPTION_FIELDS:
        value = form.get(name)
        if isinstance(value, UploadFile):
            raise _unprocessable(f"the form field {name!r} must not be a file")
        if value:  # an empty field, as an HTML form sends one, is not given
            values[name] = value
    try:
        return ImportOptions.model_validate(values)
    except ValidationError as exc:
        raise invalid_fields(exc) from None


async def _refuse_code(model: UploadFile) -> None:
    """A pickle or an archive, by its name or its first bytes: before any byte is written."""
    name = (safe_name(model.filename) or "").lower()
    head = await model.read(8)
    await model.seek(0)
    if not head:
        raise _unprocessable("the model file is empty")
    if is_pickle(head, name):
        raise _unsupported(PICKLE_REFUSED)
    if name.endswith(ARCHIVE_SUFFIXES) or head.startswith(ARCHIVE_MAGIC):
        # No model format this reads is an archive: it is an MLflow model's folder, zipped.
        raise _unsupported(MLFLOW_REFUSED)


async def _save(upload: UploadFile, path: Path, what: str) -> SavedUpload:
    size, digest = await anyio.to_thread.run_sync(_copy, upload.file, path)
    if not size:
        raise _unprocessable(f"{what} is empty")
    return SavedUpload(path, safe_name(upload.filename) or path.name, size, digest)


def _copy(source: IO[bytes], path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    source.seek(0)
    with path.open("wb") as out:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
            size += len(block)
    return size, digest.hexdigest()


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


def _unsupported(message: str) -> HTTPException:
    return HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, message)


_FILE_SCHEMA: dict[str, Any] = {"type": "string", "format": "binary"}

# For openapi_extra: the route reads the form itself, so FastAPI cannot describe it.
IMPORT_FORM_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        FILE_FIELD: _FILE_SCHEMA
                        | {"description": "LightGBM (text), XGBoost (.json, .ubj), CatBoost (.cbm) or ONNX"},
                        SAMPLE_FIELD: _FILE_SCHEMA
                        | {"description": "Real rows: the columns, parity, the gate, drift's profile"},
                        "target": {"type": "string", "description": "The sample's column of ground truth"},
                        "name": {"type": "string", "description": "Default: the file's name"},
                        "serve": {"type": "boolean", "default": False, "description": "Through the gate"},
                        "force": {"type": "boolean", "default": False, "description": "With serve: no gate"},
                        "tolerance": {"type": "number", "minimum": 0, "description": "Parity's; 1e-5"},
                    },
                    "required": [FILE_FIELD],
                    "additionalProperties": False,
                },
            },
        },
    }
}
