"""A peer's cluster events streamed in a thread and stamped with their arrival time,
for tests and benches that need to know what the cluster said and when."""

from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING, Any

from hacluster.rpc.protocol import RpcError

if TYPE_CHECKING:
    from hacluster.lab.cluster import LabCluster


class EventFollower:
    """Streams a peer's cluster events in a thread, stamped with arrival time."""

    def __init__(self, lab: LabCluster, peer: str) -> None:
        self.lab = lab
        self.peer = peer
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="event-follower", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        try:
            with self.lab.client(self.peer) as rpc:
                for item in rpc.stream("events", {"follow": True, "last": 0},
                                       timeout_s=math.inf):
                    self.events.append((time.monotonic(), item))
                    if self._stop.is_set():
                        return
        except (RpcError, OSError, RuntimeError):
            return

    def started_after(self, vm: str, after: float) -> bool:
        """Whether an event said `vm` reached state started at or after `after`."""
        return any(item["kind"] == "vm-state" and item["subject"] == vm
                   and item["data"].get("to") == "started" and at >= after
                   for at, item in list(self.events))

    def first(self, kind: str, subject: str, after: float = 0.0) -> float | None:
        """When the first event of `kind` about `subject` arrived at or after `after`
        (bench/failover.py splits a failover into phases with it)."""
        for at, item in list(self.events):
            if item["kind"] == kind and item["subject"] == subject and at >= after:
                return at
        return None
