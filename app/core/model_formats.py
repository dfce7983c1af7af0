"""Which model files run code as they load: one answer for `models import` and POST /models/import.

A pickle (what joblib writes) executes whatever it was made to while it loads, and so may an MLflow
model whose loader is its own Python. Both are imported only from the command line, for files the
operator trusts; over HTTP they are refused with the same words.
"""

from __future__ import annotations

from pathlib import PurePath

PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
PICKLE_MAGIC = b"\x80"  # pickle protocol 2 and later


def is_pickle(head: bytes, name: str) -> bool:
    """By the file's first bytes or its name's suffix."""
    return head.startswith(PICKLE_MAGIC) or PurePath(name).suffix.lower() in PICKLE_SUFFIXES


def code_refused(what: str, command_argument: str) -> str:
    """Why `what` is refused here, and the command that imports it."""
    return (
        f"{what} runs Python code as it loads, so it is only imported from the command line, for a "
        f"model you trust: python -m app.cli models import {command_argument}"
    )
