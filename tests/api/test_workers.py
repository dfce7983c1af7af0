"""Two worker processes: /metrics totals add up whichever worker served (multiprocess mode)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.models import IRIS_ROW, write_model
from tests.support.servers import api_server
from tests.support.tokens import ADMIN, login

pytestmark = pytest.mark.slow
REQUESTS = 40


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_totals_are_summed_over_two_workers(tmp_path: Path):
    write_model(tmp_path / "models")
    metrics_dir = tmp_path / "prom-multiproc"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale file from a previous run")
    multiprocess = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with api_server(tmp_path, tmp_path / "models", "--workers", "2", ready="/health", **multiprocess) as api:
        base = api.url
        headers = login(base, *ADMIN)
        pids = set()
        for _ in range(REQUESTS):
            # A new connection each time, so the kernel spreads them over both workers.
            with httpx.Client(timeout=10) as client:
                response = client.post(f"{base}/predict", json={"instances": [IRIS_ROW]}, headers=headers)
                assert response.status_code == 200
        for file in metrics_dir.glob("counter_*.db"):
            pids.add(file.stem.split("_")[-1])
        assert "999999" not in pids, "the stale file of an earlier run was not cleaned"
        assert len(pids) >= 2, f"only {pids} wrote metrics"

        for _ in range(3):  # each scrape may land on either worker: the answer must not change
            samples = scrape(base)
            key = ("predictor_predictions_total", (("label", "setosa"), ("model_version", "v1")))
            assert samples[key] == REQUESTS
            http = (
                "predictor_http_requests_total",
                (("method", "POST"), ("route", "/predict"), ("status", "200")),
            )
            assert samples[http] == REQUESTS
            assert samples[("predictor_model_loaded", ())] == 1
            assert samples[("predictor_tokens_issued_total", ())] == 1
