from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from app.core.config import (
    EXAMPLE_ADMIN_PASSWORD,
    EXAMPLE_SECRET_KEY,
    Settings,
    get_settings,
    settings_environment,
    settings_error,
)
from app.core.security import PRODUCTION_COST, PasswordCost
from tests.support.tokens import CHEAP_PASSWORD_HASHING

STRONG = "a-real-secret-that-is-long-and-random-0123456789"
ADMIN_PW = "s3cure-admin-pw"


@pytest.fixture(autouse=True)
def _as_deployed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings as a deployment reads them: without the suite's cheap password hashing."""
    for name in CHEAP_PASSWORD_HASHING:
        monkeypatch.delenv(name)


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_a_subprocess_reads_the_same_settings_from_their_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built = _settings(
        secret_key=STRONG,
        database_url="sqlite:////tmp/elsewhere.db",
        model_store_url="s3://bucket/versions",
        model_cache_dir="/tmp/cache",
        metrics_enabled=False,
        promotion_tolerance=0.25,
        redis_url=None,
    )
    environment = settings_environment(built)
    assert environment["MODEL_STORE_URL"] == "s3://bucket/versions" and "REDIS_URL" not in environment
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert _settings() == built


def test_development_accepts_the_example_values() -> None:
    settings = _settings(app_env="development")
    assert settings.secret_key.get_secret_value() == EXAMPLE_SECRET_KEY
    assert settings.max_batch_rows == 1000


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (
            {"secret_key": EXAMPLE_SECRET_KEY, "admin_password": ADMIN_PW},
            "SECRET_KEY is the example",
        ),
        ({"secret_key": "", "admin_password": ADMIN_PW}, "SECRET_KEY is empty"),
        ({"secret_key": STRONG, "admin_password": EXAMPLE_ADMIN_PASSWORD}, "ADMIN_PASSWORD is the example"),
    ],
)
def test_production_refuses_placeholders_with_one_line(values: dict, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(app_env="production", **values)
    line = settings_error(caught.value)
    assert reason in line
    assert "\n" not in line
    # The secret itself never appears in the message.
    assert EXAMPLE_SECRET_KEY not in line and EXAMPLE_ADMIN_PASSWORD not in line


def test_production_accepts_real_values() -> None:
    settings = _settings(app_env="production", secret_key=STRONG, admin_password="s3cure-admin-pw")
    assert settings.app_env == "production"


def test_settings_come_from_the_environment_and_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_BATCH_ROWS", "7")
    get_settings.cache_clear()
    try:
        assert get_settings().max_batch_rows == 7
        assert get_settings() is get_settings()
    finally:
        get_settings.cache_clear()


def test_the_app_refuses_to_start_in_production_with_the_example_secret(tmp_path) -> None:
    env = {"APP_ENV": "production", "SECRET_KEY": EXAMPLE_SECRET_KEY, "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", "from app.main import create_app; create_app()"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "configuration error: SECRET_KEY is the example value: set a long random value for production"
    ]


def test_start_worker_follows_the_database_unless_set() -> None:
    from app.core.config import Settings

    assert Settings(_env_file=None, start_worker="").embedded_worker is True  # SQLite by default
    postgres = "postgresql+psycopg://u@h/db"
    assert Settings(_env_file=None, start_worker="", database_url=postgres).embedded_worker is False
    assert Settings(_env_file=None, start_worker="true", database_url=postgres).embedded_worker is True
    assert Settings(_env_file=None, start_worker="false").embedded_worker is False


def test_password_hashing_costs_the_production_floor_by_default() -> None:
    settings = _settings()
    assert settings.password_cost == PRODUCTION_COST == PasswordCost(3, 64 * 1024, 4)


@pytest.mark.parametrize("weaker", [{"password_hash_time_cost": 1}, {"password_hash_memory_kib": 1024}])
def test_production_refuses_weaker_password_hashing(weaker: dict) -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(app_env="production", secret_key=STRONG, admin_password=ADMIN_PW, **weaker)
    assert "may not be below 3 and 65536 in production" in settings_error(caught.value)
    # Stronger is always allowed, and development may go down to argon2's minimum.
    _settings(app_env="production", secret_key=STRONG, admin_password=ADMIN_PW, password_hash_time_cost=4)
    minimum = _settings(
        **{"password_hash_time_cost": 1, "password_hash_memory_kib": 8, "password_hash_parallelism": 1}
    )
    assert minimum.password_cost == PasswordCost(1, 8, 1)


def test_argon2_memory_must_cover_its_lanes() -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(password_hash_memory_kib=16, password_hash_parallelism=4)
    assert "at least 8 KiB per lane" in settings_error(caught.value)


def test_an_external_issuer_is_off_unless_set_and_then_needs_its_audience() -> None:
    assert _settings(oidc_issuer="").oidc is None
    config = _settings(
        oidc_issuer="https://keycloak.example.com/realms/acme",
        oidc_audience="predictor-api",
        oidc_scopes_claim="realm_access.roles",
        oidc_scope_map="predictor-admins:admin,predictor-admins:predict",
    ).oidc
    assert config is not None and config.scope_map.apply(["predictor-admins"]) == ("admin", "predict")


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"oidc_issuer": "https://issuer.example"}, "OIDC_AUDIENCE is empty"),
        ({"oidc_issuer": "http://issuer.example", "oidc_audience": "a"}, "must be an https:// URL"),
        (
            {"oidc_issuer": "http://127.0.0.1:8080", "oidc_audience": "a", "app_env": "production"},
            "must be an https:// URL",
        ),
        ({"oidc_scope_map": "predictor.read"}, "theirs:ours"),
        ({"oidc_scope_map": "predictor.read:predcit"}, "predcit: not a scope here"),
    ],
)
def test_a_wrong_issuer_setting_is_refused_with_one_line(values: dict, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _settings(**({"secret_key": STRONG, "admin_password": ADMIN_PW} | values))
    assert reason in settings_error(caught.value)
