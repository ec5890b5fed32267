"""Agent decisions: make the local hypervisor match the committed placement,
and only on fresh state start or kill anything."""

from __future__ import annotations

import dataclasses
from typing import Any

from hacluster.core.agent import (
    AgentAction,
    DestroyVm,
    DomainState,
    MigrateVm,
    Report,
    StartVm,
    StopVm,
    libvirt_read,
    reconcile,
)
from hacluster.fsm import commands as c
from hacluster.fsm.model import Desired
from hacluster.fsm.states import VmState

from .builders import Cluster

D = DomainState


def cluster() -> Cluster:
    built = Cluster()
    built.add_hosts("h1", "h2")
    return built


def on_h1(built: Cluster, name: str, start: bool = False, **kw: Any) -> None:
    built.add_vm(name, allowed_hosts=("h1",), start=start, xml=f"<domain>{name}</domain>", **kw)


def reports(actions: list[AgentAction]) -> list[tuple[str, str]]:
    return [
        (a.command.name, a.command.observed)
        for a in actions
        if isinstance(a, Report) and isinstance(a.command, c.VmReport)
    ]


def test_starts_a_vm_placed_here_when_fresh() -> None:
    built = cluster()
    on_h1(built, "v1")
    vm = built.vm("v1")
    actions = reconcile("h1", built.state, {}, fresh=True)
    assert actions == [StartVm("v1", "<domain>v1</domain>", vm.placement, actions[0].reason)]


def test_never_starts_on_stale_state() -> None:
    built = cluster()
    on_h1(built, "v1")
    assert reconcile("h1", built.state, {}, fresh=False) == []


def test_never_starts_a_vm_placed_elsewhere() -> None:
    built = cluster()
    on_h1(built, "v1")
    assert reconcile("h2", built.state, {}, fresh=True) == []


def test_starts_a_recovered_vm() -> None:
    built = cluster()
    built.add_vm("v1", allowed_hosts=("h2",))
    built.ok(c.SetVmOptions(name="v1", allowed_hosts=()))
    built.fence("h2")
    built.confirm("h2")
    assert built.vm("v1").host == "h1"
    actions = reconcile("h1", built.state, {}, fresh=True)
    assert [type(a) for a in actions] == [StartVm]


def test_does_not_start_while_its_own_host_is_being_fenced() -> None:
    built = cluster()
    on_h1(built, "v1")
    built.fence("h1")
    assert reconcile("h1", built.state, {}, fresh=True) == []


def test_reports_started_when_the_domain_runs() -> None:
    built = cluster()
    on_h1(built, "v1")
    actions = reconcile("h1", built.state, {"v1": D.RUNNING}, fresh=False)
    assert reports(actions) == [("v1", "started")]
    assert actions[0].command.placement == built.vm("v1").placement  # type: ignore[union-attr]


def test_reports_a_crash_of_a_started_vm() -> None:
    built = cluster()
    on_h1(built, "v1", start=True)
    for domain in ({}, {"v1": D.SHUTOFF}, {"v1": D.CRASHED}):
        assert reports(reconcile("h1", built.state, domain, fresh=True)) == [("v1", "crashed")]
    assert reconcile("h1", built.state, {"v1": D.RUNNING}, fresh=True) == []
    assert reconcile("h1", built.state, {"v1": D.PAUSED}, fresh=True) == []


def test_stops_then_reports_stopped() -> None:
    built = cluster()
    on_h1(built, "v1", start=True)
    built.ok(c.SetVmDesired(name="v1", desired=Desired.STOPPED))
    actions = reconcile("h1", built.state, {"v1": D.RUNNING})
    assert actions == [StopVm("v1", built.vm("v1").placement, actions[0].reason)]
    assert reports(reconcile("h1", built.state, {"v1": D.SHUTOFF})) == [("v1", "stopped")]


def test_leaves_busy_vms_alone() -> None:
    built = cluster()
    on_h1(built, "v1")
    assert reconcile("h1", built.state, {}, busy=frozenset({"v1"}), fresh=True) == []


def test_a_domain_list_read_before_a_start_finished_judges_nothing_of_that_vm() -> None:
    # soak seed 11: read while v1's start was in flight, decided after it committed
    built = cluster()
    on_h1(built, "v1")
    read = libvirt_read("h1", built.state, frozenset({"v1"}))
    built.report("v1", "started")
    assert reconcile("h1", built.state, {}, fresh=True, read=read) == []
    # busy no longer, but the state it was read against has changed since
    read = libvirt_read("h1", dataclasses.replace(built.state, vms={
        **built.state.vms, "v1": dataclasses.replace(built.vm("v1"), state=VmState.STARTING)}),
        frozenset())
    assert reconcile("h1", built.state, {}, fresh=True, read=read) == []
    # read against the state in force: a missing domain is a crash
    read = libvirt_read("h1", built.state, frozenset())
    assert reports(reconcile("h1", built.state, {}, fresh=True, read=read)) == [("v1", "crashed")]


def test_a_domain_list_read_before_an_incoming_migration_landed_is_no_crash() -> None:
    built = cluster()
    on_h1(built, "v1", start=True)
    built.ok(c.SetVmOptions(name="v1", allowed_hosts=()))
    built.ok(c.MigrateVm(name="v1", target="h2"))
    read = libvirt_read("h2", built.state, frozenset())  # v1 not there yet
    built.report("v1", "migrated")
    assert built.vm("v1").host == "h2"
    assert reconcile("h2", built.state, {}, fresh=True, read=read) == []
    after = libvirt_read("h2", built.state, frozenset())
    assert reports(reconcile("h2", built.state, {}, fresh=True, read=after)) == \
        [("v1", "crashed")]


def test_source_agent_drives_a_migration_only_when_fresh() -> None:
    built = cluster()
    on_h1(built, "v1", start=True)
    built.ok(c.SetVmOptions(name="v1", allowed_hosts=()))
    built.ok(c.MigrateVm(name="v1", target="h2"))
    actions = reconcile("h1", built.state, {"v1": D.RUNNING}, fresh=True)
    assert actions == [MigrateVm("v1", "h2", built.vm("v1").placement, actions[0].reason)]
    assert reconcile("h1", built.state, {"v1": D.RUNNING}, fresh=False) == []


def test_never_touches_an_incoming_migration() -> None:
    built = cluster()
    on_h1(built, "v1", start=True)
    built.ok(c.SetVmOptions(name="v1", allowed_hosts=()))
    built.ok(c.MigrateVm(name="v1", target="h2"))
    for domain in (D.MIGRATING, D.RUNNING, D.PAUSED):
        assert reconcile("h2", built.state, {"v1": domain}, fresh=True) == []


def test_reports_a_vm_that_vanished_from_the_migration_source() -> None:
    built = cluster()
    on_h1(built, "v1", start=True)
    built.ok(c.SetVmOptions(name="v1", allowed_hosts=()))
    built.ok(c.MigrateVm(name="v1", target="h2"))
    assert reports(reconcile("h1", built.state, {}, fresh=True)) == [("v1", "crashed")]


def test_destroys_a_foreign_copy_only_when_fresh() -> None:
    built = cluster()
    on_h1(built, "v1", start=True)
    actions = reconcile("h2", built.state, {"v1": D.RUNNING}, fresh=True)
    assert [type(a) for a in actions] == [DestroyVm]
    assert "places it on h1" in actions[0].reason
    assert reconcile("h2", built.state, {"v1": D.RUNNING}, fresh=False) == []


def test_destroys_a_copy_of_a_stopped_vm() -> None:
    built = cluster()
    built.ok(c.AddVm(name="v1", xml="", memory_mib=1, vcpus=1, desired=Desired.STOPPED))
    actions = reconcile("h2", built.state, {"v1": D.PAUSED}, fresh=True)
    assert actions == [DestroyVm("v1", actions[0].reason)]
    assert "nowhere" in actions[0].reason


def test_leaves_disabled_and_unmanaged_domains_alone() -> None:
    built = cluster()
    built.ok(c.AddVm(name="v1", xml="", memory_mib=1, vcpus=1, desired=Desired.DISABLED))
    domains = {"v1": D.RUNNING, "not-managed": D.RUNNING}
    assert reconcile("h2", built.state, domains, fresh=True) == []


def test_frozen_vm_is_left_alone_on_both_hosts() -> None:
    built = cluster()
    on_h1(built, "v1", start=True)
    built.fence("h1")
    assert reconcile("h1", built.state, {"v1": D.RUNNING}, fresh=True) == []


# ---------------------------------------------------------------- readiness


def test_joining_host_reports_ready_with_its_capacity_when_fresh_and_clean() -> None:
    built = Cluster()
    built.ok(c.AddHost(name="h1"))
    actions = reconcile("h1", built.state, {}, fresh=True, capacity=(65_536, 32))
    assert [a.command for a in actions if isinstance(a, Report)] == [
        c.HostReady(name="h1", memory_mib=65_536, vcpus=32)
    ]
    assert reconcile("h1", built.state, {}, fresh=False) == []


def test_fenced_host_destroys_stale_copies_before_reporting_ready() -> None:
    built = cluster()
    on_h1(built, "v1", start=True)
    built.ok(c.SetVmOptions(name="v1", allowed_hosts=()))
    built.fence("h1")
    built.confirm("h1")
    actions = reconcile("h1", built.state, {"v1": D.RUNNING}, fresh=True)
    assert [type(a) for a in actions] == [DestroyVm]
    actions = reconcile("h1", built.state, {"v1": D.SHUTOFF}, fresh=True)
    assert [a.command for a in actions if isinstance(a, Report)] == [
        c.HostReady(name="h1", memory_mib=0, vcpus=0)
    ]


def test_no_ready_while_an_operation_is_running() -> None:
    built = Cluster()
    built.ok(c.AddHost(name="h1"))
    assert reconcile("h1", built.state, {}, busy=frozenset({"x"}), fresh=True) == []


def test_online_host_does_not_report_ready_again() -> None:
    built = cluster()
    assert reconcile("h1", built.state, {}, fresh=True) == []


def test_removed_or_unknown_host_does_nothing() -> None:
    built = cluster()
    built.ok(c.RemoveHost(name="h2"))
    on_h1(built, "v1", start=True)
    assert reconcile("h2", built.state, {"v1": D.RUNNING}, fresh=True) == []
    assert reconcile("h9", built.state, {"v1": D.RUNNING}, fresh=True) == []


def test_agent_reports_are_accepted_by_apply() -> None:
    """What the agent proposes fits the state it was computed from."""
    built = cluster()
    on_h1(built, "v1")
    (start,) = reconcile("h1", built.state, {}, fresh=True)
    assert isinstance(start, StartVm)
    (report,) = reconcile("h1", built.state, {"v1": D.RUNNING}, fresh=True)
    assert isinstance(report, Report)
    built.ok(report.command)
    assert built.vm_state("v1").value == "started"
