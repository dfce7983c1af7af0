"""The UI's own settings: where the API is. It reads nothing else of the project's configuration."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class UISettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # The API's base URL, as the UI's server reaches it (http://lb:8000 in docker compose: the nginx).
    api_url: str = "http://127.0.0.1:8000"
    # Seconds to wait for one API answer; retraining itself runs in the background.
    api_timeout: float = Field(default=30.0, gt=0)


@lru_cache
def get_ui_settings() -> UISettings:
    return UISettings()
