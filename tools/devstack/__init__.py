"""The docker-compose topology on one machine, without Docker: `python -m tools.devstack up|down|status`.

S3 (moto) → MLflow → train + dvc push → API → Prometheus → Alertmanager, all on 127.0.0.1,
with their pids, logs and rendered configs in `.stack/` (ignored by git). See stack.py.
"""
