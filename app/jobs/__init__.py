"""What the retraining worker (python -m app.worker) runs: one job, its pipeline in a subprocess, the
promotion that follows."""
