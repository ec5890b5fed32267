"""Planned shutdowns: the policies in the replicated state (fsm/apply_shutdown.py) and
the stopping peer's steps (core/shutdown.py), with builders and no I/O."""

from __future__ import annotations

from hacluster.core import shutdown as sd
from hacluster.core.agent import DomainState
from hacluster.fsm import commands as c
from hacluster.fsm.model import HaPolicy, ShutdownPolicy
from hacluster.fsm.states import HostState, VmState

from .builders import Cluster, only

RUN = DomainState.RUNNING


def cluster(policy: str = "freeze") -> Cluster:
    cl = Cluster()
    cl.add_hosts("h1", "h2", "h3")
    cl.announce_all()
    cl.ok(c.SetShutdownPolicy(policy=policy))
    return cl


def vms_here(cl: Cluster, host: str) -> list[str]:
    return [vm.name for vm in cl.state.vms_on(host)]


def stopped_on(cl: Cluster, host: str) -> tuple[tuple[str, int], ...]:
    return tuple((vm.name, vm.placement) for vm in cl.state.vms_on(host))


# ---------------------------------------------------------------- the replicated state


def test_a_host_overrides_the_cluster_policy_and_default_inherits_again() -> None:
    cl = cluster("migrate")
    cl.ok(c.SetShutdownPolicy(host="h2", policy="stop"))
    assert sd.policy_of(cl.state, cl.host("h2")) is ShutdownPolicy.STOP
    assert sd.policy_of(cl.state, cl.host("h1")) is ShutdownPolicy.MIGRATE
    cl.ok(c.SetShutdownPolicy(host="h2", policy=""))
    assert sd.policy_of(cl.state, cl.host("h2")) is ShutdownPolicy.MIGRATE


def test_begin_makes_the_host_unschedulable() -> None:
    cl = cluster("failover")
    cl.ok(c.PlannedShutdown(name="h1", step="begin", policy="failover"))
    for i in range(4):
        cl.add_vm(f"vm{i}")
    assert "h1" not in {cl.vm(f"vm{i}").host for i in range(4)}
    assert cl.host_state("h1") is HostState.ONLINE  # nothing to drain with failover


def test_failover_releases_only_the_placements_found_stopped_and_counts_nothing() -> None:
    cl = cluster("failover")
    for i in range(6):
        cl.add_vm(f"vm{i}")
    here = vms_here(cl, "h1")
    assert len(here) >= 2
    kept = here[0]  # libvirt still listed it: not released
    listed = tuple(p for p in stopped_on(cl, "h1") if p[0] != kept)
    events = cl.ok(c.PlannedShutdown(name="h1", step="done", policy="failover",
                                     stopped=listed))
    for name, _ in listed:
        vm = cl.vm(name)
        assert vm.host not in ("", "h1") and vm.state is VmState.STARTING
        assert vm.restarts == vm.relocates == 0  # a planned shutdown is no failure
    assert cl.vm(kept).host == "h1" and cl.vm(kept).state is VmState.STARTED
    host = cl.host("h1")
    assert host.peer_stopped and host.shutdown == "failover" and host.state is HostState.ONLINE
    shutdown = only(events, "host-shutdown")[0]
    assert shutdown.get("unprotected") == kept and "LEFT UNPROTECTED" in shutdown.message


def test_a_placement_that_changed_since_it_was_listed_is_not_released() -> None:
    cl = cluster("failover")
    cl.add_vm("vm1")
    host = cl.vm("vm1").host
    stale = (("vm1", cl.vm("vm1").placement - 1),)
    cl.ok(c.PlannedShutdown(name=host, step="done", policy="failover", stopped=stale))
    assert cl.vm("vm1").host == host and cl.vm("vm1").state is VmState.STARTED


def test_failover_stops_a_vm_without_ha_instead_of_restarting_it() -> None:
    cl = cluster("failover")
    cl.add_vm("vm1", ha=HaPolicy.NONE)
    host = cl.vm("vm1").host
    cl.ok(c.PlannedShutdown(name=host, step="done", policy="failover",
                            stopped=stopped_on(cl, host)))
    assert cl.vm("vm1").state is VmState.STOPPED


def test_stop_keeps_the_vms_placed_here_to_start_when_the_peer_returns() -> None:
    cl = cluster("stop")
    cl.add_vm("vm1")
    host = cl.vm("vm1").host
    before = cl.vm("vm1").placement
    cl.ok(c.PlannedShutdown(name=host, step="done", policy="stop",
                            stopped=stopped_on(cl, host)))
    vm = cl.vm("vm1")
    assert vm.host == host and vm.state is VmState.STARTING and vm.placement > before
    cl.ok(c.PlannedShutdown(name=host, step="back"))
    assert not cl.host(host).peer_stopped and cl.host(host).shutdown == ""


def test_freeze_releases_nothing_even_if_listed() -> None:
    cl = cluster("freeze")
    cl.add_vm("vm1")
    host = cl.vm("vm1").host
    cl.ok(c.PlannedShutdown(name=host, step="done", policy="freeze",
                            stopped=stopped_on(cl, host)))
    assert cl.vm("vm1").host == host and cl.vm("vm1").state is VmState.STARTED


def test_migrate_drains_and_stays_draining_then_comes_back_online() -> None:
    cl = cluster("migrate")
    cl.add_vm("vm1")
    host = cl.vm("vm1").host
    cl.ok(c.PlannedShutdown(name=host, step="begin", policy="migrate"))
    assert cl.host_state(host) is HostState.DRAINING
    assert cl.vm("vm1").state is VmState.MIGRATING
    cl.report("vm1", "migrated")
    assert cl.host_state(host) is HostState.DRAINING  # not maintenance: its peer returns
    cl.ok(c.PlannedShutdown(name=host, step="done", policy="migrate"))
    cl.ok(c.PlannedShutdown(name=host, step="back"))
    assert cl.host_state(host) is HostState.ONLINE


def test_a_fenced_or_fencing_host_cannot_record_a_planned_shutdown() -> None:
    cl = cluster("failover")
    cl.fence("h2")
    events = cl.run(c.PlannedShutdown(name="h2", step="begin", policy="failover"))
    assert "its fence decides" in only(events, "rejected")[0].message


# ---------------------------------------------------------------- the stopping peer


def view(cl: Cluster, now: float, *, leading: bool = False, leader: str = "h3",
         term: int = 4, domains: dict[str, DomainState] | None = None) -> sd.View:
    return sd.View(now, cl.state, leading, leader, term, domains)


def test_a_leader_hands_over_then_waits_for_a_successor_in_a_later_term() -> None:
    cl = cluster("freeze")
    plan = sd.PlannedShutdown("h1", 0.0)
    assert isinstance(plan.step(view(cl, 0.0, leading=True, leader="h1")), sd.HandOff)
    assert isinstance(plan.step(view(cl, 0.1, leading=True, leader="h1")), sd.Wait)
    # stepped down, nobody leads yet: it waits rather than go on
    assert isinstance(plan.step(view(cl, 0.2, leader="", term=5)), sd.Wait)
    action = plan.step(view(cl, 0.3, leader="h2", term=5))
    assert plan.notes == ["leadership handed over: h2 leads in term 5 (this peer led in "
                          "term 4)"]
    assert isinstance(action, sd.Propose)  # freeze: "done" at once
    assert action.command == c.PlannedShutdown(name="h1", step="done", policy="freeze")


def test_without_a_successor_it_goes_on_after_the_handoff_time() -> None:
    cl = cluster("freeze")
    plan = sd.PlannedShutdown("h1", 0.0)
    plan.step(view(cl, 0.0, leading=True, leader="h1"))
    action = plan.step(view(cl, sd.HANDOFF_S, leading=True, leader="h1"))
    assert "no successor" in plan.notes[0]
    assert isinstance(action, sd.Propose)


def drive_to_shutdown(cl: Cluster, plan: sd.PlannedShutdown, now: float = 0.0) -> float:
    """begin committed, agent stopped idle: returns the time reached."""
    action = plan.step(view(cl, now))
    assert isinstance(action, sd.Propose) and action.command.step == "begin"  # type: ignore[attr-defined]
    cl.ok(action.command)
    plan.proposed(True, now)
    assert isinstance(plan.step(view(cl, now + 0.1)), sd.StopAgent)
    plan.agent_stopped(True)
    assert isinstance(plan.step(view(cl, now + 0.2)), sd.Wait)  # no migration to wait out
    assert plan.wants_domains
    return now + 0.3


def test_failover_shuts_down_what_runs_here_and_lists_what_libvirt_no_longer_shows() -> None:
    cl = cluster("failover")
    for i in range(4):
        cl.add_vm(f"vm{i}")
    here = vms_here(cl, "h1")
    plan = sd.PlannedShutdown("h1", 0.0)
    now = drive_to_shutdown(cl, plan)
    action = plan.step(view(cl, now, domains={n: RUN for n in here} | {"not-ours": RUN}))
    assert isinstance(action, sd.ShutDownVms) and action.names == tuple(here)
    plan.vms_shut_down(cl.state, {here[0]: RUN})  # one would not stop
    done = plan.step(view(cl, now + 1))
    assert isinstance(done, sd.Propose)
    assert done.command.stopped == tuple(  # type: ignore[attr-defined]
        (n, cl.vm(n).placement) for n in here[1:])
    cl.ok(done.command)
    plan.proposed(True, now + 1)
    leave = plan.step(view(cl, now + 2))
    assert isinstance(leave, sd.Leave) and leave.unprotected == (here[0],)


def test_an_application_shuts_down_before_the_database_it_starts_after() -> None:
    cl = cluster("stop")
    cl.add_vm("db", allowed_hosts=("h1",))
    cl.add_vm("app", allowed_hosts=("h1",), start_after=("db",))
    cl.add_vm("tool", allowed_hosts=("h1",))
    plan = sd.PlannedShutdown("h1", 0.0)
    now = drive_to_shutdown(cl, plan)
    action = plan.step(view(cl, now, domains={"db": RUN, "app": RUN, "tool": RUN}))
    assert isinstance(action, sd.ShutDownVms)
    assert action.waves == (("app", "tool"), ("db",))
    assert action.names == ("app", "db", "tool")
    assert "3 VM(s) in 2 waves (start order reversed)" in action.reason


def test_an_agent_operation_still_running_releases_nothing() -> None:
    cl = cluster("failover")
    cl.add_vm("vm1")
    host = cl.vm("vm1").host
    plan = sd.PlannedShutdown(host, 0.0)
    plan.step(view(cl, 0.0))
    cl.ok(c.PlannedShutdown(name=host, step="begin", policy="failover"))
    plan.proposed(True, 0.0)
    plan.step(view(cl, 0.1))
    plan.agent_stopped(False)  # a start may still be under way
    plan.step(view(cl, 0.2))
    plan.step(view(cl, 0.3, domains={}))
    plan.vms_shut_down(cl.state, {})  # libvirt shows nothing: proves nothing now
    done = plan.step(view(cl, 0.4))
    assert isinstance(done, sd.Propose) and done.command.stopped == ()  # type: ignore[attr-defined]


def test_unreadable_libvirt_releases_nothing() -> None:
    cl = cluster("failover")
    cl.add_vm("vm1")
    assert sd.stopped_placements(cl.state, cl.vm("vm1").host, None) == ()


def test_a_drain_in_which_nothing_can_move_falls_back_after_a_while() -> None:
    cl = cluster("migrate")
    cl.add_vm("pinned", allowed_hosts=("h1",))
    plan = sd.PlannedShutdown("h1", 0.0)
    action = plan.step(view(cl, 0.0))
    assert isinstance(action, sd.Propose)
    cl.ok(action.command)
    plan.proposed(True, 0.0)
    assert isinstance(plan.step(view(cl, 0.1)), sd.Wait)
    assert sd.drain_stuck(cl.state, "h1").startswith("drain waits")
    assert isinstance(plan.step(view(cl, 0.1 + sd.STUCK_S)), sd.StopAgent)
    assert "nothing can move" in plan.notes[-1]


def test_a_step_that_never_commits_ends_with_the_vms_left_as_they_are() -> None:
    cl = cluster("failover")
    budget = sd.Budget(total_s=60.0, vm_shutdown_s=10.0, grace_s=5.0)
    plan = sd.PlannedShutdown("h1", 0.0, budget)
    plan.step(view(cl, 0.0))
    plan.proposed(False, 0.0)
    assert isinstance(plan.step(view(cl, 0.1)), sd.Wait)  # proposed again shortly
    assert isinstance(plan.step(view(cl, 1.0)), sd.Propose)
    plan.proposed(False, 1.0)
    leave = plan.step(view(cl, budget.grace_s + 0.1))  # no quorum: it does not linger
    assert isinstance(leave, sd.Leave) and "could not be recorded" in leave.reason


def test_a_refused_step_leaves_at_once() -> None:
    cl = cluster("failover")
    plan = sd.PlannedShutdown("h1", 0.0)
    plan.step(view(cl, 0.0))
    plan.proposed(True, 0.0, refused="host h1 is fencing")
    assert isinstance(plan.step(view(cl, 0.1)), sd.Leave)


def test_a_cluster_that_cannot_read_the_command_gets_the_old_clean_stop() -> None:
    cl = Cluster()
    cl.add_hosts("h1", "h2", "h3")  # nobody announced: release 0.1.0 everywhere
    plan = sd.PlannedShutdown("h1", 0.0)
    action = plan.step(view(cl, 0.0))
    assert action == sd.Propose(c.SetPeerStopped(name="h1", stopped=True),
                                "planned shutdown (freeze): done")
    assert "not understood by every host" in plan.notes[0]


def test_the_budget_keeps_time_back_for_the_vm_shutdowns_and_two_commits() -> None:
    assert sd.Budget(300.0, 30.0, 5.0).moving_s == 300.0 - 30.0 - 10.0 - sd.MARGIN_S
    assert sd.Budget(20.0, 30.0, 5.0).moving_s == 0.0


def test_an_operator_cannot_migrate_a_vm_off_a_host_that_is_shutting_down() -> None:
    cl = cluster("failover")
    cl.add_vm("vm1")
    host = cl.vm("vm1").host
    cl.ok(c.PlannedShutdown(name=host, step="begin", policy="failover"))
    events = cl.run(c.MigrateVm(name="vm1"))
    assert "is shutting down (failover)" in only(events, "rejected")[0].message


def test_a_migration_out_that_the_stopped_agent_never_ran_is_reported_failed() -> None:
    cl = cluster("failover")
    cl.add_vm("vm1")
    host = cl.vm("vm1").host
    cl.ok(c.MigrateVm(name="vm1"))  # committed, but the agent stops before it runs it
    plan = sd.PlannedShutdown(host, 0.0)
    now = 0.0
    action = plan.step(view(cl, now))
    cl.ok(action.command)  # type: ignore[union-attr]
    plan.proposed(True, now)
    assert isinstance(plan.step(view(cl, 0.1)), sd.StopAgent)
    plan.agent_stopped(True)
    assert plan.wants_domains
    report = plan.step(view(cl, 0.2, domains={"vm1": RUN}))
    assert isinstance(report, sd.Propose)
    assert report.command == c.VmReport(name="vm1", host=host, placement=cl.vm("vm1").placement,
                                        observed="migrate-failed", detail=sd.NOT_MIGRATED)
    cl.ok(report.command)
    plan.proposed(True, 0.2)
    assert cl.vm("vm1").state is VmState.STARTED and cl.vm("vm1").host == host
    plan.step(view(cl, 0.3, domains={"vm1": RUN}))  # nothing moves: shut down next
    assert isinstance(plan.step(view(cl, 0.4, domains={"vm1": RUN})), sd.ShutDownVms)


def test_stop_moves_a_vm_whose_host_limits_no_longer_name_its_host() -> None:
    cl = cluster("stop")
    cl.add_vm("vm1")
    host = cl.vm("vm1").host
    other = next(h for h in ("h1", "h2", "h3") if h != host)
    cl.ok(c.SetVmOptions(name="vm1", allowed_hosts=(other,)))
    cl.ok(c.PlannedShutdown(name=host, step="done", policy="stop",
                            stopped=stopped_on(cl, host)))
    assert cl.vm("vm1").host == other and cl.vm("vm1").state is VmState.STARTING
