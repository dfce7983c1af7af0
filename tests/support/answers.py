"""Answers compared across requests: prediction ids are random per request, so they are masked."""

from __future__ import annotations

import re
from typing import Any

ID = re.compile(r"^[A-Za-z0-9_-]{16}-\d+$")
_MASK = "<prediction_id>"


def without_ids(document: Any) -> Any:
    """The JSON answer with every prediction_id replaced by the same mark."""
    if isinstance(document, dict):
        return {k: _MASK if k == "prediction_id" else without_ids(v) for k, v in document.items()}
    if isinstance(document, list):
        return [without_ids(v) for v in document]
    return document


def masked(text: str) -> str:
    """A text answer (CSV, NDJSON, JSON) with the ids replaced by the same mark."""
    return re.sub(r"[A-Za-z0-9_-]{16}-\d+", _MASK, text)
