"""How a stage runs from the command line: `--params`, one clear error line, a non-zero exit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from app.pipeline.errors import PipelineError
from app.pipeline.params import DEFAULT_PARAMS, Params


def run_stage(name: str, doc: str, stage: Callable[[Params], object]) -> None:
    parser = argparse.ArgumentParser(
        prog=f"python -m app.pipeline.{name}", description=doc.strip().split("\n")[0]
    )
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="the params file (params.yaml)")
    args = parser.parse_args()
    try:
        stage(Params.load(args.params))
    except PipelineError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
