# syntax=docker/dockerfile:1
# One image for the Python side. docker-compose.yml runs it four ways: the trainer (dvc repro, then
# dvc push), the API (the default command), the MLflow tracking server and the web UI (streamlit).

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
    VERSIONS_DIR=/srv/versions
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app \
 && mkdir -p /app /srv/models /srv/versions \
 && chown app:app /app /srv/models /srv/versions
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
# No curl in slim images: python checks liveness. Services other than the API override this.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"
CMD ["python", "-m", "app.serve"]
