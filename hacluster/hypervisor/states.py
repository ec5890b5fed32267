"""Map libvirt's domain states and lifecycle events onto ports.DomainState.

The numbers mirror libvirt's public enums (virDomainState, virDomainShutoffReason,
virDomainEventType, ...), which are part of its stable ABI. Keeping them here,
without importing libvirt, keeps the mapping testable on its own; a test checks
every value against the installed libvirt module.
"""

from __future__ import annotations

import enum

from hacluster.ports import DomainState


class VirState(enum.IntEnum):  # VIR_DOMAIN_<name>
    NOSTATE = 0
    RUNNING = 1
    BLOCKED = 2
    PAUSED = 3
    SHUTDOWN = 4  # being shut down: still running
    SHUTOFF = 5
    CRASHED = 6
    PMSUSPENDED = 7


class RunningReason(enum.IntEnum):  # VIR_DOMAIN_RUNNING_<name>
    POSTCOPY = 10
    POSTCOPY_FAILED = 11


class PausedReason(enum.IntEnum):  # VIR_DOMAIN_PAUSED_<name>
    MIGRATION = 2
    POSTCOPY = 12
    POSTCOPY_FAILED = 13


class ShutoffReason(enum.IntEnum):  # VIR_DOMAIN_SHUTOFF_<name>
    CRASHED = 3
    FAILED = 6  # QEMU died or failed to start


class VirEvent(enum.IntEnum):  # VIR_DOMAIN_EVENT_<name>
    DEFINED = 0
    UNDEFINED = 1
    STARTED = 2
    SUSPENDED = 3
    RESUMED = 4
    STOPPED = 5
    SHUTDOWN = 6
    PMSUSPENDED = 7
    CRASHED = 8


class StartedDetail(enum.IntEnum):  # VIR_DOMAIN_EVENT_STARTED_<name>
    BOOTED = 0
    MIGRATED = 1
    RESTORED = 2
    FROM_SNAPSHOT = 3
    WAKEUP = 4


class SuspendedDetail(enum.IntEnum):  # VIR_DOMAIN_EVENT_SUSPENDED_<name>
    PAUSED = 0
    MIGRATED = 1
    IOERROR = 2
    WATCHDOG = 3
    RESTORED = 4
    FROM_SNAPSHOT = 5
    API_ERROR = 6
    POSTCOPY = 7
    POSTCOPY_FAILED = 8


class ResumedDetail(enum.IntEnum):  # VIR_DOMAIN_EVENT_RESUMED_<name>
    UNPAUSED = 0
    MIGRATED = 1
    FROM_SNAPSHOT = 2
    POSTCOPY = 3
    POSTCOPY_FAILED = 4


class UndefinedDetail(enum.IntEnum):  # VIR_DOMAIN_EVENT_UNDEFINED_<name>
    REMOVED = 0
    RENAMED = 1


class CrashedDetail(enum.IntEnum):  # VIR_DOMAIN_EVENT_CRASHED_<name>
    PANICKED = 0
    CRASHLOADED = 1


class StoppedDetail(enum.IntEnum):  # VIR_DOMAIN_EVENT_STOPPED_<name>
    SHUTDOWN = 0
    DESTROYED = 1
    CRASHED = 2
    MIGRATED = 3
    SAVED = 4
    FAILED = 5
    FROM_SNAPSHOT = 6


_DETAILS: dict[int, type[enum.IntEnum]] = {
    VirEvent.STARTED: StartedDetail,
    VirEvent.SUSPENDED: SuspendedDetail,
    VirEvent.STOPPED: StoppedDetail,
    VirEvent.RESUMED: ResumedDetail,
    VirEvent.UNDEFINED: UndefinedDetail,
    VirEvent.CRASHED: CrashedDetail,
}


def map_state(state: int, reason: int) -> DomainState:
    """DomainState for the (state, reason) pair of virDomainGetState."""
    if state in (VirState.RUNNING, VirState.BLOCKED):
        postcopy = reason in (RunningReason.POSTCOPY, RunningReason.POSTCOPY_FAILED)
        return DomainState.MIGRATING if postcopy else DomainState.RUNNING
    if state == VirState.SHUTDOWN:
        return DomainState.RUNNING
    if state == VirState.PAUSED:
        return DomainState.MIGRATING if reason in set(PausedReason) else DomainState.PAUSED
    if state == VirState.PMSUSPENDED:
        return DomainState.PAUSED
    if state == VirState.SHUTOFF:
        crashed = reason in (ShutoffReason.CRASHED, ShutoffReason.FAILED)
        return DomainState.CRASHED if crashed else DomainState.SHUTOFF
    if state == VirState.CRASHED:
        return DomainState.CRASHED
    return DomainState.OTHER


def event_reason(event: int, detail: int) -> str:
    """A readable "event/detail", e.g. "stopped/failed"."""
    try:
        name = VirEvent(event).name.lower()
    except ValueError:
        return f"{event}/{detail}"
    details = _DETAILS.get(event)
    try:
        detail_name = details(detail).name.lower().replace("_", "-") if details else str(detail)
    except ValueError:
        detail_name = str(detail)
    return f"{name}/{detail_name}"


def map_event(event: int, detail: int) -> tuple[DomainState, str] | None:
    """(new state, reason) for a lifecycle event, or None when the event says
    nothing about whether the domain runs (defined; shutdown, which is always
    followed by stopped)."""
    reason = event_reason(event, detail)
    if event == VirEvent.STARTED and detail == StartedDetail.MIGRATED:
        return DomainState.MIGRATING, reason  # incoming: paused until it completes
    if event in (VirEvent.STARTED, VirEvent.RESUMED):
        return DomainState.RUNNING, reason
    if event == VirEvent.SUSPENDED:
        migrating = detail in (SuspendedDetail.MIGRATED, SuspendedDetail.POSTCOPY)
        return (DomainState.MIGRATING if migrating else DomainState.PAUSED), reason
    if event == VirEvent.PMSUSPENDED:
        return DomainState.PAUSED, reason
    if event == VirEvent.STOPPED:
        crashed = detail in (StoppedDetail.CRASHED, StoppedDetail.FAILED)
        return (DomainState.CRASHED if crashed else DomainState.SHUTOFF), reason
    if event == VirEvent.CRASHED:
        return DomainState.CRASHED, reason
    if event == VirEvent.UNDEFINED:
        return DomainState.SHUTOFF, reason
    return None


class IncomingMigrations:
    """Tells a failed incoming migration from a crash.

    When an incoming migration is aborted, the destination's half-started
    domain stops with "failed", which alone reads like a crash. Track domains
    that started as migration targets and have not resumed yet, and report
    their stop as a plain shutoff. Fed from libvirt's single event thread."""

    def __init__(self) -> None:
        self._pending: set[str] = set()

    def adjust(
        self, name: str, event: int, detail: int, mapped: tuple[DomainState, str] | None
    ) -> tuple[DomainState, str] | None:
        if event == VirEvent.STARTED:
            if detail == StartedDetail.MIGRATED:
                self._pending.add(name)
            else:
                self._pending.discard(name)
        elif event == VirEvent.RESUMED:
            self._pending.discard(name)
        elif event in (VirEvent.STOPPED, VirEvent.UNDEFINED) and name in self._pending:
            self._pending.discard(name)
            if mapped is not None and mapped[0] == DomainState.CRASHED:
                return DomainState.SHUTOFF, f"{mapped[1]} (incoming migration)"
        return mapped
