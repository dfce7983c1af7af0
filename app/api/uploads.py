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

FILE_FIELD = "file"


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str | None  # cleaned by safe_name: for messages only, never a path


async def read_body(request: Request) -> bytes:
    return await request.body()


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("multipart/form-data")


async def _form_file(request: Request) -> Upload | str | None:
    """The form field `file`: its bytes, a str when it was sent as a plain field, None when absent."""
    form = await request.form(max_files=1, max_fields=10)
    try:
        field = form.get(FILE_FIELD)
        if field is None or isinstance(field, str):
            return field
        return Upload(await field.read(), safe_name(field.filename))
    finally:  # its spooled files, also when the field is missing
        await form.close()


async def read_training_upload(request: Request) -> Upload | None:
    """The training CSV of the multipart field `file`, or None when the request carries no file."""
    if not is_multipart(request):
        if await read_body(request):
            raise HTTPException(
                status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                "send the training CSV as multipart/form-data, field 'file' (or no body at all)",
            )
        return None
    upload = await _form_file(request)
    if isinstance(upload, str):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the form field 'file' must be a file")
    return upload


def safe_name(name: str | None) -> str | None:
    """The uploaded file's base name, for messages only; never used as a path."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in base if ch.isalnum() or ch in "._- ")[:100].strip()
    return cleaned or None


BodyDep = Annotated[bytes, Depends(read_body)]
TrainingUploadDep = Annotated[Upload | None, Depends(read_training_upload)]

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
TRAINING_UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {FILE_FIELD: _FILE_SCHEMA}},
            }
        },
    }
}
