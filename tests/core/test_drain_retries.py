"""A drain's failed live migration is tried again live (VmReport v3 `keep_trying`), to a
target not tried yet first, before the VM moves by stop and start; older reports keep
the old behaviour, so peers of two releases apply the same log alike."""

from __future__ import annotations

from hacluster.core.versions import admit
from hacluster.fsm import commands as c
from hacluster.fsm.apply_vms import DRAIN_LIVE_ATTEMPTS
from hacluster.fsm.codec import decode_command, encode_command
from hacluster.fsm.states import VmState

from .builders import Cluster


def draining() -> tuple[Cluster, str]:
    cl = Cluster()
    cl.add_hosts("h1", "h2", "h3", "h4")
    cl.announce_all()
    cl.add_vm("vm1")
    source = cl.vm("vm1").host
    cl.ok(c.SetHostMaintenance(name=source, on=True))
    assert cl.vm_state("vm1") is VmState.MIGRATING
    return cl, source


def failed(cl: Cluster, keep_trying: bool = True) -> None:
    vm = cl.vm("vm1")
    cl.ok(c.VmReport(name="vm1", host=vm.host, placement=vm.placement,
                     observed="migrate-failed", detail="connection reset",
                     keep_trying=keep_trying))


def test_a_failed_drain_migration_is_tried_again_live_on_another_target() -> None:
    cl, source = draining()
    first = cl.vm("vm1").target_host
    failed(cl)
    vm = cl.vm("vm1")
    assert vm.state is VmState.MIGRATING and vm.host == source
    assert vm.target_host not in (first, source) and vm.migrate_tried == (first,)
    assert f"live migration again (2/{DRAIN_LIVE_ATTEMPTS})" in vm.reason
    cl.report("vm1", "migrated")
    assert cl.vm("vm1").migrate_tried == () and cl.vm_state("vm1") is VmState.STARTED


def test_after_the_bounded_attempts_it_moves_by_stop_and_start() -> None:
    cl, source = draining()
    targets = []
    for _ in range(DRAIN_LIVE_ATTEMPTS):
        targets.append(cl.vm("vm1").target_host)
        failed(cl)
    vm = cl.vm("vm1")
    assert len(set(targets)) == DRAIN_LIVE_ATTEMPTS  # every attempt a different host
    assert vm.state is VmState.STOPPING and vm.host == source and vm.migrate_tried == ()
    assert f"after {DRAIN_LIVE_ATTEMPTS} live attempts ({', '.join(targets)})" in vm.reason


def test_a_report_without_keep_trying_stops_and_starts_at_once_as_before() -> None:
    cl, _ = draining()
    failed(cl, keep_trying=False)
    assert cl.vm_state("vm1") is VmState.STOPPING
    assert cl.vm("vm1").reason.endswith("draining by stop and start instead")


def test_the_keep_trying_report_is_version_3_and_falls_back_for_older_peers() -> None:
    report = c.VmReport(name="vm1", host="h1", placement=3, observed="migrate-failed",
                        keep_trying=True)
    assert report.wire_version() == 3
    decoded = decode_command(encode_command(c.Envelope(report)))
    assert isinstance(decoded, c.Envelope) and decoded.command == report
    older = report.for_older_peers()
    assert older == c.VmReport(name="vm1", host="h1", placement=3, observed="migrate-failed")
    assert older.wire_version() == 1
    cl = Cluster()
    cl.add_hosts("h1", "h2")  # release 0.1.0 everywhere: the gate keeps v3 out
    assert not admit(cl.state, report.TYPE, report.wire_version()).admitted
    assert admit(cl.state, older.TYPE, older.wire_version()).admitted
