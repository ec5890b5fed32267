"""The leader's quorum guard, held and cancelled fences (issue 8, holes 4, 5 and 6).

- A fence that would leave fewer than a majority of voters renewing to the leader is
  held (HoldFence) and said so, whoever leads; it goes ahead, as the same incident, once
  enough voters renew again.
- A host that renews again before any fence of it succeeded keeps its VMs: the pending
  attempt and its retries are cancelled (CancelFence), never run.
- A leader that hears no majority of voters fences nobody and hands leadership over.
"""

from __future__ import annotations

from hacluster.core.manager import Decision, StepDown
from hacluster.fsm import commands as c
from hacluster.fsm.model import FenceResult, HostRole
from hacluster.fsm.states import HostState, VmState

from .builders import Cluster
from .test_manager import T0, Leader, fences, proposals

H = HostState


def voters(*names: str, **settings: object) -> Cluster:
    cluster = Cluster(**settings)  # type: ignore[arg-type]
    for name in names:
        cluster.add_host(name, role=HostRole.VOTER)
    return cluster


def leading(cluster: Cluster) -> Leader:
    """'me' leads, its no-op committed, at T0."""
    leader = Leader(cluster)
    leader.commit_noop()
    return leader


def expire(leader: Leader, host: str, renewing: tuple[str, ...],
           until: float) -> list[Decision]:
    """Tick every 0.5 s up to `until`, the `renewing` hosts renewing, committing the
    proposals about `host` the manager makes on the way; returns every decision."""
    at, made = leader.now, []
    while at < until:
        at = round(at + 0.5, 6)
        for name in renewing:
            leader.renew(name, at)
        step = leader.tick(at)
        made += step
        for proposal in proposals(step, c.Command):
            if getattr(proposal.command, "name", getattr(proposal.command, "host", "")) == host:
                leader.commit(proposal)
    return made


def test_a_silent_voter_holds_the_fence_of_another() -> None:
    """Hole 4: three voters, one died for good; fencing the second would leave the
    leader alone, unable to confirm: the fence is held, with the reason in the state."""
    leader = leading(voters("me", "h2", "h3"))
    expire(leader, "h2", renewing=(), until=T0 + 4.0)
    host = leader.state.hosts["h2"]
    assert host.state is H.FENCE_BLOCKED
    assert "only 1 of 3 voters renew their leases" in host.reason
    assert not leader.state.fences  # nothing was requested, nothing counts
    assert fences(leader.tick(T0 + 4.5)) == []


def test_a_held_fence_goes_ahead_once_a_majority_renews_again() -> None:
    leader = leading(voters("me", "h2", "h3"))
    expire(leader, "h2", renewing=(), until=T0 + 4.0)
    leader.renew("h3", T0 + 4.2)
    (request,) = proposals(leader.tick(T0 + 4.5), c.RequestFence)
    leader.commit(request)
    assert leader.state.hosts["h2"].state is H.FENCING
    assert [f.host for f in fences(leader.tick(T0 + 4.6))] == ["h2"]


def test_a_committed_fence_is_held_when_voters_went_quiet_before_it_ran() -> None:
    """The guard is checked again right before a fence runs; the held attempt continues
    as the same incident later (counted once against the cap)."""
    leader = leading(voters("me", "h2", "h3", fence_cap=1))
    expire(leader, "h2", renewing=("h3",), until=T0 + 3.5)  # challenged, then committed
    assert leader.state.hosts["h2"].state is H.FENCING
    token = leader.state.hosts["h2"].fence_token
    # h3 falls silent before the leader's next tick would run the fence
    at = T0 + 3.6 + leader.state.settings.lease_ttl_s
    decisions = leader.tick(at)
    assert fences(decisions) == []
    (hold,) = proposals(decisions, c.HoldFence)
    leader.commit(hold)
    record = leader.state.fence_record(token)
    assert record is not None and record.result is FenceResult.HELD
    assert leader.state.hosts["h2"].state is H.FENCE_BLOCKED
    leader.renew("h3", at + 0.1)
    (request,) = proposals(leader.tick(at + 0.5), c.RequestFence)
    leader.commit(request)
    again = leader.state.fence_record(leader.state.hosts["h2"].fence_token)
    assert again is not None and (again.incident, again.attempt) == (token, 2)


def test_a_fencing_host_that_renews_is_cancelled_not_retried() -> None:
    """Hole 5: a retry powered off a host 1.35 s after its renewals had resumed."""
    cluster = voters("me", "h2", "h3")
    cluster.ok(c.AddVm(name="v", xml="<domain/>", memory_mib=256, vcpus=1,
                       allowed_hosts=("h2",)))
    vm = cluster.state.vms["v"]
    cluster.ok(c.VmReport(name="v", host="h2", placement=vm.placement, observed="started"))
    leader = leading(cluster)
    (run,) = fences(expire(leader, "h2", renewing=("h3",), until=T0 + 4.0))
    failed = leader.manager.fence_result("h2", run.token, FenceResult.UNREACHABLE, "no answer",
                                         "ipmi", T0 + 4.0)
    leader.renew("h2", T0 + 4.1)  # renewals resume while the failure commits
    assert proposals(leader.tick(T0 + 4.2), c.CancelFence) == []  # its outcome first
    leader.commit(failed[0])  # type: ignore[arg-type]
    decisions = leader.tick(T0 + 4.3)
    assert fences(decisions) == [] and proposals(decisions, c.RequestFence) == []
    (cancel,) = proposals(decisions, c.CancelFence)
    leader.commit(cancel)
    assert leader.state.hosts["h2"].state is H.ONLINE
    assert leader.state.vms["v"].state is VmState.STARTING  # its agent confirms it runs
    assert leader.state.fence_record(run.token).result is FenceResult.UNREACHABLE  # type: ignore[union-attr]
    for at in (T0 + 6.0, T0 + 9.0):  # long past the retry backoff: nothing more
        leader.renew("h2", at - 0.1)
        leader.renew("h3", at - 0.1)
        decisions = leader.tick(at)
        assert fences(decisions) == [] and proposals(decisions, c.RequestFence) == []


def test_a_pending_attempt_of_an_earlier_leader_is_cancelled_when_the_host_renews() -> None:
    cluster = voters("me", "h2", "h3")
    cluster.fence("h2")
    token = cluster.state.hosts["h2"].fence_token
    leader = leading(cluster)
    leader.renew("h2", T0 + 0.5)
    leader.renew("h3", T0 + 0.5)
    decisions = leader.tick(T0 + 0.6)
    assert fences(decisions) == []
    (cancel,) = proposals(decisions, c.CancelFence)
    leader.commit(cancel)
    assert leader.state.fence_record(token).result is FenceResult.CANCELLED  # type: ignore[union-attr]
    assert leader.state.hosts["h2"].state is H.ONLINE


def test_a_leader_that_hears_nobody_fences_nobody_and_steps_down() -> None:
    """Hole 6: the leader keeps its Raft majority but its lease traffic is lost: every
    other lease expires in its eyes. It holds every fence and hands leadership to a
    peer that says (in its Raft answers) it hears a majority."""
    leader = leading(voters("me", "h2", "h3", "h4", "h5"))
    decisions: list[object] = []
    at = T0
    while at < T0 + 6.0:
        at = round(at + 0.5, 6)
        leader.manager.hears("h3", {"h2": 0.1, "h4": 0.2, "h5": 0.1}, at)
        step = leader.tick(at)
        decisions += step
        for proposal in proposals(step, c.Command):
            leader.commit(proposal)
    assert not [d for d in decisions if getattr(d, "command", None).__class__ is c.RequestFence]
    assert fences(decisions) == []  # type: ignore[arg-type]
    assert not leader.state.fences
    steps = [d for d in decisions if isinstance(d, StepDown)]
    assert steps and "no majority of 5 voters" in steps[0].reason
    assert steps[0].target == "h3"


def test_a_host_heard_through_raft_is_not_judged_dead_on_the_lease_channel() -> None:
    """Its lease port is firewalled (or flooded) but its peer answers Raft: it stays
    online, nobody is fenced (issue 9, item 2)."""
    leader = leading(voters("me", "h2", "h3"))
    at = T0
    while at < T0 + 6.0:
        at = round(at + 0.5, 6)
        leader.renew("h3", at)
        leader.manager.raft_contact("h2", at - 0.05)
        decisions = leader.tick(at)
        assert proposals(decisions, c.MarkHostSuspect) == []
        assert proposals(decisions, c.RequestFence) == [] and fences(decisions) == []
    assert leader.state.hosts["h2"].state is H.ONLINE


def test_raft_answers_alone_do_not_keep_a_leader_that_hears_no_renewals() -> None:
    """Hole 6 with Raft intact: the hosts stay alive through Raft, nobody is fenced, but
    the leader, which no renewal reaches, still hands leadership over: the hosts' agents
    need its acks for their read barriers."""
    leader = leading(voters("me", "h2", "h3"))
    decisions: list[Decision] = []
    at = T0
    while at < T0 + 6.0:
        at = round(at + 0.5, 6)
        for host in ("h2", "h3"):
            leader.manager.raft_contact(host, at - 0.05)
            other = "h3" if host == "h2" else "h2"
            leader.manager.hears(host, {other: 0.2}, at - 0.05)  # h2 and h3 hear each other
        decisions += leader.tick(at)
    assert proposals(decisions, c.MarkHostSuspect) == [] and fences(decisions) == []
    assert any(isinstance(d, StepDown) for d in decisions)


def test_no_step_down_when_no_other_peer_hears_more() -> None:
    """One voter dead, another whose lease port is blocked: nobody hears a majority of
    renewals. Handing leadership round would only churn: the leader stays."""
    leader = leading(voters("me", "h2", "h3"))
    decisions: list[Decision] = []
    at = T0
    while at < T0 + 8.0:
        at = round(at + 0.5, 6)
        leader.manager.raft_contact("h2", at - 0.05)
        leader.manager.hears("h2", {}, at - 0.05)
        decisions += leader.tick(at)
    assert not any(isinstance(d, StepDown) for d in decisions)


def test_a_host_another_voter_hears_is_not_judged_dead() -> None:
    """A one-way cut: nothing from h2 reaches the leader, but h3 receives h2's renewals
    and says so in its Raft answers: h2 is alive (reachable from a majority)."""
    leader = leading(voters("me", "h2", "h3"))
    at = T0
    while at < T0 + 6.0:
        at = round(at + 0.5, 6)
        leader.renew("h3", at)
        leader.manager.hears("h3", {"h2": 0.3}, at)
        decisions = leader.tick(at)
        assert proposals(decisions, c.MarkHostSuspect) == [] and fences(decisions) == []
    view = leader.manager.leases.view("h2", at, leader.state.settings)
    assert "via h3 0.30s" in view.evidence(leader.state.settings)
