"""Host lifecycle handlers: membership, readiness, leases, maintenance, removal."""

from __future__ import annotations

import math

from hacluster.fsm import commands as c
from hacluster.fsm.model import BmcOverride, HostRole
from hacluster.fsm.states import HostState, VmState

from .builders import Cluster, kinds, only

H = HostState
V = VmState


def test_added_host_joins_and_runs_nothing() -> None:
    cluster = Cluster()
    events = cluster.ok(c.AddHost(name="h1", memory_mib=8_192, vcpus=4,
                                  addresses=("main=10.0.0.1",)))
    assert kinds(events) == ["host-added"]
    host = cluster.host("h1")
    assert host.state is H.JOINING and host.addresses == ("main=10.0.0.1",)
    cluster.add_vm("v1")
    assert cluster.vm_state("v1") is V.PENDING


def test_ready_host_goes_online_and_takes_pending_vms() -> None:
    cluster = Cluster()
    cluster.add_host("h1", ready=False)
    cluster.add_vm("v1")
    events = cluster.ok(c.HostReady(name="h1"))
    assert cluster.host_state("h1") is H.ONLINE
    assert cluster.vm("v1").state is V.STARTING and cluster.vm("v1").host == "h1"
    assert "capacity appeared on h1" in only(events, "vm-state")[0].message


def test_ready_updates_reported_capacity() -> None:
    cluster = Cluster()
    cluster.add_host("h1", memory_mib=1_024, ready=False)
    events = cluster.ok(c.HostReady(name="h1", memory_mib=4_096, vcpus=16))
    host = cluster.host("h1")
    assert (host.memory_mib, host.vcpus) == (4_096, 16)
    assert "capacity memory_mib=4096, vcpus=16" in only(events, "host-updated")[0].message


def test_duplicate_host_is_refused() -> None:
    cluster = Cluster()
    cluster.add_host("h1")
    events = cluster.run(c.AddHost(name="h1"))
    assert kinds(events) == ["rejected"] and "already exists" in events[0].message


def test_a_host_updates_its_lease_links() -> None:
    cluster = Cluster()
    cluster.ok(c.AddHost(name="h1", addresses=("main=10.0.0.1",)))
    links = ("backend=10.1.0.1", "main=10.0.0.1")
    events = cluster.ok(c.SetHostAddresses(name="h1", addresses=links))
    assert cluster.host("h1").addresses == links
    message = only(events, "host-updated")[0].message
    assert "backend=10.1.0.1" in message and "were main=10.0.0.1" in message
    assert cluster.ok(c.SetHostAddresses(name="h1", addresses=links)) == []  # no change


def test_bad_lease_links_are_refused_and_change_nothing() -> None:
    cluster = Cluster()
    cluster.ok(c.AddHost(name="h1", addresses=("main=10.0.0.1",)))
    for bad, why in ((("main",), "expected link=address"),
                     (("main=10.0.0.1", "main=10.0.0.2"), "listed twice"),
                     ((), "at least one lease link")):
        events = cluster.run(c.SetHostAddresses(name="h1", addresses=bad))
        assert kinds(events) == ["rejected"] and why in events[0].message
    assert cluster.host("h1").addresses == ("main=10.0.0.1",)
    assert kinds(cluster.run(c.SetHostAddresses(name="h9", addresses=("m=x",)))) == ["rejected"]


def test_invalid_host_name_is_refused() -> None:
    cluster = Cluster()
    for name in ("", "-x", "a b", "x" * 64, "é"):
        events = cluster.run(c.AddHost(name=name))
        assert kinds(events) == ["rejected"] and "invalid host name" in events[0].message
    assert cluster.state.hosts == {}


def test_suspect_then_alive_keeps_vms_in_place() -> None:
    cluster = Cluster()
    cluster.add_hosts("h1", "h2")
    cluster.add_vm("v1", allowed_hosts=("h1",))
    cluster.suspect("h1")
    assert cluster.host_state("h1") is H.SUSPECT
    assert cluster.vm_state("v1") is V.STARTED
    cluster.ok(c.MarkHostAlive(name="h1", evidence="renewed"))
    assert cluster.host_state("h1") is H.ONLINE
    assert cluster.vm("v1").host == "h1"


def test_suspect_host_gets_no_new_vms() -> None:
    cluster = Cluster()
    cluster.add_hosts("h1", "h2")
    cluster.suspect("h1")
    cluster.add_vm("v1", memory_mib=100)
    assert cluster.vm("v1").host == "h2"


def test_only_online_or_draining_host_can_become_suspect() -> None:
    cluster = Cluster()
    cluster.add_host("h1", ready=False)
    events = cluster.run(c.MarkHostSuspect(name="h1", evidence="x"))
    assert kinds(events) == ["rejected"] and cluster.host_state("h1") is H.JOINING


def test_alive_for_an_online_host_is_refused() -> None:
    cluster = Cluster()
    cluster.add_host("h1")
    events = cluster.run(c.MarkHostAlive(name="h1", evidence="x"))
    assert kinds(events) == ["rejected"] and "nothing to clear" in events[0].message


def test_suspect_host_that_reports_ready_goes_online() -> None:
    cluster = Cluster()
    cluster.add_host("h1")
    cluster.suspect("h1")
    cluster.ok(c.HostReady(name="h1"))
    assert cluster.host_state("h1") is H.ONLINE


def test_load_report_is_recorded() -> None:
    cluster = Cluster()
    cluster.add_host("h1")
    assert cluster.ok(c.ReportHostLoad(name="h1", load=2.5)) == []
    assert cluster.host("h1").load == 2.5


def test_negative_load_is_refused() -> None:
    cluster = Cluster()
    cluster.add_host("h1")
    assert kinds(cluster.run(c.ReportHostLoad(name="h1", load=-1.0))) == ["rejected"]


def test_non_finite_load_is_refused() -> None:
    """NaN load breaks state equality (nan != nan) and the load ranking (bisect
    over NaN keys can drop the wrong host from the Planner's ranking)."""
    cluster = Cluster()
    cluster.add_host("h1")
    for load in (math.nan, math.inf):
        cluster.run(c.ReportHostLoad(name="h1", load=load))
        assert math.isfinite(cluster.host("h1").load), load


def test_host_bmc_override_is_replaced() -> None:
    cluster = Cluster()
    cluster.add_host("h1")
    events = cluster.ok(c.SetHostBmc(name="h1", bmc=BmcOverride(address="10.1.1.1")))
    assert kinds(events) == ["host-updated"]
    assert cluster.host("h1").bmc.address == "10.1.1.1"


def test_unknown_fence_action_override_never_crashes_apply() -> None:
    """BmcOverride.action is a free string; an unknown one must be refused when it is
    set (or ignored), never raise out of apply when the host is fenced."""
    cluster = Cluster()
    cluster.add_host("h1")
    cluster.run(c.AddHost(name="h2", bmc=BmcOverride(action="explode")))  # may be refused
    if "h2" not in cluster.state.hosts:
        cluster.ok(c.AddHost(name="h2"))
    cluster.ok(c.HostReady(name="h2"))
    cluster.run(c.SetHostBmc(name="h2", bmc=BmcOverride(action="explode")))  # may be refused
    cluster.suspect("h2")
    events = cluster.request_fence("h2")  # raised ValueError out of apply
    assert kinds(events)


# ---------------------------------------------------------------- maintenance


def _drain_cluster() -> Cluster:
    cluster = Cluster()
    cluster.add_hosts("h1", "h2", "h3")
    for name in ("v1", "v2"):
        cluster.add_vm(name, allowed_hosts=("h1",))
        cluster.ok(c.SetVmOptions(name=name, allowed_hosts=()))
    return cluster


def test_maintenance_drains_by_live_migration() -> None:
    cluster = _drain_cluster()
    cluster.ok(c.SetHostMaintenance(name="h1", on=True))
    assert cluster.host_state("h1") is H.DRAINING
    for name in ("v1", "v2"):
        vm = cluster.vm(name)
        assert vm.state is V.MIGRATING and vm.host == "h1"
        assert vm.target_host in ("h2", "h3")
    assert {cluster.vm("v1").target_host, cluster.vm("v2").target_host} == {"h2", "h3"}


def test_drained_host_enters_maintenance_after_last_migration() -> None:
    cluster = _drain_cluster()
    cluster.ok(c.SetHostMaintenance(name="h1", on=True))
    cluster.report("v1", "migrated")
    assert cluster.host_state("h1") is H.DRAINING
    events = cluster.report("v2", "migrated")
    assert cluster.host_state("h1") is H.MAINTENANCE
    assert any(e.get("to") == "maintenance" for e in events)
    assert cluster.state.vms_on("h1") == []


def test_empty_host_goes_straight_to_maintenance() -> None:
    cluster = Cluster()
    cluster.add_hosts("h1", "h2")
    cluster.ok(c.SetHostMaintenance(name="h1", on=True))
    assert cluster.host_state("h1") is H.MAINTENANCE


def test_maintenance_host_is_unschedulable_until_switched_off() -> None:
    cluster = Cluster()
    cluster.add_host("h1")
    cluster.ok(c.SetHostMaintenance(name="h1", on=True))
    cluster.add_vm("v1")
    assert cluster.vm_state("v1") is V.PENDING
    cluster.ok(c.SetHostMaintenance(name="h1", on=False))
    assert cluster.host_state("h1") is H.ONLINE
    assert cluster.vm("v1").state is V.STARTING and cluster.vm("v1").host == "h1"


def test_drain_waits_when_nothing_fits_and_resumes_when_capacity_appears() -> None:
    cluster = Cluster()
    cluster.add_host("h1")
    cluster.add_vm("v1")
    cluster.ok(c.SetHostMaintenance(name="h1", on=True))
    assert cluster.vm("v1").state is V.STARTED and "drain waits" in cluster.vm("v1").reason
    cluster.add_host("h2")
    assert cluster.vm("v1").state is V.MIGRATING and cluster.vm("v1").target_host == "h2"


def test_failed_drain_migration_falls_back_to_stop_and_start() -> None:
    cluster = _drain_cluster()
    cluster.ok(c.SetHostMaintenance(name="h1", on=True))
    cluster.report("v1", "migrate-failed", detail="no shared storage")
    vm = cluster.vm("v1")
    assert vm.state is V.STOPPING and vm.host == "h1" and vm.target_host == ""
    cluster.report("v1", "stopped")
    vm = cluster.vm("v1")
    assert vm.state is V.STARTING and vm.host in ("h2", "h3")
    cluster.report("v2", "migrated")
    assert cluster.host_state("h1") is H.MAINTENANCE


def test_maintenance_on_a_suspect_host_is_refused() -> None:
    cluster = Cluster()
    cluster.add_host("h1")
    cluster.suspect("h1")
    events = cluster.run(c.SetHostMaintenance(name="h1", on=True))
    assert kinds(events) == ["rejected"] and "only an online host" in events[0].message


def test_draining_host_that_goes_silent_returns_to_draining() -> None:
    cluster = Cluster()
    cluster.add_hosts("h1")
    cluster.add_vm("v1")
    cluster.ok(c.SetHostMaintenance(name="h1", on=True))
    cluster.suspect("h1")
    cluster.ok(c.MarkHostAlive(name="h1", evidence="renewed"))
    assert cluster.host_state("h1") is H.DRAINING


# ---------------------------------------------------------------- removal


def test_empty_host_can_be_removed_and_added_again() -> None:
    cluster = Cluster()
    cluster.add_host("h1")
    events = cluster.ok(c.RemoveHost(name="h1"))
    assert kinds(events) == ["host-state", "host-removed"]
    assert cluster.host_state("h1") is H.REMOVED
    assert kinds(cluster.run(c.HostReady(name="h1"))) == ["rejected"]
    cluster.ok(c.AddHost(name="h1"))
    assert cluster.host_state("h1") is H.JOINING


def test_host_holding_vms_cannot_be_removed() -> None:
    cluster = Cluster()
    cluster.add_host("h1")
    cluster.add_vm("v1")
    events = cluster.run(c.RemoveHost(name="h1"))
    assert kinds(events) == ["rejected"]
    assert "holds 1 VM(s) (v1)" in events[0].message
    assert cluster.host_state("h1") is H.ONLINE


def test_fencing_host_cannot_be_removed() -> None:
    cluster = Cluster()
    cluster.add_hosts("h1", "h2")
    cluster.fence("h2")
    events = cluster.run(c.RemoveHost(name="h2"))
    assert kinds(events) == ["rejected"] and "confirm the fence first" in events[0].message


def test_removing_a_suspect_empty_host_is_not_an_internal_error() -> None:
    """RemoveHost checks FENCE_PENDING_HOSTS but not SUSPECT, and SUSPECT -> REMOVED
    is not in HOST_EDGES: apply reports an illegal edge (a bug)."""
    cluster = Cluster()
    cluster.add_hosts("h1", "h2")
    cluster.suspect("h2")
    events = cluster.run(c.RemoveHost(name="h2"), check=False)
    assert not [e for e in events if e.get("bug")], [str(e) for e in events]
    assert cluster.host_state("h2") in (H.SUSPECT, H.REMOVED)


def test_witness_never_receives_vms() -> None:
    cluster = Cluster()
    cluster.add_host("w1", role=HostRole.WITNESS, memory_mib=1 << 20)
    cluster.add_host("h1", memory_mib=2_048)
    cluster.add_vm("v1")
    assert cluster.vm("v1").host == "h1"


def test_unknown_host_is_refused_and_changes_nothing() -> None:
    cluster = Cluster()
    cluster.add_host("h1")
    hosts, vms = dict(cluster.state.hosts), dict(cluster.state.vms)
    for cmd in (
        c.HostReady(name="zz"),
        c.RemoveHost(name="zz"),
        c.SetHostMaintenance(name="zz", on=True),
    ):
        events = cluster.run(cmd)
        assert kinds(events) == ["rejected"] and "unknown host 'zz'" in events[0].message
    assert (cluster.state.hosts, cluster.state.vms) == (hosts, vms)


def test_host_keeps_its_raft_address_and_refuses_malformed_links() -> None:
    cluster = Cluster()
    cluster.ok(c.AddHost(name="h1", raft_address="10.0.0.1:7440",
                         addresses=("main=10.0.0.1", "backend=192.168.0.1")))
    assert cluster.host("h1").raft_address == "10.0.0.1:7440"
    events = cluster.run(c.AddHost(name="h2", addresses=("10.0.0.2",)))
    assert kinds(events) == ["rejected"] and "expected link=address" in events[0].message
