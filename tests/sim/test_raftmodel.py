"""The Raft model under random fault schedules: Raft's safety properties after every
step, ReadIndex soundness, proposal outcomes, liveness after healing, deterministic
replay; and every checker shown able to fail (broken variants, hand-built histories).

HACLUSTER_RAFT_SCHEDULES=<n> runs more schedules, HACLUSTER_RAFT_SEED=<seed> another base.
"""

from __future__ import annotations

import os
from collections import Counter

from hacluster.ports import ProposeStatus
from hacluster.sim.raftcheck import RaftChecker
from hacluster.sim.raftmodel import (
    AppliedRecord,
    Entry,
    RaftListener,
    RaftModelConfig,
    RaftPeer,
    SimProposeResult,
)
from hacluster.sim.raftmsgs import MAYBE, NOT_LEADER, AppendEntries, AppendReply, RequestVote

from .raftharness import Harness, naive_rule

SCHEDULES = int(os.environ.get("HACLUSTER_RAFT_SCHEDULES", 250))
BASE = int(os.environ.get("HACLUSTER_RAFT_SEED", 10_000))
SHAPES = [(3, 0), (5, 3), (7, 1), (3, 2), (5, 0), (7, 4)]  # (voters, members)
STEPS = [0.01, 0.02, 0.05, 0.03]


def schedule(seed: int, chaos_s: float = 10.0, **kwargs: object) -> tuple[Harness, list[str]]:
    voters, members = SHAPES[seed % len(SHAPES)]
    # Production (pre-vote, a stale leader told our term), bare pysyncobj (neither),
    # and a stale leader told without pre-vote; elections with and without a
    # connection. Not pre-vote alone: a peer that won one and lost its vote requests
    # stays above the leader for good (scenario 47), and settle() would fail.
    config = RaftModelConfig(reply_to_stale_leader=seed % 3 != 1, pre_vote=seed % 3 == 0,
                             require_connection=seed % 5 != 0)
    h = Harness(seed, voters, members, config, **kwargs)  # type: ignore[arg-type]
    if seed % 2:
        h.net.set_fifo("raft")  # TCP-like order; the other half reorders freely
    actions = h.chaos(chaos_s, STEPS[seed % len(STEPS)])
    return h, actions


def test_random_fault_schedules_keep_raft_safe_and_live() -> None:
    failures: list[str] = []
    totals: Counter[str] = Counter()
    for seed in range(BASE, BASE + SCHEDULES):
        h, actions = schedule(seed)
        settled = h.settle(within=6.0) if not h.violations else None
        h.check_outcomes()
        totals.update(p.outcome.status.value for p in h.proposals if p.outcome is not None)
        totals["reads"] += h.reads_answered
        totals["elections"] += len(h.checker.leaders)
        if h.violations or settled is None:
            failures.append(f"seed {seed}: {h.violations[:3]} settled={settled}\n  "
                            + "\n  ".join(actions[-12:]))
            if len(failures) >= 3:
                break
    assert not failures, "\n".join(failures)
    # Not vacuous: every outcome, answered reads and many elections were seen.
    assert totals["committed"] > 50 * SCHEDULES // 2, totals
    assert totals["not-leader"] > 0 and totals["maybe"] > 0, totals
    assert totals["reads"] > 10 * SCHEDULES and totals["elections"] > 3 * SCHEDULES, totals


# ---------------------------------------------------------------- deterministic replay


class Trace(RaftListener):
    def __init__(self) -> None:
        self.lines: list[tuple[object, ...]] = []

    def on_note(self, now: float, peer: RaftPeer, what: str, value: int) -> None:
        self.lines.append((now, peer.name, what, value))

    def on_commit(self, now: float, peer: RaftPeer, old: int, new: int) -> None:
        self.lines.append((now, peer.name, "commit", new))

    def on_apply(self, now: float, peer: RaftPeer, record: AppliedRecord) -> None:
        self.lines.append((now, peer.name, record.index, record.data, record.commit_term))


def traced_run(seed: int) -> tuple[list[tuple[object, ...]], list[object]]:
    voters, members = SHAPES[seed % len(SHAPES)]
    h = Harness(seed, voters, members)
    trace = Trace()
    h.cluster.listeners.append(trace)
    actions = h.chaos(6.0, 0.02)
    logs = [[(e.term, e.data, e.tag) for e in p.log] for p in h.cluster]
    outcomes = [(p.data, p.outcome) for p in h.proposals]
    return trace.lines, [actions, logs, outcomes, h.net.stats]


def test_same_seed_same_run() -> None:
    first, second = traced_run(7), traced_run(7)
    assert len(first[0]) > 100
    assert first == second
    assert traced_run(8)[0] != first[0]


# ---------------------------------------------------------------- the checkers can fail


def first_violation(peer_class: type[RaftPeer] = RaftPeer, tries: int = 30,
                    **kwargs: object) -> str:
    for seed in range(tries):
        h, _ = schedule(seed, chaos_s=8.0, peer_class=peer_class, **kwargs)
        h.check_outcomes()
        if h.violations:
            return h.violations[0]
    return ""


class ForgetsItsVote(RaftPeer):
    """Grants any candidate with an up-to-date log, even after voting for another."""

    def _may_grant(self, candidate: str, m: RequestVote) -> bool:
        last = len(self.log)
        mine = self.term_at(last)
        return m.last_term > mine or (m.last_term == mine and m.last_index >= last)


class IgnoresLogs(RaftPeer):
    """Votes without the up-to-date check."""

    def _may_grant(self, candidate: str, m: RequestVote) -> bool:
        return self.voted_for in (None, candidate)


class TrustsBlindly(RaftPeer):
    """Skips the consistency check: puts the leader's entries right after prev_index."""

    def _append_entries(self, m: AppendEntries, now: float) -> AppendReply:
        del self.log[min(m.prev_index, len(self.log)):]
        self.log.extend(m.entries)
        self.dirty_from = min(self.dirty_from, m.prev_index + 1)
        commit = min(m.commit, len(self.log))
        if commit > self.commit_index:
            self._set_commit(commit)
        return AppendReply(self.term, True, len(self.log), 0, self._echo_seq)


class CallsMaybeNotLeader(RaftPeer):
    """Reports a timed-out proposal as NOT_LEADER (it may still commit)."""

    def _resolve(self, p: object, result: SimProposeResult) -> None:
        super()._resolve(p, NOT_LEADER if result is MAYBE else result)  # type: ignore[arg-type]


def test_election_safety_check_catches_a_peer_that_forgets_its_vote() -> None:
    assert "election safety" in first_violation(ForgetsItsVote)


def test_leader_completeness_check_catches_votes_without_the_log_check() -> None:
    assert "leader completeness" in first_violation(IgnoresLogs)


def test_state_machine_check_catches_a_follower_without_consistency_check() -> None:
    assert "state machine safety" in first_violation(TrustsBlindly)


def test_read_index_check_catches_a_leader_answering_on_belief_alone() -> None:
    assert "read-index" in first_violation(read_rule=naive_rule)


def test_outcome_check_catches_not_leader_for_a_proposal_that_may_commit() -> None:
    assert "NOT_LEADER" in first_violation(CallsMaybeNotLeader)


def hand_built() -> tuple[Harness, RaftChecker]:
    h = Harness(1, voters=3)
    h.run(1.0)
    assert not h.violations
    return h, h.checker


def test_log_matching_check_on_a_hand_built_history() -> None:
    h, checker = hand_built()
    a, b, _ = h.cluster
    tail = len(a.log)
    a.log.append(Entry(9, b"x", ("forged", 1)))
    a.log.append(Entry(9, b"same", ("forged", 3)))
    b.log.append(Entry(9, b"y", ("forged", 2)))
    b.log.append(Entry(9, b"same", ("forged", 3)))  # same index and term, other prefix
    a.dirty_from = b.dirty_from = tail + 1
    checker.check(h.cluster)
    assert any("log matching" in v for v in checker.violations)


def test_safety_checks_on_hand_built_events() -> None:
    checker = RaftChecker()
    checker.leader_elected(1.0, "v1", 3, None)
    checker.leader_elected(1.5, "v1", 3, None)
    assert checker.violations == []
    checker.leader_elected(2.0, "v2", 3, None)
    checker.entry_committed(2.0, "v1", 5, 3, ("v1", 1), 3)
    checker.entry_committed(2.1, "v2", 5, 4, ("v2", 1), 4)
    checker.entry_applied(2.2, "v1", 5, 3, b"a")
    checker.entry_applied(2.3, "v2", 5, 4, b"b")
    kinds = [v.split(": ")[1] for v in checker.violations]
    assert kinds == ["election safety", "state machine safety", "state machine safety"]


def test_leader_completeness_check_on_a_hand_built_history() -> None:
    h, checker = hand_built()
    leader = h.cluster.leader()
    assert leader is not None and leader.commit_index >= 1
    follower = next(p for p in h.cluster if p is not leader)
    del follower.log[:]
    checker.leader_elected(h.now, follower.name, leader.term + 1, follower)
    assert any("leader completeness" in v for v in checker.violations)


def test_default_config_follows_production() -> None:
    cfg = RaftModelConfig()
    assert (cfg.election_min_s, cfg.election_max_s, cfg.leader_fallback_s) == (0.15, 0.35, 2.0)
    assert cfg.pre_vote and cfg.reply_to_stale_leader and cfg.require_connection
    assert 0.03 <= cfg.heartbeat_s <= 0.05
    assert ProposeStatus.MAYBE is MAYBE.status

