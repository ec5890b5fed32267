"""VM lifecycle handlers: define, desired state, agent reports, restarts,
relocation, migration; idempotent request ids; secrets stay out of events."""

from __future__ import annotations

from hacluster.fsm import ClusterState
from hacluster.fsm import commands as c
from hacluster.fsm.model import BmcOverride, BmcSettings, Desired, HaPolicy
from hacluster.fsm.states import VmState

from .builders import Cluster, content_digest, kinds, only

V = VmState


def two_hosts(**settings: object) -> Cluster:
    cluster = Cluster(**settings)
    cluster.add_host("h1", memory_mib=8_192)
    cluster.add_host("h2", memory_mib=4_096)
    return cluster


# ---------------------------------------------------------------- define, start, stop


def test_new_vm_is_placed_at_once() -> None:
    cluster = two_hosts()
    events = cluster.ok(c.AddVm(name="v1", xml="<d/>", memory_mib=1_024, vcpus=2))
    assert kinds(events) == ["vm-added", "vm-state"]
    vm = cluster.vm("v1")
    assert (vm.state, vm.host, vm.placement) == (V.STARTING, "h1", cluster.index)
    assert "most free memory" in vm.reason


def test_started_report_makes_it_started() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1", start=False)
    cluster.report("v1", "started")
    assert cluster.vm_state("v1") is V.STARTED


def test_vm_defined_stopped_or_disabled_is_not_placed() -> None:
    cluster = two_hosts()
    for name, desired in (("s", Desired.STOPPED), ("d", Desired.DISABLED)):
        cluster.ok(c.AddVm(name=name, xml="", memory_mib=1, vcpus=1, desired=desired))
        assert (cluster.vm(name).state, cluster.vm(name).host) == (V.STOPPED, "")


def test_start_of_a_stopped_vm_places_it() -> None:
    cluster = two_hosts()
    cluster.ok(c.AddVm(name="v1", xml="", memory_mib=1, vcpus=1, desired=Desired.STOPPED))
    cluster.ok(c.SetVmDesired(name="v1", desired=Desired.STARTED))
    assert cluster.vm_state("v1") is V.STARTING


def test_stop_goes_through_stopping_and_frees_the_host() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1", memory_mib=2_048)
    cluster.ok(c.SetVmDesired(name="v1", desired=Desired.STOPPED), origin="alice")
    vm = cluster.vm("v1")
    assert vm.state is V.STOPPING and vm.reason == "stopped by alice"
    assert cluster.state.usage_of("h1").memory_mib == 2_048
    cluster.report("v1", "stopped")
    vm = cluster.vm("v1")
    assert (vm.state, vm.host) == (V.STOPPED, "")
    assert cluster.state.usage_of("h1").memory_mib == 0


def test_disabled_vm_must_stop_before_it_can_start_again() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1")
    cluster.ok(c.SetVmDesired(name="v1", desired=Desired.DISABLED))
    events = cluster.run(c.SetVmDesired(name="v1", desired=Desired.STARTED))
    assert kinds(events) == ["rejected"] and "disabled and stopping" in events[0].message
    cluster.report("v1", "stopped")
    cluster.ok(c.SetVmDesired(name="v1", desired=Desired.STARTED))
    assert cluster.vm_state("v1") is V.STARTING


def test_stop_of_a_pending_vm_is_immediate() -> None:
    cluster = Cluster()
    cluster.add_vm("v1")
    assert cluster.vm_state("v1") is V.PENDING
    cluster.ok(c.SetVmDesired(name="v1", desired=Desired.STOPPED))
    assert cluster.vm_state("v1") is V.STOPPED
    assert cluster.state.pending == set()


def test_desired_change_of_a_frozen_vm_applies_after_the_fence() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1")
    cluster.fence("h1")
    cluster.ok(c.SetVmDesired(name="v1", desired=Desired.STOPPED))
    assert cluster.vm_state("v1") is V.FENCE
    cluster.confirm("h1")
    assert (cluster.vm("v1").state, cluster.vm("v1").host) == (V.STOPPED, "")


def test_add_vm_validation() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1")
    cases = [
        (c.AddVm(name="v1", xml="", memory_mib=1, vcpus=1), "already exists"),
        (c.AddVm(name="bad name", xml="", memory_mib=1, vcpus=1), "invalid VM name"),
        (c.AddVm(name="v2", xml="", memory_mib=0, vcpus=1), "must be > 0"),
        (c.AddVm(name="v2", xml="", memory_mib=1, vcpus=0), "must be > 0"),
        (c.AddVm(name="v2", xml="", memory_mib=1, vcpus=1, max_restarts=-1), ">= 0"),
        (c.AddVm(name="v2", xml="x" * (1024 * 1024 + 1), memory_mib=1, vcpus=1), "XML larger"),
    ]
    for cmd, why in cases:
        events = cluster.run(cmd)
        assert kinds(events) == ["rejected"] and why in events[0].message, cmd.name
    assert sorted(cluster.state.vms) == ["v1"]


def test_running_vm_cannot_be_removed() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1")
    events = cluster.run(c.RemoveVm(name="v1"))
    assert kinds(events) == ["rejected"] and "stop it first" in events[0].message
    cluster.ok(c.SetVmDesired(name="v1", desired=Desired.STOPPED))
    cluster.report("v1", "stopped")
    assert kinds(cluster.ok(c.RemoveVm(name="v1"))) == ["vm-removed"]
    assert "v1" not in cluster.state.vms


def test_options_change_and_new_xml_is_announced() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1")
    events = cluster.ok(c.SetVmOptions(name="v1", priority=7, xml="<domain>new</domain>"))
    assert "priority=7" in events[0].message and "new XML" in events[0].message
    vm = cluster.vm("v1")
    assert (vm.priority, vm.xml, vm.state) == (7, "<domain>new</domain>", V.STARTED)


def test_invalid_options_are_refused() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1")
    events = cluster.run(c.SetVmOptions(name="v1", max_relocates=-1))
    assert kinds(events) == ["rejected"] and cluster.vm("v1").max_relocates == 1


def test_widening_host_limits_places_a_pending_vm() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1", allowed_hosts=("h9",))
    assert cluster.vm_state("v1") is V.PENDING
    cluster.ok(c.SetVmOptions(name="v1", allowed_hosts=("h2",)))
    assert (cluster.vm("v1").state, cluster.vm("v1").host) == (V.STARTING, "h2")


# ---------------------------------------------------------------- crashes


def test_crash_restarts_in_place_then_relocates_then_errors() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1", max_restarts=2, max_relocates=1)
    seen = []
    for _ in range(6):
        cluster.report("v1", "crashed", detail="segfault")
        vm = cluster.vm("v1")
        seen.append((vm.state.value, vm.host, vm.restarts, vm.relocates))
        if vm.state is V.STARTING:
            cluster.report("v1", "started")
    assert seen == [
        ("starting", "h1", 1, 0),
        ("starting", "h1", 2, 0),  # restarts in place
        ("starting", "h2", 0, 1),  # relocated
        ("starting", "h2", 1, 1),
        ("starting", "h2", 2, 1),
        ("error", "", 2, 1),
    ]
    assert "restart cap 2 and relocate cap 1 used up" in cluster.vm("v1").reason


def test_a_crash_outside_changed_host_limits_moves_the_vm_without_counting() -> None:
    """Its limits changed while it ran on h1: it is not restarted there (found by the
    simulator's chaos runs: a start outside the VM's hosts)."""
    cluster = two_hosts()
    cluster.add_vm("v1")
    assert cluster.vm("v1").host == "h1"
    cluster.ok(c.SetVmOptions(name="v1", allowed_hosts=("h2",)))
    cluster.report("v1", "crashed")
    vm = cluster.vm("v1")
    assert (vm.state, vm.host, vm.restarts, vm.relocates) == (V.STARTING, "h2", 0, 0)
    assert "h1 is not among its hosts any more" in vm.reason


def test_restart_gets_a_new_placement() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1")
    old = cluster.vm("v1").placement
    cluster.report("v1", "crashed")
    assert cluster.vm("v1").placement == cluster.index != old


def test_start_failure_counts_like_a_crash() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1", start=False, max_restarts=0, max_relocates=1)
    cluster.report("v1", "start-failed", detail="no such disk")
    vm = cluster.vm("v1")
    assert (vm.state, vm.host, vm.relocates) == (V.STARTING, "h2", 1)


def test_relocation_event_names_the_failure() -> None:
    """restart_or_relocate records `why` with a same-state set_vm (no event) and place()
    then overwrites the reason: no event or reason says the VM moved because it failed."""
    cluster = two_hosts()
    cluster.add_vm("v1", start=False, max_restarts=0, max_relocates=1)
    events = cluster.report("v1", "start-failed", detail="no such disk")
    assert any("start-failed on h1: no such disk" in e.message for e in events), events


def test_stable_vm_gets_its_restart_budget_back() -> None:
    cluster = two_hosts(vm_stable_s=600.0)
    cluster.add_vm("v1", max_restarts=1)
    cluster.report("v1", "crashed")
    cluster.report("v1", "started")
    cluster.run(c.Noop(), step=601.0)
    cluster.report("v1", "crashed")
    vm = cluster.vm("v1")
    assert (vm.state, vm.host, vm.restarts) == (V.STARTING, "h1", 1)


def test_error_vm_can_be_started_again_with_fresh_budget() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1", max_restarts=0, max_relocates=0)
    cluster.report("v1", "crashed")
    assert cluster.vm_state("v1") is V.ERROR
    cluster.ok(c.SetVmDesired(name="v1", desired=Desired.STARTED))
    vm = cluster.vm("v1")
    assert (vm.state, vm.restarts, vm.relocates) == (V.STARTING, 0, 0)


def test_crashed_vm_without_ha_is_stopped() -> None:
    """restart_or_relocate stops HA=none VMs from STARTED, but STARTED -> STOPPED is
    not in VM_EDGES: apply reports an illegal edge and the VM stays 'started'."""
    cluster = two_hosts()
    cluster.add_vm("v1", ha=HaPolicy.NONE)
    cluster.report("v1", "crashed")
    vm = cluster.vm("v1")
    assert (vm.state, vm.host) == (V.STOPPED, "")
    assert "not restarted (HA policy none" in vm.reason


def test_failed_start_without_ha_is_stopped() -> None:
    """Same bug from STARTING: STARTING -> STOPPED is not in VM_EDGES."""
    cluster = two_hosts()
    cluster.add_vm("v1", ha=HaPolicy.NONE, start=False)
    cluster.report("v1", "start-failed")
    assert (cluster.vm("v1").state, cluster.vm("v1").host) == (V.STOPPED, "")


def test_recovered_vm_without_ha_that_crashes_is_stopped() -> None:
    """And from RECOVERY (a VM whose HA policy was switched off after its recovery)."""
    cluster = two_hosts()
    cluster.add_vm("v1")
    cluster.fence("h1")
    cluster.confirm("h1")
    cluster.ok(c.SetVmOptions(name="v1", ha=HaPolicy.NONE))
    cluster.report("v1", "crashed")
    assert (cluster.vm("v1").state, cluster.vm("v1").host) == (V.STOPPED, "")


# ---------------------------------------------------------------- disk leases


LOCKED = "resource busy: Lockspace resource 'f277d3' is locked"


def test_a_start_refused_for_a_held_disk_lock_waits_in_error_without_retry() -> None:
    """A wrong confirm released v1 to h2, but its disk is leased by the copy still
    running on h1: no restart in place, no relocation, one distinct event."""
    cluster = two_hosts()
    cluster.add_vm("v1", max_restarts=5, max_relocates=5)
    cluster.fence("h1")
    cluster.confirm("h1")
    assert (cluster.vm("v1").state, cluster.vm("v1").host) == (V.RECOVERY, "h2")
    events = cluster.report("v1", "start-locked", detail=LOCKED)
    vm = cluster.vm("v1")
    assert (vm.state, vm.host, vm.restarts, vm.relocates) == (V.ERROR, "", 0, 0)
    assert "disk lock is held" in vm.reason and LOCKED in vm.reason
    assert kinds(events) == ["vm-start-locked", "vm-state"]
    assert events[0].subject == "v1" and events[0].get("host") == "h2"
    # an operator who made sure no other copy runs starts it again, with a fresh budget
    cluster.ok(c.SetVmDesired(name="v1", desired=Desired.STARTED))
    assert cluster.vm_state("v1") is V.STARTING


def test_a_lock_report_only_applies_to_a_start_on_its_host() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1")
    cluster.report("v1", "started")
    assert kinds(cluster.report("v1", "start-locked")) == ["rejected"]
    assert cluster.vm_state("v1") is V.STARTED


def test_only_a_lock_report_needs_the_second_version_of_vm_report() -> None:
    """Peers of 0.1.0 read every other report: they stay written as version 1."""
    reports = {o: c.VmReport(name="v", host="h", placement=1, observed=o).wire_version()
               for o in c.VM_REPORTS}
    assert {o for o, v in reports.items() if v == 2} == {"start-locked"}
    assert set(reports.values()) == {1, 2}


# ---------------------------------------------------------------- reports


def test_stale_reports_are_refused() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1")
    old = cluster.vm("v1").placement
    cluster.report("v1", "crashed")
    stale = cluster.run(c.VmReport(name="v1", host="h1", placement=old, observed="crashed"))
    assert kinds(stale) == ["rejected"] and "stale report" in stale[0].message
    wrong_host = cluster.report("v1", "started", host="h2")
    assert kinds(wrong_host) == ["rejected"]
    assert cluster.vm("v1").restarts == 1


def test_unknown_report_is_refused() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1")
    events = cluster.report("v1", "exploded")
    assert kinds(events) == ["rejected"] and "unknown report" in events[0].message


def test_report_that_does_not_fit_the_state_is_refused() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1")
    events = cluster.report("v1", "migrated")
    assert kinds(events) == ["rejected"] and "does not apply to a started VM" in events[0].message


# ---------------------------------------------------------------- migration


def test_migration_moves_the_vm_and_its_booking() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1", memory_mib=1_000)
    cluster.ok(c.MigrateVm(name="v1", target="h2"))
    vm = cluster.vm("v1")
    assert (vm.state, vm.host, vm.target_host) == (V.MIGRATING, "h1", "h2")
    assert cluster.state.usage_of("h1").memory_mib == cluster.state.usage_of("h2").memory_mib
    cluster.report("v1", "migrated", host="h2")
    vm = cluster.vm("v1")
    assert (vm.state, vm.host, vm.target_host, vm.placement) == (V.STARTED, "h2", "", cluster.index)
    assert cluster.state.usage_of("h1").memory_mib == 0


def test_failed_migration_stays_on_the_source() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1")
    cluster.ok(c.MigrateVm(name="v1"))
    cluster.report("v1", "migrate-failed", detail="timeout")
    vm = cluster.vm("v1")
    assert (vm.state, vm.host, vm.target_host) == (V.STARTED, "h1", "")
    assert "migration to h2 failed: timeout" in vm.reason


def test_vm_vanishing_mid_migration_is_stopped_on_the_target() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1")
    cluster.ok(c.MigrateVm(name="v1", target="h2"))
    cluster.report("v1", "crashed")
    vm = cluster.vm("v1")
    assert (vm.state, vm.host, vm.target_host) == (V.STOPPING, "h2", "")
    cluster.report("v1", "stopped")
    assert (cluster.vm("v1").state, cluster.vm("v1").host) == (V.STARTING, "h1")


def test_migration_refusals() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1", memory_mib=6_000)
    cluster.add_vm("v2", start=False)
    cases = [
        (c.MigrateVm(name="v1", target="h1"), "already runs on h1"),
        (c.MigrateVm(name="v1", target="h2"), "lacks memory"),
        (c.MigrateVm(name="v1", target="h9"), "not schedulable"),
        (c.MigrateVm(name="v2"), "only a started VM"),
    ]
    for cmd, why in cases:
        events = cluster.run(cmd)
        assert kinds(events) == ["rejected"] and why in events[0].message, why
    assert cluster.vm_state("v1") is V.STARTED


def test_stop_of_a_migrating_vm_is_refused() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1")
    cluster.ok(c.MigrateVm(name="v1"))
    events = cluster.run(c.SetVmDesired(name="v1", desired=Desired.STOPPED))
    assert kinds(events) == ["rejected"] and cluster.vm("v1").desired is Desired.STARTED


# ---------------------------------------------------------------- idempotency


def test_duplicate_request_id_changes_nothing() -> None:
    cluster = two_hosts()
    cluster.ok(c.AddVm(name="v1", xml="", memory_mib=1, vcpus=1), request_id="req-1")
    first = cluster.index
    before = content_digest(cluster.state)
    events = cluster.run(
        c.AddVm(name="v2", xml="", memory_mib=1, vcpus=1), request_id="req-1", step=50.0
    )
    assert kinds(events) == ["duplicate"]
    assert events[0].get("original") == str(first)
    assert "v2" not in cluster.state.vms
    assert content_digest(cluster.state) == before
    assert cluster.state.applied_index == cluster.index


def test_retry_of_a_crash_report_restarts_once() -> None:
    cluster = two_hosts()
    cluster.add_vm("v1")
    report = c.VmReport(
        name="v1", host="h1", placement=cluster.vm("v1").placement, observed="crashed"
    )
    cluster.run(report, request_id="agent-h1-7")
    cluster.run(report, request_id="agent-h1-7")
    assert cluster.vm("v1").restarts == 1


def test_requests_without_id_are_never_duplicates() -> None:
    cluster = two_hosts()
    assert kinds(cluster.run(c.Noop())) == kinds(cluster.run(c.Noop())) == ["noop"]


# ---------------------------------------------------------------- secrets


def test_sealed_passwords_never_reach_events_or_reprs() -> None:
    secret = b"SEALED-PW-4711"
    cluster = Cluster()
    events = cluster.run(c.AddHost(name="h1", bmc=BmcOverride(sealed_password=secret)))
    events += cluster.run(
        c.SetHostBmc(name="h1", bmc=BmcOverride(username="root", sealed_password=secret))
    )
    events += cluster.run(c.SetBmcDefaults(bmc=BmcSettings(sealed_password=secret)))
    events += cluster.run(c.HostReady(name="h1"))
    cluster.add_vm("v1")
    events += cluster.run(c.MarkHostSuspect(name="h1", evidence="x"))
    events += cluster.request_fence("h1")
    text = " ".join(f"{e} {e.data!r} {e!r}" for e in events)
    assert secret.decode() not in text
    assert secret.decode() not in repr(cluster.state)
    assert secret.decode() not in repr(cluster.state.fences)
    assert cluster.host("h1").bmc.sealed_password == secret
    assert cluster.state.settings.bmc.sealed_password == secret
    assert only(events, "settings-changed")


def test_crash_report_from_the_migration_target_keeps_the_source() -> None:
    """_failed() handles any MIGRATING VM as 'vanished from the source' without checking
    that the report comes from the source. A crashed/start-failed report from the
    target moves the VM to the target and forgets the source, where it still runs;
    after 'stopped' it is started on a third host: two copies."""
    cluster = Cluster()
    cluster.add_host("h1", memory_mib=2_048)
    cluster.add_host("h2", memory_mib=2_048)
    cluster.add_host("h3", memory_mib=65_536)
    cluster.add_vm("v1", allowed_hosts=("h1",))
    cluster.ok(c.SetVmOptions(name="v1", allowed_hosts=()))
    cluster.ok(c.MigrateVm(name="v1", target="h2"))
    cluster.report("v1", "crashed", host="h2")  # the target's copy died; h1 still runs it
    cluster.run(
        c.VmReport(name="v1", host="h2", placement=cluster.vm("v1").placement, observed="stopped")
    )
    vm = cluster.vm("v1")
    assert "h1" in ClusterState.holds(vm), f"lost track of the copy on h1: {vm}"
