"""bench/bento_service.py runs in BentoML's own virtualenv, never in this one: it compiles, and keeps
the contract bench/run.py relies on (read from its source, without importing bentoml)."""

from __future__ import annotations

import ast
import py_compile
from pathlib import Path

from bench.run import PEER_ROUTES, ROOT

SERVICE = ROOT / "bench" / "bento_service.py"


def test_it_compiles(tmp_path: Path):
    py_compile.compile(str(SERVICE), cfile=str(tmp_path / "bento_service.pyc"), doraise=True)


def _predict_method() -> ast.FunctionDef:
    tree = ast.parse(SERVICE.read_text())
    service = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Predictor")
    return next(n for n in service.body if isinstance(n, ast.FunctionDef) and n.name == "predict")


def test_predict_is_batchable_and_takes_our_bodys_field():
    method = _predict_method()
    # BentoML serves a method at /<its name> and reads the JSON field named after its parameter:
    # POST /predict with {"instances": [...]}, the very body ours takes.
    assert PEER_ROUTES["bentoml"] == f"/{method.name}"
    assert [a.arg for a in method.args.args] == ["self", "instances"]
    (decorator,) = method.decorator_list
    assert isinstance(decorator, ast.Call)
    assert ast.unparse(decorator.func) == "bentoml.api"
    options = {k.arg: ast.unparse(k.value) for k in decorator.keywords}
    assert options["batchable"] == "True"
    assert {"max_batch_size", "max_latency_ms"} <= set(options)
