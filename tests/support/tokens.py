"""The tests' secret and users, and their bearer tokens from /token."""

from __future__ import annotations

import httpx

SECRET = "test-secret-key-for-the-api-suite"
ADMIN = ("admin", "admin-password-1")
USER = ("alice", "alice-password-1")
# argon2's minimum cost (PASSWORD_HASH_*), which tests/conftest.py sets for the whole suite.
CHEAP_PASSWORD_HASHING = {
    "PASSWORD_HASH_TIME_COST": "1",
    "PASSWORD_HASH_MEMORY_KIB": "8",
    "PASSWORD_HASH_PARALLELISM": "1",
}


def get_token(client: httpx.Client, username: str, password: str, scope: str | None = None) -> str:
    """From a TestClient (an httpx.Client) or an httpx.Client on a real server's URL."""
    form = {"username": username, "password": password} | ({"scope": scope} if scope else {})
    response = client.post("/token", data=form)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def login(url: str, username: str, password: str) -> dict[str, str]:
    """The bearer header of a user of the real server at `url`."""
    with httpx.Client(base_url=url, timeout=10) as client:
        return bearer(get_token(client, username, password))
