"""Pure helpers of the benchmark: request bodies, wrk's report, the comparisons, their tables and verdicts.

Nothing here starts a process or opens a socket, so tests/bench can check all of it quickly.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

RESULT_MARKER = "BENCH_RESULT "

# The other servers of the same model, in the order of the table's column sets.
PEERS = ("mlflow", "bentoml")
# BentoML runs in a virtualenv of its own (bench/run.py), with the project's versions of what
# unpickling the pipeline needs, so it serves the very model.joblib ours was trained into.
BENTOML_VERSION = "1.4.40"
SHARED_WITH_BENTOML = ("scikit-learn", "numpy", "scipy", "joblib")

# The targets, at concurrency 32: our throughput over a peer's, per (peer, champion, rows),
# each with a p99 below the peer's.
TARGET_CONCURRENCY = 32
THROUGHPUT_TARGETS = {
    ("mlflow", "logistic_regression", 1): 3.0,
    ("mlflow", "random_forest", 1): 1.5,
    ("bentoml", "logistic_regression", 1): 3.0,
    ("bentoml", "logistic_regression", 100): 3.0,
    ("bentoml", "random_forest", 1): 3.0,
    ("bentoml", "random_forest", 100): 3.0,
}
# Ours over our own service built from the baseline commit (--baseline), at c=32, for every
# champion: per rows of the request.
BASELINE = "baseline"
BASELINE_TARGETS = {1: 2.0, 100: 3.0}
# Our p99 at most this many times our p50, one row at c=32: the tail is not ours to add.
TAIL_TARGET = 4.0
# Ours over the bare FastAPI app (bench/ceiling.py) at c=32: one-row /predict, and /health.
CEILING_TARGETS = {"predict": 0.5, "health": 0.8}
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
    """The body of our POST /predict, and of the ceiling's and BentoML's: BentoML names the JSON
    field after the API's parameter, `instances` in bench/bento_service.py."""
    return json.dumps({"instances": rows})


def mlflow_body(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """The body of mlflow's POST /invocations: a pandas DataFrame in "split" orientation."""
    return json.dumps(
        {"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}}
    )


def request_body(server: str, rows: list[dict[str, Any]], columns: list[str]) -> str:
    """What `server` (ours, a peer, the ceiling) takes for these rows."""
    return mlflow_body(rows, columns) if server == "mlflow" else predictor_body(rows)


def parse_peers(text: str) -> list[str]:
    """BENCH_PEERS ("mlflow,bentoml"): the peers to measure, in the table's order; "" for none."""
    chosen = {name.strip().lower() for name in text.split(",") if name.strip()}
    unknown = chosen - set(PEERS)
    if unknown:
        raise BenchError(f"unknown peer(s) {', '.join(sorted(unknown))}: choose among {', '.join(PEERS)}")
    return [name for name in PEERS if name in chosen]


def bentoml_requirements(installed: Mapping[str, str]) -> list[str]:
    """The pins of BentoML's virtualenv: BentoML, and the project's own version of each package
    the pickled pipeline needs (`installed`: name -> version in the project's virtualenv)."""
    missing = [name for name in SHARED_WITH_BENTOML if name not in installed]
    if missing:
        raise BenchError(f"the project's virtualenv lacks {', '.join(missing)}: run make install")
    return [f"bentoml=={BENTOML_VERSION}", *(f"{name}=={installed[name]}" for name in SHARED_WITH_BENTOML)]


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


def wrk_command(
    url: str, body_file: str | None, script: str, *, concurrency: int, duration_s: float
) -> list[str]:
    """One wrk thread is plenty for a few thousand requests a second, and leaves the CPU to the servers.

    With a body file the script POSTs it; without one it GETs the URL (/health).
    """
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
        *(["--", body_file] if body_file is not None else []),
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
    """One case: our run, the baseline's (when one was given) and each peer's, under the same load."""

    case: Case
    ours: LoadResult
    peers: dict[str, LoadResult]
    # Our service built from the baseline commit (--baseline); None without one.
    baseline: LoadResult | None = None

    @property
    def others(self) -> dict[str, LoadResult]:
        """Every server ours is compared with, in the table's order: the baseline, then the peers."""
        return ({BASELINE: self.baseline} if self.baseline is not None else {}) | self.peers

    def throughput_ratio(self, other: str) -> float:
        theirs = self.others[other].throughput
        return self.ours.throughput / theirs if theirs else float("inf")

    def p50_ratio(self, other: str) -> float:
        theirs = self.others[other].p50_ms
        return self.ours.p50_ms / theirs if theirs else float("inf")

    def p99_ratio(self, other: str) -> float:
        theirs = self.others[other].p99_ms
        return self.ours.p99_ms / theirs if theirs else float("inf")


def cases(champions: list[str], rows: list[int], concurrencies: list[int]) -> list[Case]:
    return [Case(ch, r, c) for ch in champions for r in rows for c in concurrencies]


@dataclass(frozen=True)
class CeilingResult:
    """One route, ours against the bare FastAPI app: every alternating run of each, at c=32."""

    route: Literal["predict", "health"]
    ours: list[LoadResult]
    ceiling: list[LoadResult]

    @property
    def ours_throughput(self) -> float:
        return statistics.fmean(r.throughput for r in self.ours)

    @property
    def ceiling_throughput(self) -> float:
        return statistics.fmean(r.throughput for r in self.ceiling)

    @property
    def ratio(self) -> float:
        return self.ours_throughput / self.ceiling_throughput if self.ceiling_throughput else 0.0

    @property
    def target(self) -> float:
        return CEILING_TARGETS[self.route]

    @property
    def label(self) -> str:
        return "one-row POST /predict" if self.route == "predict" else "GET /health"


def _cpu_us_per_request(runs: list[LoadResult]) -> float:
    """Total server CPU time over total requests, over all of a server's runs."""
    requests = sum(r.requests for r in runs)
    if not requests or any(r.server_cpu_s is None for r in runs):
        return float("nan")  # not read
    return 1e6 * sum(r.server_cpu_s or 0.0 for r in runs) / requests


def _rounded(value: float, digits: int = 1) -> float | None:
    return None if math.isnan(value) else round(value, digits)  # JSON has no NaN


def ceiling_json(results: list[CeilingResult], champion: str) -> dict[str, Any]:
    return {
        "champion": champion,
        "concurrency": TARGET_CONCURRENCY,
        "rounds": len(results[0].ours) if results else 0,
        **{
            r.route: {
                "throughput_ours": round(r.ours_throughput, 1),
                "throughput_ceiling": round(r.ceiling_throughput, 1),
                "ours_over_ceiling": round(r.ratio, 3),
                "target": r.target,
                "p99_ms_ours": round(statistics.median(x.p99_ms for x in r.ours), 2),
                "p99_ms_ceiling": round(statistics.median(x.p99_ms for x in r.ceiling), 2),
                "cpu_us_per_request_ours": _rounded(_cpu_us_per_request(r.ours)),
                "cpu_us_per_request_ceiling": _rounded(_cpu_us_per_request(r.ceiling)),
            }
            for r in results
        },
    }


def format_ceiling(results: list[CeilingResult], champion: str) -> str:
    return "\n".join(
        f"ceiling, {r.label} ({champion}, c={TARGET_CONCURRENCY}, mean of {len(r.ours)} alternating runs): "
        f"ours {r.ours_throughput:,.0f} req/s, bare FastAPI {r.ceiling_throughput:,.0f}: "
        f"{r.ratio:.2f}x (target >= {r.target:g}x); server CPU per request "
        f"{_cpu_us_per_request(r.ours):.0f} µs against {_cpu_us_per_request(r.ceiling):.0f} µs"
        for r in results
    )


def _row_label(rows: int) -> str:
    return f"{rows} row{'s' if rows != 1 else ''}, c={TARGET_CONCURRENCY}"


def baseline_name(commit: str = "") -> str:
    """How tables and verdicts name the baseline: with its short commit when known."""
    return f"{BASELINE} {commit[:7]}" if commit else BASELINE


def target_verdicts(
    comparisons: list[Comparison],
    cold_starts: dict[str, float],
    rss_mib: dict[str, float] | None = None,
    ceiling: list[CeilingResult] | None = None,
    baseline_commit: str = "",
) -> list[dict[str, Any]]:
    """Each of the issue's targets that this run measured: what was asked, what we got, met or not."""
    verdicts = []
    for comparison in comparisons:
        case = comparison.case
        goal = BASELINE_TARGETS.get(case.rows)
        if comparison.baseline is None or case.concurrency != TARGET_CONCURRENCY or goal is None:
            continue
        ratio = comparison.throughput_ratio(BASELINE)
        verdicts.append(
            {
                "target": f"{case.champion}: throughput >= {goal:g}x {baseline_name(baseline_commit)} "
                f"({_row_label(case.rows)})",
                "measured": f"{ratio:.2f}x",
                "met": ratio >= goal,
            }
        )
    for comparison in comparisons:
        case = comparison.case
        if case.concurrency != TARGET_CONCURRENCY or case.rows != 1:
            continue
        ours = comparison.ours
        spread = ours.p99_ms / ours.p50_ms if ours.p50_ms else math.inf
        verdicts.append(
            {
                "target": f"{case.champion}: our p99 <= {TAIL_TARGET:g}x our p50 ({_row_label(case.rows)})",
                "measured": f"{spread:.1f}x ({ours.p99_ms:.1f} ms vs {ours.p50_ms:.1f} ms)",
                "met": spread <= TAIL_TARGET,
            }
        )
    for comparison in comparisons:
        case = comparison.case
        if case.concurrency != TARGET_CONCURRENCY:
            continue
        for peer, theirs in comparison.peers.items():
            goal = THROUGHPUT_TARGETS.get((peer, case.champion, case.rows))
            if goal is None:
                continue
            ratio = comparison.throughput_ratio(peer)
            verdicts.append(
                {
                    "target": f"{case.champion}: throughput >= {goal:g}x {peer} ({_row_label(case.rows)})",
                    "measured": f"{ratio:.2f}x",
                    "met": ratio >= goal,
                }
            )
            verdicts.append(
                {
                    "target": f"{case.champion}: p99 below {peer}'s ({_row_label(case.rows)})",
                    "measured": f"{comparison.ours.p99_ms:.1f} ms vs {theirs.p99_ms:.1f} ms",
                    "met": comparison.ours.p99_ms < theirs.p99_ms,
                }
            )
    for result in ceiling or []:
        verdicts.append(
            {
                "target": f"{result.label}: throughput >= {result.target:g}x the bare FastAPI app's "
                f"(c={TARGET_CONCURRENCY})",
                "measured": f"{result.ratio:.2f}x",
                "met": result.ratio >= result.target,
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


def format_verdicts(verdicts: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"{'met   ' if v['met'] else 'MISSED'}  {v['target']}: {v['measured']}" for v in verdicts
    )


def _columns(table: list[list[str]], text_columns: int = 1) -> str:
    """Rows of cells as aligned columns under a rule: text left, numbers right."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if i < text_columns else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(comparisons: list[Comparison], baseline_commit: str = "") -> str:
    """One row per case: ours, then a column set per other server (the baseline, then each peer)
    with its ratios (ours / that server); with a baseline, a first line says which commit it is."""
    peers = list(comparisons[0].others) if comparisons else []
    header = ["champion", "rows", "conc", "ours req/s", "ours p50", "ours p99"]
    for peer in peers:
        header += [f"{peer} req/s", "x", f"{peer} p50", f"{peer} p99", "p99 x"]
    body = []
    for c in comparisons:
        row = [
            c.case.champion,
            str(c.case.rows),
            str(c.case.concurrency),
            f"{c.ours.throughput:,.0f}",
            f"{c.ours.p50_ms:.2f} ms",
            f"{c.ours.p99_ms:.2f} ms",
        ]
        for peer in peers:
            theirs = c.others[peer]
            row += [
                f"{theirs.throughput:,.0f}",
                f"{c.throughput_ratio(peer):.2f}",
                f"{theirs.p50_ms:.2f} ms",
                f"{theirs.p99_ms:.2f} ms",
                f"{c.p99_ratio(peer):.2f}",
            ]
        body.append(row)
    table = _columns([header, *body])
    if BASELINE not in peers:
        return table
    which = f"commit {baseline_commit[:7]}" if baseline_commit else "another commit"
    return f"{BASELINE}: {which}'s app/ and params.yaml, trained and served as ours are\n{table}"


def format_cold_starts(cold: dict[str, dict[str, float]]) -> str:
    """cold: server -> champion -> seconds, ours first."""
    others = [name for name in cold if name != "ours"]
    return "\n".join(
        f"cold start {champion}: ours {seconds:.2f} s"
        + "".join(f", {name} {cold[name].get(champion, float('nan')):.2f} s" for name in others)
        for champion, seconds in cold.get("ours", {}).items()
    )


def results_document(
    comparisons: list[Comparison],
    cold_starts: dict[str, dict[str, float]],
    settings: dict[str, Any],
    rss_mib: dict[str, float] | None = None,
    ceiling: list[CeilingResult] | None = None,
    ceiling_champion: str = "",
    baseline_commit: str = "",
) -> dict[str, Any]:
    """What results.json holds: every figure of the tables, the cold starts, the run's settings."""
    document = {
        "settings": settings,
        "results": [
            {
                **asdict(c.case),
                "ours": asdict(c.ours),
                **{other: asdict(theirs) for other, theirs in c.others.items()},
                # ours / the baseline, ours / each peer
                "ratios": {
                    other: {
                        "throughput": round(c.throughput_ratio(other), 3),
                        "p50": round(c.p50_ratio(other), 3),
                        "p99": round(c.p99_ratio(other), 3),
                    }
                    for other in c.others
                },
            }
            for c in comparisons
        ],
        "cold_start_s": cold_starts,
        "rss_mib": rss_mib or {},
        "targets": target_verdicts(
            comparisons, cold_starts.get("ours", {}), rss_mib, ceiling, baseline_commit
        ),
    }
    if ceiling:
        document["ceiling"] = ceiling_json(ceiling, ceiling_champion)
    return document


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
