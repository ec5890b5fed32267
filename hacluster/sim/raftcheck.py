"""Raft's safety properties, checked on a running RaftCluster (raftmodel.py).

Attach with `checker = RaftChecker.attach(cluster)` and call `checker.check(cluster)`
after every step; `checker.violations` lists what broke, with the time. Checked:

* election safety: at most one peer becomes leader in any term (from every election,
  also those that end within one step);
* log matching: two logs holding an entry with the same index and term hold the same
  entries up to it (a chained hash per log position, recomputed only where a log
  changed since the last check);
* leader completeness: a new leader of term T holds every entry committed in a term
  below T;
* state machine safety: no two peers commit or apply different entries at one index.

Cost: proportional to what changed (new entries, commits, elections), not to log size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hacluster.sim.raftmodel import RaftCluster, RaftListener, RaftPeer
from hacluster.sim.raftmsgs import AppliedRecord, Tag

_CLEAN = 1 << 62


@dataclass
class _Committed:
    term: int  # the entry's term
    tag: Tag
    commit_term: int  # the term of the peer that first saw it committed


@dataclass
class RaftChecker(RaftListener):
    violations: list[str] = field(default_factory=list)
    leaders: dict[int, str] = field(default_factory=dict)  # term -> who led it
    committed: dict[int, _Committed] = field(default_factory=dict)  # index -> entry
    applied: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # index -> entry
    logged: set[bytes] = field(default_factory=set)  # data of every entry seen in a log
    _chains: dict[str, list[int]] = field(default_factory=dict)
    _seen: dict[tuple[int, int], int] = field(default_factory=dict)  # (index, term) -> chain

    @classmethod
    def attach(cls, cluster: RaftCluster) -> RaftChecker:
        checker = cls()
        cluster.listeners.append(checker)
        return checker

    def fail(self, now: float, message: str) -> None:
        self.violations.append(f"t={now:.3f}: {message}")

    # ------------------------------------------------------------ events

    def on_note(self, now: float, peer: RaftPeer, what: str, value: int) -> None:
        if what == "leader":
            self.leader_elected(now, peer.name, value, peer)

    def leader_elected(self, now: float, name: str, term: int, peer: RaftPeer | None) -> None:
        other = self.leaders.setdefault(term, name)
        if other != name:
            self.fail(now, f"election safety: {other} and {name} both led term {term}")
        if peer is None:
            return
        for index, c in sorted(self.committed.items()):
            if c.commit_term >= term:
                continue
            have = peer.log[index - 1] if index <= len(peer.log) else None
            if have is None or have.tag != c.tag:
                self.fail(now, f"leader completeness: {name}, leader of term {term}, lacks "
                               f"entry {index} (term {c.term}) committed in term {c.commit_term}")
                break

    def on_commit(self, now: float, peer: RaftPeer, old: int, new: int) -> None:
        for index in range(old + 1, new + 1):
            self.entry_committed(now, peer.name, index, peer.log[index - 1].term,
                                 peer.log[index - 1].tag, peer.term)

    def entry_committed(
        self, now: float, name: str, index: int, term: int, tag: Tag, commit_term: int
    ) -> None:
        known = self.committed.setdefault(index, _Committed(term, tag, commit_term))
        if known.tag != tag:
            self.fail(now, f"state machine safety: {name} commits {tag} (term {term}) at "
                           f"{index} where {known.tag} (term {known.term}) was committed")

    def on_apply(self, now: float, peer: RaftPeer, record: AppliedRecord) -> None:
        self.entry_applied(now, peer.name, record.index, record.term, record.data)

    def entry_applied(self, now: float, name: str, index: int, term: int, data: bytes) -> None:
        known = self.applied.setdefault(index, (term, data))
        if known != (term, data):
            self.fail(now, f"state machine safety: {name} applies {data!r} (term {term}) at "
                           f"{index} where {known[1]!r} (term {known[0]}) was applied")

    # ------------------------------------------------------------ after every step

    def check(self, cluster: RaftCluster) -> None:
        for peer in cluster:
            if peer.dirty_from != _CLEAN:
                self._check_log(cluster.now, peer)

    def _check_log(self, now: float, peer: RaftPeer) -> None:
        chain = self._chains.setdefault(peer.name, [])
        start = min(peer.dirty_from, len(chain) + 1)
        del chain[start - 1 :]
        log = peer.log
        broken = 0
        for index in range(start, len(log) + 1):
            entry = log[index - 1]
            if entry.data is not None:
                self.logged.add(entry.data)
            link = hash((chain[-1] if chain else 0, entry.term, entry.tag))
            chain.append(link)
            if self._seen.setdefault((index, entry.term), link) != link and not broken:
                broken = index
        if broken:
            self.fail(now, f"log matching: {peer.name} and another peer hold entries of the "
                           f"same index and term ({broken}) after different logs")
        peer.dirty_from = _CLEAN
