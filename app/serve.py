"""Start the service: migrate and bootstrap once, then run uvicorn with HOST, PORT and WORKERS.

python -m app.serve [--host 127.0.0.1] [--port 8000] [--workers 1]

On SQLite (the embedded default, or START_WORKER=true) it also runs the retraining worker
(python -m app.worker) as a child process, stopped with the server.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from app.core.config import Settings, get_settings, load_settings, missing_project

# How long uvicorn keeps an idle keep-alive connection (its default, said here): the proxy's own
# keepalive_timeout to the replicas stays below it (deploy/nginx/predictor.conf), else nginx could send
# a request down a connection uvicorn is closing.
KEEP_ALIVE_SECONDS = 5
# Settings that configure nothing any more: still accepted, so that a deployment setting them starts.
DEPRECATED = {
    "request_header_timeout_seconds": "REQUEST_HEADER_TIMEOUT_SECONDS is ignored: the proxy in front "
    "times out slow request headers (docs/api.md, Slow clients)",
}


def _metrics_dir(workers: int) -> None:
    """With several workers, prometheus-client shares metrics through files in one directory.

    It must be set, and emptied of a previous run's files, before prometheus_client is first
    imported (the app's modules import it), hence this runs before anything else is imported.
    """
    chosen = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not chosen and workers == 1:
        return
    folder = Path(chosen or tempfile.mkdtemp(prefix="predictor-metrics-"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def _prepare_database(settings: Settings) -> None:
    from app.db.bootstrap import bootstrap
    from app.db.session import Database
    from app.observability.logging import configure_logging

    configure_logging(settings.log_level)
    database = Database(settings.database_url)
    try:
        bootstrap(database, settings)
    except Exception as exc:  # one line for the operator, not a traceback (no password in it)
        from sqlalchemy.engine import make_url

        where = make_url(settings.database_url).render_as_string(hide_password=True)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"serve: cannot prepare the database {where}: {reason}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        database.dispose()


def _unpickles(model_dir: Path) -> bool:
    """Whether serving the model will unpickle a scikit-learn pipeline (no ONNX file)."""
    from app.core.artifacts import ModelMetadata

    try:
        return ModelMetadata.read(model_dir).onnx is None
    except (OSError, ValueError):
        return False  # nothing to serve yet: the app says why


def main() -> None:
    # No cycle collection during start-up: its imports and the model build a large heap that a
    # collection would walk again and again (~0.2 s of the cold start here), to find next to no
    # garbage. The app's lifespan freezes what start-up built and turns the collector back on.
    gc.disable()
    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--workers", type=int, default=settings.workers)
    args = parser.parse_args()
    _metrics_dir(args.workers)
    for field in DEPRECATED.keys() & settings.model_fields_set:
        print(f"serve: deprecated: {DEPRECATED[field]}", file=sys.stderr, flush=True)
    # Left by a drain (python -m app.drain) before this start: this replica is in rotation again.
    settings.drain_file.unlink(missing_ok=True)

    # The database set-up (migrations, the first admin's password hash) runs in a forked child
    # while this process imports what serving needs: the two overlap on two cores (cold start).
    # What both need (SQLAlchemy, the users model, passlib) is imported once, before the fork.
    import app.db.bootstrap

    setup = multiprocessing.get_context("fork").Process(target=_prepare_database, args=(settings,))
    setup.start()
    import uvicorn

    if args.workers == 1:  # uvicorn serves from this very process: warm it up meanwhile
        import app.main  # noqa: F401

        if _unpickles(settings.model_dir):
            with contextlib.suppress(ImportError):  # the serving image has none: the load says so
                import sklearn.pipeline  # noqa: F401 - the bulk of unpickling the model
        else:
            import onnxruntime  # noqa: F401 - what serves the model
    setup.join()
    if setup.exitcode != 0:
        raise SystemExit(setup.exitcode or 1)
    # Done once here, so several workers do not race to migrate the same database.
    os.environ["MIGRATE_ON_STARTUP"] = "false"
    get_settings.cache_clear()
    worker = _start_worker(settings) if settings.embedded_worker else None
    print(f"serve: http://{args.host}:{args.port} (docs at /docs), {args.workers} worker(s)", flush=True)
    try:
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            access_log=False,  # the app logs one JSON line per request itself
            # On SIGTERM (after the preStop drain, app/drain.py): how long requests in flight get.
            timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
            # uvicorn's own HTTP protocol, as `uvicorn app.main:create_app --factory` runs it. It has
            # no deadline for a request's headers and reads a refused body to its end: slow and endless
            # clients are the proxy's to cut (deploy/nginx/predictor.conf, the chart's Ingress;
            # docs/api.md, "Slow clients"). What uvicorn bounds itself: an idle keep-alive connection.
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            # The client address is the socket's unless it is a proxy named here (the rate limits
            # and the security log read it); uvicorn's own default would trust 127.0.0.1.
            proxy_headers=bool(settings.forwarded_allow_ips),
            forwarded_allow_ips=settings.forwarded_allow_ips or None,
        )
    finally:
        if worker is not None:
            _stop(worker)


def _start_worker(settings: Settings) -> subprocess.Popen[bytes] | None:
    """The retraining worker beside the API; it exits by itself if this process dies first. None,
    saying why, when it could not run a job from here (no params file): the API serves all the same."""
    problem = missing_project(settings)
    if problem is not None:
        print(f"serve: no retraining worker ({problem}); POST /train queues jobs for one", flush=True)
        return None
    env = os.environ | {"PREDICTOR_PARENT_PID": str(os.getpid())}
    print("serve: retraining worker started (python -m app.worker)", flush=True)
    return subprocess.Popen([sys.executable, "-m", "app.worker"], env=env)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()  # the worker fails a running job, saying why, and exits
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


if __name__ == "__main__":
    main()
