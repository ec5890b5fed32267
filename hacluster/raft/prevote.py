"""Pre-vote (Raft dissertation, section 9.6), which pysyncobj lacks.

Without it, a follower that misses a few heartbeats (packet loss, a pause, a cut
that heals) starts an election in a higher term, and every peer that sees that term
drops the leader it had, however healthy. Under 45 % loss between every pair of five
hosts the leader changed every second or two (terms 21 to 87 in 20 s) and no leader
held long enough to acknowledge anyone: with watchdogs, every host reset itself (soak
seed 13). With pre-vote, a peer whose election timer ran out first asks the voters
whether they would vote for it in the next term, without changing any term; a voter
says yes only when the asker's log is at least as up to date as its own and it has
not heard from a leader for the minimum election timeout (it is no leader itself).
Only with a majority of yeses does the real election start.

Pre-vote changes no vote and no term, so Raft's safety does not rest on it; it only
keeps a peer that lost touch for a moment from deposing a leader the others still
follow. A leadership transfer (TimeoutNow) skips it: the leader asked for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pysyncobj.monotonic import monotonic as raft_clock  # CLOCK_MONOTONIC_RAW

# {"type", "term": the term it would stand in, "last_log_index", "last_log_term"}
ASK = "ha_pre_vote"
YES = "ha_pre_vote_yes"  # {"type", "term"}


@dataclass
class PreVote:
    min_timeout_s: float  # a voter that heard a leader this recently says no
    heard_leader_at: float = float("-inf")  # when an append_entries of a leader arrived
    term: int = 0  # the term of the round under way (0: none)
    yeses: set[str] = field(default_factory=set)  # voters that said yes, this peer included
    won: bool = False  # a majority said yes: the next election may start
    started_at: float = float("-inf")  # when the round under way began

    def leader_heard(self, now: float) -> None:
        self.heard_leader_at = now

    def start(self, me: str, term: int, now: float) -> None:
        """A round for `term` (the current term + 1); this peer says yes to itself."""
        self.term, self.yeses, self.won, self.started_at = term, {me}, False, now

    def answer(self, now: float, leading: bool, ours: tuple[int, int],
               theirs: tuple[int, int]) -> bool:
        """Would we vote for the asker? `ours`, `theirs`: (last log term, last log index)."""
        if leading or now - self.heard_leader_at < self.min_timeout_s:
            return False
        return theirs >= ours

    def yes(self, voter: str, term: int, voters: int, current_term: int) -> bool:
        """A yes arrived; True once a majority of `voters` (this peer included) said yes
        in the round under way. A round is void once this peer's term moved on (it voted
        for another in the term it asked about) or it heard a leader after the round
        began: a late yes would otherwise start an election against the leader it
        follows, in the term after that leader's, and depose it (seen at a lab cluster's
        start: a leader of term 1 deposed by a peer that stood in term 2)."""
        if term != self.term or self.term == 0 or current_term + 1 != self.term or \
                self.heard_leader_at >= self.started_at:
            return False
        self.yeses.add(voter)
        if len(self.yeses) * 2 > voters:
            self.won = True
        return self.won

    def election_started(self) -> None:
        self.term, self.yeses, self.won = 0, set(), False



class PreVoting:
    """The pre-vote glue, mixed into Engine (a SyncObj): these are its internals it
    reads and sets (pysyncobj 0.3.17), as engine.py does its own."""

    _SyncObj__otherNodes: Any
    _SyncObj__selfNode: Any
    _SyncObj__transport: Any
    _SyncObj__transferInProgress: Any
    _SyncObj__raftCurrentTerm: Any
    _SyncObj__raftLeader: Any
    _ha_abstain: bool
    _ha_prevote: PreVote

    _isLeader: Callable[[], bool]  # SyncObj's
    _SyncObj__connectedToAnyone: Callable[[], bool]  # SyncObj's
    _SyncObj__generateRaftTimeout: Callable[[], float]  # Engine's
    _SyncObj__getCurrentLogIndex: Callable[[], int]  # SyncObj's
    _SyncObj__getCurrentLogTerm: Callable[[], int]  # SyncObj's
    def _ha_pre_vote_gate(self) -> None:
        """Where SyncObj's tick would start an election: ask the voters first."""
        if self._SyncObj__selfNode is None or self._ha_abstain or self._isLeader() or \
                self._SyncObj__transferInProgress:
            return  # a member, a rebuilt peer, the leader, or told to stand (TimeoutNow)
        pre, now = self._ha_prevote, raft_clock()
        if pre.won:
            pre.election_started()  # a majority said yes: SyncObj starts it this tick
            return
        if self._ha_election_deadline() >= now or not self._SyncObj__connectedToAnyone():
            return
        self._ha_set_election_deadline(now + self._SyncObj__generateRaftTimeout())
        self._SyncObj__raftLeader = None  # as an election would: we lost it
        me = self._SyncObj__selfNode.id
        term = self._SyncObj__raftCurrentTerm
        pre.start(me, term + 1, now)
        if pre.yes(me, pre.term, len(self._SyncObj__otherNodes) + 1, term):
            self._ha_set_election_deadline(0.0)  # alone: nobody to ask
            return
        ask = {"type": ASK, "term": pre.term,
               "last_log_index": self._SyncObj__getCurrentLogIndex(),
               "last_log_term": self._SyncObj__getCurrentLogTerm()}
        for node in list(self._SyncObj__otherNodes):
            self._SyncObj__transport.send(node, ask)

    def _ha_election_deadline(self) -> float:
        return float(getattr(self, "_SyncObj__raftElectionDeadline"))  # noqa: B009

    def _ha_set_election_deadline(self, at: float) -> None:
        setattr(self, "_SyncObj__raftElectionDeadline", at)  # noqa: B010

    def ha_pre_vote(self, node: Any, message: dict[str, Any]) -> None:
        """A pre-vote question or answer from another voter (transport.py)."""
        term = message.get("term")
        if node not in self._SyncObj__otherNodes or not isinstance(term, int):
            return  # a member or a stranger, or malformed
        if message.get("type") == YES:
            if self._ha_prevote.yes(node.id, term, len(self._SyncObj__otherNodes) + 1,
                                    self._SyncObj__raftCurrentTerm):
                self._ha_set_election_deadline(0.0)
            return
        index, last = message.get("last_log_index"), message.get("last_log_term")
        if not isinstance(index, int) or not isinstance(last, int) or self._ha_abstain:
            return  # (the term asked is not judged: a real vote request will be)
        ours = (self._SyncObj__getCurrentLogTerm(), self._SyncObj__getCurrentLogIndex())
        if self._ha_prevote.answer(raft_clock(), self._isLeader(), ours, (last, index)):
            self._SyncObj__transport.send(node, {"type": YES, "term": term})
