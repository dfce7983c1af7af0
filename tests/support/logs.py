"""The service's JSON log lines, captured while a test runs."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from app.observability.logging import LOGGER_NAME, JsonFormatter


@contextmanager
def captured_log() -> Iterator[io.StringIO]:
    """The text the `predictor` loggers write meanwhile, one JSON object per line."""
    logger = logging.getLogger(LOGGER_NAME)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
