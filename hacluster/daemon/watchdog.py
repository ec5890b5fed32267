"""The watchdog this peer feeds while a leader acknowledges it (core/selffence.py decides).

Kinds ([watchdog] kind in the peer's configuration):
- device: the Linux watchdog device (hardware, or softdog), opened when first fed, its
  timeout set with WDIOC_SETTIMEOUT and fed with WDIOC_KEEPALIVE. A file that takes no
  ioctls (a stand-in in tests) is fed by writing to it, which the kernel accepts too.
  Disarmed by the magic close (writing 'V' before closing); any other close, a crash
  included, leaves it running, so the machine resets.
- command: a configured command run at every feed (an external watchdog, such as a
  management controller's, or the lab's emulator), another one to disarm.
- none: no self-fencing; a host whose fence fails waits for an operator.

The feeder has its own thread: a stuck event loop cannot keep it feeding (the allowance
only grows when acknowledgements are handled), and a busy one does not starve it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from hacluster.core.selffence import SelfFence, Verdict
from hacluster.fsm.model import Watchdog, WatchdogKind

log = logging.getLogger("hacluster.watchdog")

# linux/watchdog.h: _IOR('W', 5, int), _IOWR('W', 6, int), _IOR('W', 7, int)
WDIOC_KEEPALIVE = 0x80045705
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707
COMMAND_TIMEOUT_S = 2.0


class WatchdogError(RuntimeError):
    """The watchdog could not be armed, fed or disarmed; the message says which and why."""


class WatchdogDevice(Protocol):
    kind: WatchdogKind
    timeout_s: float

    def arm(self) -> None: ...

    def feed(self) -> None: ...

    def disarm(self) -> None: ...


class LinuxWatchdog:
    kind = WatchdogKind.DEVICE

    def __init__(self, path: str, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._fd: int | None = None
        self._ioctls = True

    def arm(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY)
        except OSError as exc:
            raise WatchdogError(f"cannot open watchdog {self.path}: {exc.strerror}") from None
        try:
            got = fcntl.ioctl(self._fd, WDIOC_SETTIMEOUT, struct.pack("i", int(self.timeout_s)))
            self.timeout_s = float(struct.unpack("i", got)[0])  # the device may round it
        except OSError as exc:
            if exc.errno not in (errno.ENOTTY, errno.EINVAL):
                raise WatchdogError(f"watchdog {self.path}: setting its timeout to "
                                    f"{self.timeout_s:g} s failed: {exc.strerror}") from None
            self._ioctls = False  # not a watchdog driver: fed by writes
        self.feed()

    def feed(self) -> None:
        if self._fd is None:
            raise WatchdogError(f"watchdog {self.path} is not armed")
        try:
            if self._ioctls:
                fcntl.ioctl(self._fd, WDIOC_KEEPALIVE, struct.pack("i", 0))
            else:
                os.write(self._fd, b"\0")
        except OSError as exc:
            raise WatchdogError(f"feeding watchdog {self.path} failed: {exc.strerror}") from None

    def disarm(self) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, b"V")  # the magic close: stop the timer on close
        finally:
            os.close(self._fd)
            self._fd = None


class CommandWatchdog:
    kind = WatchdogKind.COMMAND

    def __init__(self, feed: Sequence[str], disarm: Sequence[str], timeout_s: float) -> None:
        self.feed_argv = list(feed)
        self.disarm_argv = list(disarm)
        self.timeout_s = timeout_s

    def arm(self) -> None:
        self.feed()

    def feed(self) -> None:
        self._run(self.feed_argv, "feed")

    def disarm(self) -> None:
        if self.disarm_argv:
            self._run(self.disarm_argv, "disarm")

    def _run(self, argv: list[str], what: str) -> None:
        try:
            done = subprocess.run(argv, capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise WatchdogError(f"watchdog {what} command {argv[0]}: {exc}") from None
        if done.returncode != 0:
            raise WatchdogError(f"watchdog {what} command {argv[0]} exited "
                                f"{done.returncode}: {done.stderr.strip()[:200]}")


class WatchdogFeeder:
    """Feeds `device` while `policy` allows; arms it on the first allowance; when the
    allowance runs out, calls `on_self_fence` once and never feeds again."""

    def __init__(self, device: WatchdogDevice, policy: SelfFence,
                 on_self_fence: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self.policy = policy
        self.on_self_fence = on_self_fence
        self.clock = clock
        self.feed_every_s = min(1.0, device.timeout_s / 4)
        self.armed = False
        self.fired = False
        self.failures = 0
        self._said: tuple[str, float] = ("", float("-inf"))  # last error logged, when
        self.lock = threading.Lock()  # the policy is told acks from the event loop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def record(self, self_fence_s: float) -> Watchdog:
        """What the replicated state must say about this host's watchdog right now."""
        return Watchdog(self.device.kind, self.device.timeout_s, self_fence_s, self.armed)

    def start(self) -> None:
        self._thread.start()

    def step(self) -> None:
        """One look: feed, arm, or self-fence (the thread calls it every feed period)."""
        with self.lock:
            verdict = self.policy.verdict(self.clock())
        if verdict is Verdict.FEED:
            try:
                if not self.armed:
                    self.device.arm()
                    self.armed = True
                    log.warning("watchdog armed", extra={
                        "kind": self.device.kind.value, "timeout_s": self.device.timeout_s,
                        "self_fence_s": self.policy.self_fence_s})
                else:
                    self.device.feed()
            except WatchdogError as exc:
                self.failures += 1
                self._log_failure(str(exc))
        elif verdict is Verdict.SELF_FENCE and not self.fired:
            self.fired = True
            log.critical("self-fence: no leader acknowledged this host for %.1f s; "
                         "destroying its VMs and no longer feeding the watchdog",
                         self.policy.self_fence_s)
            self.on_self_fence()

    def _log_failure(self, message: str) -> None:
        """Once per distinct error, and again every minute while it lasts."""
        now = self.clock()
        if message != self._said[0] or now - self._said[1] >= 60.0:
            self._said = (message, now)
            log.error("watchdog: %s (%d failure(s) so far)", message, self.failures)

    def _run(self) -> None:
        while not self._stop.wait(self.feed_every_s):
            try:
                self.step()
            except Exception:  # the feeder must keep looking
                log.exception("watchdog step failed")

    def stop(self, disarm: bool) -> None:
        """Stop the thread; disarm the device only when the cluster knows it is."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        if disarm and self.armed:
            with contextlib.suppress(WatchdogError, OSError):
                self.device.disarm()
            self.armed = False


def make_watchdog(kind: str, device: str, feed: Sequence[str], disarm: Sequence[str],
                  timeout_s: float) -> WatchdogDevice | None:
    if kind == WatchdogKind.DEVICE:
        return LinuxWatchdog(device, timeout_s)
    if kind == WatchdogKind.COMMAND:
        return CommandWatchdog(feed, disarm, timeout_s)
    return None
