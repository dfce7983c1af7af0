"""bench/auth.py: each credential's throughput over the JWT's, its table line, JSON and verdict."""

from __future__ import annotations

from bench.auth import KEY_TARGET, AuthResult, auth_json, auth_verdicts, format_auth
from tests.bench.test_harness import load


def test_ratios_lines_and_the_api_key_verdict() -> None:
    jwt = [load(1000, 10, 20), load(1100, 10, 20)]
    key = AuthResult("api_key", [load(1000, 10, 20), load(1000, 10, 22)], jwt)
    issuer = AuthResult("oidc", [load(840, 12, 30), load(840, 12, 30)], jwt)

    assert round(key.ratio, 3) == round(1000 / 1050, 3)
    lines = format_auth([key, issuer]).splitlines()
    assert "api_key 1,000 req/s, JWT 1,050: 0.95x (target >= 0.95x)" in lines[0]
    assert lines[1].endswith("oidc 840 req/s, JWT 1,050: 0.80x")
    assert [row["method"] for row in auth_json([key, issuer])] == ["api_key", "oidc"]
    verdicts = auth_verdicts([key, issuer])
    assert len(verdicts) == 1 and verdicts[0]["met"] is (key.ratio >= KEY_TARGET)
