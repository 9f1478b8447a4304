"""Small helpers shared by the tests: a settable clock and an event factory."""

from __future__ import annotations

from popwatch.model import AuthEvent


class Clock:
    """A clock that moves only when a test sets or advances ``t``."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ev(ip, t, service="ssh", kind="auth_failed", user="root", attempts=1) -> AuthEvent:  # noqa: ANN001
    return AuthEvent(ts=t, service=service, kind=kind, ip=ip, user=user, attempts=attempts)
