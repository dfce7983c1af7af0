"""What a shadow challenger costs the champion: /predict p50 at c=32 with the shadow off, then on.

    python -m bench.shadow [--duration 10] [--rounds 4] [--concurrency 32] [--rows 1]
                           [--model-dir models] [--workers 1]

It serves the trained model (MODEL_DIR, `make train`) with our service, publishes a second version
of it to the service's model store (the same model under another version: a challenger of the same
cost, as a retrain is), then drives one-row /predict with wrk in rounds, the shadow turned off and
on through DELETE and POST /model/shadow in turns (off first one round, on first the next: whichever
runs second in a pair tends to do better here). It prints each run, the mean p50s, their ratio
against the issue's target (on within +10% of off), and what the shadow did meanwhile (rows agreed,
dropped by its full queue, failed) from /metrics. Every process it starts is stopped on the way out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.harness import TARGET_CONCURRENCY, BenchError, Case, LoadResult, predictor_body, sample_rows
from bench.processes import Processes, Server, first_prediction_ours, post
from bench.run import OUT_DIR, ROOT, measure, say, start_ours

# The bound: the champion's p50 with a shadow on at most this many times its p50 without.
P50_TARGET = 1.10
SHADOW_RESULTS = ("agreed", "disagreed", "dropped", "failed")


@dataclass(frozen=True)
class ShadowCost:
    case: Case
    log_sample: str  # PREDICTION_LOG_SAMPLE: what share of rows, and of their shadow answers, is written
    off: list[LoadResult]
    on: list[LoadResult]
    shadow_rows: dict[str, float]  # what the shadow did with the rows offered while it was on

    @property
    def p50_off_ms(self) -> float:
        return statistics.fmean(r.p50_ms for r in self.off)

    @property
    def p50_on_ms(self) -> float:
        return statistics.fmean(r.p50_ms for r in self.on)

    @property
    def ratio(self) -> float:
        return self.p50_on_ms / self.p50_off_ms

    @property
    def passed(self) -> bool:
        return self.ratio <= P50_TARGET

    def as_json(self) -> dict[str, object]:
        return {
            "case": dataclasses.asdict(self.case),
            "prediction_log_sample": self.log_sample,
            "p50_off_ms": round(self.p50_off_ms, 3),
            "p50_on_ms": round(self.p50_on_ms, 3),
            "p50_on_over_off": round(self.ratio, 3),
            "target": P50_TARGET,
            "passed": self.passed,
            "shadow_rows": self.shadow_rows,
            "runs": {
                "off": [dataclasses.asdict(r) for r in self.off],
                "on": [dataclasses.asdict(r) for r in self.on],
            },
        }


def shadow_rows(exposition: str, version: str) -> dict[str, float]:
    """predictor_shadow_rows_total of `version`, by result, from /metrics' text."""
    found = dict.fromkeys(SHADOW_RESULTS, 0.0)
    for line in exposition.splitlines():
        if not line.startswith("predictor_shadow_rows_total{") or f'model_version="{version}"' not in line:
            continue
        labels, _, value = line.rpartition(" ")
        for result in SHADOW_RESULTS:
            if f'result="{result}"' in labels:
                found[result] += float(value)
    return found


def report(cost: ShadowCost) -> str:
    def mean(runs: list[LoadResult], field: str) -> float:
        return statistics.fmean(getattr(r, field) for r in runs)

    rows = cost.shadow_rows
    scored = rows["agreed"] + rows["disagreed"]
    offered = scored + rows["dropped"] + rows["failed"]
    verdict = "meets" if cost.passed else "MISSES"
    case = cost.case
    return "\n".join(
        [
            f"shadow cost ({case.champion}, {case.rows} row, c={case.concurrency}, "
            f"mean of {len(cost.off)} runs each, alternating, PREDICTION_LOG_SAMPLE {cost.log_sample}):",
            f"  shadow off: p50 {cost.p50_off_ms:.2f} ms  p99 {mean(cost.off, 'p99_ms'):.2f} ms  "
            f"{mean(cost.off, 'throughput'):,.0f} req/s",
            f"  shadow on:  p50 {cost.p50_on_ms:.2f} ms  p99 {mean(cost.on, 'p99_ms'):.2f} ms  "
            f"{mean(cost.on, 'throughput'):,.0f} req/s",
            f"  p50 on / off: {cost.ratio:.3f} ({verdict} the target <= {P50_TARGET:.2f})",
            f"  the shadow scored {scored:,.0f} of {offered:,.0f} rows offered "
            f"({rows['agreed']:,.0f} agreed, {rows['disagreed']:,.0f} disagreed), "
            f"dropped {rows['dropped']:,.0f} (queue full), failed {rows['failed']:,.0f}",
        ]
    )


def challenger_of(model_dir: Path, into: Path) -> Path:
    """A copy of the model folder under another version: a shadow exactly as costly as the champion."""
    shutil.copytree(model_dir, into)
    metadata = json.loads((into / "model.json").read_text())
    metadata["version"] = f"{metadata['version']}-shadow"
    (into / "model.json").write_text(json.dumps(metadata, indent=2))
    return into


def metrics_text(server: Server) -> str:
    """GET /metrics, with METRICS_TOKEN when the environment the server inherited sets one."""
    token = os.environ.get("METRICS_TOKEN")
    return get(f"{server.base_url}/metrics", {"Authorization": f"Bearer {token}"} if token else {})


def get(url: str, headers: dict[str, str]) -> str:
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"the benchmark talks to 127.0.0.1 only, not {url}")
    request = urllib.request.Request(url, headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (127.0.0.1 only, checked above)
        return response.read().decode()


def toggle(server: Server, authorization: str, version: str | None) -> None:
    """POST /model/shadow {"version": version}, or DELETE /model/shadow for None."""
    headers = {"Authorization": authorization, "Content-Type": "application/json"}
    url = f"{server.base_url}/model/shadow"
    if version is None:
        request = urllib.request.Request(url, headers=headers, method="DELETE")  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (our server's URL)
            status = response.status
        answer = b""
    else:
        status, answer = post(url, json.dumps({"version": version}).encode(), headers, timeout=30)
    if status != 200:
        raise BenchError(
            f"{'POST' if version else 'DELETE'} /model/shadow answered {status}: {answer[:300]!r}"
        )


def bench_shadow(args: argparse.Namespace, scratch: Path, processes: Processes) -> ShadowCost:
    model_dir = args.model_dir.resolve()
    if not (model_dir / "model.json").is_file():
        raise BenchError(f"{model_dir} holds no model: train one first (make train)")
    work = scratch / "work"
    work.mkdir()
    shutil.copytree(model_dir, work / "models")
    metadata = json.loads((work / "models" / "model.json").read_text())
    challenger = challenger_of(model_dir, scratch / "challenger")
    store_env = {"MODEL_STORE_URL": str(work / "store"), "MODEL_CACHE_DIR": str(work / "cache")}
    if args.log_sample is not None:
        store_env["PREDICTION_LOG_SAMPLE"] = str(args.log_sample)
    # The service publishes the champion to its store at start-up; the challenger goes there first.
    from app.adapters.model_store import ModelStore, now  # the app's own code, as it serves
    from app.core.versions import VersionRecord

    store = ModelStore.from_url(store_env["MODEL_STORE_URL"], Path(store_env["MODEL_CACHE_DIR"]))
    shadow_version = store.publish(challenger, VersionRecord(origin="pipeline", recorded_at=now()))
    body = work / "body-1.json"
    body.write_text(predictor_body(sample_rows(metadata["features"], args.rows)))
    champion = metadata.get("name", "model")
    server, username, password = start_ours(processes, work, args, champion, store_env, label="ours-shadow")
    token, _ = first_prediction_ours(server, username, password, body.read_bytes())
    authorization = f"Bearer {token}"
    case = Case(champion, args.rows, args.concurrency)
    url = f"{server.base_url}/predict"
    runs: dict[bool, list[LoadResult]] = {False: [], True: []}
    before = shadow_rows(metrics_text(server), shadow_version)
    try:
        for round_number in range(args.rounds):
            for shadow_on in (False, True) if round_number % 2 == 0 else (True, False):
                toggle(server, authorization, shadow_version if shadow_on and not args.aa else None)
                say(f"round {round_number + 1}: shadow {'on' if shadow_on else 'off'}")
                runs[shadow_on].append(measure(server, url, body, case, args, authorization))
        after = shadow_rows(metrics_text(server), shadow_version)
    finally:
        processes.stop(server)
    sample = store_env.get("PREDICTION_LOG_SAMPLE", os.environ.get("PREDICTION_LOG_SAMPLE", "default (1)"))
    return ShadowCost(
        case, sample, runs[False], runs[True], {r: after[r] - before[r] for r in SHADOW_RESULTS}
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of measured load per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up load before each run")
    parser.add_argument("--rounds", type=int, default=4, help="pairs of runs, shadow off and on")
    parser.add_argument("--concurrency", type=int, default=TARGET_CONCURRENCY)
    parser.add_argument("--rows", type=int, default=1, help="rows per /predict request")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers")
    parser.add_argument(
        "--log-sample",
        type=float,
        default=None,
        help="PREDICTION_LOG_SAMPLE for the server (default: the service's, 1: every row and its shadow "
        "answer written; production charts set 0.1)",
    )
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models", help="the model to serve")
    parser.add_argument(
        "--aa", action="store_true", help="an A/A run: the shadow stays off in the 'on' runs too (the noise)"
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR / "shadow.json")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.code = ROOT
    return args


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # as Ctrl-C does: through every `finally`, which stops the server


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: error: wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 1
    (args.out.parent / "logs").mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    processes = Processes()
    try:
        cost = bench_shadow(args, scratch, processes)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; every server it started is stopped", file=sys.stderr)
        return 130
    finally:
        processes.stop_all()
        shutil.rmtree(scratch, ignore_errors=True)
    args.out.write_text(json.dumps(cost.as_json(), indent=2) + "\n")
    print("\n" + report(cost) + f"\n  figures in {args.out}", flush=True)
    return 0 if cost.passed else 2


if __name__ == "__main__":
    sys.exit(main())
