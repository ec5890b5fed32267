"""Proposals and the apply stream of RaftPeer (raftpeer.py).

A proposal made on the leader is appended at once; on a follower it is forwarded to
the leader it knows (pysyncobj's apply_command), which answers with the index and term
it appended at, or refuses. The outcome comes when this peer applies that index (the
caller's apply_committed()): COMMITTED if the entry there has the proposal's term, else
NOT_LEADER (another leader's entry took the slot, pysyncobj DISCARDED); MAYBE when the
deadline passes first, or the leader changes before a forward was answered.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hacluster.ports import ProposeStatus
from hacluster.sim.raftmsgs import (
    MAYBE,
    NOT_LEADER,
    AppliedRecord,
    Entry,
    Forward,
    ForwardReply,
    OnDone,
    Role,
    SimProposeResult,
    Status,
    Tag,
)

if TYPE_CHECKING:
    from hacluster.sim.raftmodel import RaftCluster


@dataclass
class _Pending:
    """A proposal made on this peer, waiting for its outcome."""

    tag: Tag
    on_done: OnDone
    deadline: float
    index: int = 0  # 0 until known (forwarded and not yet acknowledged)
    term: int = 0


class Proposing:
    # State and rules that RaftPeer provides (declared for the type checker).
    _c: RaftCluster
    name: str
    term: int
    log: list[Entry]
    role: Role
    status: Status
    leader: str | None
    commit_index: int
    last_applied: int
    _led_terms: set[int]
    _commit_terms: deque[tuple[int, int]]
    _tags: int
    _fwd_answers: dict[Tag, tuple[int, int]]
    _paused_calls: list[tuple[bytes, OnDone, float | None]]

    if TYPE_CHECKING:  # provided by RaftPeer or the other mixin; no runtime stubs

        def _arm(self, at: float) -> None: ...

        def _applied(self, record: AppliedRecord) -> None: ...

        def _append_own(self, data: bytes | None, tag: Tag) -> int: ...

    def _reset_proposals(self) -> None:
        self._pending: dict[Tag, _Pending] = {}
        self._by_index: dict[int, list[Tag]] = {}  # index -> proposals waiting for it
        self._deadlines: list[tuple[float, int, Tag]] = []

    def propose(self, data: bytes, on_done: OnDone, timeout_s: float | None = None) -> None:
        """Propose `data`; `on_done` is called exactly once with the outcome, maybe at
        once (NOT_LEADER), else during a later step or apply_committed() call."""
        if self.status is Status.DOWN:
            on_done(NOT_LEADER)  # a dead process proposes nothing
            return
        if self.status is Status.PAUSED:
            self._paused_calls.append((bytes(data), on_done, timeout_s))
            return
        now = self._c.now
        self._tags += 1
        tag = (self.name, self._tags)
        timeout = self._c.config.propose_timeout_s if timeout_s is None else timeout_s
        p = _Pending(tag, on_done, now + timeout)
        if self.role is Role.LEADER:
            p.index, p.term = self._append_own(bytes(data), tag), self.term
            self._by_index.setdefault(p.index, []).append(tag)
        elif self.leader is not None:
            self._c.send(self.name, self.leader, Forward(tag, bytes(data)))
        else:
            on_done(NOT_LEADER)
            return
        self._pending[tag] = p
        heapq.heappush(self._deadlines, (p.deadline, tag[1], tag))
        self._arm(p.deadline)

    def _on_forward(self, src: str, m: Forward, now: float) -> None:
        # The first answer to a tag is final: a duplicate Forward gets the same answer,
        # so a refusal (index 0) means the proposal never entered this peer's log.
        answer = self._fwd_answers.get(m.tag)
        if answer is None:
            if self.role is Role.LEADER:
                answer = (self._append_own(m.data, m.tag), self.term)
            else:
                answer = (0, 0)
            self._fwd_answers[m.tag] = answer
        self._c.send(self.name, src, ForwardReply(m.tag, *answer))

    def _on_forward_reply(self, src: str, m: ForwardReply, now: float) -> None:
        p = self._pending.get(m.tag)
        if p is None or p.index:
            return
        if m.index == 0:
            self._resolve(p, NOT_LEADER)
        elif m.index <= self.last_applied:
            self._resolve(p, MAYBE)  # pysyncobj UNKNOWN_OUTCOME: applied before we knew
        else:
            p.index, p.term = m.index, m.term
            self._by_index.setdefault(m.index, []).append(m.tag)

    def _resolve(self, p: _Pending, result: SimProposeResult) -> None:
        del self._pending[p.tag]
        p.on_done(result)

    def _expire_proposals(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, tag = heapq.heappop(self._deadlines)
            p = self._pending.get(tag)
            if p is not None:
                self._resolve(p, MAYBE)

    # ------------------------------------------------------------ the apply stream

    def committed_unapplied(self) -> list[AppliedRecord]:
        """What apply_committed() would hand out now (no side effect)."""
        return [r for i in range(self.last_applied + 1, self.commit_index + 1)
                if (r := self._record(i, peek=True)) is not None]

    def apply_committed(
        self, apply: Callable[[AppliedRecord], object] | None = None
    ) -> list[AppliedRecord]:
        """Hand every committed, not yet applied entry to `apply`, in order, then complete
        the proposals of this peer waiting for it (COMMITTED with apply's result, or
        NOT_LEADER when another entry took the slot). Leaders' no-ops advance the
        applied index without a record. Nothing happens on a paused or crashed peer."""
        out: list[AppliedRecord] = []
        while self.status is Status.UP and self.last_applied < self.commit_index:
            index = self.last_applied + 1
            record = self._record(index, peek=False)
            result = None
            if record is not None:
                result = apply(record) if apply is not None else None
                out.append(record)
                self._applied(record)
            self.last_applied = index
            self._complete(index, record, result)
        return out

    def _record(self, index: int, peek: bool) -> AppliedRecord | None:
        entry = self.log[index - 1]
        commit_term = self._commit_term(index, peek)
        if entry.data is None:
            return None
        own = commit_term == entry.term and entry.term in self._led_terms
        return AppliedRecord(index, entry.term, entry.data, commit_term, own)

    def _commit_term(self, index: int, peek: bool) -> int:
        ranges = self._commit_terms
        if peek:
            return next((t for upto, t in ranges if upto >= index), 0)
        while ranges and ranges[0][0] < index:
            ranges.popleft()
        return ranges[0][1] if ranges else 0

    def _complete(self, index: int, record: AppliedRecord | None, result: object) -> None:
        tags = self._by_index.pop(index, None)
        if not tags:
            return
        entry = self.log[index - 1]
        for tag in tags:
            p = self._pending.get(tag)
            if p is None:
                continue
            if p.term != entry.term:
                self._resolve(p, NOT_LEADER)  # pysyncobj DISCARDED: our slot went to another
                continue
            commit_term = record.commit_term if record is not None else 0
            own = record.own_term if record is not None else False
            self._resolve(p, SimProposeResult(
                ProposeStatus.COMMITTED, index, entry.term, result, commit_term, own))
