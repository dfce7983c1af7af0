"""Per candidate type, per call: the model's own library against the ONNX model that serves it.

    python -m bench.engines [--repeats 200]

Fits every candidate on Iris (classification) and on diabetes (regression) in this process, exports
each as train does (app/pipeline/onnx_export.py), then times one call of each engine on 1 and on
100 rows, alternating engines so both see the same machine. Then the same for models trained
elsewhere and imported (`models import`, app/importing): a LightGBM classifier and an XGBoost
regressor, their own `predict_proba` / `predict` against the compiled graph. Each figure is the
median of `repeats` calls; the ratio (library / ONNX) is what to compare across machines. No server
is involved.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ROWS = (1, 100)


@dataclass(frozen=True)
class EngineTiming:
    task: str
    candidate: str
    rows: int
    pipeline_us: float
    onnx_us: float

    @property
    def ratio(self) -> float:
        return self.pipeline_us / self.onnx_us


def _median_us(call: Callable[[], Any], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def _data(task: str) -> tuple[list[Any], np.ndarray, np.ndarray]:
    from sklearn.datasets import load_diabetes, load_iris

    from app.core.artifacts import Feature

    data = load_iris() if task == "classification" else load_diabetes()
    x = data.data.astype(np.float64)
    y = np.array(data.target_names)[data.target] if task == "classification" else data.target
    features = [
        Feature(name=f"f{i}", type="numeric", min=float(x[:, i].min()), max=float(x[:, i].max()))
        for i in range(x.shape[1])
    ]
    return features, x, y


def _both(
    task: str,
    name: str,
    library: Callable[[np.ndarray], Any],
    onnx: Callable[[np.ndarray], Any],
    x: np.ndarray,
    rng: np.random.Generator,
    repeats: int,
) -> list[EngineTiming]:
    """The library's call and the ONNX model's, on 1 and on 100 rows of `x`."""
    timings = []
    for rows in ROWS:
        batch = x[rng.integers(0, len(x), rows)]
        onnx(batch), library(batch)  # warm both
        # Alternate in rounds, so a burst of other load hits both engines alike.
        library_us, onnx_us = [], []
        for _ in range(5):
            library_us.append(_median_us(lambda f=library, b=batch: f(b), max(repeats // 5, 1)))
            onnx_us.append(_median_us(lambda f=onnx, b=batch: f(b), max(repeats // 5, 1)))
        timings.append(
            EngineTiming(task, name, rows, statistics.median(library_us), statistics.median(onnx_us))
        )
    return timings


def measure(repeats: int = 200) -> list[EngineTiming]:
    from app.adapters.onnx_model import OnnxModel
    from app.pipeline.candidates import CLASSIFIERS, REGRESSORS, build_pipeline
    from app.pipeline.onnx_export import export

    timings = []
    for task, names in (("classification", CLASSIFIERS), ("regression", REGRESSORS)):
        features, x, y = _data(task)
        rng = np.random.default_rng(0)
        for name in names:
            pipeline = build_pipeline(name, task, {}, features, seed=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipeline.fit(x, y)
            model = OnnxModel.from_bytes(export(pipeline, task, features))  # type: ignore[arg-type]
            reference = pipeline.predict if task == "regression" else pipeline.predict_proba
            timings += _both(task, name, reference, model, x, rng, repeats)
    return timings


def measure_imported(repeats: int = 200) -> list[EngineTiming]:
    """A LightGBM classifier and an XGBoost regressor fitted here, compiled as `models import`
    compiles them, each timed against its library's own predict."""
    import lightgbm
    import pandas as pd
    import xgboost

    from app.core.artifacts import ModelSource
    from app.importing.importer import compiled_model
    from app.importing.schema import infer_schema
    from app.importing.sources import Loaded

    timings = []
    rng = np.random.default_rng(0)
    for task, flavor in (("classification", "lightgbm"), ("regression", "xgboost")):
        _, x, y = _data(task)
        if flavor == "lightgbm":
            model: Any = lightgbm.LGBMClassifier(n_estimators=100, verbose=-1).fit(x, y)
        else:
            model = xgboost.XGBRegressor(n_estimators=100).fit(x, y)
        source = ModelSource(uri=f"bench-{flavor}", sha256="0" * 64, flavor=flavor, libraries={})
        loaded = Loaded(model, flavor, source)
        sample = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, compiled = compiled_model(loaded, infer_schema(loaded, sample, None))
        reference = model.predict if task == "regression" else model.predict_proba
        timings += _both(task, f"{flavor} (imported)", reference, compiled, x, rng, repeats)
    return timings


def format_timings(timings: list[EngineTiming]) -> str:
    header = ["task", "candidate", "rows", "library µs", "onnx µs", "x faster"]
    lines = [
        [t.task, t.candidate, str(t.rows), f"{t.pipeline_us:,.1f}", f"{t.onnx_us:,.1f}", f"{t.ratio:.1f}"]
        for t in timings
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    rendered = [
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *lines]
    ]
    rendered.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(rendered)


def as_json(timings: list[EngineTiming]) -> list[dict[str, Any]]:
    return [asdict(t) | {"ratio": round(t.ratio, 2)} for t in timings]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=200, help="calls per figure (median)")
    args = parser.parse_args()
    print(format_timings(measure(args.repeats) + measure_imported(args.repeats)))


if __name__ == "__main__":
    main()
