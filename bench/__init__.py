"""Load benchmark of the prediction service against `mlflow models serve` (make bench)."""
