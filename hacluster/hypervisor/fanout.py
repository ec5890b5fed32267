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
        self._known: dict[str, DomainState] = {}  # what subscribers were last told
        self._primed = False  # _known holds a real snapshot
        self._epoch = 0  # connection generation whose events we accept; 0 = none yet
        self._seq = 0  # counts published events
        self._last_seq: dict[str, int] = {}  # per domain: _seq of its latest event
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

    def begin(self, epoch: int) -> int:
        """Accept events of connection `epoch` only, from now on (call before
        registering for its events, so none is lost); returns a mark for resync."""
        with self._lock:
            self._epoch = epoch
            return self._seq

    def mark(self) -> int:
        """Take before reading domain states for resync()."""
        with self._lock:
            return self._seq

    def publish(self, epoch: int, name: str, state: DomainState, reason: str) -> None:
        """A lifecycle event; dropped when it comes from a replaced connection."""
        with self._lock:
            if epoch != self._epoch:
                return
            self._seq += 1
            self._last_seq[name] = self._seq
            self._known[name] = state
            self._outbox.put((name, state, reason))

    def resync(self, epoch: int, current: dict[str, DomainState], mark: int) -> None:
        """Compare states read after `mark` with what subscribers last heard and
        announce differences with reason "resync" (catches changes libvirt sent
        no event for, e.g. while libvirtd or our connection was down). Domains
        with an event since `mark` are skipped: the event is newer than the read.
        The first call only records the states."""
        with self._lock:
            if epoch != self._epoch:
                return
            fresh = {n for n in set(current) | set(self._known) if self._last_seq.get(n, 0) <= mark}
            changes = self._diff_locked(current, fresh) if self._primed else []
            for name in fresh:
                if name in current:
                    self._known[name] = current[name]
                else:
                    self._known.pop(name, None)
            self._primed = True
            for change in changes:
                self._outbox.put(change)

    def _diff_locked(self, current: dict[str, DomainState], fresh: set[str]) -> list[Change]:
        changes = [
            (name, state, "resync")
            for name, state in sorted(current.items())
            if name in fresh and self._known.get(name) != state
        ]
        changes += [
            (name, DomainState.SHUTOFF, "resync/gone")
            for name in sorted(set(self._known) - set(current))
            if name in fresh and self._known[name] != DomainState.SHUTOFF
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
