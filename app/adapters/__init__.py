"""The outside world behind the contracts of app.core: the model store (a folder or S3) and its cache,
onnxruntime, Redis, MLflow's registry alias (through a subprocess)."""
