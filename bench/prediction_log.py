"""What the prediction log costs: per model call on the request path, per logged row in the writer.

    python -m bench.prediction_log [--model-dir models] [--before /work/main] [--requests 2000]
                                   [--rounds 5] [--sample 1] [--database-url sqlite:///...]

First, the log's own costs, for this checkout and (--before) another one, e.g. the main branch's:
the log driven directly (PredictionLog.record, then PredictionLog.write as the writer thread calls
it, into a migrated database: a SQLite file unless --database-url), each checkout in a process of
its own importing its own code, for a 1-row and a 100-row request and a 10,000-row CSV chunk:
- request µs per call: what record() costs the request thread (the median call);
- writer CPU µs per logged row: the thread CPU of write(), encoding and inserting included (with
  SQLite, the database's work too: it runs in the thread).

Then the whole app with PREDICTION_LOG_SAMPLE=0 and =1 (--sample), driven in-process
(bench/inprocess.py), in alternating rounds so both see the same machine. Two figures per case,
each the median round's, with the ratio on / off:
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
import subprocess
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


# Rows per model call, and calls measured: about a second of the log's work each.
CASES = {"1 row": (1, 2000), "100 rows": (100, 400), "10,000-row chunk": (10_000, 10)}

# Run in a process of its own inside the checkout measured (its `app` package): only what both the
# per-row log and the per-call one offer (record, the pending list, write) is used.
_COSTS = """
import json, statistics, sys, tempfile, time
from pathlib import Path
import numpy as np
from app.db.session import Database
from app.db.prediction_log import PredictionLogStore
from app.serving.prediction_log import PredictionLog, prediction_ids
from app.serving.predictor import Predictor

model_dir, url, sample, cases = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
rounds = 3  # the median round's writer figure
database = Database(url)
database.migrate()
store = PredictionLogStore(database.session)
predictor = Predictor.load(model_dir, max_rows=10_000)
low = np.array([f.min or 0.0 for f in predictor.metadata.features])
high = np.array([f.max or 1.0 for f in predictor.metadata.features])
figures = {}
for case, (rows, calls) in cases.items():
    matrix = np.random.default_rng(0).uniform(low, high, size=(rows, len(low)))
    answers = predictor.infer(matrix)
    per_flush = max(1, 25_000 // rows)  # what the writer takes at most: half its buffer
    request, per_row = [], []
    for _ in range(rounds + 1):  # the first round warms the database file up, and is not counted
        log = PredictionLog(store, sample=sample, buffer_rows=10_000_000, retention_days=30)
        writer, logged = 0.0, 0
        for start in range(0, calls, per_flush):
            for _ in range(min(per_flush, calls - start)):
                ids = prediction_ids(rows)
                began = time.perf_counter()
                log.record(predictor, "bench", matrix, answers, ids)
                request.append(time.perf_counter() - began)
            pending, log._pending, log._pending_rows = log._pending, [], 0
            logged += sum(len(batch) for batch in pending)
            began = time.thread_time()
            log.write(pending)
            writer += time.thread_time() - began
        per_row.append(writer / max(logged, 1))
    figures[case] = {
        "request_us": 1e6 * statistics.median(request[calls:]),
        "writer_us_per_row": 1e6 * statistics.median(per_row[1:]),
    }
database.dispose()
print(json.dumps(figures))
"""


def costs(
    checkouts: dict[str, Path],
    model_dir: Path,
    sample: float,
    database_url: str | None,
    cases: dict[str, Any],
) -> dict[str, dict[str, dict[str, float]]]:
    """Per checkout and case: the request's µs per call and the writer's CPU µs per logged row."""
    found: dict[str, dict[str, dict[str, float]]] = {}
    for name, root in checkouts.items():
        with tempfile.TemporaryDirectory(prefix="bench-log-") as scratch:
            url = database_url or f"sqlite:///{scratch}/log.db"
            done = subprocess.run(
                [sys.executable, "-c", _COSTS, str(model_dir.resolve()), url, str(sample), json.dumps(cases)],
                cwd=root,
                env={**os.environ, "PYTHONPATH": str(root)},
                capture_output=True,
                text=True,
                check=False,
            )
        if done.returncode != 0:
            raise SystemExit(f"bench.prediction_log: {name} ({root}) failed:\n{done.stderr[-2000:]}")
        found[name] = json.loads(done.stdout.strip().splitlines()[-1])
    report(f"{'log costs':<18} " + " ".join(f"{n + ' req/call':>17} {n + ' writer/row':>19}" for n in found))
    for case in cases:
        report(
            f"{case:<18} "
            + " ".join(
                f"{found[n][case]['request_us']:>16.1f}µ {found[n][case]['writer_us_per_row']:>18.2f}µ"
                for n in found
            )
        )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sample", type=float, default=1.0, help="PREDICTION_LOG_SAMPLE when on")
    parser.add_argument("--before", type=Path, help="another checkout to measure the log's costs of")
    parser.add_argument("--database-url", help="where the log's costs write (default: a SQLite file)")
    parser.add_argument("--costs-only", action="store_true", help="skip the whole app on/off")
    args = parser.parse_args()
    if not (args.model_dir / "model.json").is_file():
        raise SystemExit(f"bench.prediction_log: no model in {args.model_dir}: `make train` first")
    checkouts = {"after": Path(__file__).resolve().parent.parent}
    if args.before is not None:
        checkouts = {"before": args.before.resolve(), **checkouts}
    costs(checkouts, args.model_dir, args.sample, args.database_url, CASES)
    if args.costs_only:
        return
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the access log, for the life of the process
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()
