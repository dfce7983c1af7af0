"""Pure helpers of the benchmark: request bodies, wrk's report, the comparison and its table.

Nothing here starts a process or opens a socket, so tests/bench can check all of it quickly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

RESULT_MARKER = "BENCH_RESULT "

# The targets, at concurrency 32 with one row: our throughput over mlflow's.
THROUGHPUT_TARGETS = {"logistic_regression": 3.0, "random_forest": 1.5}
TARGET_ROWS = 1
TARGET_CONCURRENCY = 32
COLD_START_TARGET_S = 1.0
# Resident memory of one serving worker after the load, model loaded.
RSS_TARGET_MIB = 150.0


class BenchError(Exception):
    """The benchmark cannot give a trustworthy figure: a failed request, a server that died."""


# --- Inputs -------------------------------------------------------------------------------


def forced_params(
    params: dict[str, Any], champion: str, task: Literal["classification", "regression"] = "classification"
) -> dict[str, Any]:
    """A copy of params.yaml's content with `train.champion` forced to one of its candidates for
    `task` (the benchmarked champions are classifiers, trained on the project's data set)."""
    # Imported here: app.pipeline brings scikit-learn, which the other helpers do without.
    from pydantic import ValidationError

    from app.pipeline.params import TrainParams

    train = dict(params.get("train") or {})
    try:
        listed = TrainParams.model_validate({**train, "champion": None}).candidates_for(task)
    except ValidationError as exc:
        raise BenchError(f"params.yaml: train: {exc.errors()[0]['msg']}") from None
    if champion not in listed:
        raise BenchError(
            f"params.yaml: '{champion}' is not in train.candidates for {task} (listed: {', '.join(listed)})"
        )
    train["champion"] = champion
    return {**params, "train": train}


def sample_rows(features: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """`count` plausible rows built from model.json's feature schema, deterministic and varied.

    Numeric values spread over the training range; categorical ones cycle through the known
    categories. Every value is valid, so every request should answer 200.
    """
    rows = []
    for i in range(count):
        row: dict[str, Any] = {}
        for j, feature in enumerate(features):
            # Golden-ratio steps: well spread over [0, 1) without any randomness.
            fraction = ((i + 1) * 0.6180339887 + j * 0.3819660113) % 1.0
            if feature["type"] == "categorical":
                categories = feature.get("categories") or ["missing"]
                row[feature["name"]] = categories[(i + j) % len(categories)]
            else:
                low = feature.get("min")
                high = feature.get("max")
                low = 0.0 if low is None else float(low)
                high = low + 1.0 if high is None else float(high)
                row[feature["name"]] = round(low + (high - low) * fraction, 3)
        rows.append(row)
    return rows


def predictor_body(rows: list[dict[str, Any]]) -> str:
    """The body of our POST /predict."""
    return json.dumps({"instances": rows})


def mlflow_body(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """The body of mlflow's POST /invocations: a pandas DataFrame in "split" orientation."""
    return json.dumps(
        {"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}}
    )


# --- wrk ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    requests: int
    duration_s: float
    throughput: float  # requests per second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    non_200: int
    socket_errors: int
    first_bad: str = ""
    # The server's own CPU time during the run (all its processes), when the bench read it.
    server_cpu_s: float | None = None

    @property
    def failed(self) -> bool:
        return self.non_200 > 0 or self.socket_errors > 0 or self.requests == 0

    @property
    def cpu_us_per_request(self) -> float:
        return 1e6 * (self.server_cpu_s or float("nan")) / max(self.requests, 1)


def parse_wrk_report(stdout: str) -> LoadResult:
    """The line bench/post.lua's done() prints, as numbers (wrk reports microseconds)."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith(RESULT_MARKER)), None)
    if line is None:
        raise BenchError(f"wrk printed no {RESULT_MARKER.strip()} line:\n{stdout.strip()[-2000:]}")
    try:
        raw = json.loads(line[len(RESULT_MARKER) :])
    except json.JSONDecodeError as exc:
        raise BenchError(f"wrk's result line is not JSON ({exc}): {line[:300]}") from None
    duration_s = raw["duration_us"] / 1e6
    return LoadResult(
        requests=raw["requests"],
        duration_s=round(duration_s, 3),
        throughput=round(raw["requests"] / duration_s, 1) if duration_s > 0 else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        mean_ms=round(raw["mean_us"] / 1000, 3),
        max_ms=raw["max_us"] / 1000,
        non_200=raw["non_200"],
        socket_errors=sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")),
        first_bad=raw.get("first_bad", ""),
    )


def wrk_command(url: str, body_file: str, script: str, *, concurrency: int, duration_s: float) -> list[str]:
    """One wrk thread is plenty for a few thousand requests a second, and leaves the CPU to the servers."""
    return [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "10s",
        "-s",
        script,
        url,
        "--",
        body_file,
    ]


# --- Comparison ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    champion: str
    rows: int
    concurrency: int

    @property
    def label(self) -> str:
        return f"{self.champion} rows={self.rows} c={self.concurrency}"


@dataclass(frozen=True)
class Comparison:
    case: Case
    ours: LoadResult
    mlflow: LoadResult

    @property
    def throughput_ratio(self) -> float:
        return self.ours.throughput / self.mlflow.throughput if self.mlflow.throughput else float("inf")

    @property
    def p50_ratio(self) -> float:
        return self.ours.p50_ms / self.mlflow.p50_ms if self.mlflow.p50_ms else float("inf")

    @property
    def p99_ratio(self) -> float:
        return self.ours.p99_ms / self.mlflow.p99_ms if self.mlflow.p99_ms else float("inf")


def cases(champions: list[str], rows: list[int], concurrencies: list[int]) -> list[Case]:
    return [Case(ch, r, c) for ch in champions for r in rows for c in concurrencies]


def target_verdicts(
    comparisons: list[Comparison], cold_starts: dict[str, float], rss_mib: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Each of the issue's targets that this run measured: what was asked, what we got, met or not."""
    verdicts = []
    for comparison in comparisons:
        case = comparison.case
        goal = THROUGHPUT_TARGETS.get(case.champion)
        if goal is None or (case.rows, case.concurrency) != (TARGET_ROWS, TARGET_CONCURRENCY):
            continue
        verdicts.append(
            {
                "target": f"{case.champion}: throughput >= {goal:g}x mlflow (1 row, c=32)",
                "measured": f"{comparison.throughput_ratio:.2f}x",
                "met": comparison.throughput_ratio >= goal,
            }
        )
        verdicts.append(
            {
                "target": f"{case.champion}: p99 below mlflow's (1 row, c=32)",
                "measured": f"{comparison.ours.p99_ms:.1f} ms vs {comparison.mlflow.p99_ms:.1f} ms",
                "met": comparison.ours.p99_ms < comparison.mlflow.p99_ms,
            }
        )
    for champion, seconds in cold_starts.items():
        verdicts.append(
            {
                "target": f"{champion}: our cold start <= {COLD_START_TARGET_S:g} s",
                "measured": f"{seconds:.2f} s",
                "met": seconds <= COLD_START_TARGET_S,
            }
        )
    for champion, mib in (rss_mib or {}).items():
        verdicts.append(
            {
                "target": f"{champion}: RSS per worker after the load <= {RSS_TARGET_MIB:g} MiB",
                "measured": f"{mib:.0f} MiB",
                "met": mib <= RSS_TARGET_MIB,
            }
        )
    return verdicts


def format_table(comparisons: list[Comparison]) -> str:
    header = [
        "champion",
        "rows",
        "conc",
        "ours req/s",
        "mlflow req/s",
        "x",
        "ours p50",
        "mlflow p50",
        "ours p99",
        "mlflow p99",
        "p99 ratio",
    ]
    body = [
        [
            c.case.champion,
            str(c.case.rows),
            str(c.case.concurrency),
            f"{c.ours.throughput:,.0f}",
            f"{c.mlflow.throughput:,.0f}",
            f"{c.throughput_ratio:.2f}",
            f"{c.ours.p50_ms:.2f} ms",
            f"{c.mlflow.p50_ms:.2f} ms",
            f"{c.ours.p99_ms:.2f} ms",
            f"{c.mlflow.p99_ms:.2f} ms",
            f"{c.p99_ratio:.2f}",
        ]
        for c in comparisons
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    # Text left, numbers right.
    lines = []
    for row in [header, *body]:
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_cold_starts(ours: dict[str, float], mlflow: dict[str, float]) -> str:
    return "\n".join(
        f"cold start {name}: ours {seconds:.2f} s, mlflow {mlflow.get(name, float('nan')):.2f} s"
        for name, seconds in ours.items()
    )


def results_document(
    comparisons: list[Comparison],
    cold_starts: dict[str, dict[str, float]],
    settings: dict[str, Any],
    rss_mib: dict[str, float] | None = None,
) -> dict[str, Any]:
    """What results.json holds: every figure of the table, the cold starts, the run's settings."""
    return {
        "settings": settings,
        "results": [
            {
                **asdict(c.case),
                "ours": asdict(c.ours),
                "mlflow": asdict(c.mlflow),
                "throughput_ratio": round(c.throughput_ratio, 3),
                "p50_ratio": round(c.p50_ratio, 3),
                "p99_ratio": round(c.p99_ratio, 3),
            }
            for c in comparisons
        ],
        "cold_start_s": cold_starts,
        "rss_mib": rss_mib or {},
        "targets": target_verdicts(comparisons, cold_starts.get("ours", {}), rss_mib),
    }


# --- Profiles -----------------------------------------------------------------------------


# Frames every sample passes through (thread start, the server's main loop): no news in a ranking.
_ROOT_FRAMES = (
    "threading.py)",
    "<frozen runpy>)",
    "uvicorn/main.py)",
    "uvicorn/server.py)",
    "uvicorn/_compat.py)",
)


def _frame_name(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (path/to/file.py)`: lines of one function add up."""
    head, sep, tail = frame.rpartition(":")
    return f"{head})" if sep and tail.rstrip(")").isdigit() else frame


def summarize_profile(collapsed: str, top: int = 25) -> list[tuple[float, float, str]]:
    """py-spy's raw (collapsed) stacks as (inclusive share, self share, function), busiest first.

    Recorded with --gil, each sample is the thread that held the GIL: the shares say where the
    server's CPU went. Idle threadpool workers waiting on their queue are left out.
    """
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame_name(f) for f in stack.split(";")]
        if frames[-1].startswith("Condition.wait ") or frames[-1].startswith("wait ("):
            continue
        samples = int(count)
        total += samples
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + samples
        own[frames[-1]] = own.get(frames[-1], 0) + samples
    if total == 0:
        return []
    ranked = sorted(
        ((frame, n) for frame, n in inclusive.items() if not frame.endswith(_ROOT_FRAMES)),
        key=lambda item: -item[1],
    )[:top]
    return [(n / total, own.get(frame, 0) / total, frame) for frame, n in ranked]


def format_profile(summary: list[tuple[float, float, str]]) -> str:
    lines = ["  total   self  function"]
    lines += [f"{inc:6.1%} {own:6.1%}  {frame}" for inc, own, frame in summary]
    return "\n".join(lines)
