"""Events: what an applied command changed, one line each, with its reason."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    index: int  # log index of the command that caused it
    kind: str  # one of the names below
    subject: str  # host or VM name ("" for cluster-wide)
    message: str  # the one line that explains it
    data: tuple[tuple[str, str], ...] = ()  # e.g. (("from", "online"), ("to", "suspect"))

    def get(self, key: str, default: str = "") -> str:
        for k, v in self.data:
            if k == key:
                return v
        return default

    def __str__(self) -> str:
        subject = f" {self.subject}" if self.subject else ""
        return f"[{self.index}] {self.kind}{subject}: {self.message}"


REJECTED = "rejected"  # the command was refused; nothing changed
DUPLICATE = "duplicate"  # request id seen before; nothing changed
HOST_ADDED = "host-added"
HOST_REMOVED = "host-removed"
HOST_STATE = "host-state"
HOST_UPDATED = "host-updated"
HOST_RECOVERED = "host-recovered"
HOST_SHUTDOWN = "host-shutdown"  # a planned shutdown's steps (SIGTERM of its peer)
VM_ADDED = "vm-added"
VM_REMOVED = "vm-removed"
VM_UPDATED = "vm-updated"
VM_STATE = "vm-state"
VM_START_LOCKED = "vm-start-locked"  # a start refused for a held disk lock: a copy runs elsewhere
FENCE_REQUESTED = "fence-requested"
FENCE_CONFIRMED = "fence-confirmed"
FENCE_FAILED = "fence-failed"
FENCE_CAP_REACHED = "fence-cap-reached"
FENCE_REFUSED = "fence-refused"  # held: no majority could confirm it (quorum guard)
FENCE_CANCELLED = "fence-cancelled"  # the host renewed again before any fence succeeded
STORAGE_ACTIVE = "storage-active"  # lease out, but it writes shared storage: not fenced
STORAGE_UNREADABLE = "storage-unreadable"  # the leader cannot read a silent host's storage
SETTINGS_CHANGED = "settings-changed"
CLUSTER_MAINTENANCE = "cluster-maintenance"
VERSIONS_ANNOUNCED = "versions-announced"  # what a host's peer understands changed
NOOP = "noop"
