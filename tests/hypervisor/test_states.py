"""The libvirt state and event mapping, without a connection."""

from __future__ import annotations

import enum

import libvirt
import pytest

from hacluster.hypervisor import states
from hacluster.hypervisor.states import IncomingMigrations, map_event, map_state
from hacluster.ports import DomainState as S

MIRRORS: dict[type[enum.IntEnum], str] = {
    states.VirState: "VIR_DOMAIN_",
    states.RunningReason: "VIR_DOMAIN_RUNNING_",
    states.PausedReason: "VIR_DOMAIN_PAUSED_",
    states.ShutoffReason: "VIR_DOMAIN_SHUTOFF_",
    states.VirEvent: "VIR_DOMAIN_EVENT_",
    states.StartedDetail: "VIR_DOMAIN_EVENT_STARTED_",
    states.SuspendedDetail: "VIR_DOMAIN_EVENT_SUSPENDED_",
    states.ResumedDetail: "VIR_DOMAIN_EVENT_RESUMED_",
    states.StoppedDetail: "VIR_DOMAIN_EVENT_STOPPED_",
    states.UndefinedDetail: "VIR_DOMAIN_EVENT_UNDEFINED_",
    states.CrashedDetail: "VIR_DOMAIN_EVENT_CRASHED_",
}


@pytest.mark.parametrize("mirror", list(MIRRORS), ids=lambda m: m.__name__)
def test_mirrored_numbers_match_installed_libvirt(mirror: type[enum.IntEnum]) -> None:
    for member in mirror:
        assert getattr(libvirt, MIRRORS[mirror] + member.name) == member.value, member


@pytest.mark.parametrize(
    ("state", "reason", "expected"),
    [
        (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED, S.RUNNING),
        (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY, S.MIGRATING),
        (libvirt.VIR_DOMAIN_BLOCKED, 0, S.RUNNING),
        (libvirt.VIR_DOMAIN_SHUTDOWN, 0, S.RUNNING),
        (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER, S.PAUSED),
        (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION, S.MIGRATING),
        (libvirt.VIR_DOMAIN_PMSUSPENDED, 0, S.PAUSED),
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN, S.SHUTOFF),
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED, S.SHUTOFF),
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED, S.SHUTOFF),
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED, S.CRASHED),
        (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_FAILED, S.CRASHED),
        (libvirt.VIR_DOMAIN_CRASHED, 0, S.CRASHED),
        (libvirt.VIR_DOMAIN_NOSTATE, 0, S.OTHER),
    ],
)
def test_map_state(state: int, reason: int, expected: S) -> None:
    assert map_state(state, reason) == expected


@pytest.mark.parametrize(
    ("event", "detail", "expected"),
    [
        ("STARTED", "STARTED_BOOTED", (S.RUNNING, "started/booted")),
        ("STARTED", "STARTED_MIGRATED", (S.MIGRATING, "started/migrated")),
        ("RESUMED", "RESUMED_MIGRATED", (S.RUNNING, "resumed/migrated")),
        ("SUSPENDED", "SUSPENDED_PAUSED", (S.PAUSED, "suspended/paused")),
        ("SUSPENDED", "SUSPENDED_MIGRATED", (S.MIGRATING, "suspended/migrated")),
        ("STOPPED", "STOPPED_DESTROYED", (S.SHUTOFF, "stopped/destroyed")),
        ("STOPPED", "STOPPED_MIGRATED", (S.SHUTOFF, "stopped/migrated")),
        ("STOPPED", "STOPPED_FAILED", (S.CRASHED, "stopped/failed")),
        ("STOPPED", "STOPPED_CRASHED", (S.CRASHED, "stopped/crashed")),
        ("CRASHED", "CRASHED_PANICKED", (S.CRASHED, "crashed/panicked")),
        ("UNDEFINED", "UNDEFINED_REMOVED", (S.SHUTOFF, "undefined/removed")),
        ("DEFINED", "DEFINED_ADDED", None),
        ("SHUTDOWN", "SHUTDOWN_FINISHED", None),
    ],
)
def test_map_event(event: str, detail: str, expected: tuple[S, str] | None) -> None:
    code = getattr(libvirt, f"VIR_DOMAIN_EVENT_{event}")
    assert map_event(code, getattr(libvirt, f"VIR_DOMAIN_EVENT_{detail}")) == expected


def test_unknown_event_numbers_still_give_a_reason() -> None:
    assert states.event_reason(99, 7) == "99/7"
    assert states.event_reason(libvirt.VIR_DOMAIN_EVENT_STOPPED, 42) == "stopped/42"


def _feed(tracker: IncomingMigrations, name: str, event: str, detail: str) -> object:
    code = getattr(libvirt, f"VIR_DOMAIN_EVENT_{event}")
    sub = getattr(libvirt, f"VIR_DOMAIN_EVENT_{detail}")
    return tracker.adjust(name, code, sub, map_event(code, sub))


def test_aborted_incoming_migration_is_not_a_crash() -> None:
    tracker = IncomingMigrations()
    assert _feed(tracker, "vm", "STARTED", "STARTED_MIGRATED") == (S.MIGRATING, "started/migrated")
    assert _feed(tracker, "vm", "STOPPED", "STOPPED_FAILED") == (
        S.SHUTOFF,
        "stopped/failed (incoming migration)",
    )


def test_crash_after_completed_incoming_migration_is_a_crash() -> None:
    tracker = IncomingMigrations()
    _feed(tracker, "vm", "STARTED", "STARTED_MIGRATED")
    _feed(tracker, "vm", "RESUMED", "RESUMED_MIGRATED")
    assert _feed(tracker, "vm", "STOPPED", "STOPPED_FAILED") == (S.CRASHED, "stopped/failed")
