"""Start the service: migrate and bootstrap once, then run uvicorn with HOST, PORT and WORKERS.

python -m app.serve [--host 127.0.0.1] [--port 8000] [--workers 1]
"""

from __future__ import annotations

import argparse
import os

import uvicorn

from app.core.config import get_settings
from app.db.bootstrap import bootstrap
from app.db.session import Database
from app.main import _load_settings
from app.observability.logging import configure_logging


def main() -> None:
    settings = _load_settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--workers", type=int, default=settings.workers)
    args = parser.parse_args()

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
