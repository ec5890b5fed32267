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

from dataclasses import dataclass, field

# {"type", "term": the term it would stand in, "last_log_index", "last_log_term"}
ASK = "ha_pre_vote"
YES = "ha_pre_vote_yes"  # {"type", "term"}
# not pre-vote, but like it a message pysyncobj never sees: a self-fencing grant of the
# leader passed on by another voter (engine.py ha_relay) {"type", "allow": [boot, n]}
RELAY = "ha_allow_relay"
RELAY_AFTER_S = 1.0  # only the grants of voters the leader has not heard for this long
# and the other way: a follower's numbered answer given to the other voters, who pass
# it on to the leader in their answers (engine.py ha_carry) {"type", "ans": [boot, n]}
CARRY = "ha_answer_carry"
CARRY_EVERY_S = 0.5


@dataclass
class PreVote:
    min_timeout_s: float  # a voter that heard a leader this recently says no
    heard_leader_at: float = float("-inf")  # when an append_entries of a leader arrived
    term: int = 0  # the term of the round under way (0: none)
    yeses: set[str] = field(default_factory=set)  # voters that said yes, this peer included
    won: bool = False  # a majority said yes: the next election may start

    def leader_heard(self, now: float) -> None:
        self.heard_leader_at = now

    def start(self, me: str, term: int) -> None:
        """A round for `term` (the current term + 1); this peer says yes to itself."""
        self.term, self.yeses, self.won = term, {me}, False

    def answer(self, now: float, leading: bool, ours: tuple[int, int],
               theirs: tuple[int, int]) -> bool:
        """Would we vote for the asker? `ours`, `theirs`: (last log term, last log index)."""
        if leading or now - self.heard_leader_at < self.min_timeout_s:
            return False
        return theirs >= ours

    def yes(self, voter: str, term: int, voters: int) -> bool:
        """A yes arrived; True once a majority of `voters` (this peer included) said yes
        in the round under way."""
        if term != self.term or self.term == 0:
            return False
        self.yeses.add(voter)
        if len(self.yeses) * 2 > voters:
            self.won = True
        return self.won

    def election_started(self) -> None:
        self.term, self.yeses, self.won = 0, set(), False

