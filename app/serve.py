"""Start the service: migrate and bootstrap once, then run uvicorn with HOST, PORT and WORKERS.

python -m app.serve [--host 127.0.0.1] [--port 8000] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from pydantic import ValidationError

from app.core.config import Settings, get_settings, settings_error


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        raise SystemExit(settings_error(exc)) from None


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


def main() -> None:
    settings = _settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--workers", type=int, default=settings.workers)
    args = parser.parse_args()
    _metrics_dir(args.workers)

    import uvicorn

    from app.db.bootstrap import bootstrap
    from app.db.session import Database
    from app.observability.logging import configure_logging

    configure_logging(settings.log_level)
    database = Database(settings.database_url)
    bootstrap(database, settings)
    database.dispose()
    # Done once here, so several workers do not race to migrate the same database.
    os.environ["MIGRATE_ON_STARTUP"] = "false"
    get_settings.cache_clear()
    print(f"serve: http://{args.host}:{args.port} (docs at /docs), {args.workers} worker(s)", flush=True)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,  # the app logs one JSON line per request itself
    )


if __name__ == "__main__":
    main()
