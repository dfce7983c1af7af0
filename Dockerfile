# syntax=docker/dockerfile:1
# One image for the Python side. docker-compose.yml runs it five ways: the trainer (dvc repro, dvc push,
# then `python -m app.cli models publish --serve`), the API replicas (the default command), the
# retraining worker (python -m app.worker), the MLflow tracking server and the web UI (streamlit).

# Pinned: a rebuild months later gets the same interpreter and Debian release.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- deps: a virtualenv with the pinned dependencies (serving + training), nothing else ---
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build
# Only the pins are copied first, so this layer is rebuilt when they change, not on every code edit.
# The requirement list comes from pyproject.toml (serving + train and ui extras); requirements.lock pins
# the whole tree. The dev extra (tests, linters) stays out of the image.
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['train'] + p['optional-dependencies']['ui']))" \
    > requirements.txt \
 && pip install --constraint requirements.lock --requirement requirements.txt

# --- runtime: the venv, the code and the pipeline definition, run by an unprivileged user ---
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
# trains in JOBS_DIR.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app \
 && mkdir -p /app /srv/models /srv/versions /srv/cache /srv/jobs \
 && chown app:app /app /srv/models /srv/versions /srv/cache /srv/jobs
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
# The code runs from /app rather than being installed: dvc.yaml lists app/ files as stage
# dependencies, so dvc needs them here anyway. The trainer writes data/, models/ and .dvc/ in /app.
COPY --chown=app:app dvc.yaml params.yaml .dvcignore ./
COPY --chown=app:app .dvc/config .dvc/config
COPY --chown=app:app data/input data/input
COPY app ./app
USER app
# No git inside the image: dvc works without an SCM.
RUN dvc config --local core.no_scm true
EXPOSE 8000
# No curl in slim images: python checks liveness. Services other than the API replicas override this.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"
CMD ["python", "-m", "app.serve"]
