"""The peer's replica of the state machine, shared between the Raft thread
(which applies entries) and everything else (which reads).

One lock guards the state: `apply` holds it for one entry (microseconds), and
readers hold it for one decision. Events are handed to listeners after the
lock is released; listeners must not block (the Raft thread calls them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hacluster.core.logclock import LogClock
from hacluster.fsm import ClusterState, Event, apply, decode_snapshot, encode_snapshot
from hacluster.fsm.codec import decode_command, state_digest
from hacluster.fsm.commands import Envelope

EventListener = Callable[[list[Event]], None]
EntryListener = Callable[[int, Envelope, list[Event]], None]  # index, entry, its events


class Replica:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._state = ClusterState()
        self._listeners: list[EventListener] = []
        self._entry_listeners: list[EntryListener] = []
        self.clock = LogClock()  # extended by every applied log time (core/logclock.py)

    # ------------------------------------------------------------ Raft callbacks (Raft thread)

    def apply(self, data: bytes, index: int) -> list[Event]:
        entry = decode_command(data)
        with self._lock:
            events = apply(self._state, entry, index)  # raises for an Undecodable entry
            self.clock.observe(self._state.log_time, time.monotonic())
        for listener in list(self._listeners):
            listener(events)
        if isinstance(entry, Envelope):
            for entry_listener in list(self._entry_listeners):
                entry_listener(index, entry, events)
        return events

    def snapshot(self) -> bytes:
        with self._lock:
            return encode_snapshot(self._state)

    def restore(self, data: bytes) -> None:
        state = decode_snapshot(data)
        with self._lock:
            self._state = state
            self.clock.observe(state.log_time, time.monotonic())

    # ------------------------------------------------------------ readers

    @contextmanager
    def read(self) -> Iterator[ClusterState]:
        """Hold the state still while deciding; keep the block short."""
        with self._lock:
            yield self._state

    def log_now(self) -> float:
        """This peer's log clock estimate now (0.0 before it has any)."""
        with self._lock:
            return self.clock.now(time.monotonic())

    def start_clock(self) -> bool:
        """A leader found no log time in a new cluster: start it (core/logclock.py)."""
        with self._lock:
            if self._state.log_time > 0:
                return False
            return self.clock.start(time.time(), time.monotonic())

    @property
    def applied_index(self) -> int:
        return self._state.applied_index

    def digest(self) -> str:
        with self._lock:
            return state_digest(self._state)

    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def on_entry(self, listener: EntryListener) -> Callable[[], None]:
        """listener(index, entry, events) for every applied entry: who wrote it, when
        (the event history, daemon/history.py); Raft thread, after the subscribers."""
        self._entry_listeners.append(listener)
        return lambda: self._entry_listeners.remove(listener)
