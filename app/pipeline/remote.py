"""Point the DVC remote at the bucket and endpoint named in the environment.

    python -m app.pipeline.remote

.dvc/config declares the remote `storage` (s3://predictor-dvc/store). To use another bucket
or an S3-compatible server (MinIO, moto), set DVC_REMOTE_URL and/or DVC_S3_ENDPOINT_URL:
they are written to .dvc/config.local, which git ignores, as are credentials (AWS_* variables).
"""

from __future__ import annotations

import os
import subprocess
import sys

REMOTE = "storage"
SETTINGS = {"DVC_REMOTE_URL": "url", "DVC_S3_ENDPOINT_URL": "endpointurl"}


def configure(env: dict[str, str] | None = None) -> list[str]:
    env = dict(os.environ if env is None else env)
    changed = []
    for variable, option in SETTINGS.items():
        value = env.get(variable)
        if value:
            subprocess.run(["dvc", "remote", "modify", "--local", REMOTE, option, value], check=True, env=env)
            changed.append(f"{option}={value}")
    return changed


def main() -> None:
    changed = configure()
    print(f"remote '{REMOTE}': " + (", ".join(changed) if changed else "as in .dvc/config"), file=sys.stderr)


if __name__ == "__main__":
    main()
