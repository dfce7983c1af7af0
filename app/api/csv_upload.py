"""The CSV of a /predict/csv request, as its bytes arrive: a text/csv body, or a multipart form's `file`.

The form is parsed as it streams (python-multipart's push parser, as starlette's own form parser
uses it), not through request.form(), which reads the whole body into a spooled file before the
route may run: the file's bytes come out as they arrive, and nothing of the form is kept. Fields
other than `file` are skipped; reading stops once the file has ended.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request, status
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.api.uploads import FILE_FIELD, is_multipart

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

_MAX_PART_HEADERS = 16 * 1024  # a part's headers: a few hundred bytes in any real form


async def csv_bytes(request: Request) -> AsyncIterator[bytes]:
    """The CSV's bytes, as they arrive."""
    if not is_multipart(request):
        async for piece in request.stream():
            if piece:
                yield piece
        return
    _, options = parse_options_header(request.headers["content-type"])
    boundary = options.get(b"boundary")
    if not boundary:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Missing boundary in multipart.")
    file = _FilePart()
    parser = MultipartParser(boundary, file.callbacks())
    async for piece in request.stream():
        try:
            parser.write(piece)
        except FormParserError:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "Invalid multipart data.") from None
        for data in file.take():
            yield data
        if file.ended:
            return
    if not file.found:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "send the CSV as the form field 'file'")


class _FilePart:
    """The callbacks that pick the `file` part's bytes out of a multipart body."""

    def __init__(self) -> None:
        self.found = False  # the file part has begun
        self.ended = False
        self._in_file = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._header_bytes = 0
        self._data: list[bytes] = []

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def take(self) -> list[bytes]:
        """The file's bytes parsed since the last call."""
        data, self._data = self._data, []
        return data

    def _part_begin(self) -> None:
        self._disposition, self._header_bytes = b"", 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += self._counted(data[start:end])

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += self._counted(data[start:end])

    def _counted(self, data: bytes) -> bytes:
        self._header_bytes += len(data)
        if self._header_bytes > _MAX_PART_HEADERS:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "Invalid multipart data: part headers too long.")
        return data

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        # A file (it has a file name, as starlette tells files from fields), and only the first one.
        self._in_file = (
            not self.found and options.get(b"name") == FILE_FIELD.encode() and b"filename" in options
        )
        self.found = self.found or self._in_file

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._data.append(data[start:end])

    def _part_end(self) -> None:
        if self._in_file:
            self.ended, self._in_file = True, False
