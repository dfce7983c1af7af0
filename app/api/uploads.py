"""Request bodies read as bytes: a JSON body, a training CSV sent as a multipart upload.

The size of each is bounded before it gets here: app.api.body_limit refuses a body past
MAX_BODY_BYTES (413), declared or not, so nothing below holds more than that. A multipart form
takes one file and a few fields; its spooled files are closed on every path. (The CSV of
/predict/csv is not read whole: app.api.csv_upload streams it.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, StrictBool, TypeAdapter, ValidationError

FILE_FIELD = "file"
FEEDBACK_FIELD = "include_feedback"


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str | None  # cleaned by safe_name: for messages only, never a path


async def read_body(request: Request) -> bytes:
    return await request.body()


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("multipart/form-data")


def is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip() == "application/json"


class TrainOptions(BaseModel):
    """POST /train's options: a JSON object, or form fields beside the upload; no body is {}."""

    model_config = ConfigDict(extra="forbid")

    # Add the labelled prediction log (POST /feedback's ground truth) to the data it trains on.
    include_feedback: StrictBool = False


@dataclass(frozen=True)
class TrainingRequest:
    upload: Upload | None  # None: the project's data
    options: TrainOptions


_FORM_FLAG = TypeAdapter(bool)  # "true", "false", "1", "0", ... as FastAPI reads a form's boolean


def invalid_fields(error: ValidationError, *loc: str) -> RequestValidationError:
    """A form's or a body's fields that pydantic refused, answered 422 as FastAPI answers its own."""
    return RequestValidationError([{**e, "loc": ("body", *loc, *e["loc"])} for e in error.errors()])


async def _training_form(request: Request) -> TrainingRequest:
    """The multipart field `file` (optional) and the options as plain fields."""
    form = await request.form(max_files=1, max_fields=10)
    try:
        if set(form.keys()) - {FILE_FIELD, FEEDBACK_FIELD}:  # a misspelt option must not be ignored
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"unknown form field: the form takes '{FILE_FIELD}' and '{FEEDBACK_FIELD}' only",
            )
        field, flag = form.get(FILE_FIELD), form.get(FEEDBACK_FIELD)
        if isinstance(field, str):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the form field 'file' must be a file")
        if flag is not None and not isinstance(flag, str):
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, f"the form field '{FEEDBACK_FIELD}' must not be a file"
            )
        try:
            include = _FORM_FLAG.validate_python(flag) if flag is not None else False
        except ValidationError as exc:
            raise invalid_fields(exc, FEEDBACK_FIELD) from None
        upload = Upload(await field.read(), safe_name(field.filename)) if field is not None else None
        return TrainingRequest(upload, TrainOptions(include_feedback=include))
    finally:  # its spooled files, also when a field is refused
        await form.close()


async def read_training_request(request: Request) -> TrainingRequest:
    """A multipart form (the training CSV in `file`, options as fields), a JSON object of options, or
    no body at all: the project's data, default options."""
    if is_multipart(request):
        return await _training_form(request)
    body = await read_body(request)
    if not body:
        return TrainingRequest(None, TrainOptions())
    if not is_json(request):
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            "send the training CSV as multipart/form-data, field 'file', the options as a JSON object "
            "(application/json), or no body at all",
        )
    try:
        return TrainingRequest(None, TrainOptions.model_validate_json(body))
    except ValidationError as exc:
        raise invalid_fields(exc) from None


def safe_name(name: str | None) -> str | None:
    """The uploaded file's base name, for messages only; never used as a path."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in base if ch.isalnum() or ch in "._- ")[:100].strip()
    return cleaned or None


BodyDep = Annotated[bytes, Depends(read_body)]
TrainingRequestDep = Annotated[TrainingRequest, Depends(read_training_request)]

_FILE_SCHEMA: dict[str, Any] = {"type": "string", "format": "binary"}

# For openapi_extra: the routes read these bodies themselves, so FastAPI cannot describe them.
CSV_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {FILE_FIELD: _FILE_SCHEMA},
                    "required": [FILE_FIELD],
                }
            },
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}
TRAINING_REQUEST_DOC: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {FILE_FIELD: _FILE_SCHEMA, FEEDBACK_FIELD: {"type": "boolean"}},
                    "additionalProperties": False,
                },
            },
            "application/json": {"schema": TrainOptions.model_json_schema()},
        },
    }
}
