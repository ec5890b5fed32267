"""Read barriers answered the ReadIndex way (Raft dissertation, section 6.4).

An agent may start or destroy VMs only on state at least as new as everything committed
before it asked (core/agent.py). It asks the leader (a lease renewal doubles as the
request); the leader answers with its commit index. A leader cut off in a minority
keeps believing it leads for a while (pysyncobj's leader fallback) and would answer with
an old commit index while a successor commits new placements: so a leader answers only
after it has *confirmed*, after the request arrived, that a majority of voters still
follows it in its term.

The confirmation: every AppendEntries a leader sends carries an increasing sequence
number; a follower's response echoes the highest one it processed from the leader of
its current term. The leader notes the sequence number when the request arrives
(`ReadMark.seq`); once a majority of voters (itself included) echoed a larger one in the
same term, each of them processed an AppendEntries sent after the request, so at that
moment no leader of a later term could have committed anything (it needs a majority that
voted in a later term, and these voters were still in ours). The commit index noted at
the request is then a valid read index, provided the leader had committed an entry of
its own term by then (so its commit index was current): `ReadMark` exists only then.

Duplicated or reordered messages cannot inflate an echo: it is the highest sequence
number actually processed. A leader's own agent goes through the same rule: being
leader is not enough.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class ReadMark:
    """What a leader noted when a read request arrived."""

    term: int
    commit_index: int  # the read index: what the reader must have applied
    seq: int  # the leader's AppendEntries sequence number at that moment


def majority_confirms(mark: ReadMark, voters: int, echoes: Mapping[str, int]) -> bool:
    """Did a majority of `voters` (the leader counts itself) process an AppendEntries
    sent after the mark was taken? `echoes`: the highest sequence number each *other*
    voter echoed in the mark's term."""
    confirmed = 1 + sum(1 for seq in echoes.values() if seq > mark.seq)
    return confirmed * 2 > voters


def state_is_fresh(applied_index: int, read_index: int | None) -> bool:
    """An agent's state counts as fresh once Raft applied up to the read index its
    barrier returned (None: the barrier got no answer). Raft's applied index, not the
    state's: the read index may be a Raft no-op, which never reaches the state machine."""
    return read_index is not None and applied_index >= read_index


class ReadIndex(Generic[K]):
    """Pending read requests of one leader, released once confirmed (see module doc)."""

    def __init__(self) -> None:
        self._pending: list[tuple[K, ReadMark]] = []

    def request(self, key: K, mark: ReadMark) -> None:
        self._pending.append((key, mark))

    def release(self, term: int | None, voters: int,
                echoes: Mapping[str, int]) -> list[tuple[K, ReadMark]]:
        """The requests that may be answered now, in arrival order; requests of another
        term than the one this peer leads now (`term`; None: it does not lead) are
        dropped unanswered: the reader asks again."""
        ready: list[tuple[K, ReadMark]] = []
        waiting: list[tuple[K, ReadMark]] = []
        for key, mark in self._pending:
            if mark.term != term:
                continue
            if majority_confirms(mark, voters, echoes):
                ready.append((key, mark))
            else:
                waiting.append((key, mark))
        self._pending = waiting
        return ready

    def __len__(self) -> int:
        return len(self._pending)
