"""How a stage fails: one clear line, a non-zero exit, no traceback for expected problems."""

from __future__ import annotations

import sys
from collections.abc import Callable


class PipelineError(Exception):
    """A problem with the user's data or params: the message names the column, row or key."""


def run_stage(name: str, main: Callable[[], None]) -> None:
    try:
        main()
    except PipelineError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
