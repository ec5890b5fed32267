"""Polling and event recording for the hypervisor tests (no fixed sleeps)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from hacluster.ports import DomainState


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll until check() holds; returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.005)
    return time.monotonic() - start


class Recorder:
    """A DomainListener that remembers (arrival time, name, state, reason)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[float, str, DomainState, str]] = []

    def __call__(self, name: str, state: DomainState, reason: str) -> None:
        with self._lock:
            self.events.append((time.monotonic(), name, state, reason))

    def of(self, name: str) -> list[tuple[DomainState, str]]:
        with self._lock:
            return [(state, reason) for _, n, state, reason in self.events if n == name]

    def wait(
        self,
        name: str,
        state: DomainState,
        timeout_s: float = 5.0,
        since: float = 0.0,
        reason: str = "",
    ) -> tuple[float, str]:
        """Arrival time and reason of the first event after `since` that
        matches the state (and starts with `reason`)."""
        found: list[tuple[float, str]] = []

        def match() -> bool:
            with self._lock:
                found[:] = [
                    (at, r)
                    for at, n, s, r in self.events
                    if n == name and s == state and at >= since and r.startswith(reason)
                ]
            return bool(found)

        wait_for(match, timeout_s, f"{name} -> {state.value} (saw {self.of(name)})")
        return found[0]
