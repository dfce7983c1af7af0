"""How the suite is spread over pytest-xdist's workers (make test: -n auto --dist loadfile).

Each test file is one unit of work, run whole on one worker, so its module-scoped servers and trained
models are made once. The files are handed out longest first (the longest-processing-time rule): the
long end-to-end suites start at once on different workers, and the short files fill the gaps at the
end. (xdist's loadgroup would let a package share one unit, but with pytest 9 it groups nothing: it
renames items through an attribute pytest no longer reads.)
"""

from __future__ import annotations

import pytest

# Seconds each long file took with the suite on 2 workers on this 2-core machine (the sum of its
# tests' --durations), rounded. Only the order matters: a file that grows past its neighbours moves
# up once its figure is updated; one not listed is assumed to cost SECONDS_PER_TEST per test.
LONG_FILES: dict[str, float] = {
    "tests/deploy/test_devstack.py": 130,
    "tests/pipeline/test_stages.py": 170,
    "tests/api/test_predict_csv.py": 150,
    "tests/pipeline/test_onnx_export.py": 100,
    "tests/deploy/test_replicas.py": 77,
    "tests/api/test_train.py": 70,
    "tests/api/test_model_import.py": 70,
    "tests/pipeline/test_dvc.py": 60,
    "tests/observability/test_stack_e2e.py": 44,
    "tests/api/test_train_feedback.py": 38,
    "tests/api/test_token_lifecycle.py": 36,
    "tests/faults/test_outages.py": 35,
    "tests/faults/test_worker_killed.py": 33,
    "tests/api/test_request_path_imports.py": 33,
    "tests/ui/test_app.py": 33,
    "tests/adapters/test_model_store.py": 31,
    "tests/deploy/test_helm.py": 26,
    "tests/api/test_v2.py": 25,
}
SECONDS_PER_TEST = 0.3


def order(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the longest files first, on xdist's workers (which collect, and run what they are sent)."""
    if not hasattr(config, "workerinput"):
        return  # one process: the order written in the files
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::", 1)[0], []).append(item)

    def cost(path: str) -> float:
        return LONG_FILES.get(path, SECONDS_PER_TEST * len(files[path]))

    # sorted() is stable: within a file, and between files of equal cost, collection order holds.
    items[:] = [item for path in sorted(files, key=cost, reverse=True) for item in files[path]]
