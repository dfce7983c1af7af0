"""Our service served several ways in one run: the prediction log off, granian beside uvicorn, a CSV case.

Pure helpers, as bench/harness.py's are: which servers to start, granian's and curl's command lines,
the CSV file's lines, the answers' checks, the ratios, their table, verdicts and JSON. bench/run.py
starts the servers and drives them.

Every variant is our app (the working tree's, or the baseline commit's) with one thing changed:

- the prediction log off (PREDICTION_LOG_SAMPLE=0): "log default / log off" says what the log costs,
  and "ours log-off / baseline log-off" compares the two commits without it;
- the ASGI server: granian (Rust, `--interface asgi --factory app.main:create_app`) or uvicorn (as
  `python -m app.serve` runs it), with 1 and with 2 workers: "granian / uvicorn" per worker count.

All are driven at c=32 with the 1-row and the 100-row /predict body, in alternating rounds, and with a
large CSV through POST /predict/csv (rows per second, median of a few uploads).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from bench.harness import BASELINE, TARGET_CONCURRENCY, BenchError, LoadResult, sample_rows

SERVERS = ("uvicorn", "granian")
Code = Literal["ours", "baseline"]
Server = Literal["uvicorn", "granian"]
# The targets: ours over the baseline, both with the log off, at c=32, per rows of the request;
# the CSV's rows per second, ours with the log at its default.
LOG_OFF_TARGETS = {1: 0.95, 100: 0.95}
CSV_TARGET_ROWS_PER_S = 300_000.0
# What the prediction log's switch is set to for "log off" (the share of rows kept).
LOG_OFF_ENV = {"PREDICTION_LOG_SAMPLE": "0"}
# The answer asked of /predict/csv: one JSON line per row, as docs/api.md streams a large file.
CSV_ACCEPT = "application/x-ndjson"
# granian's own bound on reading a request's headers, in milliseconds (its --http1-header-read-timeout).
GRANIAN_HEADER_TIMEOUT_MS = (1, 60_000)
CURL_STATUS_MARKER = "BENCH_CURL "


def parse_servers(text: str) -> list[str]:
    """BENCH_SERVERS ("uvicorn,granian"): the ASGI servers to serve ours with; uvicorn is always one."""
    chosen = {name.strip().lower() for name in text.split(",") if name.strip()}
    unknown = chosen - set(SERVERS)
    if unknown:
        raise BenchError(f"unknown server(s) {', '.join(sorted(unknown))}: choose among {', '.join(SERVERS)}")
    return [name for name in SERVERS if name in chosen | {"uvicorn"}]


@dataclass(frozen=True)
class Variant:
    code: Code
    server: Server = "uvicorn"
    workers: int = 1
    log_off: bool = False

    @property
    def name(self) -> str:
        """e.g. `ours uvicorn w1`, `baseline uvicorn w1 log-off`, `ours granian w2`."""
        return f"{self.code} {self.server} w{self.workers}" + (" log-off" if self.log_off else "")

    @property
    def label(self) -> str:
        """The name as a file name (logs, databases)."""
        return self.name.replace(" ", "-")


def plan_variants(workers: int, *, baseline: bool, log_off: bool, servers: list[str]) -> list[Variant]:
    """The servers of the run, ours (log default, uvicorn, `workers`) first.

    With granian among `servers`, ours under each server with 1 and 2 workers, so both servers are
    compared at the same worker count.
    """
    codes: list[Code] = ["ours", "baseline"] if baseline else ["ours"]
    planned = [Variant(code, "uvicorn", workers) for code in codes]
    if log_off:
        planned += [Variant(code, "uvicorn", workers, log_off=True) for code in codes]
    if "granian" in servers:
        for server in ("uvicorn", "granian"):
            for count in (1, 2):
                variant = Variant("ours", server, count)
                if variant not in planned:
                    planned.append(variant)
    return planned


def granian_command(
    granian: str, port: int, workers: int, header_timeout_s: float, target: str = "app.main:create_app"
) -> list[str]:
    """granian serving our app factory as uvicorn does under `python -m app.serve`: ASGI, uvloop, no
    access log (the app logs each request itself), headers read within `header_timeout_s` (granian
    takes milliseconds, 1 to 60,000; uvicorn has no such deadline, the proxy in front gives it one)."""
    low, high = GRANIAN_HEADER_TIMEOUT_MS
    timeout_ms = min(high, max(low, round(header_timeout_s * 1000)))
    return [
        granian,
        "--interface",
        "asgi",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--no-access-log",
        "--http1-header-read-timeout",
        str(timeout_ms),
        target,
    ]


# --- The CSV case ---------------------------------------------------------------------------------


def csv_lines(features: list[dict[str, Any]], rows: int, distinct: int = 1000) -> Iterator[str]:
    """The header, then `rows` lines of values, every one valid for the model.

    `distinct` rows from sample_rows (deterministic, spread over the training range) are repeated:
    a million dicts would take the bench longer to build than the server to score.
    """
    names = [f["name"] for f in features]
    yield ",".join(names) + "\n"
    pattern = [",".join(str(row[name]) for name in names) + "\n" for row in sample_rows(features, distinct)]
    for i in range(rows):
        yield pattern[i % len(pattern)]


def curl_csv_command(url: str, csv_file: str, header_file: str) -> list[str]:
    """curl uploading the file as a text/csv body and writing the answer to its stdout.

    The token is in a header file (`-H @file`), never on the command line where `ps` shows it;
    `Expect:` is left out so curl does not wait for a 100 Continue before sending; curl reads the
    answer while it sends, as a streaming client does. Its status and time go to stderr.
    """
    return [
        "curl",
        "--silent",
        "--show-error",
        "--request",
        "POST",
        "--header",
        f"@{header_file}",
        "--header",
        "Content-Type: text/csv",
        "--header",
        f"Accept: {CSV_ACCEPT}",
        "--header",
        "Expect:",
        "--data-binary",
        f"@{csv_file}",
        "--write-out",
        f"%{{stderr}}{CURL_STATUS_MARKER}%{{http_code}} %{{time_total}}\\n",
        url,
    ]


def parse_curl_status(stderr: str) -> tuple[int, float]:
    """The (HTTP status, seconds) curl wrote after the answer."""
    line = next((ln for ln in stderr.splitlines() if ln.startswith(CURL_STATUS_MARKER)), None)
    if line is None:
        raise BenchError(f"curl printed no status: {stderr.strip()[-500:]}")
    try:
        status, seconds = line[len(CURL_STATUS_MARKER) :].split()
        return int(status), float(seconds)
    except ValueError:
        raise BenchError(f"curl's status line is not `code seconds`: {line[:200]}") from None


def check_csv_answer(status: int, answered_lines: int, last_line: bytes, rows: int) -> None:
    """An NDJSON answer of every row, or a BenchError saying what came back instead.

    A bad line after the first chunk ends a 200 answer with an error line (docs/api.md), so the
    status alone does not say every row was scored.
    """
    if status != 200:
        raise BenchError(f"POST /predict/csv answered {status}: {last_line[:300]!r}")
    if answered_lines != rows or not last_line.startswith(b'{"prediction_id"'):
        raise BenchError(
            f"POST /predict/csv answered {answered_lines:,} lines for {rows:,} rows; "
            f"the last: {last_line[:300]!r}"
        )


# --- Results --------------------------------------------------------------------------------------


@dataclass
class VariantResult:
    """One server's runs: at c=32 per rows of the /predict body, and its CSV uploads in seconds."""

    variant: Variant
    runs: dict[int, list[LoadResult]] = field(default_factory=dict)
    csv_seconds: list[float] = field(default_factory=list)

    def throughput(self, rows: int) -> float:
        """Mean req/s over the alternating runs; NaN when not measured."""
        runs = self.runs.get(rows)
        return statistics.fmean(r.throughput for r in runs) if runs else math.nan

    def p99_ms(self, rows: int) -> float:
        runs = self.runs.get(rows)
        return statistics.median(r.p99_ms for r in runs) if runs else math.nan

    def csv_rows_per_s(self, csv_rows: int) -> float:
        """The median upload's rows per second; NaN without uploads."""
        return csv_rows / statistics.median(self.csv_seconds) if self.csv_seconds else math.nan


@dataclass(frozen=True)
class Ratio:
    """One server's figures over another's: per rows of the /predict body, and for the CSV."""

    label: str
    numerator: str
    denominator: str
    by_rows: dict[int, float]
    csv: float
    # Per rows, the least ratio the issue asks for; empty when it asks for none.
    targets: dict[int, float] = field(default_factory=dict)


def _ratio(top: float, bottom: float) -> float:
    return top / bottom if bottom and not math.isnan(bottom) else math.nan


def ratios(results: list[VariantResult], workers: int, rows: list[int], csv_rows: int) -> list[Ratio]:
    """The comparisons the run allows, each made only when both of its servers ran."""
    found = {r.variant: r for r in results}
    pairs: list[tuple[str, Variant, Variant, dict[int, float]]] = []
    codes: tuple[Code, ...] = ("ours", "baseline")
    for code in codes:
        pairs.append(
            (
                f"log default / log off ({code})",
                Variant(code, "uvicorn", workers),
                Variant(code, "uvicorn", workers, log_off=True),
                {},
            )
        )
    pairs.append(
        (
            "ours / baseline, both log off",
            Variant("ours", "uvicorn", workers, log_off=True),
            Variant("baseline", "uvicorn", workers, log_off=True),
            LOG_OFF_TARGETS,
        )
    )
    pairs.append(
        (
            "ours / baseline, log default",
            Variant("ours", "uvicorn", workers),
            Variant("baseline", "uvicorn", workers),
            {},
        )
    )
    for count in (1, 2):
        pairs.append(
            (
                f"granian / uvicorn, {count} worker(s)",
                Variant("ours", "granian", count),
                Variant("ours", "uvicorn", count),
                {},
            )
        )
    made = []
    for label, top, bottom, targets in pairs:
        if top not in found or bottom not in found:
            continue
        a, b = found[top], found[bottom]
        made.append(
            Ratio(
                label,
                top.name,
                bottom.name,
                {n: _ratio(a.throughput(n), b.throughput(n)) for n in rows},
                _ratio(a.csv_rows_per_s(csv_rows), b.csv_rows_per_s(csv_rows)),
                {n: t for n, t in targets.items() if n in rows},
            )
        )
    return made


def _rows_label(rows: int) -> str:
    return f"{rows} row{'s' if rows != 1 else ''}"


def _number(value: float, spec: str = ",.0f") -> str:
    return "-" if math.isnan(value) else format(value, spec)


def format_variants(
    results: list[VariantResult], made: list[Ratio], rows: list[int], csv_rows: int, champion: str
) -> str:
    """The servers' table (mean req/s and median p99 at c=32, CSV rows/s), then the ratios."""
    header = ["server"]
    for n in rows:
        header += [f"{_rows_label(n)} req/s", "p99"]
    header.append("CSV rows/s")
    table = [header]
    for result in results:
        line = [result.variant.name]
        for n in rows:
            line += [_number(result.throughput(n)), f"{_number(result.p99_ms(n), '.2f')} ms"]
        line.append(_number(result.csv_rows_per_s(csv_rows)))
        table.append(line)
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    rendered = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in table
    ]
    rendered.insert(1, "  ".join("-" * w for w in widths))
    title = (
        f"servers ({champion}, c={TARGET_CONCURRENCY}, mean of the alternating runs; CSV: median upload "
        f"of {csv_rows:,} rows, {CSV_ACCEPT} answer)"
    )
    lines = [title, *rendered, ""]
    for ratio in made:
        parts = [f"{_rows_label(n)} {_number(value, '.2f')}x" for n, value in ratio.by_rows.items()]
        parts.append(f"CSV {_number(ratio.csv, '.2f')}x")
        lines.append(f"{ratio.label} ({ratio.numerator} / {ratio.denominator}): {', '.join(parts)}")
    return "\n".join(lines)


def variant_verdicts(
    results: list[VariantResult], made: list[Ratio], workers: int, csv_rows: int, baseline_commit: str = ""
) -> list[dict[str, Any]]:
    """The issue's targets this part of the run measured, as harness.target_verdicts gives them."""
    which = f"{BASELINE} {baseline_commit[:7]}" if baseline_commit else BASELINE
    verdicts = []
    for ratio in made:
        for n, goal in ratio.targets.items():
            value = ratio.by_rows[n]
            verdicts.append(
                {
                    "target": f"ours log-off: throughput >= {goal:g}x {which} log-off "
                    f"({_rows_label(n)}, c={TARGET_CONCURRENCY})",
                    "measured": f"{value:.2f}x",
                    "met": not math.isnan(value) and value >= goal,
                }
            )
    ours = next((r for r in results if r.variant == Variant("ours", "uvicorn", workers)), None)
    if ours is not None and ours.csv_seconds:
        speed = ours.csv_rows_per_s(csv_rows)
        verdicts.append(
            {
                "target": f"POST /predict/csv, log at its default: >= {CSV_TARGET_ROWS_PER_S:,.0f} rows/s "
                f"({csv_rows:,} rows)",
                "measured": f"{speed:,.0f} rows/s",
                "met": speed >= CSV_TARGET_ROWS_PER_S,
            }
        )
    return verdicts


def _json_number(value: float, digits: int = 3) -> float | None:
    return None if math.isnan(value) else round(value, digits)  # JSON has no NaN


def variants_json(
    results: list[VariantResult], made: list[Ratio], rows: list[int], csv_rows: int, champion: str
) -> dict[str, Any]:
    """results.json's `servers`: each server's runs and CSV uploads, and the ratios."""
    return {
        "champion": champion,
        "concurrency": TARGET_CONCURRENCY,
        "csv_rows": csv_rows,
        "csv_accept": CSV_ACCEPT,
        "servers": [
            {
                "name": r.variant.name,
                **asdict(r.variant),
                **{
                    f"rows_{n}": {
                        "throughput_mean": _json_number(r.throughput(n), 1),
                        "p99_ms_median": _json_number(r.p99_ms(n), 2),
                        "runs": [asdict(run) for run in r.runs.get(n, [])],
                    }
                    for n in rows
                },
                "csv": {
                    "upload_seconds": [round(s, 3) for s in r.csv_seconds],
                    "rows_per_s_median": _json_number(r.csv_rows_per_s(csv_rows), 0),
                },
            }
            for r in results
        ],
        "ratios": [
            {
                "label": ratio.label,
                "numerator": ratio.numerator,
                "denominator": ratio.denominator,
                **{f"rows_{n}": _json_number(value) for n, value in ratio.by_rows.items()},
                "csv": _json_number(ratio.csv),
                "targets": {f"rows_{n}": goal for n, goal in ratio.targets.items()},
            }
            for ratio in made
        ],
    }
