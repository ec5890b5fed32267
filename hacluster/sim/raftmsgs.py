"""Value types of the simulator's Raft model (raftmodel.py): settings, log entries,
messages, applied records and proposal outcomes. All immutable, so one object can sit in
several peers' logs and in several messages (the model sends slices, never copies)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from hacluster.ports import ProposeResult, ProposeStatus

Tag = tuple[str, int]  # (proposing peer, its proposal counter): unique per entry


@dataclass(frozen=True)
class RaftModelConfig:
    """Timings and behaviour switches; defaults follow production (raft/settings.py)."""

    election_min_s: float = 0.15
    election_max_s: float = 0.35
    heartbeat_s: float = 0.03  # pysyncobj appendEntriesPeriod
    leader_fallback_s: float = 2.0  # leaderFallbackTimeout as the daemon configures it
    propose_timeout_s: float = 2.0  # default deadline of a proposal (then MAYBE)
    max_batch: int = 64  # entries per AppendEntries
    channel: str = "raft"
    # pysyncobj ignores an AppendEntries of a lower term without answering: a deposed
    # leader learns the new term only from a RequestVote or the new leader's own
    # AppendEntries, and a peer whose term ran ahead (it stood for an election whose
    # requests a cut dropped) never catches up. The daemon answers with its term
    # (raft/transport.py `_tell_term_if_stale`, at most once a second), as the
    # dissertation does: True, as it.
    # False models bare pysyncobj (tests/sim/test_raftmodel.py varies it).
    reply_to_stale_leader: bool = True
    # pysyncobj stands for election only while connected (TCP, both ways) to some peer:
    # an isolated peer does not inflate its term.
    require_connection: bool = True
    # Pre-vote (raft/prevote.py): a peer whose election timer ran out asks the voters
    # first and stands only with a majority of yeses (sim/raftprevote.py). False: bare
    # pysyncobj, every timeout starts an election.
    pre_vote: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.election_min_s <= self.election_max_s:
            raise ValueError("need 0 < election_min_s <= election_max_s")
        if not 0 < self.heartbeat_s < self.election_min_s:
            raise ValueError("need 0 < heartbeat_s < election_min_s")
        if self.leader_fallback_s <= 0 or self.propose_timeout_s <= 0 or self.max_batch < 1:
            raise ValueError("leader_fallback_s, propose_timeout_s, max_batch must be > 0")


class Role(enum.StrEnum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


class Status(enum.StrEnum):
    UP = "up"
    PAUSED = "paused"  # SIGSTOP: no timers, deliveries held
    DOWN = "down"  # crashed: durable state kept, nothing runs


@dataclass(frozen=True, slots=True)
class Entry:
    """A log entry. data None is a leader's no-op (never handed to the state machine)."""

    term: int
    data: bytes | None
    tag: Tag


@dataclass(frozen=True, slots=True)
class AppliedRecord:
    """A committed entry handed to the caller's state machine, in log order.

    Same meaning as raft/engine.py AppliedEntry: `term` is the term of the leader that
    appended it; `commit_term` the term in force when *this* peer learned it committed
    (0: unknown, replayed after a restart); `own_term` this peer led `term` and committed
    the entry itself in that term."""

    index: int
    term: int
    data: bytes
    commit_term: int
    own_term: bool


@dataclass(frozen=True)
class SimProposeResult(ProposeResult):
    """Like raft/results.py RaftProposeResult (which lives behind pysyncobj)."""

    commit_term: int = 0
    own_term: bool = False


OnDone = Callable[[SimProposeResult], None]
NOT_LEADER = SimProposeResult(ProposeStatus.NOT_LEADER)
MAYBE = SimProposeResult(ProposeStatus.MAYBE)


# ---------------------------------------------------------------- messages
# Not frozen (a frozen dataclass is four times slower to build, and messages are the hot
# path); never mutated once sent: duplicates and the log share them.


@dataclass(slots=True)
class AppendEntries:
    term: int
    prev_index: int
    prev_term: int
    entries: list[Entry]  # a slice of the leader's log; never mutated after sending
    commit: int
    seq: int  # per-leader, increasing with every AppendEntries it sends
    allow: tuple[int, int] | None = None  # the receiver's answer this leader granted
    relay: dict[str, tuple[int, int]] | None = None  # other voters' grants, to pass on


@dataclass(slots=True)
class AllowRelay:
    """A voter passes on the grant a leader made another (raft/engine.py ha_relay)."""

    allow: tuple[int, int]


@dataclass(slots=True)
class AppendReply:
    term: int
    success: bool
    match: int  # success: the follower's log matches the leader's up to here
    hint: int  # failure: the index the leader should send from next
    echo: int  # highest seq processed from this leader in this term
    hears: dict[str, float] | None = None  # whose renewals its host receives, host -> age
    ans: tuple[int, int] | None = None  # (boot, number) of this answer (raft/engine.py)
    carried: dict[str, tuple[int, int]] | None = None  # other voters' answers passed on


@dataclass(slots=True)
class AnswerCarry:
    """A voter's numbered answer given to another voter (raft/engine.py ha_carry)."""

    ans: tuple[int, int]


@dataclass(slots=True)
class RequestVote:
    term: int
    last_index: int
    last_term: int


@dataclass(slots=True)
class VoteReply:
    term: int
    granted: bool


@dataclass(slots=True)
class PreVoteAsk:
    """raft/prevote.py ASK: would you vote for me in `term`? (changes no term)"""

    term: int
    last_index: int
    last_term: int


@dataclass(slots=True)
class PreVoteYes:
    """raft/prevote.py YES: I would, in `term`."""

    term: int


@dataclass(slots=True)
class TimeoutNow:
    term: int


@dataclass(slots=True)
class Forward:
    """A follower's proposal sent to the leader it knows (pysyncobj apply_command)."""

    tag: Tag
    data: bytes


@dataclass(slots=True)
class ForwardReply:
    tag: Tag
    index: int  # 0: refused, never appended (the receiver does not lead)
    term: int

