from __future__ import annotations

from app.core.lockout import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_five_failures_within_the_window_lock_the_username_until_it_passes() -> None:
    clock = Clock()
    throttle = LoginThrottle(5, 900, clock=clock)
    for _ in range(4):
        throttle.record_failure("Alice")
        clock.now += 10
    assert throttle.retry_after("alice") is None
    throttle.record_failure("alice")
    # Locked until the first failure (t=1000) leaves the window: 1900 - 1040.
    assert throttle.retry_after("ALICE") == 860
    assert throttle.retry_after("bob") is None
    clock.now = 1899.5
    assert throttle.retry_after("alice") == 1
    clock.now = 1900.0
    assert throttle.retry_after("alice") is None


def test_old_failures_do_not_count() -> None:
    clock = Clock()
    throttle = LoginThrottle(5, 900, clock=clock)
    for _ in range(4):
        throttle.record_failure("alice")
    clock.now += 901
    throttle.record_failure("alice")
    assert throttle.retry_after("alice") is None


def test_reset_clears_failures_and_memory_is_bounded() -> None:
    throttle = LoginThrottle(2, 900, clock=Clock(), max_usernames=3)
    throttle.record_failure("alice")
    throttle.reset("alice")
    throttle.record_failure("alice")
    assert throttle.retry_after("alice") is None
    for name in ("a", "b", "c", "d"):
        throttle.record_failure(name)
    assert len(throttle._failures) == 3
