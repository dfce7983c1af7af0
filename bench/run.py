"""Load benchmark: our service against `mlflow models serve` and BentoML, same model, same load, same run.

    python -m bench.run [--quick] [--duration 10] [--champions logistic_regression random_forest]
                        [--peers mlflow,bentoml] [--no-ceiling] [--ref COMMIT] [--baseline COMMIT]
                        [--servers uvicorn,granian] [--log-off] [--csv-rows 1000000]

For each champion it trains in a scratch folder (params.yaml with `train.champion` forced),
starts ours and each peer on free 127.0.0.1 ports, times each to its first successful
prediction (cold start), then drives them with wrk (concurrency 1 and 32, 1-row and 100-row
requests), and prints throughput, p50 and p99 with the ratios ours / peer. With --baseline, our
service built from that commit's app/ and params.yaml is one more server beside them, trained and
started as ours is, with the ratios ours / baseline. Then ours is served several ways side by side
(bench/variants.py): the prediction log off (--log-off, on by default with --baseline), under granian
and uvicorn with 1 and 2 workers (--servers uvicorn,granian), each driven at c=32 and sent a large CSV
through POST /predict/csv (--csv-rows). Then it drives our one-row /predict and /health in turns with
a bare FastAPI app (bench/ceiling.py), the ceiling.
The same figures go to artifacts/bench/results.json. Every process it starts is stopped on the
way out, even on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import io
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench import engines
from bench.auth import AuthResult, auth_json, auth_verdicts, format_auth
from bench.harness import (
    BASELINE,
    BENTOML_VERSION,
    PEERS,
    SHARED_WITH_BENTOML,
    TARGET_CONCURRENCY,
    BenchError,
    Case,
    CeilingResult,
    Comparison,
    LoadResult,
    bentoml_requirements,
    cases,
    forced_params,
    format_ceiling,
    format_cold_starts,
    format_profile,
    format_table,
    format_verdicts,
    parse_peers,
    parse_wrk_report,
    predictor_body,
    request_body,
    results_document,
    sample_rows,
    summarize_profile,
    wrk_command,
)
from bench.processes import (
    Processes,
    Server,
    first_prediction,
    first_prediction_ours,
    free_port,
)
from bench.variants import (
    LOG_OFF_ENV,
    Ratio,
    Variant,
    VariantResult,
    check_csv_answer,
    csv_lines,
    curl_csv_command,
    format_variants,
    granian_command,
    parse_curl_status,
    parse_servers,
    plan_variants,
    ratios,
    variant_verdicts,
    variants_json,
)

ROOT = Path(__file__).resolve().parents[1]
LUA_SCRIPT = Path(__file__).with_name("post.lua")
OUT_DIR = ROOT / "artifacts" / "bench"
BENTOML_VENV = OUT_DIR / "venv-bentoml"
# svc: the default params' champion (a calibrated RBF SVC on Iris).
CHAMPIONS = ["svc", "logistic_regression", "random_forest"]
ROWS = [1, 100]
CONCURRENCIES = [1, 32]
STAGES = ["prepare", "train", "evaluate"]
# Where each peer answers predictions.
PEER_ROUTES = {"mlflow": "/invocations", "bentoml": "/predict"}


def say(message: str) -> None:
    print(f"bench: {message}", flush=True)


def _flag(name: str, default: bool = False) -> bool:
    """An on/off environment variable: unset gives `default`; empty, 0 and false are off."""
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() not in ("", "0", "false", "no")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    quick = _flag("BENCH_QUICK")
    parser.add_argument(
        "--quick", action="store_true", default=quick, help="3 s runs, 1 s warm-up (BENCH_QUICK=1)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=float(os.environ["BENCH_DURATION"]) if os.environ.get("BENCH_DURATION") else None,
        help="seconds of measured load per case and server (BENCH_DURATION; default 10, 3 with --quick)",
    )
    parser.add_argument("--warmup", type=float, default=None, help="seconds of warm-up load before each run")
    parser.add_argument("--champions", nargs="*", default=CHAMPIONS, choices=CHAMPIONS)
    parser.add_argument(
        "--cold-starts",
        type=int,
        default=int(os.environ.get("BENCH_COLD_STARTS", "3")),
        help="start each server this many times and report the median cold start (BENCH_COLD_STARTS)",
    )
    parser.add_argument(
        "--cold-only", action="store_true", help="measure the cold starts only: no load, no overhead"
    )
    parser.add_argument(
        "--overhead",
        action="store_true",
        default=_flag("BENCH_OVERHEAD", default=True),
        help="also measure our /predict with metrics and drift on versus off (BENCH_OVERHEAD=0 skips it)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("BENCH_WORKERS", "1")),
        help="uvicorn workers for both servers (BENCH_WORKERS; default 1)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        default=_flag("BENCH_PROFILE"),
        help="then profile our server (c=32, 1 row) with py-spy; BENCH_PROFILE=1",
    )
    parser.add_argument(
        "--ref",
        default=os.environ.get("BENCH_REF") or None,
        help="measure the app/ and params.yaml of this git commit instead of the working tree (BENCH_REF)",
    )
    parser.add_argument(
        "--baseline",
        default=os.environ.get("BENCH_BASELINE") or None,
        help="also measure our service built from this git commit's app/ and params.yaml, beside ours "
        "in every case, with the ratios ours / baseline (BENCH_BASELINE; default none)",
    )
    parser.add_argument(
        "--engines",
        action="store_true",
        default=_flag("BENCH_ENGINES", default=True),
        help="also time one call per candidate type: scikit-learn pipeline vs ONNX (BENCH_ENGINES=0 skips)",
    )
    parser.add_argument(
        "--peers",
        default=os.environ.get("BENCH_PEERS", ",".join(PEERS)),
        help=f"the peers to measure beside ours, comma-separated, '' for none (BENCH_PEERS; "
        f"default {','.join(PEERS)})",
    )
    parser.add_argument(
        "--ceiling",
        action=argparse.BooleanOptionalAction,
        default=_flag("BENCH_CEILING", default=True),
        help="also measure ours against a bare FastAPI app, /predict and /health (BENCH_CEILING=0 skips)",
    )
    parser.add_argument(
        "--auth",
        action=argparse.BooleanOptionalAction,
        default=_flag("BENCH_AUTH", default=True),
        help="also measure one-row /predict with an API key and an external issuer's token against a "
        "JWT, on one server (BENCH_AUTH=0 skips; the issuer needs `make oidc-tools`)",
    )
    parser.add_argument(
        "--servers",
        default=os.environ.get("BENCH_SERVERS", "uvicorn"),
        help="the ASGI servers to serve ours with, comma-separated: with granian, ours under uvicorn and "
        "granian with 1 and 2 workers each (BENCH_SERVERS; default uvicorn)",
    )
    parser.add_argument(
        "--log-off",
        action=argparse.BooleanOptionalAction,
        default=_flag("BENCH_LOG_OFF") if "BENCH_LOG_OFF" in os.environ else None,
        help="also serve ours (and the baseline) with the prediction log off, PREDICTION_LOG_SAMPLE=0 "
        "(BENCH_LOG_OFF; default: on with --baseline, off without)",
    )
    parser.add_argument(
        "--csv-rows",
        type=int,
        default=int(os.environ.get("BENCH_CSV_ROWS", "1000000")),
        help="rows of the CSV uploaded to POST /predict/csv, 0 for no CSV case "
        "(BENCH_CSV_ROWS; default 1000000)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (its path is printed)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "results.json")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 2.0
    if args.cold_starts < 1:
        parser.error("--cold-starts must be at least 1")
    try:
        args.peers = parse_peers(args.peers)
    except BenchError as exc:
        parser.error(f"--peers (BENCH_PEERS): {exc}")
    try:
        args.servers = parse_servers(args.servers)
    except BenchError as exc:
        parser.error(f"--servers (BENCH_SERVERS): {exc}")
    if args.log_off is None:  # the issue compares both commits with the log off
        args.log_off = args.baseline is not None
    if args.csv_rows < 0:
        parser.error("--csv-rows must be 0 (no CSV case) or more")
    return args


def base_env(work: Path, code: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The venv's own tools (uvicorn, which `mlflow models serve` runs through a shell) come first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(code)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    for name in ("DVC_REMOTE_URL", "DVC_S3_ENDPOINT_URL", "BENCH_AUTHORIZATION"):
        env.pop(name, None)
    return env


def train(work: Path, champion: str, logs: Path, code: Path) -> dict[str, Any]:
    """prepare, train, evaluate in `work`; returns model.json."""
    work.mkdir(parents=True)
    params = forced_params(yaml.safe_load((code / "params.yaml").read_text()), champion)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = base_env(work, code)
    log = logs / f"train-{champion}.log"
    with log.open("w") as sink:
        for stage in STAGES:
            started = time.monotonic()
            result = subprocess.run(
                [sys.executable, "-m", f"app.pipeline.{stage}", "--params", "params.yaml"],
                cwd=work,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                timeout=600,
                check=False,
            )
            if result.returncode != 0:
                raise BenchError(f"{stage} failed with code {result.returncode}: see {log}")
            say(f"  {stage} done in {time.monotonic() - started:.1f} s")
    return json.loads((work / "models" / "model.json").read_text())


def trained(
    scratch: Path, champion: str, args: argparse.Namespace, code: Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """The champion's work folder and model.json, trained on first use by `code` (default
    args.code, what "ours" is): the stages share it."""
    work = scratch / champion
    metadata = work / "models" / "model.json"
    if metadata.is_file():
        return work, json.loads(metadata.read_text())
    say(f"{champion}: training in {work}")
    return work, train(work, champion, args.out.parent / "logs", code or args.code)


def start_ours(
    processes: Processes,
    work: Path,
    args: argparse.Namespace,
    champion: str,
    extra_env: dict[str, str] | None = None,
    label: str = "ours",
    code: Path | None = None,
    server: str = "uvicorn",
    workers: int | None = None,
) -> tuple[Server, str, str]:
    """Our service from the code folder `code` (default args.code: the working tree, or --ref's),
    with `workers` (default args.workers) under `python -m app.serve` (uvicorn) or granian's CLI."""
    workers = workers or args.workers
    port = free_port()
    password = secrets.token_urlsafe(16)
    env = (
        base_env(work, code or args.code)
        | {
            "APP_ENV": "production",
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "WORKERS": str(workers),
            "MODEL_DIR": str(work / "models"),
            "DATABASE_URL": f"sqlite:///{work / 'users.db'}",
            "SECRET_KEY": secrets.token_urlsafe(48),
            "ADMIN_USERNAME": "bench",
            "ADMIN_PASSWORD": password,
        }
        | (extra_env or {})
    )
    command = [sys.executable, "-m", "app.serve"]
    if server == "granian":
        # app.serve's start-up is uvicorn's: under granian the app's lifespan migrates and creates the
        # admin (MIGRATE_ON_STARTUP, on by default), and several workers share metrics through files.
        if workers > 1:
            metrics = work / f"metrics-{label}"
            shutil.rmtree(metrics, ignore_errors=True)
            metrics.mkdir(parents=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
        header_timeout_s = float(env.get("REQUEST_HEADER_TIMEOUT_SECONDS") or header_timeout_default())
        granian = str(Path(sys.executable).with_name("granian"))
        command = granian_command(granian, port, workers, header_timeout_s)
    log = args.out.parent / "logs" / f"{label}-{champion}.log"
    started = processes.start(label, command, port=port, env=env, cwd=work, log=log)
    return started, "bench", password


def start_mlflow(
    processes: Processes, work: Path, args: argparse.Namespace, champion: str, model_name: str
) -> Server:
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [
        str(mlflow),
        "models",
        "serve",
        "-m",
        f"models:/{model_name}@champion",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        str(args.workers),
    ]
    log = args.out.parent / "logs" / f"mlflow-{champion}.log"
    return processes.start("mlflow", command, port=port, env=base_env(work, args.code), cwd=work, log=log)


def ensure_bentoml(log: Path) -> Path:
    """BentoML's own virtualenv, created once and reused while its pins stand; its `bentoml`.

    Kept apart from the project's: BentoML brings its own web stack and pins. It gets the project's
    versions of scikit-learn and what unpickling needs, so it serves the very model.joblib.
    """
    versions = {name: importlib.metadata.version(name) for name in SHARED_WITH_BENTOML}
    pins = bentoml_requirements(versions)
    python = BENTOML_VENV / "bin" / "python"
    marker = BENTOML_VENV / "bench-requirements.txt"
    wanted = "\n".join(pins) + "\n"
    if python.is_file() and marker.is_file() and marker.read_text() == wanted:
        say(f"bentoml: reusing {BENTOML_VENV} ({', '.join(pins)})")
        return BENTOML_VENV / "bin" / "bentoml"
    say(f"bentoml: installing {', '.join(pins)} into {BENTOML_VENV} (once; log in {log})")
    marker.unlink(missing_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as sink:

        def step(command: list[str]) -> None:
            done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, timeout=900, check=False)
            if done.returncode != 0:
                raise BenchError(
                    f"installing BentoML failed ({done.returncode}): see {log}; "
                    "BENCH_PEERS=mlflow measures without it"
                )

        if not python.is_file():
            step([sys.executable, "-m", "venv", str(BENTOML_VENV)])
        step([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins])
    marker.write_text(wanted)
    return BENTOML_VENV / "bin" / "bentoml"


def start_bentoml(processes: Processes, work: Path, args: argparse.Namespace, champion: str) -> Server:
    """bench/bento_service.py in BentoML's virtualenv, on the champion's model.joblib."""
    port = free_port()
    env = base_env(work, ROOT) | {
        "PATH": f"{args.bentoml.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "BENCH_MODEL_DIR": str(work / "models"),
        "BENCH_WORKERS": str(args.workers),
        # Its model store and config, in the scratch folder rather than ~/bentoml.
        "BENTOML_HOME": str(work / "bentoml-home"),
        "BENTOML_DO_NOT_TRACK": "True",
    }
    env.pop("VIRTUAL_ENV", None)
    command = [str(args.bentoml), "serve", "bench.bento_service:Predictor"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--working-dir", str(ROOT)]
    log = args.out.parent / "logs" / f"bentoml-{champion}.log"
    return processes.start("bentoml", command, port=port, env=env, cwd=ROOT, log=log)


def start_peer(
    peer: str,
    processes: Processes,
    work: Path,
    args: argparse.Namespace,
    champion: str,
    metadata: dict[str, Any],
) -> Server:
    if peer == "mlflow":
        return start_mlflow(processes, work, args, champion, metadata["registered_model"])
    return start_bentoml(processes, work, args, champion)


def start_ceiling(processes: Processes, work: Path, args: argparse.Namespace, columns: list[str]) -> Server:
    """bench/ceiling.py under uvicorn in the project's virtualenv, with as many workers as ours."""
    port = free_port()
    # bench/ is always the working tree's, even when BENCH_REF measures another commit's app/.
    env = base_env(work, ROOT) | {"BENCH_CEILING_FEATURES": ",".join(columns)}
    command = [sys.executable, "-m", "uvicorn", "bench.ceiling:create_app", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers)]
    command.append("--no-access-log")  # as ours runs uvicorn (its own access log is the app's)
    log = args.out.parent / "logs" / "ceiling.log"
    return processes.start("ceiling", command, port=port, env=env, cwd=work, log=log)


def drive(
    server: Server,
    url: str,
    body_file: Path | None,
    concurrency: int,
    seconds: float,
    authorization: str = "",
) -> LoadResult:
    """One wrk run against `url` (POST of the body file, or GET without one); a non-200 answer or a
    socket error stops the benchmark."""
    env = dict(os.environ)
    env["BENCH_AUTHORIZATION"] = authorization
    body = str(body_file) if body_file is not None else None
    command = wrk_command(url, body, str(LUA_SCRIPT), concurrency=concurrency, duration_s=seconds)
    completed = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    server.check_alive()
    if completed.returncode != 0:
        raise BenchError(f"wrk failed ({completed.returncode}) on {url}: {completed.stderr.strip()[-500:]}")
    result = parse_wrk_report(completed.stdout)
    if result.failed:
        raise BenchError(
            f"{server.name} at {url}, c={concurrency}: {result.requests} requests, {result.non_200} not 200, "
            f"{result.socket_errors} socket errors; first bad answer: {result.first_bad or '-'}; "
            f"see {server.log_path}"
        )
    return result


def measure(
    server: Server,
    url: str,
    body_file: Path | None,
    case: Case,
    args: argparse.Namespace,
    authorization: str = "",
) -> LoadResult:
    """Warm-up, then one measured run with the server's CPU time; a GET without a body file."""
    if args.warmup > 0:
        drive(server, url, body_file, case.concurrency, args.warmup, authorization)
    cpu_before = server.cpu_seconds()
    result = drive(server, url, body_file, case.concurrency, args.duration, authorization)
    result = dataclasses.replace(result, server_cpu_s=server.cpu_seconds() - cpu_before)
    what = f"rows={case.rows:<3}" if body_file is not None else "GET     "
    say(
        f"  {server.name:<12} {what} c={case.concurrency:<2} "
        f"{result.throughput:>8,.0f} req/s  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
        f"{result.cpu_us_per_request:6.0f} µs CPU/request"
    )
    return result


def profile(
    server: Server, body_file: Path, authorization: str, champion: str, args: argparse.Namespace
) -> None:
    """py-spy on our server during one more c=32 1-row run, apart from the measured ones (it slows them)."""
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    out = args.out.parent / f"profile-{champion}.txt"
    seconds = max(3, round(args.duration))
    command = [py_spy, "record", "--pid", str(server.process.pid), "--gil", "--rate", "250"]
    command += ["--duration", str(seconds), "--format", "raw", "--output", str(out), "--nonblocking"]
    if args.workers > 1:
        command.append("--subprocesses")
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        drive(server, f"{server.base_url}/predict", body_file, 32, seconds + 1, authorization)
    finally:
        _, errors = recorder.communicate(timeout=seconds + 30)
    if recorder.returncode != 0 or not out.is_file():
        raise BenchError(f"py-spy failed ({recorder.returncode}): {errors.strip()[-500:]}")
    summary = format_profile(summarize_profile(out.read_text()))
    out.with_suffix(".summary.txt").write_text(summary + "\n")
    say(f"  profile of ours ({champion}, c=32, 1 row; CPU by function): {out}")
    print(summary, flush=True)


def cold_starts_ours(
    processes: Processes,
    work: Path,
    body_file: Path,
    args: argparse.Namespace,
    champion: str,
    label: str = "ours",
    code: Path | None = None,
) -> tuple[Server, str, list[float]]:
    """Our service started args.cold_starts times, each a first start (a new users database to
    migrate and its admin to create), timed to its first /predict: the last one left running, its
    token, and every cold start."""
    samples = []
    for attempt in range(args.cold_starts):
        (work / "users.db").unlink(missing_ok=True)
        server, username, password = start_ours(processes, work, args, champion, label=label, code=code)
        token, seconds = first_prediction_ours(server, username, password, body_file.read_bytes())
        samples.append(seconds)
        if attempt < args.cold_starts - 1:  # the last one serves the load
            processes.stop(server)
    return server, token, samples


def bench_champion(
    champion: str,
    scratch: Path,
    processes: Processes,
    args: argparse.Namespace,
    cold: dict[str, dict[str, float]],
    rss: dict[str, float],
) -> list[Comparison]:
    work, metadata = trained(scratch, champion, args)
    features = metadata["features"]
    columns = [f["name"] for f in features]
    bodies: dict[tuple[str, int], Path] = {}
    for rows in ROWS:
        sample = sample_rows(features, rows)
        for kind in ("ours", *args.peers):
            path = work / f"body-{kind}-{rows}.json"
            path.write_text(request_body(kind, sample, columns))
            bodies[kind, rows] = path
    # The baseline's own model, trained by its own app/ from its own params.yaml, in a folder of
    # its own; its body is ours (our API), built from its model's features.
    baseline_work: Path | None = None
    if args.baseline_code is not None:
        baseline_work, baseline_metadata = trained(scratch / BASELINE, champion, args, args.baseline_code)
        for rows in ROWS:
            path = baseline_work / f"body-{BASELINE}-{rows}.json"
            path.write_text(predictor_body(sample_rows(baseline_metadata["features"], rows)))
            bodies[BASELINE, rows] = path

    # One server at a time while it starts, so no cold start competes for the CPU.
    starts: dict[str, list[float]] = {}
    ours, token, starts["ours"] = cold_starts_ours(processes, work, bodies["ours", 1], args, champion)
    baseline: tuple[Server, str] | None = None
    if baseline_work is not None:
        server, baseline_token, starts[BASELINE] = cold_starts_ours(
            processes, baseline_work, bodies[BASELINE, 1], args, champion, BASELINE, args.baseline_code
        )
        baseline = (server, f"Bearer {baseline_token}")
    peers: dict[str, Server] = {}
    for peer in args.peers:
        starts[peer] = []
        for attempt in range(args.cold_starts):
            server = start_peer(peer, processes, work, args, champion, metadata)
            starts[peer].append(first_prediction(server, PEER_ROUTES[peer], bodies[peer, 1].read_bytes()))
            if attempt < args.cold_starts - 1:
                processes.stop(server)
        peers[peer] = server
    for kind, samples in starts.items():
        cold[kind][champion] = statistics.median(samples)
        what = f"first {PEER_ROUTES[kind]}" if kind in PEER_ROUTES else "first /predict, token included"
        listed = ", ".join(f"{s:.2f}" for s in samples)
        say(f"  {kind} cold start (process start to {what}): median {cold[kind][champion]:.2f} s of {listed}")

    comparisons = []
    try:
        if args.cold_only:  # no load: no RSS "after the load" to report
            return []
        for case in cases([champion], ROWS, CONCURRENCIES):
            # Back to back, so all see the same state of this shared machine: the baseline right
            # after ours (if the second of two runs does better, it is the baseline).
            ours_result = measure(
                ours, f"{ours.base_url}/predict", bodies["ours", case.rows], case, args, f"Bearer {token}"
            )
            baseline_result = None
            if baseline is not None:
                server, authorization = baseline
                baseline_result = measure(
                    server,
                    f"{server.base_url}/predict",
                    bodies[BASELINE, case.rows],
                    case,
                    args,
                    authorization,
                )
            theirs = {
                peer: measure(
                    server, f"{server.base_url}{PEER_ROUTES[peer]}", bodies[peer, case.rows], case, args
                )
                for peer, server in peers.items()
            }
            comparisons.append(Comparison(case, ours_result, theirs, baseline_result))
        rss[champion] = ours.worker_rss_mib()
        say(f"  ours: {rss[champion]:.0f} MiB resident per worker after the load")
        if baseline is not None:
            say(f"  {BASELINE}: {baseline[0].worker_rss_mib():.0f} MiB resident per worker after the load")
        if args.profile:
            profile(ours, bodies["ours", 1], f"Bearer {token}", champion, args)
    finally:
        for server in peers.values():
            processes.stop(server)
        if baseline is not None:
            processes.stop(baseline[0])
        processes.stop(ours)
    return comparisons


OBSERVABILITY_OFF = {"METRICS_ENABLED": "false", "DRIFT_ENABLED": "false"}
OVERHEAD_ROUNDS = 6


def bench_overhead(scratch: Path, processes: Processes, args: argparse.Namespace) -> dict[str, Any]:
    """Our /predict with metrics and drift on, then off: the cost of observability, as a ratio.

    The cheapest champion (logistic regression) shows the overhead most. Both servers run side by
    side and are driven in turns, A B B A A B ..., so both see the same state of this shared machine
    and neither always goes first (an A/A run of this showed a ~10% bias towards the second).
    """
    champion = "logistic_regression"
    work, metadata = trained(scratch, champion, args)
    sample = sample_rows(metadata["features"], 1)
    body = work / "body-ours-1.json"
    body.write_text(predictor_body(sample))
    servers = {}
    for label, switches in (("on", {}), ("off", OBSERVABILITY_OFF)):
        env = switches | {"DATABASE_URL": f"sqlite:///{work / f'users-{label}.db'}"}  # each its own admin
        server, username, password = start_ours(
            processes, work, args, champion, env, label=f"metrics-{label}"
        )
        token, _ = first_prediction_ours(server, username, password, body.read_bytes())
        servers[label] = (server, f"Bearer {token}")
    case = Case(champion, 1, 32)
    runs: dict[str, list[LoadResult]] = {"on": [], "off": []}
    try:
        for round_number in range(OVERHEAD_ROUNDS):
            # The order flips every round: whichever runs second in a pair tends to do better here.
            order = ["on", "off"] if round_number % 2 == 0 else ["off", "on"]
            for label in order:
                server, authorization = servers[label]
                runs[label].append(
                    measure(server, f"{server.base_url}/predict", body, case, args, authorization)
                )
    finally:
        for server, _ in servers.values():
            processes.stop(server)
    on, off = (statistics.fmean(r.throughput for r in runs[label]) for label in ("on", "off"))
    # CPU per request over all of a server's runs: total CPU time over total requests.
    cpu_on, cpu_off = (
        1e6 * sum(r.server_cpu_s or 0.0 for r in runs[label]) / sum(r.requests for r in runs[label])
        for label in ("on", "off")
    )
    overhead = {
        "champion": champion,
        "rows": 1,
        "concurrency": 32,
        "rounds": OVERHEAD_ROUNDS,
        "throughput_metrics_on": round(on, 1),
        "throughput_metrics_off": round(off, 1),
        "on_over_off": round(on / off, 3),
        "overhead_percent": round(100 * (1 - on / off), 1),
        # The server's own CPU per request: the same cost, far less moved by other load.
        "cpu_us_per_request_on": round(cpu_on, 1),
        "cpu_us_per_request_off": round(cpu_off, 1),
        "cpu_overhead_percent": round(100 * (cpu_on / cpu_off - 1), 1),
    }
    print(
        f"\nobservability overhead ({champion}, 1 row, c=32, mean of {OVERHEAD_ROUNDS} alternating runs): "
        f"{on:,.0f} req/s with metrics and drift, {off:,.0f} without: ratio {on / off:.3f}, "
        f"overhead {overhead['overhead_percent']:.1f}% (target < 10%); server CPU per request "
        f"{cpu_on:.0f} µs against {cpu_off:.0f} µs: {overhead['cpu_overhead_percent']:+.1f}%",
        flush=True,
    )
    return overhead


VARIANT_ROUNDS = 2
CSV_UPLOADS = 3
# The cheapest champion, as for the ceiling: the least model time between the servers' own costs.
VARIANTS_CHAMPION = "logistic_regression"


def header_timeout_default() -> float:
    """REQUEST_HEADER_TIMEOUT_SECONDS's default: what uvicorn gets from app.serve, given to granian too."""
    from app.core.config import Settings

    return float(Settings.model_fields["request_header_timeout_seconds"].default)


def write_csv(path: Path, features: list[dict[str, Any]], rows: int) -> Path:
    with path.open("w") as sink:
        sink.writelines(csv_lines(features, rows))
    return path


def upload_csv(server: Server, csv_file: Path, header_file: Path, rows: int) -> float:
    """One POST /predict/csv of the file with curl: its seconds, every row answered, or a BenchError."""
    command = curl_csv_command(f"{server.base_url}/predict/csv", str(csv_file), str(header_file))
    curl = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines, tail = 0, b""
    assert curl.stdout is not None and curl.stderr is not None
    # Counted as it streams: the answer (~140 bytes a row) is never held whole, only its end.
    while piece := curl.stdout.read(1 << 20):
        lines += piece.count(b"\n")
        tail = (tail + piece)[-65536:]
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    errors = curl.stderr.read().decode(errors="replace")
    if curl.wait(timeout=60) != 0:
        raise BenchError(f"curl failed ({curl.returncode}) on {server.name}: {errors.strip()[-500:]}")
    server.check_alive()
    status, seconds = parse_curl_status(errors)
    check_csv_answer(status, lines, last, rows)
    say(f"  {server.name:<26} CSV {rows:,} rows in {seconds:.2f} s: {rows / seconds:>10,.0f} rows/s")
    return seconds


def bench_variants(
    scratch: Path, processes: Processes, args: argparse.Namespace, baseline_commit: str
) -> tuple[list[VariantResult], list[Ratio]]:
    """Ours served several ways beside each other (bench/variants.py): the log off, granian, 2
    workers, the baseline; each driven at c=32 with 1 and 100 rows, in rounds whose order flips, then
    with the CSV, in uploads whose order flips too."""
    champion = VARIANTS_CHAMPION
    planned = plan_variants(
        args.workers, baseline=args.baseline_code is not None, log_off=args.log_off, servers=args.servers
    )
    folders: dict[str, tuple[Path, dict[str, Any], Path]] = {}  # code -> work, metadata, code folder
    folders["ours"] = (*trained(scratch, champion, args), args.code)
    if args.baseline_code is not None:
        folders[BASELINE] = (
            *trained(scratch / BASELINE, champion, args, args.baseline_code),
            args.baseline_code,
        )
    bodies: dict[tuple[str, int], Path] = {}
    csv_files: dict[str, Path] = {}
    for code, (work, metadata, _) in folders.items():
        for rows in ROWS:
            bodies[code, rows] = work / f"body-variants-{rows}.json"
            bodies[code, rows].write_text(predictor_body(sample_rows(metadata["features"], rows)))
        if args.csv_rows:  # once per run: the baseline shares ours when its features are the same
            same = code != "ours" and metadata["features"] == folders["ours"][1]["features"]
            csv_files[code] = (
                csv_files["ours"]
                if same
                else write_csv(work / "bench.csv", metadata["features"], args.csv_rows)
            )
    results = [VariantResult(variant) for variant in planned]
    servers: dict[Variant, tuple[Server, str, Path]] = {}
    try:
        for variant in planned:  # one at a time while it starts, as the cold starts are
            work, _, code_folder = folders[variant.code]
            env = (LOG_OFF_ENV if variant.log_off else {}) | {
                "DATABASE_URL": f"sqlite:///{work / f'users-{variant.label}.db'}"  # each its own admin
            }
            server, username, password = start_ours(
                processes,
                work,
                args,
                champion,
                env,
                variant.label,
                code_folder,
                variant.server,
                variant.workers,
            )
            token, seconds = first_prediction_ours(
                server, username, password, bodies[variant.code, 1].read_bytes()
            )
            header_file = work / f"authorization-{variant.label}.txt"
            header_file.write_text(f"Authorization: Bearer {token}\n")
            header_file.chmod(0o600)
            servers[variant] = (server, f"Bearer {token}", header_file)
            say(f"  {variant.name}: first /predict after {seconds:.2f} s")
        # Ours alone (no log-off, no baseline, no granian) has nothing to be compared with: CSV only.
        for round_number in range(VARIANT_ROUNDS if len(results) > 1 else 0):
            order = results if round_number % 2 == 0 else results[::-1]
            for rows in ROWS:
                for result in order:
                    server, authorization, _ = servers[result.variant]
                    case = Case(champion, rows, TARGET_CONCURRENCY)
                    url = f"{server.base_url}/predict"
                    body = bodies[result.variant.code, rows]
                    result.runs.setdefault(rows, []).append(
                        measure(server, url, body, case, args, authorization)
                    )
        for upload in range(CSV_UPLOADS if args.csv_rows else 0):
            for result in results if upload % 2 == 0 else results[::-1]:
                server, _, header_file = servers[result.variant]
                csv_file = csv_files[result.variant.code]
                result.csv_seconds.append(upload_csv(server, csv_file, header_file, args.csv_rows))
    finally:
        for server, _, _ in servers.values():
            processes.stop(server)
    return results, ratios(results, args.workers, ROWS, args.csv_rows)


CEILING_ROUNDS = 4
# The cheapest champion: the least model time between our framework costs and the ceiling's.
CEILING_CHAMPION = "logistic_regression"


def bench_ceiling(scratch: Path, processes: Processes, args: argparse.Namespace) -> list[CeilingResult]:
    """Ours as served by default (token, metrics, drift, access log) against bench/ceiling.py, at
    c=32: one-row POST /predict, and GET /health. Both run side by side and are driven in turns,
    ours first one round and second the next, as the overhead's runs are."""
    work, metadata = trained(scratch, CEILING_CHAMPION, args)
    columns = [f["name"] for f in metadata["features"]]
    body = work / "body-ceiling-1.json"
    body.write_text(request_body("ours", sample_rows(metadata["features"], 1), columns))
    env = {"DATABASE_URL": f"sqlite:///{work / 'users-ceiling.db'}"}  # its own admin
    ours, username, password = start_ours(processes, work, args, CEILING_CHAMPION, env, label="ours-ceiling")
    ceiling: Server | None = None
    try:
        token, _ = first_prediction_ours(ours, username, password, body.read_bytes())
        ceiling = start_ceiling(processes, work, args, columns)
        first_prediction(ceiling, "/predict", body.read_bytes(), timeout_s=60)
        servers = {"ours": (ours, f"Bearer {token}"), "ceiling": (ceiling, "")}
        case = Case(CEILING_CHAMPION, 1, TARGET_CONCURRENCY)
        runs: dict[tuple[str, str], list[LoadResult]] = {}
        for round_number in range(CEILING_ROUNDS):
            order = ["ours", "ceiling"] if round_number % 2 == 0 else ["ceiling", "ours"]
            for route, body_file in (("predict", body), ("health", None)):
                for label in order:
                    server, authorization = servers[label]
                    # /health asks for no token, of ours or of the ceiling.
                    auth = authorization if body_file is not None else ""
                    result = measure(server, f"{server.base_url}/{route}", body_file, case, args, auth)
                    runs.setdefault((route, label), []).append(result)
    finally:
        processes.stop(ours)
        if ceiling is not None:
            processes.stop(ceiling)
    return [
        CeilingResult("predict", runs["predict", "ours"], runs["predict", "ceiling"]),
        CeilingResult("health", runs["health", "ours"], runs["health", "ceiling"]),
    ]


AUTH_ROUNDS = 4
# The external issuer's scope for predictions, as tests/support/oidc_issuer.py's clients ask for it.
ISSUER_SCOPE_MAP = "predictor.read:predict"


def bench_auth(scratch: Path, processes: Processes, args: argparse.Namespace) -> list[AuthResult]:
    """One server, one-row /predict at c=32 with a JWT, an API key and (when oidc-provider is
    installed) an issuer's token, driven in turns as the ceiling's runs are."""
    from tests.support.needs import missing as missing_tool
    from tests.support.oidc_issuer import AUDIENCE, rsa_key, running_issuer

    work, metadata = trained(scratch, CEILING_CHAMPION, args)
    columns = [f["name"] for f in metadata["features"]]
    body = work / "body-auth-1.json"
    body.write_text(request_body("ours", sample_rows(metadata["features"], 1), columns))
    missing = missing_tool("oidc")
    if missing:
        say(f"credentials: no issuer token measured ({missing})")
    issuer = nullcontext(None) if missing else running_issuer(work, [rsa_key("bench")])
    with issuer as running:
        env = {"DATABASE_URL": f"sqlite:///{work / 'users-auth.db'}"}  # its own admin
        if running is not None:  # an http:// issuer on 127.0.0.1 is for development only
            env |= {"APP_ENV": "development", "OIDC_ISSUER": running.url, "OIDC_AUDIENCE": AUDIENCE}
            env["OIDC_SCOPE_MAP"] = ISSUER_SCOPE_MAP
        ours, username, password = start_ours(processes, work, args, CEILING_CHAMPION, env, label="ours-auth")
        try:
            token, _ = first_prediction_ours(ours, username, password, body.read_bytes())
            created = httpx.post(
                f"{ours.base_url}/api-keys",
                json={"name": "bench", "scopes": ["predict"]},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            if created.status_code != 201:
                raise BenchError(f"POST /api-keys answered {created.status_code}: {created.text[:300]}")
            credentials: dict[str, Callable[[], str]] = {
                "jwt": lambda: f"Bearer {token}",
                "api_key": lambda: f"Bearer {created.json()['key']}",
            }
            if running is not None:  # a fresh token per run: the issuer's live a few minutes
                credentials["oidc"] = lambda: f"Bearer {running.token('rs-reader')}"
            case = Case(CEILING_CHAMPION, 1, TARGET_CONCURRENCY)
            runs: dict[str, list[LoadResult]] = {}
            for round_number in range(AUTH_ROUNDS):
                order = list(credentials) if round_number % 2 == 0 else list(reversed(credentials))
                for method in order:
                    url = f"{ours.base_url}/predict"
                    result = measure(ours, url, body, case, args, credentials[method]())
                    runs.setdefault(method, []).append(result)
        finally:
            processes.stop(ours)
    return [AuthResult(method, runs[method], runs["jwt"]) for method in runs if method != "jwt"]


def git(*arguments: str) -> str:
    try:
        done = subprocess.run(
            ["git", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def export_commit(ref: str, into: Path, flag: str = "--ref") -> str:
    """app/ and params.yaml of commit `ref`, copied into `into`; returns the full commit id.
    `flag` names, in an error, the option that asked for it (--ref, --baseline)."""
    commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    if not commit:
        raise BenchError(f"{flag} {ref}: not a commit of this repository")
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "app", "params.yaml"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    if archive.returncode != 0:
        raise BenchError(
            f"git archive {commit[:12]} failed: {archive.stderr.decode(errors='replace')[-300:]}"
        )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    # Bytecode, as an installed package has it: the cold start should not include compiling app/.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(into / "app")], timeout=120, check=True)
    return commit


def code_version(ref_commit: str | None) -> dict[str, Any]:
    """Which code was measured: the commit, and whether app/ had changes not yet committed."""
    if ref_commit:
        return {"git_commit": ref_commit, "app_changed": False, "source": "git archive of the commit"}
    return {
        "git_commit": git("rev-parse", "HEAD") or "unknown",
        "app_changed": bool(git("status", "--porcelain", "app")),
        "source": "working tree",
    }


def wants_variants(args: argparse.Namespace) -> bool:
    """Whether the run serves ours several ways (bench_variants): for the CSV, the log off or granian."""
    return not args.cold_only and (bool(args.csv_rows) or args.log_off or "granian" in args.servers)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed: `make bench` installs it (apt-get install -y wrk)")
    if "granian" in args.servers and not Path(sys.executable).with_name("granian").is_file():
        raise BenchError("--servers granian: granian is not installed: make install (it is in the dev extra)")
    if args.csv_rows and wants_variants(args) and shutil.which("curl") is None:
        raise BenchError("the CSV case uploads with curl: apt-get install -y curl, or --csv-rows 0")
    (args.out.parent / "logs").mkdir(parents=True, exist_ok=True)
    args.bentoml = None
    if "bentoml" in args.peers:  # before anything is measured: a failed install stops it at once
        args.bentoml = ensure_bentoml(args.out.parent / "logs" / "venv-bentoml.log")
    scratch = Path(tempfile.mkdtemp(prefix="bench-"))
    processes = Processes()
    rss: dict[str, float] = {}
    comparisons: list[Comparison] = []
    try:
        ref_commit = export_commit(args.ref, scratch / "src") if args.ref else None
        # Its own code folder beside its own work folders (scratch/baseline/<champion>).
        baseline_src = scratch / BASELINE / "src"
        baseline_commit = export_commit(args.baseline, baseline_src, "--baseline") if args.baseline else None
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    args.code = scratch / "src" if ref_commit else ROOT
    args.baseline_code = baseline_src if baseline_commit else None
    cold: dict[str, dict[str, float]] = {
        kind: {} for kind in ("ours", *([BASELINE] if baseline_commit else []), *args.peers)
    }
    version = code_version(ref_commit)
    dirty = " with uncommitted changes in app/" if version["app_changed"] else ""
    say(f"measuring commit {version['git_commit'][:12]}{dirty}")
    if baseline_commit:
        say(f"{BASELINE}: commit {baseline_commit[:12]} ({args.baseline}), beside ours in every case")
    started = time.monotonic()
    say(
        f"{args.duration:g} s per run after {args.warmup:g} s of warm-up, "
        f"{args.workers} worker(s) per server; peers: {', '.join(args.peers) or 'none'}; "
        f"logs in {args.out.parent / 'logs'}"
    )
    overhead = None
    variants: tuple[list[VariantResult], list[Ratio]] | None = None
    ceiling: list[CeilingResult] = []
    credentials: list[AuthResult] = []
    timings: list[engines.EngineTiming] = []
    try:
        if args.engines and not args.cold_only:
            say("engines: one call per candidate type and imported model, library vs ONNX (this process)")
            timings = engines.measure() + engines.measure_imported()
        for champion in args.champions:
            comparisons += bench_champion(champion, scratch, processes, args, cold, rss)
        if wants_variants(args):
            variants = bench_variants(scratch, processes, args, baseline_commit or "")
        if args.overhead and not args.cold_only:
            overhead = bench_overhead(scratch, processes, args)
        if args.ceiling and not args.cold_only:
            ceiling = bench_ceiling(scratch, processes, args)
        if args.auth and not args.cold_only:
            credentials = bench_auth(scratch, processes, args)
    finally:
        processes.stop_all()
        if args.keep:
            say(f"scratch folder kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    settings = {
        **version,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "workers": args.workers,
        "cold_starts": f"median of {args.cold_starts} first starts per server",
        "cpus": os.cpu_count(),
        "wall_time_s": round(time.monotonic() - started, 1),
        "load": "wrk -t1, one fixed body per run, 127.0.0.1",
        "peers": {peer: peer_version(peer) for peer in args.peers},
    }
    if baseline_commit:
        settings[BASELINE] = {
            "ref": args.baseline,
            "git_commit": baseline_commit,
            "source": "git archive of the commit",
        }
    document = results_document(
        comparisons, cold, settings, rss, ceiling, CEILING_CHAMPION, baseline_commit or ""
    )
    if overhead is not None:
        document["observability_overhead"] = overhead
    if variants is not None:
        results, made = variants
        document["servers"] = variants_json(results, made, ROWS, args.csv_rows, VARIANTS_CHAMPION)
        document["targets"] += variant_verdicts(
            results, made, args.workers, args.csv_rows, baseline_commit or ""
        )
    if timings:
        document["engines"] = engines.as_json(timings)
    if credentials:
        document["credentials"] = auth_json(credentials)
        document["targets"] += auth_verdicts(credentials)
    args.out.write_text(json.dumps(document, indent=2) + "\n")

    print()
    if timings:
        print(engines.format_timings(timings))
        print()
    if comparisons:
        print(format_table(comparisons, baseline_commit or ""))
        print()
    print(format_cold_starts(cold))
    if rss:
        print(", ".join(f"RSS per worker {name}: {mib:.0f} MiB" for name, mib in rss.items()))
    if ceiling:
        print(format_ceiling(ceiling, CEILING_CHAMPION))
    if credentials:
        print(format_auth(credentials))
    if variants is not None:
        print()
        print(format_variants(*variants, ROWS, args.csv_rows, VARIANTS_CHAMPION))
    print()
    print(format_verdicts(document["targets"]))
    say(f"wrote {args.out} ({settings['wall_time_s']:.0f} s in all)")
    return document


def peer_version(peer: str) -> str:
    """The version measured: mlflow's from the project's virtualenv, BentoML's pin."""
    return importlib.metadata.version("mlflow") if peer == "mlflow" else BENTOML_VERSION


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # As Ctrl-C does: unwind through every `finally`, which stops the servers.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    # Even when started in the background, where the shell would have Ctrl-C ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = parse_args(argv)
    try:
        run(args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; every server it started is stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
