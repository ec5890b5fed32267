"""Manager decisions (the Raft leader) and lease verdicts. Time is an argument;
`Leader` plays the daemon: it applies proposals through the real log path and
reports their fate back."""

from __future__ import annotations

from typing import Any, TypeVar

import pytest

from hacluster.core.lease import LeaseTable, Verdict
from hacluster.core.manager import Decision, Manager, Propose, RunFence
from hacluster.core.silence import CHALLENGE_WAIT_S, Challenge
from hacluster.fsm import ClusterState
from hacluster.fsm import commands as c
from hacluster.fsm.model import FenceAction, FenceResult, HostRole, Settings
from hacluster.fsm.states import HostState

from .builders import Cluster

H = HostState
CommandT = TypeVar("CommandT", bound=c.Command)
TERM = 7
T0 = 500.0  # the leader's monotonic clock at election


class Leader:
    """A Manager plus the replicated state it drives."""

    def __init__(self, cluster: Cluster, term: int = TERM, now: float = T0) -> None:
        self.cluster = cluster
        self.manager = Manager("me")
        self.now = now
        self.first = self.manager.become_leader(term, cluster.state, now)

    @property
    def state(self) -> ClusterState:
        return self.cluster.state

    def commit_noop(self) -> None:
        (noop,) = self.first
        assert isinstance(noop, Propose)
        self.commit(noop)

    def commit(self, decision: Propose, committed: bool = True, own_term: bool = True) -> None:
        """Apply the proposal through the log (unless it never committed) and report it;
        `own_term`: committed by this leader in its own term (as Raft reports it)."""
        if committed:
            self.cluster.run(decision.command)
        self.manager.proposal_done(decision.key, decision.command, committed, self.cluster.index,
                                   own_term)

    def tick(self, at: float, wall: float | None = None) -> list[Decision]:
        self.now = at
        return self.manager.tick(self.state, at, self.cluster.clock if wall is None else wall)

    def renew(self, host: str, at: float, link: str = "ring0") -> None:
        self.manager.renewal(host, link, at)


def proposals(decisions: list[Decision], kind: type[c.Command]) -> list[Propose]:
    return [d for d in decisions if isinstance(d, Propose) and isinstance(d.command, kind)]


def command(proposal: Propose, kind: type[CommandT]) -> CommandT:
    assert isinstance(proposal.command, kind), proposal
    return proposal.command


def fences(decisions: list[Decision]) -> list[RunFence]:
    return [d for d in decisions if isinstance(d, RunFence)]


def cluster_of(*hosts: str, **settings: Any) -> Cluster:
    """Power reads off unless asked for (tests/core/test_silence.py tests them)."""
    cluster = Cluster(**{"probe_after_s": 0.0, **settings})
    cluster.add_hosts("me", *hosts)
    return cluster


def ready_leader(*hosts: str, **settings: Any) -> Leader:
    leader = Leader(cluster_of(*hosts, **settings))
    leader.commit_noop()
    return leader


def challenged(decisions: list[Decision]) -> list[str]:
    return [d.host for d in decisions if isinstance(d, Challenge)]


def fence_host_b(leader: Leader, at: float = T0 + 3.0) -> RunFence:
    """Let b's lease expire and drive the manager until it runs a fence for b: its lease
    expires at `at`, it is challenged, and fenced when the challenge went unanswered."""
    (suspect,) = proposals(leader.tick(T0 + 1.5), c.MarkHostSuspect)
    leader.commit(suspect)
    assert challenged(leader.tick(at)) == ["b"]
    at += CHALLENGE_WAIT_S
    (request,) = proposals(leader.tick(at), c.RequestFence)
    leader.commit(request)
    (run,) = fences(leader.tick(at + 0.1))
    return run


# ---------------------------------------------------------------- leases


def test_lease_verdicts_follow_the_leaders_clock() -> None:
    settings, table = Settings(), LeaseTable()
    table.renew("h1", "ring0", 10.0)
    verdicts = [
        table.view("h1", 10.0 + age, settings).verdict for age in (0.0, 1.49, 1.5, 2.99, 3.0, 100.0)
    ]
    assert verdicts == [
        Verdict.ALIVE,
        Verdict.ALIVE,
        Verdict.SUSPECT,
        Verdict.SUSPECT,
        Verdict.EXPIRED,
        Verdict.EXPIRED,
    ]


def test_any_link_keeps_the_lease() -> None:
    settings, table = Settings(), LeaseTable()
    table.renew("h1", "ring0", 10.0)
    table.renew("h1", "ring1", 12.0)
    view = table.view("h1", 13.0, settings)
    assert view.verdict is Verdict.ALIVE and view.age_s == pytest.approx(1.0)
    assert "ring0 3.00s" in view.evidence(settings) and "ring1 1.00s" in view.evidence(settings)


def test_old_renewal_never_moves_the_lease_back() -> None:
    table = LeaseTable()
    table.renew("h1", "ring0", 10.0)
    table.renew("h1", "ring0", 4.0)
    assert table.view("h1", 11.0, Settings()).age_s == pytest.approx(1.0)


def test_unknown_host_gets_a_full_lease_on_first_sight() -> None:
    table = LeaseTable()
    assert table.view("h9", 100.0, Settings()).verdict is Verdict.ALIVE
    assert table.view("h9", 103.0, Settings()).verdict is Verdict.EXPIRED


# ---------------------------------------------------------------- leadership


def test_new_leader_proposes_its_noop_first() -> None:
    leader = Leader(cluster_of("b"))
    assert [type(d.command) for d in leader.first if isinstance(d, Propose)] == [c.Noop]
    noop = leader.first[0]
    assert isinstance(noop, Propose) and noop.command == c.Noop(term=TERM)


def test_nothing_is_decided_before_the_noop_commits() -> None:
    leader = Leader(cluster_of("b"))
    assert leader.tick(T0 + 60.0) == []
    (noop,) = leader.first
    assert isinstance(noop, Propose)
    leader.commit(noop, committed=False)
    assert leader.tick(T0 + 61.0) == []
    leader.manager.proposal_done(noop.key, c.Noop(term=TERM - 1), True, 99)
    assert leader.tick(T0 + 62.0) == []
    leader.commit(noop)
    assert proposals(leader.tick(T0 + 63.0), c.MarkHostSuspect)


def test_new_leader_grants_every_host_a_full_lease() -> None:
    cluster = cluster_of("b")
    manager = Manager("me")
    manager.become_leader(1, cluster.state, 0.0)
    manager.proposal_done("noop", c.Noop(term=1), True, 1)
    manager.lose_leadership()
    # b was silent for a long time before this election
    leader = Leader(cluster, term=2, now=1_000.0)
    leader.manager = manager
    leader.first = manager.become_leader(2, cluster.state, 1_000.0)
    leader.commit_noop()
    assert leader.tick(1_001.4) == []
    suspects = proposals(leader.tick(1_001.5), c.MarkHostSuspect)
    assert [command(p, c.MarkHostSuspect).name for p in suspects] == ["b"]


def test_lost_leadership_stops_every_decision() -> None:
    leader = ready_leader("b")
    leader.manager.lose_leadership()
    assert leader.tick(T0 + 100.0) == []
    assert leader.manager.fence_result("b", 1, FenceResult.OFF, "", "", T0) == []


# ---------------------------------------------------------------- leases into commands


def test_silent_host_becomes_suspect_then_is_fenced() -> None:
    leader = ready_leader("b")
    leader.renew("b", T0 + 1.0)
    assert leader.tick(T0 + 2.4) == []
    (suspect,) = proposals(leader.tick(T0 + 2.5), c.MarkHostSuspect)
    assert "last renewal 1.50s ago" in command(suspect, c.MarkHostSuspect).evidence
    leader.commit(suspect)
    assert proposals(leader.tick(T0 + 3.9), c.RequestFence) == []
    decisions = leader.tick(T0 + 4.0)  # expired: its last chance first
    assert proposals(decisions, c.RequestFence) == [] and challenged(decisions) == ["b"]
    assert proposals(leader.tick(T0 + 4.2), c.RequestFence) == []
    (request,) = proposals(leader.tick(T0 + 4.3), c.RequestFence)
    fence = command(request, c.RequestFence)
    assert (fence.host, fence.reason, fence.term) == ("b", "lease expired", TERM)
    assert "last renewal 3.30s ago" in fence.evidence


def test_a_challenged_host_that_answers_is_not_fenced() -> None:
    """Issue 11: before a fence on the lease alone the leader asks the host over every
    link to renew now; a live host behind a lossy network answers and stays."""
    leader = ready_leader("b")
    (suspect,) = proposals(leader.tick(T0 + 1.5), c.MarkHostSuspect)
    leader.commit(suspect)
    assert challenged(leader.tick(T0 + 3.0)) == ["b"]
    leader.renew("b", T0 + 3.1)  # its answer to the challenge
    decisions = leader.tick(T0 + 3.3)
    assert proposals(decisions, c.RequestFence) == []
    assert proposals(decisions, c.MarkHostAlive)


def test_the_leaders_own_pause_does_not_age_the_leases() -> None:
    """Its loop stood still 10 s (renewals unread) while Raft kept it leader."""
    leader = ready_leader("b")
    leader.renew("b", T0 + 1.0)
    leader.manager.own_pause(10.0, T0 + 11.5)
    assert leader.tick(T0 + 11.5) == []  # 0.5 s of silence that was b's own
    assert leader.manager.leases.view("b", T0 + 11.5, Settings()).verdict is Verdict.ALIVE
    # b's silence after the pause counts again: suspect 1.5 s, fenced 3.0 s after renewal
    (suspect,) = proposals(leader.tick(T0 + 12.5), c.MarkHostSuspect)
    leader.commit(suspect)
    assert proposals(leader.tick(T0 + 13.9), c.RequestFence) == []
    assert challenged(leader.tick(T0 + 14.0)) == ["b"]
    (request,) = proposals(leader.tick(T0 + 14.3), c.RequestFence)
    assert command(request, c.RequestFence).host == "b"


def test_a_pause_never_makes_a_renewal_younger_than_now() -> None:
    table = LeaseTable()
    table.renew("b", "ring0", 100.0)
    table.discount(5.0, now=102.0)  # a renewal read during the pause's first moments
    view = table.view("b", 102.0, Settings())
    assert view.age_s == 0.0 and view.links == (("ring0", 0.0),)


def test_leader_keeps_its_own_lease() -> None:
    leader = ready_leader()
    assert leader.tick(T0 + 100.0) == []


def test_suspect_host_that_renews_is_marked_alive() -> None:
    leader = ready_leader("b")
    (suspect,) = proposals(leader.tick(T0 + 1.5), c.MarkHostSuspect)
    leader.commit(suspect)
    leader.renew("b", T0 + 2.0)
    (alive,) = proposals(leader.tick(T0 + 2.1), c.MarkHostAlive)
    leader.commit(alive)
    assert leader.state.hosts["b"].state is H.ONLINE


def test_one_proposal_per_host_in_flight() -> None:
    leader = ready_leader("b")
    assert proposals(leader.tick(T0 + 1.5), c.MarkHostSuspect)
    assert leader.tick(T0 + 1.6) == []
    assert leader.tick(T0 + 5.0) == []


def test_witness_and_maintenance_hosts_are_never_judged() -> None:
    cluster = cluster_of("b")
    cluster.add_host("w", role=HostRole.WITNESS)
    cluster.ok(c.SetHostMaintenance(name="b", on=True))
    leader = Leader(cluster)
    leader.commit_noop()
    leader.renew("w", T0 + 999.0)  # the witness votes: the leader hears a majority
    assert leader.tick(T0 + 1_000.0) == []


# ---------------------------------------------------------------- fences


def test_fence_runs_for_a_token_committed_in_this_term() -> None:
    leader = ready_leader("b")
    run = fence_host_b(leader)
    assert run == RunFence("b", leader.state.hosts["b"].fence_token, FenceAction.OFF, run.reason)
    assert f"committed in term {TERM}" in run.reason
    assert fences(leader.tick(T0 + 3.2)) == []  # running: not started twice


def test_uncommitted_fence_request_never_runs() -> None:
    leader = ready_leader("b")
    (suspect,) = proposals(leader.tick(T0 + 1.5), c.MarkHostSuspect)
    leader.commit(suspect)
    assert challenged(leader.tick(T0 + 3.0)) == ["b"]
    (request,) = proposals(leader.tick(T0 + 3.3), c.RequestFence)
    # it reached the log, but the daemon could not confirm the commit to us
    leader.cluster.run(request.command)
    leader.manager.proposal_done(request.key, request.command, False, leader.cluster.index)
    for step in range(1, 30):
        assert fences(leader.tick(T0 + 3.0 + step * 0.5)) == []


def test_fence_token_of_an_earlier_term_is_replaced_not_run() -> None:
    cluster = cluster_of("b")
    old_token = cluster.fence("b")  # committed by an earlier leader
    leader = Leader(cluster)
    leader.commit_noop()
    decisions = leader.tick(T0 + 0.1)
    assert fences(decisions) == []
    (request,) = proposals(decisions, c.RequestFence)
    assert "earlier leader" in command(request, c.RequestFence).reason
    leader.commit(request)
    (run,) = fences(leader.tick(T0 + 0.2))
    assert run.token == leader.cluster.index != old_token
    record = cluster.state.fence_record(old_token)
    assert record is not None and record.result is FenceResult.SUPERSEDED


def test_request_fence_of_another_term_does_not_grant_a_token() -> None:
    leader = ready_leader("b")
    (suspect,) = proposals(leader.tick(T0 + 1.5), c.MarkHostSuspect)
    leader.commit(suspect)
    stale = c.RequestFence(host="b", reason="x", evidence="", term=TERM - 1)
    leader.cluster.run(stale)
    leader.manager.proposal_done("host:b", stale, True, leader.cluster.index)
    assert fences(leader.tick(T0 + 3.0)) == []


def test_power_off_is_proposed_as_a_confirm() -> None:
    leader = ready_leader("b")
    run = fence_host_b(leader)
    (confirm,) = leader.manager.fence_result(
        "b", run.token, FenceResult.OFF, "off", "ipmi", T0 + 4.0
    )
    assert isinstance(confirm, Propose)
    assert confirm.command == c.ConfirmFence(
        host="b", token=run.token, result=FenceResult.OFF, evidence="off", method="ipmi"
    )
    leader.commit(confirm)
    assert leader.state.hosts["b"].state is H.FENCED


def test_fence_is_not_run_again_while_its_result_commits() -> None:
    leader = ready_leader("b")
    run = fence_host_b(leader)
    leader.manager.fence_result("b", run.token, FenceResult.TIMEOUT, "no answer", "ipmi", T0 + 4.0)
    assert fences(leader.tick(T0 + 4.1)) == []
    assert fences(leader.tick(T0 + 20.0)) == []


def test_unanswered_result_is_proposed_again() -> None:
    leader = ready_leader("b")
    run = fence_host_b(leader)
    (failed,) = leader.manager.fence_result(
        "b", run.token, FenceResult.TIMEOUT, "x", "ipmi", T0 + 4.0
    )
    assert isinstance(failed, Propose)
    leader.commit(failed, committed=False)
    again = proposals(leader.tick(T0 + 5.5), c.FenceFailed)
    assert [p.command for p in again] == [failed.command]


def test_failed_fence_is_retried_after_a_doubling_backoff() -> None:
    leader = ready_leader("b", fence_retry_backoff_s=2.0, fence_retry_limit=5)
    run = fence_host_b(leader)
    failed_at = T0 + 4.0
    for attempt, backoff in ((1, 2.0), (2, 4.0)):
        (failed,) = leader.manager.fence_result(
            "b", run.token, FenceResult.TIMEOUT, "x", "ipmi", failed_at
        )
        assert isinstance(failed, Propose)
        leader.commit(failed)
        assert proposals(leader.tick(failed_at + backoff - 0.1), c.RequestFence) == []
        (retry,) = proposals(leader.tick(failed_at + backoff), c.RequestFence)
        assert f"attempt {attempt + 1}" in command(retry, c.RequestFence).reason
        leader.commit(retry)
        (run,) = fences(leader.tick(failed_at + backoff + 0.1))
        failed_at += backoff + 1.0


def test_no_fence_for_an_expired_lease_in_cluster_maintenance() -> None:
    leader = ready_leader("b")
    leader.cluster.ok(c.SetClusterMaintenance(on=True))
    (suspect,) = proposals(leader.tick(T0 + 1.5), c.MarkHostSuspect)
    leader.commit(suspect)
    assert leader.tick(T0 + 10.0) == []
    assert leader.state.hosts["b"].state is H.SUSPECT


def test_no_fence_wanted_proposal_in_cluster_maintenance() -> None:
    """A host with fence_wanted (a VM failed to stop) gets a RequestFence every second
    in cluster maintenance; apply refuses each one and the log fills with rejections."""
    leader = ready_leader("b")
    leader.cluster.add_vm("v1", allowed_hosts=("b",))
    leader.cluster.ok(c.SetVmDesired(name="v1", desired=c.Desired.STOPPED))
    leader.cluster.report("v1", "stop-failed")
    leader.cluster.ok(c.SetClusterMaintenance(on=True))
    leader.renew("b", T0 + 0.9)
    assert proposals(leader.tick(T0 + 1.0), c.RequestFence) == []


def test_no_fence_retry_proposal_in_cluster_maintenance() -> None:
    """Same for a fencing host whose token is from an earlier leader."""
    cluster = cluster_of("b")
    cluster.fence("b")
    cluster.ok(c.SetClusterMaintenance(on=True))
    leader = Leader(cluster)
    leader.commit_noop()
    assert proposals(leader.tick(T0 + 0.1), c.RequestFence) == []


def test_blocked_host_is_fenced_when_the_cap_has_room_again() -> None:
    cluster = cluster_of("a", "b", fence_cap=1, fence_window_s=600.0)
    cluster.fence("a")
    cluster.confirm("a")
    cluster.suspect("b")
    cluster.request_fence("b")
    assert cluster.host_state("b") is H.FENCE_BLOCKED
    leader = Leader(cluster)
    leader.commit_noop()
    reopens = cluster.state.fences[0].requested_at + 600.0
    assert proposals(leader.tick(T0 + 5.0, wall=reopens - 1.0), c.RequestFence) == []
    (request,) = proposals(leader.tick(T0 + 6.0, wall=reopens), c.RequestFence)
    leader.cluster.run(request.command, at=reopens)
    assert cluster.host_state("b") is H.FENCING


@pytest.mark.parametrize("blocked_by", ["retries", "cap"])
def test_new_leader_does_not_mark_an_unfenced_host_alive_without_a_renewal(blocked_by: str) -> None:
    """A new leader's granted lease is not evidence of life: MarkHostAlive for a
    fence-failed / fence-blocked host that never renewed unfreezes its VMs and drops
    the 'waits for an operator' state."""
    cluster = cluster_of("a", "b", fence_retry_limit=1, fence_cap=1)
    cluster.add_vm("v1", allowed_hosts=("b",))
    if blocked_by == "retries":
        cluster.fence("b")
        cluster.fail_fence("b")
    else:
        cluster.fence("a")
        cluster.confirm("a")
        cluster.suspect("b")
        cluster.request_fence("b")
    before = cluster.host_state("b")
    leader = Leader(cluster, now=T0)
    leader.commit_noop()
    assert proposals(leader.tick(T0 + 0.1), c.MarkHostAlive) == []
    assert cluster.host_state("b") is before


def test_fence_wanted_host_blocked_by_the_cap_does_not_flap() -> None:
    """A host with fence_wanted (a VM failed to stop) that renews its lease: once the cap
    blocks its fence, MarkHostAlive (lease fresh) and RequestFence (fence wanted) take
    turns every second, forever: the host flaps online <-> fence-blocked and its VMs
    freeze and thaw with it."""
    cluster = cluster_of("a", "b", fence_cap=1)
    cluster.fence("a")
    cluster.confirm("a")
    cluster.add_vm("v1", allowed_hosts=("b",))
    cluster.ok(c.SetVmDesired(name="v1", desired=c.Desired.STOPPED))
    cluster.report("v1", "stop-failed")
    leader = Leader(cluster)
    leader.commit_noop()
    sent: list[str] = []
    for step in range(6):
        now = T0 + 1.0 + step * 1.1
        leader.renew("b", now)
        for decision in leader.tick(now):
            assert isinstance(decision, Propose)
            sent.append(decision.command.TYPE)
            leader.commit(decision)
    assert sent == ["fence-request"], sent
    assert cluster.host_state("b") is H.FENCE_BLOCKED
