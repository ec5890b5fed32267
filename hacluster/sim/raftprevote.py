"""Pre-vote in the simulator's Raft model: raft/prevote.py on RaftPeer (raftpeer.py).

The decisions are the daemon's own: raft/prevote.py `PreVote` (pure, time comes in as an
argument). This module is the glue, placed where raft/prevote.py `PreVoting` sits in
pysyncobj:

* where the election timer runs out (pysyncobj's tick would start an election), a
  voter that is connected to some peer asks the other voters whether they would vote
  for it in term + 1: the timer is drawn anew and the known leader forgotten, as an
  election would, but no term or vote changes. Once a majority (itself included) said
  yes, the election starts at the next tick (here: at once, the timer is due now);
* a voter answers yes when `PreVote.answer` says so: it does not lead, it heard no
  leader for `election_min_s`, and the asker's log is at least as up to date. A
  rebuilt peer (abstaining) does not answer;
* an AppendEntries of our term or a higher one is a leader heard;
* TimeoutNow (a leadership transfer) and `stand_for_election` start the election
  without asking: the leader asked for it, or the script did.

`RaftModelConfig.pre_vote` False: every timeout starts an election (bare pysyncobj).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hacluster.raft.prevote import PreVote
from hacluster.sim.raftmsgs import Entry, PreVoteAsk, PreVoteYes, Role

if TYPE_CHECKING:
    from hacluster.sim.raftmodel import RaftCluster


class PreVoting:
    # State and rules that RaftPeer provides (declared for the type checker).
    _c: RaftCluster
    name: str
    voter: bool
    abstaining: bool
    term: int
    log: list[Entry]
    role: Role
    _election_at: float

    if TYPE_CHECKING:  # provided by RaftPeer; no runtime stubs

        def term_at(self, index: int) -> int: ...

        def _set_leader(self, name: str | None) -> None: ...

        def _reset_election_timer(self, now: float, redraw: bool = True) -> None: ...

        def _arm(self, at: float) -> None: ...

    def _reset_pre_vote(self) -> None:
        """A new process: nothing heard, no round under way (engine.py builds it anew)."""
        self._prevote = PreVote(self._c.config.election_min_s)

    def _pre_vote_won(self) -> bool:
        """prevote.py `_ha_pre_vote_gate`: a won round is spent at the next tick, which
        starts the election (if this peer is still connected to someone)."""
        if not self._prevote.won:
            return False
        self._prevote.election_started()
        return True

    def _pre_vote_after_leading(self) -> None:
        """A yes that came while this peer led (after a TimeoutNow election) is spent by
        the first tick after it steps down, whose election timer was just reset."""
        self._pre_vote_won()

    def _leader_heard(self, term: int, now: float) -> None:
        if term >= self.term:
            self._prevote.leader_heard(now)

    def _ask_pre_vote(self, now: float) -> None:
        """The election timer ran out: a round for term + 1 instead of an election."""
        self._reset_election_timer(now)
        self._set_leader(None)  # as an election would: we lost it
        pre = self._prevote
        pre.start(self.name, self.term + 1, now)
        if pre.yes(self.name, pre.term, len(self._c.voters), self.term):
            self._election_due(now)  # alone: nobody to ask
            return
        last = len(self.log)
        ask = PreVoteAsk(pre.term, last, self.term_at(last))
        for voter in self._c.voters:
            if voter != self.name:
                self._c.send(self.name, voter, ask)

    def _election_due(self, now: float) -> None:
        self._election_at = now
        self._arm(now)

    def _on_pre_vote_ask(self, src: str, m: PreVoteAsk, now: float) -> None:
        if not self.voter or src not in self._c.voters or self.abstaining:
            return  # (the term asked is not judged: a real vote request will be)
        last = len(self.log)
        ours = (self.term_at(last), last)
        if self._prevote.answer(now, self.role is Role.LEADER, ours, (m.last_term, m.last_index)):
            self._c.send(self.name, src, PreVoteYes(m.term))

    def _on_pre_vote_yes(self, src: str, m: PreVoteYes, now: float) -> None:
        if src in self._c.voters and \
                self._prevote.yes(src, m.term, len(self._c.voters), self.term):
            self._election_due(now)
