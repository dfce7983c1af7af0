"""The one error an import raises: the step that refused, and a line saying why and what to pass."""

from __future__ import annotations

from app.core.messages import ImportStep


class Refused(Exception):
    def __init__(self, step: ImportStep, message: str) -> None:
        super().__init__(message)
        self.step: ImportStep = step
        self.message = message

    def __str__(self) -> str:
        return f"{self.step}: {self.message}"
