"""Delivery of notifications: a channel per way out (the hook, the webhook, an
embedder's notifier), each with a thread and a queue of its own, so a slow or failing
channel delays only itself and never the peer.

In each channel notifications go out one at a time, in the order of the log. A failed
delivery (the notifier raised) is tried again `attempts` times in all, the pause
doubling from `backoff_s`; then it is given up, logged with every reason. At most
MAX_QUEUED wait per channel; beyond that the oldest are dropped, and logged. On close,
what waits gets CLOSE_GRACE_S to go out.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from typing import TYPE_CHECKING

from hacluster.daemon.notify import HookNotifier
from hacluster.daemon.webhook import WebhookNotifier

if TYPE_CHECKING:
    from hacluster.config import Config
    from hacluster.ports import Notifier

log = logging.getLogger("hacluster.notify")

MAX_QUEUED = 1000
CLOSE_GRACE_S = 3.0
MAX_BACKOFF_S = 300.0


class Channel:
    def __init__(self, notifier: Notifier, attempts: int, backoff_s: float) -> None:
        self.notifier = notifier
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.delivered = self.failed = self.dropped = 0
        self._queue: deque[dict[str, object]] = deque()
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="hacluster-notify",
                                        daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        return str(self.notifier)

    def put(self, event: dict[str, object]) -> None:
        with self._cond:
            if self._closing.is_set():
                return
            if len(self._queue) >= MAX_QUEUED:
                gone = self._queue.popleft()
                self.dropped += 1
                log.error("notification dropped: too many waiting", extra={
                    "channel": self.name, "event": gone.get("event"), "waiting": MAX_QUEUED})
            self._queue.append(event)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing.is_set():
                    self._cond.wait()
                if not self._queue:
                    return
                event = self._queue.popleft()
                self._busy = True
            self._deliver(event)
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _deliver(self, event: dict[str, object]) -> None:
        reasons = []
        pause = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                self.notifier.notify(event)
                self.delivered += 1
                return
            except Exception as exc:  # the notifier's failure, whatever it is
                reasons.append(str(exc) or type(exc).__name__)
            if attempt == self.attempts:
                break
            log.warning("notification failed, retrying", extra={
                "channel": self.name, "event": event.get("event"), "attempt": attempt,
                "retry_in_s": pause, "error": reasons[-1]})
            if self._closing.wait(pause):  # stopping: no more waiting
                break
            pause = min(pause * 2, MAX_BACKOFF_S)
        self.failed += 1
        log.error("notification given up", extra={
            "channel": self.name, "event": event.get("event"), "attempts": len(reasons),
            "errors": " | ".join(reasons)})

    def idle(self, timeout_s: float) -> bool:
        """Wait until nothing waits or is being delivered (True), or timeout_s."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Let what waits go out for grace_s, then stop (a retry's pause is cut short)."""
        self.idle(grace_s)
        with self._cond:
            left = len(self._queue)
            self._queue.clear()
            self._closing.set()
            self._cond.notify_all()
        if left:
            log.error("notifications not sent: the peer stops", extra={
                "channel": self.name, "waiting": left})
        self._thread.join(grace_s)


class Notifications:
    """ports.Notifier: every notification to every channel. A peer service (start,
    close); `reconfigure` takes a new [notify] table (SIGHUP)."""

    def __init__(self, config: Config, custom: Notifier | None = None) -> None:
        self.custom = custom
        self.channels = self._channels(config)

    def _channels(self, config: Config) -> list[Channel]:
        n = config.notify
        notifiers: list[Notifier] = []
        if self.custom is not None:
            notifiers.append(self.custom)
        if n.hook:
            notifiers.append(HookNotifier(n.hook, config.timing.notify_timeout_s))
        if n.webhook_url:
            notifiers.append(WebhookNotifier(n.webhook_url, n.webhook_timeout_s,
                                             n.webhook_token_file))
        return [Channel(x, n.attempts, n.retry_backoff_s) for x in notifiers]

    def notify(self, event: dict[str, object]) -> None:
        for channel in self.channels:
            channel.put(event)

    def reconfigure(self, config: Config) -> None:
        old, self.channels = self.channels, self._channels(config)
        for channel in old:  # off the caller's thread (the event loop, for SIGHUP)
            threading.Thread(target=channel.close, name="hacluster-notify-close",
                             daemon=True).start()

    def idle(self, timeout_s: float) -> bool:
        return all(channel.idle(timeout_s) for channel in self.channels)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for channel in self.channels:
            await loop.run_in_executor(None, channel.close)
