"""A dependency that may go away (the model store, the revocation store, the rate limit store, the
database behind the pointer and live quality): said once when it stops answering, once when it
answers again, and a gauge set at each change."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("predictor")


class Outage:
    def __init__(
        self,
        down: str,
        back: str,
        on_change: Callable[[bool], None] = lambda up: None,
        *,
        settle_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.down = down  # the warning, followed by ": <the error>"
        self.back = back
        self._on_change = on_change  # a gauge: 1 once the dependency answers, 0 once it does not
        # A dependency that flaps (fails again within this long of coming back) is not said again
        # each time: the gauge still follows it.
        self._settle = settle_seconds
        self._clock = clock
        self._back_at = -float("inf")
        self._up: bool | None = None  # not read yet
        self.error: str | None = None  # why the last read failed; None while it answers

    @property
    def failing(self) -> bool:
        return self._up is False

    def failed(self, error: BaseException | str) -> None:
        self.error = error if isinstance(error, str) else describe(error)
        if self._up is False:
            return
        if self._clock() - self._back_at > self._settle:
            log.warning("%s: %s", self.down, self.error)
        self._change(False)

    def answered(self) -> None:
        if self._up:
            return
        if self._up is False:
            if self._clock() - self._back_at > self._settle:
                log.info(self.back)
            self._back_at = self._clock()
        self.error = None
        self._change(True)

    def _change(self, up: bool) -> None:
        self._up = up
        self._on_change(up)


def describe(exc: BaseException) -> str:
    """`Type: first line of the message`, or the type alone."""
    text = str(exc)
    first_line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
