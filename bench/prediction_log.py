"""What the prediction log costs a request: the same app with PREDICTION_LOG_SAMPLE=0 and =1.

    python -m bench.prediction_log [--model-dir models] [--requests 2000] [--rounds 5] [--sample 1]

Both apps are driven in-process (bench/inprocess.py), in alternating rounds so both see the same
machine. Two figures per case, each the median round's, with the ratio on / off:
- wall µs per request: what the caller waits, the request path only (the log's writer runs in
  another thread, so what shows here is the buffering and any contention for the GIL);
- CPU µs per request: the whole process's CPU, the writer thread's inserts included.
Each round ends with the log flushed, so the writer's work is inside the round that caused it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.inprocess import PASSWORD, Call, our_app, report, request, token


async def timed(call: Call, requests: int, flush: Any) -> tuple[float, float]:
    """(wall µs, CPU µs) per request over `requests` calls, the log flushed before the clocks stop."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(requests):
        status = await call()
        if status != 200:
            raise SystemExit(f"bench.prediction_log: a request answered {status}")
    wall_done = time.perf_counter()
    if flush is not None:
        flush()
    return 1e6 * (wall_done - wall) / requests, 1e6 * (time.process_time() - cpu) / requests


async def measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from app.core.artifacts import ModelMetadata

    metadata = ModelMetadata.read(args.model_dir)
    row = {name: 1.0 for name in metadata.feature_names}
    bodies = {
        "1 row": json.dumps({"instances": [row]}).encode(),
        "100 rows": json.dumps({"instances": [row] * 100}).encode(),
    }
    with (
        tempfile.TemporaryDirectory(prefix="bench-log-") as off_dir,
        tempfile.TemporaryDirectory(prefix="bench-log-") as on_dir,
    ):
        off = our_app(args.model_dir, Path(off_dir), prediction_log_sample=0, max_batch_rows=100)
        on = our_app(args.model_dir, Path(on_dir), prediction_log_sample=args.sample, max_batch_rows=100)
        async with off.router.lifespan_context(off), on.router.lifespan_context(on):
            calls: dict[str, dict[str, tuple[Call, Any]]] = {}
            for name, app in (("off", off), ("on", on)):
                auth = {"authorization": f"Bearer {await token(app, 'bench', PASSWORD)}"}
                headers = auth | {"content-type": "application/json"}
                flush = app.state.services.prediction_log.flush if app.state.services.prediction_log else None
                for case, body in bodies.items():
                    calls.setdefault(case, {})[name] = (
                        request(app, "POST", "/predict", body, headers),
                        flush,
                    )
            for pair in calls.values():  # warm up
                for call, flush in pair.values():
                    await timed(call, 100, flush)
            rounds: dict[str, dict[str, list[tuple[float, float]]]] = {
                case: {"off": [], "on": []} for case in calls
            }
            for _ in range(args.rounds):
                for case, pair in calls.items():
                    for name, (call, flush) in pair.items():
                        rounds[case][name].append(await timed(call, args.requests, flush))
    figures: dict[str, dict[str, float]] = {}
    report(
        f"{'/predict':<10} {'wall off':>9} {'wall on':>9} {'on/off':>7} "
        f"{'CPU off':>9} {'CPU on':>9} {'on/off':>7}"
    )
    for case, runs in rounds.items():
        wall = {name: statistics.median(w for w, _ in found) for name, found in runs.items()}
        cpu = {name: statistics.median(c for _, c in found) for name, found in runs.items()}
        figures[case] = {
            "wall_ratio": wall["on"] / wall["off"],
            "cpu_ratio": cpu["on"] / cpu["off"],
        }
        report(
            f"{case:<10} {wall['off']:>8.1f}µ {wall['on']:>8.1f}µ {figures[case]['wall_ratio']:>6.2f}x "
            f"{cpu['off']:>8.1f}µ {cpu['on']:>8.1f}µ {figures[case]['cpu_ratio']:>6.2f}x"
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sample", type=float, default=1.0, help="PREDICTION_LOG_SAMPLE when on")
    args = parser.parse_args()
    if not (args.model_dir / "model.json").is_file():
        raise SystemExit(f"bench.prediction_log: no model in {args.model_dir}: `make train` first")
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the access log, for the life of the process
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()
