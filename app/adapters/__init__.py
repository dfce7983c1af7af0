"""The outside world behind the contracts of app.core: the model store (a folder or S3) and its cache,
onnxruntime, Redis, MLflow's registry alias and the model import command (each through a subprocess)."""
