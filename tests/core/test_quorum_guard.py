"""A fence never costs the majority that must confirm it, and a leader never
fences its own host."""

from __future__ import annotations

from hacluster.core.manager import Manager, Propose, StepDown
from hacluster.fsm import commands as c
from hacluster.fsm.model import Desired, HostRole
from hacluster.fsm.states import HostState

from .builders import Cluster


def three_voters() -> Cluster:
    cluster = Cluster()
    for name in ("h1", "h2", "h3"):
        cluster.add_host(name, role=HostRole.VOTER)
    return cluster


def test_second_voter_fence_is_held_back_while_the_first_is_in_flight() -> None:
    cluster = three_voters()
    cluster.fence("h2")
    cluster.suspect("h3")
    events = cluster.request_fence("h3")
    assert cluster.host_state("h3") is HostState.FENCE_BLOCKED
    refused = [e for e in events if e.kind == "fence-refused"]
    assert refused and "would leave 1 of 3 voters" in refused[0].message


def test_held_back_fence_goes_ahead_once_the_fenced_voter_is_back() -> None:
    cluster = three_voters()
    cluster.fence("h2")
    cluster.suspect("h3")
    cluster.request_fence("h3")
    cluster.confirm("h2")
    cluster.ok(c.HostReady(name="h2"))
    events = cluster.request_fence("h3")
    assert any(e.kind == "fence-requested" for e in events)
    assert cluster.host_state("h3") is HostState.FENCING


def test_an_operator_retry_cannot_override_the_quorum_guard() -> None:
    cluster = three_voters()
    cluster.fence("h2")
    cluster.suspect("h3")
    cluster.request_fence("h3")
    events = cluster.run(c.RetryFence(host="h3", who="alice"))
    assert [e.kind for e in events] == ["rejected"]
    assert "no majority could confirm it" in events[0].message


def test_members_do_not_count_for_the_guard() -> None:
    cluster = three_voters()
    cluster.add_host("m1")  # non-voting member
    cluster.fence("h2")
    cluster.fence("m1")  # a member can always be fenced: the voters keep their majority
    assert cluster.host_state("m1") is HostState.FENCING


def test_a_leader_steps_down_instead_of_fencing_its_own_host() -> None:
    cluster = three_voters()
    cluster.ok(c.AddVm(name="v", xml="<domain/>", memory_mib=512, vcpus=1,
                       allowed_hosts=("h1",)))
    vm = cluster.state.vms["v"]
    cluster.ok(c.VmReport(name="v", host="h1", placement=vm.placement, observed="started"))
    cluster.ok(c.SetVmDesired(name="v", desired=Desired.STOPPED))
    vm = cluster.state.vms["v"]
    cluster.ok(c.VmReport(name="v", host="h1", placement=vm.placement, observed="stop-failed"))
    assert cluster.host("h1").fence_wanted
    manager = Manager("h1")
    manager.become_leader(1, cluster.state, now=0.0)
    manager.proposal_done("noop", c.Noop(term=1), committed=True, index=99, own_term=True)
    decisions = manager.tick(cluster.state, now=0.1, log_now=0.1)
    assert any(isinstance(d, StepDown) for d in decisions)
    assert not any(isinstance(d, Propose) and isinstance(d.command, c.RequestFence)
                   for d in decisions)
    other = Manager("h2")
    other.become_leader(2, cluster.state, now=0.0)
    other.proposal_done("noop", c.Noop(term=2), committed=True, index=100, own_term=True)
    other.renewal("h3", "main", 0.05)  # h2 hears h3: with itself a majority without h1
    fences = [d for d in other.tick(cluster.state, now=0.1, log_now=0.1)
              if isinstance(d, Propose) and isinstance(d.command, c.RequestFence)]
    assert [d.command.host for d in fences] == ["h1"]  # type: ignore[attr-defined]
