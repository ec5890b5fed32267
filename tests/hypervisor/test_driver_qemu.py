"""LibvirtHypervisor against real libvirtd + QEMU instances, each in its own
network namespace (two diskless 32 MiB hosts; see the qemu_pair fixture)."""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from collections.abc import Iterator

import pytest

from hacluster.hypervisor.domxml import domain_type_for, minimal_domain_xml
from hacluster.hypervisor.libvirt_driver import LibvirtHypervisor
from hacluster.lab.libvirtd import LabLibvirtd
from hacluster.ports import DomainInfo, HypervisorError
from hacluster.ports import DomainState as S

from .support import Recorder, wait_for

Pair = tuple[LabLibvirtd, LabLibvirtd]
RESYNC_S = 60.0
# Functional bound only (well under RESYNC_S, loose enough for a loaded CI machine); the
# latency itself is measured by bench/hypervisor.py (about 0.2 s here).
EVENT_BOUND_S = 5.0


@pytest.fixture
def hvs(qemu_pair: Pair) -> Iterator[tuple[LibvirtHypervisor, LibvirtHypervisor]]:
    # The periodic resync is set far out, so a change seen within EVENT_BOUND_S came from a
    # lifecycle event (or the resync on reconnect), not from the poll that would find it anyway.
    a, b = (LibvirtHypervisor(host.uri, reconnect_interval_s=0.05,
                              resync_interval_s=RESYNC_S) for host in qemu_pair)
    try:
        yield a, b
    finally:
        for hv in (a, b):
            for info in hv.list_domains():
                hv.undefine(info.name)
            hv.close()


def _xml(name: str, uri: str) -> str:
    return minimal_domain_xml(name, 32, 1, domain_type_for(uri))


def _state(hv: LibvirtHypervisor, name: str) -> S | None:
    return next((info.state for info in hv.list_domains() if info.name == name), None)


def _started(hv: LibvirtHypervisor, name: str) -> float:
    hv.define(name, _xml(name, hv.uri))
    began = time.monotonic()
    hv.start(name)
    return time.monotonic() - began


def test_start_list_and_shutdown_that_times_out_into_destroy(
    hvs: tuple[LibvirtHypervisor, LibvirtHypervisor], name: str
) -> None:
    hv = hvs[0]
    events = Recorder()
    hv.subscribe(events)
    assert _started(hv, name) < 5.0
    assert DomainInfo(name, S.RUNNING, 32, 1) in hv.list_domains()
    events.wait(name, S.RUNNING, reason="started/booted")
    began = time.monotonic()
    hv.shutdown(name, timeout_s=0.5)  # SeaBIOS without ACPI ignores the request
    took = time.monotonic() - began
    assert 0.5 <= took < 4.0
    assert _state(hv, name) == S.SHUTOFF
    events.wait(name, S.SHUTOFF, reason="stopped/destroyed")


def test_killed_qemu_is_reported_as_crashed_by_an_event(
    qemu_pair: Pair, hvs: tuple[LibvirtHypervisor, LibvirtHypervisor], name: str
) -> None:
    hv = hvs[0]
    events = Recorder()
    hv.subscribe(events)
    _started(hv, name)
    pid = qemu_pair[0].qemu_pid(name)
    assert pid is not None
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    at, reason = events.wait(name, S.CRASHED, timeout_s=EVENT_BOUND_S)
    assert at - killed < EVENT_BOUND_S, f"crash noticed after {at - killed:.3f} s"
    assert reason == "stopped/failed"
    assert _state(hv, name) == S.CRASHED


def test_live_migration_there_and_back(
    qemu_pair: Pair, hvs: tuple[LibvirtHypervisor, LibvirtHypervisor], name: str
) -> None:
    (host_a, host_b), (hv_a, hv_b) = qemu_pair, hvs
    seen_a, seen_b = Recorder(), Recorder()
    hv_a.subscribe(seen_a)
    hv_b.subscribe(seen_b)
    _started(hv_a, name)
    # peer-to-peer, given the plain qemu:///system?socket= spelling
    hv_a.migrate(name, host_b.uri.replace("qemu+unix:", "qemu:"), timeout_s=20.0)
    assert _state(hv_a, name) is None  # the definition moved too
    assert _state(hv_b, name) == S.RUNNING
    seen_a.wait(name, S.SHUTOFF, reason="stopped/migrated")
    seen_b.wait(name, S.RUNNING, reason="resumed/migrated")
    # back again, driven by this client talking to both daemons
    hv_b.migrate(name, host_a.uri, timeout_s=20.0, peer_to_peer=False)
    assert _state(hv_b, name) is None
    assert _state(hv_a, name) == S.RUNNING
    hv_a.destroy(name)
    assert _state(hv_a, name) == S.SHUTOFF  # persistent at the destination


def test_migration_past_its_timeout_is_aborted_and_the_vm_stays(
    qemu_pair: Pair, hvs: tuple[LibvirtHypervisor, LibvirtHypervisor], name: str
) -> None:
    (_, host_b), (hv_a, hv_b) = qemu_pair, hvs
    seen_b = Recorder()
    hv_b.subscribe(seen_b)
    _started(hv_a, name)
    began = time.monotonic()
    with pytest.raises(HypervisorError, match=f"'{name}'.*within 0.5 s and was aborted"):
        # 1 MiB/s for 32 MiB of guest memory would take half a minute
        hv_a.migrate(name, host_b.uri, timeout_s=0.5, bandwidth_mib_s=1)
    assert time.monotonic() - began < 5.0
    assert _state(hv_a, name) == S.RUNNING
    # the half-started copy at the destination is not reported as a crash
    seen_b.wait(name, S.SHUTOFF, reason="stopped/failed (incoming migration)")
    assert S.CRASHED not in [state for state, _ in seen_b.of(name)]
    wait_for(lambda: _state(hv_b, name) is None, 5.0, "destination to forget the domain")


def test_vms_survive_a_libvirtd_restart_and_events_resume(
    qemu_pair: Pair, hvs: tuple[LibvirtHypervisor, LibvirtHypervisor], name: str
) -> None:
    host_a, hv = qemu_pair[0], hvs[0]
    events = Recorder()
    hv.subscribe(events)
    _started(hv, name)
    pid = host_a.qemu_pid(name)
    assert pid is not None
    host_a.restart_daemon()
    assert host_a.qemu_pid(name) == pid
    wait_for(lambda: _state(hv, name) == S.RUNNING, 10.0, "reconnect and see the VM running")
    # a domain started after the restart proves that events flow again (and
    # gives libvirtd time to finish reconnecting to the first one's QEMU)
    _started(hv, f"{name}-2")
    events.wait(f"{name}-2", S.RUNNING)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    at, reason = events.wait(name, S.CRASHED, since=killed, timeout_s=EVENT_BOUND_S)
    assert reason == "stopped/failed"
    assert at - killed < EVENT_BOUND_S


def test_vm_that_died_while_libvirtd_was_down_is_reported_on_reconnect(
    qemu_pair: Pair, hvs: tuple[LibvirtHypervisor, LibvirtHypervisor], name: str
) -> None:
    host_a, hv = qemu_pair[0], hvs[0]
    events = Recorder()
    hv.subscribe(events)
    _started(hv, name)
    pid = host_a.qemu_pid(name)
    assert pid is not None
    host_a.stop_daemon()
    killed = time.monotonic()
    try:
        os.kill(pid, signal.SIGKILL)  # libvirtd will never send an event for this
    finally:
        host_a.start_daemon()
    back = time.monotonic()
    at, reason = events.wait(name, S.CRASHED, since=killed, timeout_s=EVENT_BOUND_S)
    assert reason == "resync"
    assert at - back < EVENT_BOUND_S  # the watcher reconnects on its own and resyncs at once


def test_libvirt_errors_name_the_domain(
    hvs: tuple[LibvirtHypervisor, LibvirtHypervisor], name: str
) -> None:
    hv = hvs[0]
    broken = _xml(name, hv.uri).replace(
        "<devices>", "<devices>\n    <emulator>/nonexistent/qemu</emulator>"
    )
    with pytest.raises(HypervisorError, match=f"define of domain '{name}'.*nonexistent"):
        hv.define(name, broken)


def _uuid(hv: LibvirtHypervisor, name: str) -> str:
    return hv._require("read the uuid", name).UUIDString()


@pytest.mark.parametrize("peer_to_peer", [True, False], ids=["p2p", "client"])
def test_migration_replaces_a_stale_inactive_definition_under_another_uuid(
    qemu_pair: Pair, hvs: tuple[LibvirtHypervisor, LibvirtHypervisor], name: str,
    peer_to_peer: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    """A host of release 0.2.0 (random uuid per host) or a hand-made definition left an
    inactive definition of the VM on A under another uuid: libvirt would refuse the
    migration back to A ("already exists with uuid"), breaking failback and drains."""
    (host_a, _), (hv_a, hv_b) = qemu_pair, hvs
    stale = str(uuid.uuid4())
    hv_a.define(name, minimal_domain_xml(name, 32, 1, domain_type_for(hv_a.uri), uuid=stale))
    _started(hv_b, name)
    running = _uuid(hv_b, name)
    assert running != stale
    with caplog.at_level(logging.WARNING, logger="hacluster.hypervisor"):
        hv_b.migrate(name, host_a.uri, timeout_s=20.0, peer_to_peer=peer_to_peer)
    assert _state(hv_b, name) is None
    assert _state(hv_a, name) == S.RUNNING
    assert _uuid(hv_a, name) == running
    evidence = [r.getMessage() for r in caplog.records if "stale inactive" in r.getMessage()]
    assert len(evidence) == 1
    assert all(part in evidence[0] for part in (name, host_a.uri, stale, running))
    hv_a.destroy(name)
    assert _state(hv_a, name) == S.SHUTOFF  # the incoming definition is the persistent one


@pytest.mark.parametrize("dest_uuid,pause", [("other", False), ("other", True), ("same", False)],
                         ids=["running-other-uuid", "paused-other-uuid", "running-same-uuid"])
def test_migration_never_touches_an_active_domain_of_that_name_at_the_destination(
    qemu_pair: Pair, hvs: tuple[LibvirtHypervisor, LibvirtHypervisor], name: str,
    dest_uuid: str, pause: bool,
) -> None:
    """Two running copies of one VM are split brain: the migration is refused, both stay."""
    (host_a, _), (hv_a, hv_b) = qemu_pair, hvs
    own = str(uuid.uuid4()) if dest_uuid == "other" else None  # None: the name's uuid
    hv_a.define(name, minimal_domain_xml(name, 32, 1, domain_type_for(hv_a.uri), uuid=own))
    hv_a.start(name)
    if pause:
        hv_a._require("pause", name).suspend()
    before = _uuid(hv_a, name)
    _started(hv_b, name)
    assert (_uuid(hv_b, name) == before) == (dest_uuid == "same")
    for peer_to_peer in (True, False):
        with pytest.raises(HypervisorError, match=f"migration of domain '{name}'") as refused:
            hv_b.migrate(name, host_a.uri, timeout_s=20.0, peer_to_peer=peer_to_peer)
        assert "split brain" in str(refused.value)
        assert _state(hv_a, name) == (S.PAUSED if pause else S.RUNNING)
        assert _uuid(hv_a, name) == before
        assert _state(hv_b, name) == S.RUNNING
