"""Failback (fsm/failback.py): VMs whose policy is auto return to their best preferred
host once it is ready, bounded, sticky, within capacity, host limits and anti-affinity;
placement after a failure prefers preferred hosts. States are grown by real commands."""

from __future__ import annotations

from typing import Any

import pytest

from hacluster.core.explain import explain
from hacluster.core.manager import Manager, Propose
from hacluster.core.versions import admit
from hacluster.fsm import commands as c
from hacluster.fsm import failback
from hacluster.fsm.model import Failback
from hacluster.fsm.states import HostState, VmState
from hacluster.fsm.validate import command_problem

from .builders import Cluster, only

AUTO = Failback.AUTO


def cluster(h1_mib: int = 8192, **settings: Any) -> Cluster:
    settings.setdefault("failback_hold_down_s", 60.0)
    cl = Cluster(**settings)
    cl.add_host("h1", h1_mib)
    cl.add_host("h2", 16_384)
    cl.add_host("h3", 16_384)
    cl.announce_all()
    return cl


def h1_dies_and_returns(cl: Cluster) -> None:
    """h1 is fenced, its VMs restart elsewhere, then its agent reports ready again."""
    cl.fence("h1")
    cl.confirm("h1")
    for vm in sorted(cl.state.vms.values(), key=lambda v: v.name):
        if vm.state is VmState.RECOVERY:
            cl.report(vm.name, "started")
    cl.ok(c.HostReady(name="h1"))
    assert cl.host_state("h1") is HostState.ONLINE


def later(cl: Cluster, seconds: float = 120.0) -> float:
    """A log time `seconds` after the latest command (past the hold-down by default)."""
    return cl.clock + seconds


def fail_back(cl: Cluster, name: str, target: str) -> None:
    cl.ok(c.FailbackVm(name=name, target=target), at=cl.state.log_time + 120.0)


# ---------------------------------------------------------------- placement

def test_placement_prefers_the_best_scored_host_that_fits() -> None:
    cl = cluster(h1_mib=2048)
    cl.add_vm("a", 1024, preferred_hosts=(("h3", 50), ("h1", 100)), start=False)
    assert cl.vm("a").host == "h1"  # not h2, though it has the most free memory
    assert "preferred host (score 100)" in cl.vm("a").reason
    cl.add_vm("b", 2048, preferred_hosts=(("h3", 50), ("h1", 100)))
    assert cl.vm("b").host == "h3"  # h1 lacks memory now: the next score
    cl.add_vm("c", 1024, preferred_hosts=(("h1", 100),), anti_affinity="g")
    cl.add_vm("d", 1024, preferred_hosts=(("h1", 100),), anti_affinity="g",
              allowed_hosts=("h1", "h3"))
    assert cl.vm("c").host == "h1" and cl.vm("d").host == "h3"  # anti-affinity, limits


def test_after_a_failure_the_vm_goes_to_its_next_preferred_host() -> None:
    cl = cluster()
    cl.add_vm("db", preferred_hosts=(("h1", 100), ("h3", 10)), failback=AUTO)
    assert cl.vm("db").host == "h1"
    cl.fence("h1")
    cl.confirm("h1")
    assert cl.vm("db").host == "h3" and cl.vm_state("db") is VmState.RECOVERY


def test_without_preferences_placement_is_unchanged() -> None:
    cl = cluster()
    cl.add_vm("plain")
    assert cl.vm("plain").host == "h2"
    assert "preferred" not in cl.vm("plain").reason


# ---------------------------------------------------------------- readiness

def test_a_returned_host_waits_for_host_ready_then_the_vm_fails_back() -> None:
    cl = cluster()
    cl.add_vm("db", preferred_hosts=(("h1", 100),), failback=AUTO)
    h1_dies_and_returns(cl)
    assert not cl.host("h1").failback_ready
    assert failback.wanted(cl.state, later(cl)) == []
    why = failback.judge(cl.state, cl.vm("db"), later(cl)).why
    assert why == "host h1 is back but not ready: waiting for `hactl host ready h1`"
    events = cl.ok(c.SetHostMaintenance(name="h1", on=False, ready=True), origin="alice")
    assert any("ready, said alice" in e.message for e in events)
    assert cl.host("h1").failback_ready
    assert failback.wanted(cl.state, later(cl)) == [("db", "h1")]
    fail_back(cl, "db", "h1")
    vm = cl.vm("db")
    assert vm.state is VmState.MIGRATING and vm.target_host == "h1"
    assert vm.reason.startswith("failback to h1 (score 100, h2 0)")
    assert failback.in_flight(cl.state) == ["db"]
    cl.report("db", "migrated")
    assert cl.vm("db").host == "h1" and cl.vm_state("db") is VmState.STARTED
    assert failback.wanted(cl.state, later(cl, 10_000)) == []  # no ping-pong


def test_a_host_is_ready_by_itself_after_failback_ready_after_s_online() -> None:
    cl = cluster(failback_ready_after_s=600.0)
    cl.add_vm("db", preferred_hosts=(("h1", 100),), failback=AUTO)
    h1_dies_and_returns(cl)
    online_since = cl.host("h1").since
    assert failback.wanted(cl.state, online_since + 599) == []
    assert "or for it to be online 600 s" in \
        failback.judge(cl.state, cl.vm("db"), online_since + 599).why
    assert failback.wanted(cl.state, online_since + 600) == [("db", "h1")]


def test_maintenance_takes_readiness_away_and_host_ready_ends_it() -> None:
    cl = cluster()
    cl.add_vm("db", preferred_hosts=(("h1", 100),), failback=AUTO)
    cl.ok(c.SetHostMaintenance(name="h1", on=True))
    assert cl.vm("db").state is VmState.MIGRATING  # drained
    cl.report("db", "migrated")
    assert "in maintenance" in failback.judge(cl.state, cl.vm("db"), later(cl)).why
    cl.ok(c.SetHostMaintenance(name="h1", on=False))  # maintenance off: not ready yet
    assert cl.host_state("h1") is HostState.ONLINE
    assert failback.wanted(cl.state, later(cl)) == []
    cl.ok(c.SetHostMaintenance(name="h1", on=False, ready=True))
    assert failback.wanted(cl.state, later(cl)) == [("db", "h1")]


def test_host_ready_is_refused_while_a_fence_is_pending() -> None:
    cl = cluster()
    cl.fence("h1")
    events = cl.run(c.SetHostMaintenance(name="h1", on=False, ready=True))
    assert "it can be ready only once its fence is confirmed" in \
        only(events, "rejected")[0].message


# ---------------------------------------------------------------- policy and stickiness

def test_failback_never_stays_and_explain_says_so() -> None:
    cl = cluster()
    cl.add_vm("db", preferred_hosts=(("h1", 100),))  # default: never
    h1_dies_and_returns(cl)
    cl.ok(c.SetHostMaintenance(name="h1", on=False, ready=True))
    assert failback.wanted(cl.state, later(cl)) == []
    assert cl.vm("db").host != "h1"
    lines = explain(cl.state, "db")
    assert "preferred hosts: h1 (100); failback never" in lines
    assert any(x.startswith("not on its preferred host h1: failback never") for x in lines)


def test_stickiness_needs_a_score_better_by_more_than_the_margin() -> None:
    cl = cluster(failback_stickiness=10)
    cl.add_vm("db", preferred_hosts=(("h1", 100), ("h2", 90)), failback=AUTO)
    h1_dies_and_returns(cl)
    cl.ok(c.SetHostMaintenance(name="h1", on=False, ready=True))
    assert cl.vm("db").host == "h2"
    assert failback.wanted(cl.state, later(cl)) == []
    assert failback.judge(cl.state, cl.vm("db"), later(cl)).why == \
        "stickiness: h1 scores 100, h2 90; a move needs more than 10 better"
    cl.ok(c.SetSettings(failback_stickiness=9))
    assert failback.wanted(cl.state, later(cl)) == [("db", "h1")]


def test_hold_down_after_the_last_start_or_move() -> None:
    cl = cluster(failback_hold_down_s=300.0)
    cl.add_vm("db", preferred_hosts=(("h1", 100),), failback=AUTO)
    h1_dies_and_returns(cl)
    cl.ok(c.SetHostMaintenance(name="h1", on=False, ready=True))
    since = cl.vm("db").since
    assert failback.wanted(cl.state, since + 299) == []
    assert "stickiness hold-down: on h2 since log time" in \
        failback.judge(cl.state, cl.vm("db"), since + 299).why
    assert failback.wanted(cl.state, since + 300) == [("db", "h1")]
    refused = cl.run(c.FailbackVm(name="db", target="h1"), at=since + 299)
    assert "stickiness hold-down" in only(refused, "rejected")[0].message


def test_a_lower_preferred_host_is_used_while_a_better_one_cannot_take_it() -> None:
    cl = cluster()
    cl.add_vm("db", preferred_hosts=(("h1", 100), ("h3", 50)), failback=AUTO)
    cl.ok(c.SetHostMaintenance(name="h3", on=True))
    h1_dies_and_returns(cl)  # h3 in maintenance: db recovered on h2
    assert cl.vm("db").host == "h2"
    cl.ok(c.SetHostMaintenance(name="h3", on=False, ready=True))
    verdict = failback.judge(cl.state, cl.vm("db"), later(cl))
    assert verdict.target == "h3" and verdict.why == \
        "failback to h3 (score 50, h2 0); host h1 is back but not ready: waiting for " \
        "`hactl host ready h1`"
    fail_back(cl, "db", "h3")
    assert failback.in_flight(cl.state) == ["db"]  # counted against the bound
    assert cl.vm("db").reason == "failback to h3 (score 50, h2 0): live migration (host h1 " \
        "is back but not ready: waiting for `hactl host ready h1`)"


# ---------------------------------------------------------------- bounds

def test_at_most_failback_max_concurrent_move_at_a_time_highest_priority_first() -> None:
    cl = cluster(h1_mib=16_384)
    for i in range(5):
        cl.add_vm(f"v{i}", preferred_hosts=(("h1", 100),), failback=AUTO, priority=i)
    h1_dies_and_returns(cl)
    cl.ok(c.SetHostMaintenance(name="h1", on=False, ready=True))
    moves = failback.wanted(cl.state, later(cl))
    assert moves == [("v4", "h1"), ("v3", "h1")]
    for name, target in moves:
        fail_back(cl, name, target)
    assert failback.wanted(cl.state, later(cl)) == []
    assert "concurrency limit: 2 failback migration(s) in flight" in \
        failback.judge(cl.state, cl.vm("v2"), later(cl)).why
    refused = cl.run(c.FailbackVm(name="v2", target="h1"), at=later(cl))
    assert "concurrency limit" in only(refused, "rejected")[0].message
    cl.report("v4", "migrated")
    assert failback.wanted(cl.state, later(cl)) == [("v2", "h1")]


def test_capacity_and_anti_affinity_bound_a_round() -> None:
    cl = cluster(h1_mib=2048, failback_max_concurrent=5)
    cl.add_vm("big1", 2048, preferred_hosts=(("h1", 100),), failback=AUTO, priority=2)
    cl.add_vm("big2", 2048, preferred_hosts=(("h1", 100),), failback=AUTO, priority=1)
    assert cl.vm("big2").host != "h1"  # full: big1 took it
    h1_dies_and_returns(cl)
    cl.ok(c.SetHostMaintenance(name="h1", on=False, ready=True))
    assert failback.wanted(cl.state, later(cl)) == [("big1", "h1")]  # only one fits
    assert failback.judge(cl.state, cl.vm("big2"), later(cl)).target == "h1"  # alone, yes
    cl = cluster(failback_max_concurrent=5)
    cl.add_vm("a", preferred_hosts=(("h1", 100),), failback=AUTO, anti_affinity="g")
    cl.add_vm("b", preferred_hosts=(("h1", 100),), failback=AUTO, anti_affinity="g")
    h1_dies_and_returns(cl)
    cl.ok(c.SetHostMaintenance(name="h1", on=False, ready=True))
    assert failback.wanted(cl.state, later(cl)) == [("a", "h1")]
    assert failback.wanted(cl.state, later(cl)) == failback.wanted(cl.state, later(cl))


def test_host_limits_are_respected() -> None:
    cl = cluster()
    cl.add_vm("db", preferred_hosts=(("h1", 100),), failback=AUTO)
    h1_dies_and_returns(cl)
    cl.ok(c.SetHostMaintenance(name="h1", on=False, ready=True))
    cl.ok(c.SetVmOptions(name="db", allowed_hosts=("h2", "h3")))
    assert failback.wanted(cl.state, later(cl)) == []
    assert "outside the VM's host limits" in \
        failback.judge(cl.state, cl.vm("db"), later(cl)).why


# ---------------------------------------------------------------- the leader

def test_the_leader_proposes_failback_and_apply_moves_it() -> None:
    cl = cluster()
    cl.add_vm("db", preferred_hosts=(("h1", 100),), failback=AUTO)
    h1_dies_and_returns(cl)
    cl.ok(c.SetHostMaintenance(name="h1", on=False, ready=True))
    manager = Manager("h2")
    manager.become_leader(1, cl.state, 0.0)
    manager.proposal_done("noop", c.Noop(term=1), True, 1, own_term=True)
    proposals = [d.command for d in manager.tick(cl.state, 1.0, later(cl))
                 if isinstance(d, Propose)]
    assert c.FailbackVm(name="db", target="h1") in proposals
    cl.ok(c.FailbackVm(name="db", target="h1"), at=later(cl))
    assert cl.vm("db").target_host == "h1"


def test_the_version_gate_holds_failback_while_a_host_does_not_know_it() -> None:
    cl = Cluster()
    cl.add_hosts("h1", "h2")  # never announced: release 0.1.0
    assert not admit(cl.state, c.FailbackVm.TYPE, 1).admitted
    assert c.SetVmOptions(name="db", failback=AUTO).wire_version() == 2
    assert c.SetVmOptions(name="db", priority=1).wire_version() == 1
    assert c.SetHostMaintenance(name="h1", on=False, ready=True).wire_version() == 2
    assert c.SetSettings(failback_max_concurrent=1).wire_version() == 4
    assert c.AddVm(name="db", xml="", memory_mib=1, vcpus=1).wire_version() == 1
    assert not admit(cl.state, c.SetVmOptions.TYPE, 2).admitted


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize(("command", "problem"), [
    (c.SetVmOptions(name="db", preferred_hosts=(("h1", 0),)),
     "preferred host h1: score must be 1 to 1000000 (got 0)"),
    (c.SetVmOptions(name="db", preferred_hosts=(("h1", 5), ("h1", 6))),
     "preferred host h1 is listed twice"),
    (c.SetVmOptions(name="db", preferred_hosts=(("bad name", 5),)),
     "invalid host name 'bad name'"),
    (c.SetSettings(failback_max_concurrent=-1), "failback_max_concurrent must be >= 0"),
    (c.SetSettings(failback_stickiness=-5), "failback_stickiness must be >= 0"),
    (c.SetSettings(failback_hold_down_s=float("nan")),
     "failback_hold_down_s must be a number of seconds >= 0"),
    (c.SetSettings(failback_ready_after_s=-1.0),
     "failback_ready_after_s must be a number of seconds >= 0"),
])
def test_bad_failback_input_is_refused_naming_the_problem(command: c.Command,
                                                          problem: str) -> None:
    assert command_problem(command).startswith(problem)
