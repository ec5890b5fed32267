"""Deliver domain state changes to subscribers, off libvirt's event thread.

Subscribers run on one dispatcher thread per hypervisor, so a slow or failing
subscriber never stalls libvirt's event loop (which also drives keepalive for
every connection in the process). The fan-out also remembers what subscribers
were last told, so that after a reconnect only real changes are announced.
"""

from __future__ import annotations

import logging
import queue
import threading

from hacluster.ports import DomainListener, DomainState

log = logging.getLogger(__name__)

Change = tuple[str, DomainState, str]  # name, new state, reason


class DomainEventFanout:
    def __init__(self, label: str) -> None:
        self._label = label
        self._lock = threading.Lock()
        self._listeners: list[DomainListener] = []
        self._known: dict[str, DomainState] = {}
        self._epoch = 0  # connection generation whose events we accept; 0 = none yet
        self._outbox: queue.SimpleQueue[Change | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def epoch(self) -> int:
        with self._lock:
            return self._epoch

    @property
    def has_listeners(self) -> bool:
        with self._lock:
            return bool(self._listeners)

    def add(self, listener: DomainListener) -> None:
        with self._lock:
            self._listeners.append(listener)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"hv-events {self._label}", daemon=True
                )
                self._thread.start()

    def publish(self, epoch: int, name: str, state: DomainState, reason: str) -> None:
        """A lifecycle event; dropped when it comes from a replaced connection."""
        with self._lock:
            if epoch != self._epoch:
                return
            self._known[name] = state
        self._outbox.put((name, state, reason))

    def reset(self, epoch: int, current: dict[str, DomainState]) -> None:
        """Accept events of connection `epoch` from now on. `current` is the
        state right after subscribing; on a reconnect, differences from what
        subscribers last heard are announced with reason "resync"."""
        with self._lock:
            changes = self._diff_locked(current) if self._epoch else []
            self._known = dict(current)
            self._epoch = epoch
        for change in changes:
            self._outbox.put(change)

    def _diff_locked(self, current: dict[str, DomainState]) -> list[Change]:
        changes = [
            (name, state, "resync")
            for name, state in sorted(current.items())
            if self._known.get(name) != state
        ]
        changes += [
            (name, DomainState.SHUTOFF, "resync/gone")
            for name in sorted(set(self._known) - set(current))
            if self._known[name] != DomainState.SHUTOFF
        ]
        return changes

    def close(self) -> None:
        self._outbox.put(None)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def _run(self) -> None:
        while (change := self._outbox.get()) is not None:
            with self._lock:
                listeners = list(self._listeners)
            for listener in listeners:
                try:
                    listener(*change)
                except Exception:
                    log.exception("domain listener %r failed on %s", listener, change)
