"""One fence or probe attempt: its deadline, its evidence, its failure kinds.

Shared by every backend. A backend translates its library's errors into the
`FenceFailure` subclasses below; `procedure` turns those into outcomes, and
the deadline logic here lets a backend run library calls that may hang in a
thread it can abandon.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from hacluster.ports import Secret

T = TypeVar("T")

# Give a worker that is about to return its own (more precise) result a moment
# beyond the deadline before the caller gives up on it.
ABANDON_GRACE_S = 0.05
_EVIDENCE_MAX = 600


class FenceFailure(Exception):
    """A classified failure; the message is evidence (never a password)."""


class NoAnswer(FenceFailure):
    """The BMC did not answer (in time)."""


class AuthRejected(FenceFailure):
    """The BMC answered and refused the credentials."""


class CommandRejected(FenceFailure):
    """The BMC accepted the session but refused the command."""


class BadConfig(FenceFailure):
    """The target cannot work as configured (unknown option, bad TLS pin, ...)."""


class Abandoned(Exception):
    """The caller gave up on this attempt; the worker must send nothing more."""


class Attempt:
    """Deadline, cancel flag, progress flags and evidence notes of one attempt.

    Written by whoever runs the procedure and read by the caller (possibly
    after giving up on it), hence the lock. An `observer` sees every note and
    flag change: a worker process streams them to its parent with it.
    """

    def __init__(self, deadline_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.deadline = self.started + max(0.0, deadline_s)
        self.cancel = threading.Event()
        self.observer: Callable[[str | None, dict[str, object]], None] | None = None
        self._lock = threading.Lock()
        self._notes: list[str] = []
        self.power_command_sent = False  # an off (or on) request went out
        self.confirmed_off = False  # power was read back as off
        self.last_read = "nothing"  # latest power reading, for evidence on timeout

    def elapsed(self) -> float:
        return self._clock() - self.started

    def remaining(self) -> float:
        return self.deadline - self._clock()

    def flags(self) -> dict[str, object]:
        with self._lock:
            return {
                "power_command_sent": self.power_command_sent,
                "confirmed_off": self.confirmed_off,
                "last_read": self.last_read,
            }

    def update(
        self,
        *,
        power_command_sent: bool | None = None,
        confirmed_off: bool | None = None,
        last_read: str | None = None,
    ) -> None:
        with self._lock:
            if power_command_sent is not None:
                self.power_command_sent = power_command_sent
            if confirmed_off is not None:
                self.confirmed_off = confirmed_off
            if last_read is not None:
                self.last_read = last_read
        self._notify(None)

    def note(self, text: str) -> None:
        """Record one step with its time since the attempt began."""
        with self._lock:
            self._notes.append(f"{text} @{self.elapsed() * 1000:.0f}ms")
        self._notify(text)

    def _notify(self, text: str | None) -> None:
        if self.observer is not None:
            self.observer(text, self.flags())

    def notes(self) -> list[str]:
        with self._lock:
            return list(self._notes)

    def checkpoint(self) -> None:
        """Call before sending anything: an abandoned worker must stay quiet."""
        if self.cancel.is_set():
            raise Abandoned()

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once if the caller abandons the attempt."""
        self.cancel.wait(max(0.0, min(seconds, self.remaining())))
        self.checkpoint()


@dataclass
class _Box(Generic[T]):
    value: T | None = None
    error: BaseException | None = None


def run_abandonable(work: Callable[[], T], attempt: Attempt, name: str) -> T | None:
    """Run `work` in a daemon thread; return its value, or None if it is still
    running at the attempt's deadline (then the attempt is cancelled and the
    thread abandoned: libraries such as pyghmi can block for ~30 s or forever,
    and a daemon thread cannot be killed, only left behind). Exceptions from
    `work` are re-raised here."""
    box: _Box[T] = _Box()
    done = threading.Event()

    def run() -> None:
        try:
            box.value = work()
        except BaseException as err:  # handed to the caller below
            box.error = err
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    if not done.wait(max(0.0, attempt.remaining()) + ABANDON_GRACE_S):
        attempt.cancel.set()
        return None
    if box.error is not None:
        raise box.error
    return box.value


def scrub(text: str, secret: Secret) -> str:
    """One line, bounded, and without the password even if a library or agent
    echoed it."""
    value = secret.reveal()
    if value:
        text = text.replace(value, "***")
    line = " ".join(text.split())
    if len(line) > _EVIDENCE_MAX:
        line = line[: _EVIDENCE_MAX - 3] + "..."
    return line


def describe_error(err: BaseException) -> str:
    """Type and message of an exception, for evidence."""
    message = str(err).strip()
    return f"{type(err).__name__}: {message}" if message else type(err).__name__
