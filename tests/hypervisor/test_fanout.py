"""Delivery of state changes to subscribers, without libvirt."""

from __future__ import annotations

from hacluster.hypervisor.fanout import DomainEventFanout
from hacluster.ports import DomainState as S

from .support import Recorder, wait_for


def _changes(seen: Recorder) -> list[tuple[str, S, str]]:
    return [(name, state, reason) for _, name, state, reason in seen.events]


def test_events_reach_every_listener_in_order_even_if_one_fails() -> None:
    fanout = DomainEventFanout("t")
    good = Recorder()

    def bad(name: str, state: S, reason: str) -> None:
        raise RuntimeError("listener bug")

    fanout.add(bad)
    fanout.add(good)
    fanout.begin(1)
    fanout.publish(1, "a", S.RUNNING, "started/booted")
    fanout.publish(1, "a", S.CRASHED, "stopped/failed")
    try:
        wait_for(lambda: len(good.events) == 2, 2.0, "two events")
        assert good.of("a") == [(S.RUNNING, "started/booted"), (S.CRASHED, "stopped/failed")]
    finally:
        fanout.close()


def test_reconnect_announces_what_changed_and_drops_stale_events() -> None:
    fanout = DomainEventFanout("t")
    seen = Recorder()
    fanout.add(seen)
    fanout.resync(1, {"a": S.RUNNING, "b": S.RUNNING, "c": S.SHUTOFF}, fanout.begin(1))
    fanout.publish(1, "b", S.PAUSED, "suspended/paused")
    # reconnect: a crashed and b vanished while we were blind, c unchanged
    mark = fanout.begin(2)
    fanout.publish(1, "a", S.RUNNING, "late event from the old connection")
    fanout.resync(2, {"a": S.CRASHED, "c": S.SHUTOFF, "d": S.RUNNING}, mark)
    fanout.publish(2, "d", S.SHUTOFF, "stopped/destroyed")
    try:
        wait_for(lambda: len(seen.events) == 5, 2.0, "five events")
        assert _changes(seen) == [
            ("b", S.PAUSED, "suspended/paused"),
            ("a", S.CRASHED, "resync"),
            ("d", S.RUNNING, "resync"),
            ("b", S.SHUTOFF, "resync/gone"),
            ("d", S.SHUTOFF, "stopped/destroyed"),
        ]
    finally:
        fanout.close()


def test_resync_never_overrides_an_event_newer_than_its_read() -> None:
    fanout = DomainEventFanout("t")
    seen = Recorder()
    fanout.add(seen)
    fanout.resync(1, {"a": S.RUNNING}, fanout.begin(1))
    mark = fanout.mark()
    # the states are read, then an event arrives before the comparison
    fanout.publish(1, "a", S.CRASHED, "stopped/failed")
    fanout.resync(1, {"a": S.RUNNING, "e": S.RUNNING}, mark)
    try:
        wait_for(lambda: len(seen.events) == 2, 2.0, "two events")
        assert _changes(seen) == [("a", S.CRASHED, "stopped/failed"), ("e", S.RUNNING, "resync")]
    finally:
        fanout.close()
