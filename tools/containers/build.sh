#!/bin/sh
# Builds the project's two images with docker, or podman where no Docker engine runs:
#   IMAGE:serving  the API replicas (Dockerfile --target serving)
#   IMAGE:full     the trainer, the worker, MLflow and the UI (--target full)
#
#   tools/containers/build.sh [IMAGE]           (default mlops-api-predictor)
#   PYTHON_IMAGE=... tools/containers/build.sh  another base than the Dockerfile's python:3.11-slim
#
# podman writes Docker's image format (--format docker): the OCI one drops HEALTHCHECK.
set -eu
image=${1:-mlops-api-predictor}
cd "$(dirname "$0")/../.."
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    engine="docker build"
else
    engine="podman build --format docker"
fi
base=""
[ -n "${PYTHON_IMAGE:-}" ] && base="--build-arg PYTHON_IMAGE=$PYTHON_IMAGE"
for target in serving full; do
    # shellcheck disable=SC2086 # engine and base are word lists
    $engine $base --target "$target" --tag "$image:$target" . >&2
done
echo "$image:serving $image:full"
