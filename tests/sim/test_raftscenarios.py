"""The Raft model in hand-made situations: stale and paused leaders, ReadIndex marks,
each proposal outcome, leadership transfer, read-only members, rebuilt and rolled-back
peers, restarts, and the Figure 8 rule."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from hacluster.ports import ProposeStatus
from hacluster.sim.raftmodel import (
    RaftCluster,
    RaftListener,
    RaftModelConfig,
    RaftPeer,
    Role,
    SimProposeResult,
    Status,
)
from hacluster.sim.raftmsgs import AppendReply, PreVoteYes

from .raftharness import Harness, Proposal

FALLBACK = RaftModelConfig().leader_fallback_s


def until(h: Harness, cond: Callable[[], bool], within: float, dt: float = 0.005) -> float:
    """Step until cond() holds; the time it took (fails after `within` seconds)."""
    start = h.now
    while not cond():
        assert h.now - start < within, f"not within {within}s"
        h.step(dt)
    return h.now - start


def elect(h: Harness) -> RaftPeer:
    """Run until a leader has committed an entry of its term (its no-op)."""
    until(h, lambda: any(p.read_mark() is not None for p in h.cluster), 3.0)
    leader = h.cluster.leader()
    assert leader is not None
    return leader


def others(h: Harness, peer: RaftPeer) -> list[RaftPeer]:
    return [p for p in h.cluster if p is not peer and p.voter]


def status(p: Proposal) -> ProposeStatus | None:
    return None if p.outcome is None else p.outcome.status


class Notes(RaftListener):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    def on_note(self, now: float, peer: RaftPeer, what: str, value: int) -> None:
        self.seen.append((peer.name, what, value))


# ---------------------------------------------------------------- stale leaders


def test_isolated_leader_believes_it_leads_until_fallback_and_commits_nothing() -> None:
    h = Harness(3, voters=5)
    leader = elect(h)
    term, cut_at = leader.term, h.now
    h.net.isolate(leader.name)
    stale = [h.propose(leader.name)]
    while h.now < cut_at + FALLBACK - 0.1:
        h.step(0.01)
        assert leader.leader_term() == term
        if len(stale) < 5 and h.now > cut_at + 0.3 * len(stale):
            stale.append(h.propose(leader.name))
    h.run(cut_at + FALLBACK + 0.1, 0.01)
    assert leader.leader_term() is None
    successor = h.cluster.leader()
    assert successor is not None and successor.term > term
    h.net.heal_all()
    h.run(h.now + 2.0)
    assert all(status(p) in (ProposeStatus.MAYBE, ProposeStatus.NOT_LEADER) for p in stale)
    assert not any(p.data in h.committed_data for p in stale)
    h.check_outcomes()
    assert not h.violations


def test_leader_that_cannot_hear_falls_back_and_the_others_elect() -> None:
    h = Harness(4, voters=3)
    leader = elect(h)
    term = leader.term
    for p in others(h, leader):
        h.net.cut(p.name, leader.name)  # the followers still hear it: no election yet
    h.run(h.now + FALLBACK - 0.1)
    assert leader.leader_term() == term and h.cluster.leader() is leader
    until(h, lambda: leader.leader_term() is None, 0.2)
    until(h, lambda: any(p.leader_term() for p in others(h, leader)), 1.0)
    assert not h.violations


def test_paused_leader_wakes_believing_it_leads_until_it_hears_the_new_term() -> None:
    h = Harness(5, voters=3)
    leader = elect(h)
    term = leader.term
    leader.pause()
    until(h, lambda: any(p.leader_term() for p in others(h, leader)), 1.0)
    h.run(h.now + 0.5)
    assert leader.leader_term() == term
    leader.resume()
    assert leader.leader_term() == term  # nothing handled yet: still believes it
    h.step(0.005)
    assert leader.leader_term() is None and leader.term > term
    assert not h.violations


def test_leader_paused_beyond_fallback_steps_down_at_its_first_tick() -> None:
    h = Harness(6, voters=3)
    notes = Notes()
    h.cluster.listeners.append(notes)
    leader = elect(h)
    leader.pause()
    h.run(h.now + FALLBACK + 0.5)
    leader.resume()
    assert leader.leader_term() is not None
    h.step(0.005)
    assert leader.leader_term() is None
    assert (leader.name, "fallback", notes.seen[-1][2]) in notes.seen


# ---------------------------------------------------------------- ReadIndex


def test_read_mark_is_confirmed_only_by_a_majority_echo_after_it() -> None:
    h = Harness(7, voters=3)
    leader = elect(h)
    mark = leader.read_mark()
    assert mark is not None and mark.term == leader.term
    assert mark.commit_index == leader.commit_index
    assert not leader.read_confirmed(mark)  # nothing sent since the mark
    assert leader.heartbeat()
    h.step(0.01)
    assert leader.read_confirmed(mark)
    h.net.isolate(leader.name)
    cut_off = leader.read_mark()
    assert cut_off is not None and leader.heartbeat()
    while leader.leader_term() is not None:
        h.step(0.01)
        assert not leader.read_confirmed(cut_off)
    assert leader.read_mark() is None and leader.echoes() == {}


def test_no_read_mark_before_an_entry_of_the_term_commits() -> None:
    h = Harness(8, voters=3)
    v1 = h.cluster["v1"]
    assert v1.stand_for_election()  # its vote requests are on the wire...
    for name in ("v2", "v3"):
        h.net.set_path("v1", name, loss=1.0)  # ...but nothing after them gets out
    until(h, lambda: v1.leader_term() is not None, 0.05, dt=0.001)
    for _ in range(10):  # until the others' election timers fire
        h.step(0.01)
        assert v1.leader_term() is not None and v1.commit_index < len(v1.log)
        assert v1.read_mark() is None


def test_duplicates_and_reordering_never_inflate_an_echo() -> None:
    h = Harness(9, voters=5)
    for a in h.cluster.names:
        for b in h.cluster.names:
            if a != b:
                h.net.set_path(a, b, duplicate=0.5, delay=(0.0, 0.08))
    leader = elect(h)
    for _ in range(300):
        h.step(0.01)
        if leader.leader_term() is None:
            break
        for name, echo in leader.echoes().items():
            follower = h.cluster[name]
            if follower is not leader and follower.leader == leader.name \
                    and follower.term == leader.term:
                assert echo <= follower._echo_seq  # never beyond what it processed
    assert not h.violations


# ---------------------------------------------------------------- proposal outcomes


def outcome_of(peer: RaftPeer, data: bytes) -> list[SimProposeResult]:
    got: list[SimProposeResult] = []
    peer.propose(data, got.append)
    return got


def test_without_a_known_leader_a_proposal_is_refused_at_once() -> None:
    h = Harness(10, voters=3)
    got = outcome_of(h.cluster["v1"], b"too early")
    assert [r.status for r in got] == [ProposeStatus.NOT_LEADER]
    h.cluster["v2"].crash()
    assert [r.status for r in outcome_of(h.cluster["v2"], b"dead")] == [ProposeStatus.NOT_LEADER]


def test_committed_on_the_leader_and_on_a_follower() -> None:
    h = Harness(11, voters=3, members=1)
    leader = elect(h)
    mine = h.propose(leader.name)
    theirs = h.propose(others(h, leader)[0].name)
    member = h.propose("m1")
    until(h, lambda: all(p.outcome is not None for p in (mine, theirs, member)), 1.0)
    for p, own in ((mine, True), (theirs, False), (member, False)):
        r = p.outcome
        assert r is not None and r.status is ProposeStatus.COMMITTED
        assert (r.term, r.commit_term, r.own_term) == (leader.term, leader.term, own)
        assert r.result == f"result-{r.index}"
        assert h.applied["v1"][r.index] == (r.term, p.data)
    assert not h.violations


def test_maybe_when_the_deadline_passes() -> None:
    h = Harness(12, voters=3)
    leader = elect(h)
    h.net.isolate(leader.name)
    got: list[SimProposeResult] = []
    leader.propose(b"stuck", got.append, timeout_s=0.5)
    h.run(h.now + 0.49, 0.01)
    assert got == []
    h.run(h.now + 0.02, 0.01)
    assert [r.status for r in got] == [ProposeStatus.MAYBE]


def test_forward_refused_by_a_deposed_leader_never_enters_a_log() -> None:
    h = Harness(13, voters=3)
    leader = elect(h)
    until(h, lambda: all(m == len(leader.log) for m in leader.match_index().values()), 0.2)
    follower, target = others(h, leader)  # transfer picks the higher name on a tie
    h.net.set_path(follower.name, leader.name, delay=(0.05, 0.05))  # a slow forward
    h.net.cut(target.name, follower.name)  # the follower misses the new term for now
    assert leader.transfer_leadership()
    refused = h.propose(follower.name)
    until(h, lambda: refused.outcome is not None, 0.12, dt=0.002)
    assert status(refused) is ProposeStatus.NOT_LEADER and target.leader_term() is not None
    h.net.heal_all(quality=True)
    h.run(h.now + 1.0)
    h.check_outcomes()
    assert refused.data not in h.checker.logged and not h.violations


def test_a_stale_leaders_slot_taken_by_its_successor_is_not_leader() -> None:
    h = Harness(14, voters=5)
    leader = elect(h)
    h.net.isolate(leader.name)
    lost = h.propose(leader.name)
    index = len(leader.log)
    until(h, lambda: any(p.commit_index >= index for p in others(h, leader)), 1.2)
    h.net.heal(leader.name)
    until(h, lambda: lost.outcome is not None, 0.5)
    assert status(lost) is ProposeStatus.NOT_LEADER and lost.during_apply
    assert lost.data in h.checker.logged and lost.data not in h.committed_data
    h.check_outcomes()
    assert not h.violations


# ---------------------------------------------------------------- transfer, members, sizes


def test_leadership_transfer_hands_over_at_once() -> None:
    h = Harness(15, voters=5)
    leader = elect(h)
    follower = others(h, leader)[0]
    term = leader.term
    assert not follower.transfer_leadership()
    assert leader.transfer_leadership()  # no pre-vote: the others just heard the leader
    took = until(h, lambda: any(p.leader_term() == term + 1 for p in h.cluster), 0.1)
    assert took < 0.05
    until(h, lambda: leader.leader_term() is None, 0.05)
    successor = h.cluster.leader()
    assert successor is not None and successor.name == max(p.name for p in others(h, leader))


def test_members_replicate_and_propose_but_never_vote_lead_or_count() -> None:
    h = Harness(16, voters=3, members=2)
    leader = elect(h)
    proposals = [h.propose(name) for name in ("m1", "m2", "m1")]
    until(h, lambda: all(p.outcome is not None for p in proposals), 1.0)
    assert {status(p) for p in proposals} == {ProposeStatus.COMMITTED}
    for name in ("m1", "m2"):
        member = h.cluster[name]
        assert member.log == leader.log and member.voted_for is None
    # With one voter left, the members do not make a majority.
    for p in others(h, leader):
        p.crash()
    blocked = h.propose(leader.name)
    h.run(h.now + 2.5)
    assert status(blocked) is ProposeStatus.MAYBE
    assert all(h.cluster[m].role is Role.FOLLOWER for m in ("m1", "m2"))
    assert not h.violations


def test_a_single_voter_commits_alone_and_feeds_its_members() -> None:
    h = Harness(17, voters=1, members=2)
    leader = elect(h)
    assert leader.name == "v1"
    p = h.propose("m2")
    until(h, lambda: p.outcome is not None, 0.2)
    assert status(p) is ProposeStatus.COMMITTED
    until(h, lambda: h.cluster["m1"].commit_index == leader.commit_index, 0.2)


@pytest.mark.parametrize("voters", [1, 2, 3, 4, 5, 6, 7])
def test_every_size_elects_and_commits(voters: int) -> None:
    h = Harness(100 + voters, voters=voters, members=20 if voters == 7 else 0)
    leader = elect(h)
    p = h.propose(leader.name)
    until(h, lambda: status(p) is ProposeStatus.COMMITTED, 0.5)
    assert not h.violations


# ---------------------------------------------------------------- pre-vote


@pytest.mark.parametrize("pre_vote", [True, False])
def test_a_follower_cut_from_the_leader_deposes_it_only_without_pre_vote(
        pre_vote: bool) -> None:
    h = Harness(31, voters=3, config=RaftModelConfig(pre_vote=pre_vote))
    leader = elect(h)
    cut, _ = others(h, leader)
    term = leader.term
    h.net.cut(leader.name, cut.name)  # it still reaches the other follower
    h.run(h.now + 1.5)
    if pre_vote:  # it asked; the other follower hears the leader and says no
        assert cut._prevote.term == term + 1
        assert leader.leader_term() == term and max(p.term for p in h.cluster) == term
        h.net.heal_all()
        until(h, lambda: cut.leader == leader.name, 0.5)
    else:
        assert max(p.term for p in h.cluster) > term and leader.leader_term() is None


def test_a_late_pre_vote_yes_does_not_depose_the_leader_it_follows() -> None:
    """A follower asked about term T before it voted for the leader of T (a cluster's
    start); the other voter's yes arrives once it follows that leader. Counting it would
    have it stand in T + 1 and depose a healthy leader (seen in CI: raft/prevote.py)."""
    h = Harness(33, voters=3)
    leader = elect(h)
    until(h, lambda: all(p.leader == leader.name for p in others(h, leader)), 0.5)
    late, other = others(h, leader)
    term = leader.term
    late._prevote.start(late.name, term, h.now - 0.5)  # asked while still in term - 1
    late._on_pre_vote_yes(other.name, PreVoteYes(term), h.now)
    h.run(h.now + 1.0)
    assert leader.leader_term() == term and max(p.term for p in h.cluster) == term
    assert not h.violations


def test_a_peer_above_the_leader_tells_it_at_most_once_a_second() -> None:
    """raft/transport.py `_tell_term_if_stale` answers a stale leader once a second, not
    at every heartbeat: with its answers lost, the model must not heal faster."""
    h = Harness(34, voters=3)
    leader = elect(h)
    ahead, _ = others(h, leader)
    h.net.cut(ahead.name, leader.name)  # its answers are lost: the leader keeps sending
    ahead.term = leader.term + 1
    told: list[float] = []
    send = h.cluster.send

    def counting(src: str, dst: str, msg: object) -> None:
        if (src, dst) == (ahead.name, leader.name) and isinstance(msg, AppendReply):
            told.append(h.now)
        send(src, dst, msg)

    h.cluster.send = counting  # type: ignore[method-assign]
    h.run(h.now + 2.5)
    assert len(told) == 3, told
    assert all(b - a > 1.0 for a, b in itertools.pairwise(told))


@pytest.mark.parametrize("reply", [True, False])
def test_a_voter_that_won_a_pre_vote_but_lost_its_vote_requests(reply: bool) -> None:
    """Scenario 47 in the bare model: it stands above the leader, which the others
    follow; only telling the leader its term (reply_to_stale_leader) gets it back."""
    h = Harness(32, voters=3, config=RaftModelConfig(reply_to_stale_leader=reply))
    leader = elect(h)
    ahead, behind = others(h, leader)
    term = leader.term
    h.net.cut(leader.name, behind.name)
    entry = h.propose(leader.name)  # committed by the leader and `ahead` only
    until(h, lambda: status(entry) is ProposeStatus.COMMITTED, 0.5)
    h.net.cut(leader.name, ahead.name)
    h.cluster.lost_vote_requests.add(ahead.name)
    until(h, lambda: ahead.term > term, 0.5)  # `behind` said yes; nobody heard the votes
    assert behind.term == term  # its own pre-votes: `ahead` has the longer log
    h.net.heal_all()
    h.cluster.lost_vote_requests.clear()
    h.run(h.now + 3.0)
    new = h.propose(h.cluster.leader().name)  # type: ignore[union-attr]
    h.run(h.now + 0.5)
    assert status(new) is ProposeStatus.COMMITTED
    if reply:
        assert ahead.leader is not None and ahead.commit_index >= new.outcome.index  # type: ignore[union-attr]
    else:  # stuck: the leader keeps its term, `ahead` applies nothing more
        assert leader.leader_term() == term and ahead.leader is None
        assert ahead.commit_index < new.outcome.index  # type: ignore[union-attr]
    assert not h.violations


# ---------------------------------------------------------------- process faults


def test_restart_replays_from_the_start_with_unknown_commit_terms() -> None:
    h = Harness(18, voters=3)
    leader = elect(h)
    for _ in range(3):
        h.propose(leader.name)
    h.run(h.now + 0.3)
    follower = others(h, leader)[0]
    before = follower.commit_index
    follower.crash()
    assert follower.status is Status.DOWN and follower.leader_term() is None
    follower.restart()
    assert follower.applied_index == 0 and follower.commit_index == before
    replay = follower.committed_unapplied()
    assert replay and all(r.commit_term == 0 for r in replay)
    h.step(0.01)  # what it applies now was applied on the last run: the harness resets
    newer = h.propose(leader.name)
    until(h, lambda: newer.outcome is not None, 0.5)
    assert h.applied[follower.name][newer.outcome.index][1] == newer.data  # type: ignore[union-attr]
    assert not h.violations


@pytest.mark.parametrize("pre_vote", [True, False])
def test_rebuilt_peer_neither_votes_nor_stands_until_caught_up(pre_vote: bool) -> None:
    h = Harness(19, voters=3, config=RaftModelConfig(pre_vote=pre_vote))
    leader = elect(h)
    for _ in range(3):
        h.propose(leader.name)
    h.run(h.now + 0.3)
    rebuilt, _ = others(h, leader)
    term = rebuilt.term
    rebuilt.restart(rebuild=True)
    leader.crash()
    assert rebuilt.abstaining and rebuilt.log == [] and rebuilt.commit_index == 0
    assert rebuilt.term == term  # the meta file (term, vote) is kept
    h.run(h.now + 3.0)
    assert h.cluster.leader() is None  # the other cannot win without the rebuilt vote
    assert rebuilt.role is Role.FOLLOWER
    if pre_vote:  # the rebuilt peer answers no pre-vote: the other never stands
        assert max(p.term for p in h.cluster) == term
    else:  # the other stood in ever higher terms; the rebuilt peer voted in none
        assert rebuilt.term > term and rebuilt.voted_for is None
    leader.restart()
    until(h, lambda: not rebuilt.abstaining, 3.0)
    assert rebuilt.commit_index >= 4
    successor = h.cluster.leader()
    assert successor is not None
    successor.crash()  # now the rebuilt peer's vote counts again
    until(h, lambda: h.cluster.leader() not in (None, successor), 3.0)
    assert not h.violations


def test_a_rebuild_that_lost_its_term_acknowledges_a_stale_leader() -> None:
    """A hole kept as a test: when the meta file is lost too (corrupt), the rebuilt peer
    takes a stale leader's old term for current, catches up with *its* commit index and
    acknowledges its entries. Abstaining from votes does not help: the stale leader and
    the rebuilt peer are a majority and commit over an entry committed in a later term."""
    h = Harness(23, voters=3)
    a = elect(h)
    b, c = others(h, a)
    h.net.isolate(b.name)
    for _ in range(3):
        h.propose(a.name)
    until(h, lambda: c.commit_index == len(a.log), 0.5)  # committed by a and c
    h.net.heal_all()
    h.net.partition([a.name], [b.name, c.name])  # a is a stale leader from now on
    until(h, lambda: c.read_mark() is not None, 1.0)  # c leads, committed with b
    c.restart(rebuild=True, lose_meta=True)
    h.net.heal_all()
    h.net.cut(a.name, b.name, both=True)
    h.net.cut(b.name, c.name, both=True)  # c hears nobody but the stale leader
    assert a.leader_term() is not None
    h.propose(a.name)
    h.run(h.now + 1.0)
    assert not c.abstaining and c.term == a.term and a.leader_term() is not None
    assert any("state machine safety" in v for v in h.violations)


def test_restart_from_an_old_journal_can_break_raft_and_the_checker_sees_it() -> None:
    h = Harness(20, voters=3)
    leader = elect(h)
    for _ in range(4):
        h.propose(leader.name)
    until(h, lambda: all(p.commit_index == len(leader.log) for p in h.cluster), 1.0)
    leader.crash()
    for p in others(h, leader):
        p.restart(log_prefix=1)
    until(h, lambda: any("leader completeness" in v for v in h.violations), 3.0)


def test_raft_shares_the_network_with_other_traffic() -> None:
    h = Harness(24, voters=3)
    elect(h)
    got = []
    for n in range(100):
        h.net.send(h.now, "v1", "v2", "lease", n)
        h.step(0.01)
        got += h.net.due(h.now)  # the "raft" channel is the cluster's alone
        assert h.now < h.cluster.next_time() <= h.now + RaftModelConfig().heartbeat_s
    assert sorted(d.payload for d in got) == list(range(100))  # type: ignore[type-var]
    assert {d.channel for d in got} == {"lease"} and not h.violations


def test_cluster_refuses_bad_setups_and_time_running_backwards() -> None:
    h = Harness(21, voters=3)
    h.run(0.5)
    with pytest.raises(ValueError):
        h.cluster.step(0.1)
    with pytest.raises(ValueError):
        RaftCluster(h.net, h.rng, voters=["v1", "nowhere"])
    with pytest.raises(ValueError):
        RaftModelConfig(heartbeat_s=0.2)


# ---------------------------------------------------------------- Figure 8


class CommitsOldTerms(RaftPeer):
    """Counts replicas of an entry of an older term as committing it (Figure 8)."""

    def _may_commit(self, index: int) -> bool:
        return True


def campaign(h: Harness, peer: RaftPeer, mute: list[RaftPeer]) -> None:
    """Make `peer` stand until it wins; what it sends after its vote requests never
    reaches the `mute` peers."""
    for _ in range(4):
        for p in mute:
            h.net.set_path(peer.name, p.name, loss=0.0)
        assert peer.stand_for_election()
        for p in mute:
            h.net.set_path(peer.name, p.name, loss=1.0)
        for _ in range(10):
            h.step(0.001)
            if peer.leader_term() is not None:
                return
    raise AssertionError(f"{peer.name} did not win")


def figure8(peer_class: type[RaftPeer]) -> Harness:
    """The dissertation's Figure 8 with five voters, steered by hand (long election
    timeouts keep the others quiet; batches of one entry let an old entry reach a
    majority without the new term's no-op)."""
    config = RaftModelConfig(election_min_s=1.0, election_max_s=1.5, max_batch=1)
    h = Harness(22, voters=5, config=config, peer_class=peer_class)
    s1 = elect(h)
    s2, s3, s4, s5 = others(h, s1)
    for p in (s3, s4, s5):  # (a) S1 replicates an entry to S2 only
        h.net.set_path(s1.name, p.name, loss=1.0)
    h.propose(s1.name)
    index = len(s1.log)
    until(h, lambda: len(s2.log) == index, 0.1, dt=0.001)
    s1.crash()  # (b) S5 wins with S3 and S4, its entry at `index` reaches nobody
    h.net.heal_all(quality=True)
    h.net.isolate(s2.name)
    campaign(h, s5, mute=[s3, s4])
    s5.crash()  # (c) S1 comes back, wins, and copies its old entry to S3
    h.net.heal_all(quality=True)
    s1.restart()
    campaign(h, s1, mute=[s3, s4])
    h.net.set_path(s3.name, s1.name, delay=(0.005, 0.005))  # time to mute S3 again...
    h.net.set_path(s1.name, s3.name, loss=0.0)
    until(h, lambda: len(s3.log) >= index and s3.log[index - 1] == s1.log[index - 1], 0.1,
          dt=0.0005)
    h.net.set_path(s1.name, s3.name, loss=1.0)  # ...so that S1's new entry never gets there
    h.run(h.now + 0.02, 0.001)
    s1.crash()  # (d) S5 comes back and wins with S3 and S4: its entry replaces S1's
    h.net.heal_all(quality=True)
    s5.restart()
    campaign(h, s5, mute=[])
    h.run(h.now + 0.5, 0.005)
    assert s5.term > s1.term and s3.log[index - 1] == s5.log[index - 1] != s1.log[index - 1]
    return h


def test_figure8_an_old_terms_entry_is_not_committed_by_counting() -> None:
    h = figure8(RaftPeer)
    assert not h.violations


def test_figure8_counting_replicas_of_an_old_term_loses_a_committed_entry() -> None:
    h = figure8(CommitsOldTerms)
    assert any("state machine safety" in v for v in h.violations)
