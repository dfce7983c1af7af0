# syntax=docker/dockerfile:1
# Two images from one file (`make image` builds both):
#   --target serving   the API replicas only: the server, onnxruntime and the store clients, none of
#                      the training stack (no MLflow, DVC, scikit-learn, pandas, LightGBM, ...). It
#                      serves a version's model.onnx; a version without one needs the full image.
#   --target full      (the default) everything else docker-compose.yml runs: the trainer (dvc repro,
#                      dvc push, then `python -m app.cli models publish --serve`), the retraining worker
#                      (python -m app.worker), the MLflow tracking server and the web UI (streamlit).

# Pinned: a rebuild months later gets the same interpreter and Debian release. Where no registry can
# be reached, build on a local base of the same Python (tools/containers/base-image.sh: make image).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- serving-deps: a virtualenv with the serving dependencies (pyproject's `dependencies`) ---
FROM ${PYTHON_IMAGE} AS serving-deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build
# Only the pins are copied first, so these layers are rebuilt when they change, not on every code
# edit; requirements.lock pins the whole tree. The dev extra (tests, linters) stays out of both images.
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies']))" > serving.txt \
 && pip install --constraint requirements.lock --requirement serving.txt

# --- serving-venv: that virtualenv without pip and setuptools, which nothing runs at serving time ---
FROM serving-deps AS serving-venv
RUN pip uninstall --yes --quiet pip setuptools

# --- full-deps: the same virtualenv, plus the training stack (train extra) and the UI (ui extra) ---
FROM serving-deps AS full-deps
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
e = p['optional-dependencies']; print('\n'.join(e['train'] + e['ui']))" > full.txt \
 && pip install --constraint requirements.lock --requirement serving.txt --requirement full.txt

# --- runtime: what both images share: the unprivileged user, the folders it owns, the settings ---
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    HOST=0.0.0.0 \
    PORT=8000 \
    MODEL_DIR=/srv/models \
    MODEL_STORE_URL=/srv/versions \
    MODEL_CACHE_DIR=/srv/cache \
    JOBS_DIR=/srv/jobs
# MODEL_DIR stays empty here: a replica serves the version the database's serving pointer names, from
# MODEL_STORE_URL (a folder is enough for one container; compose and the chart set s3://...), through
# its own MODEL_CACHE_DIR. The trainer sets MODEL_DIR=/app/models (what dvc repro writes); the worker
# trains in JOBS_DIR. UID and GID 10001 are the chart's (podSecurityContext).
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app \
 && mkdir -p /app /srv/models /srv/versions /srv/cache /srv/jobs \
 && chown app:app /app /srv/models /srv/versions /srv/cache /srv/jobs
WORKDIR /app
EXPOSE 8000
# No curl in slim images: python checks liveness. Services other than the API replicas override this.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"
CMD ["python", "-m", "app.serve"]

# --- serving: the API replicas' image ---
FROM runtime AS serving
COPY --from=serving-venv /opt/venv /opt/venv
COPY app ./app
USER app

# --- full: the trainer, the worker, MLflow and the UI (and an API that unpickles older versions) ---
FROM runtime AS full
# LightGBM's OpenMP runtime, which slim Debian images leave out (a candidate fails to import without it).
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=full-deps /opt/venv /opt/venv
# The code runs from /app rather than being installed: dvc.yaml lists app/ files as stage
# dependencies, so dvc needs them here anyway. The trainer writes data/, models/ and .dvc/ in /app.
COPY --chown=app:app dvc.yaml params.yaml .dvcignore ./
COPY --chown=app:app .dvc/config .dvc/config
COPY --chown=app:app data/input data/input
COPY app ./app
USER app
# No git inside the image: dvc works without an SCM.
RUN dvc config --local core.no_scm true
