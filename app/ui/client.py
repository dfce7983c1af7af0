"""The API, as the UI calls it: one method per endpoint, every failure an ApiError with a readable message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


class ApiError(Exception):
    """What went wrong, in words a person can act on (never a traceback)."""

    def __init__(self, message: str, status: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class SessionExpired(ApiError):
    """The API refused the token (expired, or signed with a key that changed): log in again."""


@dataclass(frozen=True)
class Login:
    token: str
    scopes: list[str]


def _message(response: httpx.Response) -> tuple[str, Any]:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    if isinstance(detail, str):
        return detail, detail
    # A refusal with its figures (e.g. POST /model/canary/promote's 409): the message is the line to show.
    if isinstance(detail, dict) and isinstance(detail.get("message"), str):
        return detail["message"], detail
    if isinstance(detail, list) and detail:
        first = detail[0]
        where = ", ".join(
            f"{key} {first[key]}"
            for key in ("line", "row", "field")
            if isinstance(first, dict) and key in first
        )
        text = first.get("msg", str(first)) if isinstance(first, dict) else str(first)
        more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
        return (f"{where}: {text}" if where else text) + more, detail
    return f"the API answered {response.status_code} {response.reason_phrase}", detail


class ApiClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(self, method: str, path: str, *, auth: bool = True, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = httpx.request(
                method, self.base_url + path, headers=headers, timeout=self.timeout, **kwargs
            )
        except httpx.TimeoutException:
            raise ApiError(f"the API at {self.base_url} did not answer within {self.timeout:.0f} s") from None
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the API at {self.base_url} ({type(exc).__name__})") from None
        if response.status_code == 401 and auth:
            raise SessionExpired("your session has expired: log in again", 401)
        if response.status_code >= 400:
            message, detail = _message(response)
            raise ApiError(message, response.status_code, detail)
        return response

    def login(self, username: str, password: str) -> Login:
        try:
            response = self._request(
                "POST", "/token", auth=False, data={"username": username, "password": password}
            )
        except ApiError as exc:
            if exc.status == 401:
                raise ApiError("wrong username or password", 401) from None
            if exc.status == 429:
                raise ApiError(f"too many failed logins: {exc}", 429) from None
            raise
        body = response.json()
        return Login(body["access_token"], body.get("scope", "").split())

    def model_info(self) -> dict[str, Any]:
        return self._request("GET", "/model-info").json()

    def predict(self, row: dict[str, Any], compare: bool = True) -> dict[str, Any]:
        params = {"compare": "true"} if compare else {}
        return self._request("POST", "/predict", params=params, json={"instances": [row]}).json()

    def predict_csv(self, data: bytes, filename: str = "rows.csv") -> str:
        files = {"file": (filename, data, "text/csv")}
        return self._request("POST", "/predict/csv", files=files, headers={"Accept": "text/csv"}).text

    def versions(self) -> dict[str, Any]:
        return self._request("GET", "/models").json()

    def train(self, data: bytes | None = None, filename: str = "train.csv") -> dict[str, Any]:
        files = {"file": (filename, data, "text/csv")} if data is not None else None
        return self._request("POST", "/train", files=files).json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/train/{job_id}").json()

    def rollback(self, version: str) -> dict[str, Any]:
        return self._request("POST", "/model/rollback", json={"version": version}).json()

    def canary(self) -> dict[str, Any]:
        """The canary (or null), its guards, what its next step waits for, and the last decision."""
        return self._request("GET", "/model/canary").json()

    def promote_canary(self) -> dict[str, Any]:
        """Serve the canary as champion, if its live evidence passes; a refusal is an ApiError (409)."""
        return self._request("POST", "/model/canary/promote").json()

    def end_canary(self) -> dict[str, Any]:
        """The champion answers everyone again; `ended` is the canary's version, or None if none ran."""
        return self._request("DELETE", "/model/canary").json()

    def monitoring(self, hours: int = 24, limit: int = 50) -> dict[str, Any]:
        return self._request("GET", "/monitoring", params={"hours": hours, "limit": limit}).json()

    def api_keys(self) -> list[dict[str, Any]]:
        """Every key (an admin's view), without its secret."""
        return self._request("GET", "/api-keys").json()

    def create_api_key(
        self, name: str, scopes: list[str], expires_in_days: float | None, owner: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "scopes": scopes, "expires_in_days": expires_in_days}
        if owner:
            body["owner"] = owner
        return self._request("POST", "/api-keys", json=body).json()

    def revoke_api_key(self, key_id: str) -> None:
        self._request("DELETE", f"/api-keys/{key_id}")

    def service_clients(self) -> list[dict[str, Any]]:
        return self._request("GET", "/clients").json()

    def create_client(self, name: str, scopes: list[str]) -> dict[str, Any]:
        return self._request("POST", "/clients", json={"name": name, "scopes": scopes}).json()

    def rotate_client(self, client_id: str) -> dict[str, Any]:
        return self._request("POST", f"/clients/{client_id}/rotate").json()

    def disable_client(self, client_id: str) -> dict[str, Any]:
        return self._request("POST", f"/clients/{client_id}/disable").json()

    def delete_client(self, client_id: str) -> None:
        self._request("DELETE", f"/clients/{client_id}")
