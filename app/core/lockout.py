"""Login throttling: too many failed logins for one username lock it out for a while.

The interface /token relies on. The service's throttle counts in the users database
(app/db/throttle.py), so every worker and replica shares one count.
"""

from __future__ import annotations

from typing import Protocol


class Throttle(Protocol):
    def retry_after(self, username: str) -> int | None: ...
    def record_failure(self, username: str) -> None: ...
    def reset(self, username: str) -> None: ...
