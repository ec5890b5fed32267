"""The leader's half of RaftPeer (raftpeer.py): replication, commit, fallback, ReadIndex
marks and leadership transfer.

ReadIndex support (dissertation 6.4): every AppendEntries a leader sends carries the next
value of its own sequence counter (`seq`); a follower remembers the highest seq it has
*processed* from the leader of its current term (reset when the term or the leader
changes) and echoes it in every reply. The leader keeps, per voter, the highest echo of
its current term. A duplicated message carries the seq of its original, a reordered one
an older seq, and the leader keeps the maximum: so an echo never exceeds the seq of an
AppendEntries that voter really processed in this leader's term, and `echo > mark.seq`
proves that voter still followed this leader *after* the mark was taken.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from hacluster.raft.allowances import RELAY_AFTER_S
from hacluster.sim.raftmsgs import AppendEntries, AppendReply, Entry, Role, Status, Tag, TimeoutNow

if TYPE_CHECKING:
    from hacluster.sim.raftmodel import RaftCluster

_NEVER = float("inf")
_EMPTY: list[Entry] = []


class ReadMark(NamedTuple):
    """Taken by a leader when a read arrives: answer it with `commit_index` once a
    majority of voters echoed a seq greater than `seq`, still leading in `term`."""

    term: int
    commit_index: int
    seq: int


class Leading:
    # State and rules that RaftPeer provides (declared for the type checker).
    _c: RaftCluster
    name: str
    term: int
    log: list[Entry]
    role: Role
    status: Status
    commit_index: int
    dirty_from: int
    _seq: int
    _tags: int
    _led_terms: set[int]
    _election_at: float
    _heartbeat_at: float

    if TYPE_CHECKING:  # provided by RaftPeer or the other mixin; no runtime stubs

        def term_at(self, index: int) -> int: ...

        def _set_commit(self, commit: int) -> None: ...

        def _new_term(self, term: int) -> None: ...

        def _become_follower(self) -> None: ...

        def _set_leader(self, name: str | None) -> None: ...

        def _arm(self, at: float) -> None: ...

        def _note(self, what: str, value: int) -> None: ...

    # ------------------------------------------------------------ state

    def _reset_leading(self) -> None:
        self._followers: tuple[str, ...] = ()
        self._next: dict[str, int] = {}
        self._match: dict[str, int] = {}
        self._last_response: dict[str, float] = {}  # voters only
        self._heard: dict[str, float] = {}  # any follower: its last real answer
        self._reports: dict[str, tuple[dict[str, float], float]] = {}  # follower -> (hears, when)
        self._echoes: dict[str, int] = {}
        self._answers: dict[str, tuple[int, int]] = {}  # follower -> its latest answer id
        self._allows: dict[str, tuple[int, int]] = {}  # follower -> answer id granted
        self._allows_rev = 0  # moves with every grant that moved
        self._relays_sent: dict[str, int] = {}  # voter -> the rev it last got
        self._term_start = 0  # index of this term's no-op

    def _become_leader(self, now: float) -> None:
        c = self._c
        self.role = Role.LEADER
        self._set_leader(self.name)
        self._led_terms.add(self.term)
        self._election_at = _NEVER
        self._followers = tuple(n for n in c.names if n != self.name)
        self._next = dict.fromkeys(self._followers, len(self.log) + 1)
        self._match = dict.fromkeys(self._followers, 0)
        self._last_response = {v: now for v in c.voters if v != self.name}
        self._heard = {}
        self._reports = {}
        self._echoes = {}
        self._answers = {}
        self._allows = {}
        self._relays_sent = {}
        self._note("leader", self.term)
        self._tags += 1
        self._term_start = self._append_own(None, (self.name, self._tags))
        self._heartbeat_at = now + c.config.heartbeat_s
        self._arm(self._heartbeat_at)

    def _append_own(self, data: bytes | None, tag: Tag) -> int:
        """Append to the leader's log and send it at once (appendEntriesUseBatch=False)."""
        self.log.append(Entry(self.term, data, tag))
        index = len(self.log)
        self.dirty_from = min(self.dirty_from, index)
        self._advance_commit(notify=False)  # a single voter commits alone
        self._broadcast()
        return index

    # ------------------------------------------------------------ replication

    def _broadcast(self) -> None:
        for name in self._followers:
            self._send_append(name)

    def _send_append(self, dst: str) -> None:
        log = self.log
        prev = min(self._next[dst] - 1, len(log))
        entries = log[prev : prev + self._c.config.max_batch] if prev < len(log) else _EMPTY
        self._seq += 1
        msg = AppendEntries(self.term, prev, self.term_at(prev), entries, self.commit_index,
                            self._seq, self._allows.get(dst), self._relay_for(dst))
        self._next[dst] = prev + len(entries) + 1  # optimistic, like pysyncobj
        self._c.send(self.name, dst, msg)

    def _on_heartbeat(self, now: float) -> None:
        if self.role is not Role.LEADER:
            self._heartbeat_at = _NEVER
            return
        if self._fallen_back(now):
            self._note("fallback", self.term)
            self._become_follower()
            self._set_leader(None)
            return
        self._broadcast()
        self._heartbeat_at = now + self._c.config.heartbeat_s

    def _fallen_back(self, now: float) -> bool:
        """pysyncobj leaderFallbackTimeout: no answer from a majority for that long."""
        since = now - self._c.config.leader_fallback_s
        answered = 1 + sum(1 for t in self._last_response.values() if t > since)
        return answered < self._c.majority

    def _on_append_reply(self, src: str, m: AppendReply, now: float) -> None:
        if m.term > self.term:
            self._new_term(m.term)
            return
        if self.role is not Role.LEADER or m.term != self.term:
            return
        if src in self._last_response:
            self._last_response[src] = now
        self._heard[src] = now
        self._reports[src] = (m.hears or {}, now)
        if m.echo > self._echoes.get(src, 0):
            self._echoes[src] = m.echo
        known = self._answers.get(src)
        if m.ans is not None and (known is None or known[0] != m.ans[0] or
                                  m.ans[1] > known[1]):
            self._answers[src] = m.ans
        if m.carried:
            self._take_carried(src, m.carried)
        if m.success:
            if m.match > self._match[src]:
                self._match[src] = m.match
                if src in self._last_response:
                    self._advance_commit(notify=True)
            if self._next[src] <= m.match:
                self._next[src] = m.match + 1
            if self._next[src] <= len(self.log):
                self._send_append(src)  # more than one batch behind
        elif 0 < m.hint < self._next[src]:
            # Honour the hint even below the match index, as pysyncobj does: a rebuilt
            # follower lost what it acknowledged (a stale reply only costs a resend).
            self._next[src] = m.hint
            self._send_append(src)

    def _advance_commit(self, notify: bool) -> None:
        """Commit the highest index held by a majority of voters, if of this term
        (Figure 8: entries of older terms commit only beneath one of this term)."""
        c = self._c
        if len(c.voters) == 1:
            n = len(self.log)
        else:
            own = len(self.log)
            matches = sorted(
                (own if v == self.name else self._match.get(v, 0) for v in c.voters),
                reverse=True,
            )
            n = matches[c.majority - 1]
        if n > self.commit_index and self._may_commit(n):
            self._set_commit(n)
            if notify:
                self._broadcast()  # followers learn the commit index at once

    def _may_commit(self, index: int) -> bool:
        return self.log[index - 1].term == self.term

    # ------------------------------------------------------------ public, leader side

    def read_mark(self) -> ReadMark | None:
        """(term, commit index, last seq sent) while this peer leads and an entry of its
        term is committed; else None."""
        if self.role is not Role.LEADER or self.status is Status.DOWN:
            return None
        if self.commit_index < self._term_start:
            return None
        return ReadMark(self.term, self.commit_index, self._seq)

    def answers(self) -> dict[str, tuple[int, int]]:
        """The latest answer id of each follower (raft/engine.py `ha_answers_snapshot`)."""
        return dict(self._answers) if self.role is Role.LEADER else {}

    def _take_carried(self, carrier: str, carried: dict[str, tuple[int, int]]) -> None:
        """raft/engine.py `_ha_take_carried`: other voters' answers passed on count as
        theirs, when of the boot known and newer (or from a voter not heard yet)."""
        for name, ans in carried.items():
            known = self._answers.get(name)
            if name == carrier or name not in self._c.voters or name == self.name:
                continue
            if known is None or (known[0] == ans[0] and ans[1] > known[1]):
                self._answers[name] = ans

    def _relay_for(self, dst: str) -> dict[str, tuple[int, int]] | None:
        """raft/engine.py `ha_relay_for`: the other voters' grants, when they moved."""
        voters = self._c.voters
        if dst not in voters or self._relays_sent.get(dst) == self._allows_rev:
            return None
        self._relays_sent[dst] = self._allows_rev
        stale = self._c.now - RELAY_AFTER_S
        return {v: a for v, a in self._allows.items() if v != dst and v in voters
                and self._heard.get(v, float("-inf")) < stale} or None

    def grant(self, answers: dict[str, tuple[int, int]], term: int) -> list[str]:
        """A mark taken after `answers` arrived was confirmed (raft/engine.py `ha_grant`):
        returns the followers whose grant moved."""
        if self.role is not Role.LEADER or term != self.term:
            return []
        moved = []
        for name, ans in answers.items():
            granted = self._allows.get(name)
            if granted is None or granted[0] != ans[0] or ans[1] > granted[1]:
                self._allows[name] = ans
                moved.append(name)
        if moved:
            self._allows_rev += 1
        return moved

    def echoes(self) -> dict[str, int]:
        """Highest seq each voter echoed in the current term (this leader: its own last
        seq); empty unless leading."""
        if self.role is not Role.LEADER or self.status is Status.DOWN:
            return {}
        return {v: self._seq if v == self.name else self._echoes.get(v, 0)
                for v in self._c.voters}

    def read_confirmed(self, mark: ReadMark) -> bool:
        """Still leading in mark.term and a majority of voters echoed a seq > mark.seq."""
        if self.role is not Role.LEADER or self.term != mark.term:
            return False
        echoed = sum(1 for seq in self.echoes().values() if seq > mark.seq)
        return echoed >= self._c.majority

    def heartbeat(self) -> bool:
        """Send AppendEntries to every follower now (e.g. to confirm a read mark sooner)."""
        if self.role is not Role.LEADER or self.status is not Status.UP:
            return False
        self._broadcast()
        return True

    def transfer_leadership(self, target: str | None = None) -> bool:
        """TimeoutNow to `target`, or the most up-to-date connected voter, if it holds the
        whole log (pysyncobj's rule). True when sent; the old leader leads until it sees
        the term."""
        if self.role is not Role.LEADER or self.status is not Status.UP:
            return False
        best: tuple[int, str] | None = None
        for voter in self._c.voters:
            if target is not None and voter != target:
                continue
            if voter != self.name and self._c.connected(self.name, voter):
                candidate = (self._match.get(voter, 0), voter)
                best = candidate if best is None else max(best, candidate)
        if best is None or best[0] != len(self.log):
            return False
        self._c.send(self.name, best[1], TimeoutNow(self.term))
        return True

    def heard_from(self) -> dict[str, float]:
        """Leader: when (simulated time) each follower last really answered in this
        leadership (the daemon's RaftNode.heard_from gives ages instead)."""
        return dict(self._heard) if self.role is Role.LEADER else {}

    def hears_reports(self) -> dict[str, tuple[dict[str, float], float]]:
        """Leader: each follower's last report of how many voters' renewals its host
        receives, and when it came (RaftNode.hears_reports in the daemon)."""
        return dict(self._reports) if self.role is Role.LEADER else {}

    def match_index(self) -> dict[str, int]:
        """Leader only: highest index known replicated on each other peer."""
        return dict(self._match) if self.role is Role.LEADER else {}
