"""A deterministic in-memory Raft for the simulator: RaftCluster of RaftPeers over SimNet.

Everything runs on the simulated time given to `step(now)` and on the `random.Random`
given to the constructor: no wall clock, no threads, no I/O; same seed, same run. Inside
a step the cluster is a discrete-event simulation: messages and timers are handled at
their own times (timers first when equal, then by send order), so the step length only
decides how often the caller looks, not how fast Raft runs.

Usage::

    net = SimNet(random.Random(1))
    for h in ("h1", "h2", "h3", "m1"):
        net.add_host(h, ("mgmt", "backend"))
    cluster = RaftCluster(net, random.Random(2), voters=["h1", "h2", "h3"], members=["m1"])
    cluster.step(0.5)
    peer = cluster["h2"]
    peer.propose(b"cmd", on_done)           # on_done(SimProposeResult), exactly once
    cluster.step(0.52)
    for rec in peer.apply_committed(fsm_apply):   # the caller applies, in log order
        ...

RaftPeer, the public part:

* views: `name`, `voter`, `term`, `role` (Role), `leader` (known leader name or None),
  `status` (Status UP/PAUSED/DOWN), `commit_index`, `applied_index`, `log` (list of
  Entry(term, data, tag); data None is a leader's no-op), `leader_term()` (the term
  while it believes it leads, else None; a cut-off leader keeps it until no voter
  majority answered for `leader_fallback_s`, or it sees a higher term), `is_leader()`,
  `abstaining` (rebuilt, not voting yet), `anomalies` (what a real peer would log as
  critical, e.g. truncating committed entries after a `log_prefix` restart).
* `propose(data, on_done, timeout_s=None)`: the leader appends; a follower forwards to
  the leader it knows; outcomes as raft/node.py: COMMITTED (this entry, same index and
  term, was applied here: index, term, result, commit_term, own_term), NOT_LEADER
  (never entered a log: no leader known or refused by a non-leader; or its slot was
  applied with another leader's entry, so it can never commit), MAYBE (deadline passed,
  or the leader changed before a forwarded proposal was acknowledged).
* `apply_committed(apply=None) -> list[AppliedRecord]`: hands committed entries to
  `apply(record) -> result` in order (records: index, term, data, commit_term,
  own_term, as raft/engine.py AppliedEntry), then completes this peer's waiting
  proposals with the result. `committed_unapplied()` peeks. After a restart the
  applied index is 0 again: the caller rebuilds its state and re-applies; entries
  up to the persisted commit index come back with commit_term 0 (unknown).
* ReadIndex: `read_mark() -> ReadMark(term, commit_index, seq) | None`, `echoes()`,
  `read_confirmed(mark)`, `heartbeat()`; see raftlead.py for why echoes are sound.
* elections with pre-vote (raftprevote.py, the daemon's raft/prevote.py rules) unless
  `RaftModelConfig.pre_vote` is off; TimeoutNow and `stand_for_election` skip it.
* `transfer_leadership() -> bool` (TimeoutNow to the most up-to-date voter),
  `match_index()`.
* process faults: `crash()`, `restart(rebuild=False, log_prefix=None, term=None,
  lose_meta=False)`, `pause()`, `resume()`; `stand_for_election()` for scripts.

RaftCluster: `step(now)`, `next_time()`, `cluster[name]`, iteration (voters, then
members), `leaders()`, `leader()`, `connected(a, b)`, `listeners` (RaftListener: notes
of role changes and faults, commits, applies; raftcheck.RaftChecker is one). It
reserves its channel on the SimNet ("raft"): `net.due(now)` leaves it alone. A crashed
peer refuses connections: messages to it are dropped, also after its restart.
`lost_vote_requests`: peers whose RequestVotes are dropped (a script's cut that falls
right between a won pre-vote and the election).

Not modelled: snapshots and log compaction, membership changes, disk latency and fsync
loss (a crash keeps everything appended), connection timeouts (a TCP connection is
"up" exactly when both directions pass).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Iterable, Iterator

from hacluster.sim.net import SimNet
from hacluster.sim.raftlead import ReadMark
from hacluster.sim.raftmsgs import (
    AppliedRecord,
    Entry,
    RaftModelConfig,
    RequestVote,
    Role,
    SimProposeResult,
    Status,
)
from hacluster.sim.raftpeer import RaftPeer

__all__ = [
    "AppliedRecord",
    "Entry",
    "RaftCluster",
    "RaftListener",
    "RaftModelConfig",
    "RaftPeer",
    "ReadMark",
    "Role",
    "SimProposeResult",
    "Status",
]

_NEVER = float("inf")


class RaftListener:
    """Observer of a cluster (checkers, traces); every method is optional."""

    def on_note(self, now: float, peer: RaftPeer, what: str, value: int) -> None:
        """Role changes and process faults: leader, stepped-down, fallback, crashed,
        restarted, caught-up (value: the term, or an index for caught-up)."""

    def on_commit(self, now: float, peer: RaftPeer, old: int, new: int) -> None:
        """The peer's commit index rose from old to new."""

    def on_apply(self, now: float, peer: RaftPeer, record: AppliedRecord) -> None:
        """The peer handed a record to its state machine."""


class RaftCluster:
    """Peers (voters, then read-only members) on hosts of the same names in `net`."""

    def __init__(
        self,
        net: SimNet,
        rng: random.Random,
        voters: Iterable[str],
        members: Iterable[str] = (),
        config: RaftModelConfig | None = None,
        start: float = 0.0,
        peer_class: type[RaftPeer] = RaftPeer,
    ) -> None:
        self.net = net
        self.rng = rng
        self.config = config if config is not None else RaftModelConfig()
        self.answer_boots = itertools.count(1)  # raftpeer.py: answers numbered per process
        self.voters = tuple(sorted(voters))
        self.members = tuple(sorted(members))
        self.names = self.voters + self.members
        self._check_names()
        self.majority = len(self.voters) // 2 + 1
        self.now = start
        net.reserve(self.config.channel)
        self.listeners: list[RaftListener] = []
        self.lost_vote_requests: set[str] = set()
        self._timers: list[tuple[float, int, RaftPeer, int]] = []
        self._timer_seq = 0
        self.peers: dict[str, RaftPeer] = {}
        for name in self.names:
            self.peers[name] = peer_class(self, name, name in self.voters)
        for peer in self:
            peer._reset_election_timer(start)

    def _check_names(self) -> None:
        if not 1 <= len(self.voters) <= 9:
            raise ValueError("a cluster needs 1 to 9 voters")
        if len(set(self.names)) != len(self.names):
            raise ValueError("a peer is named twice")
        missing = [n for n in self.names if n not in self.net.hosts()]
        if missing:
            raise ValueError(f"hosts missing from the network: {missing}")

    # ------------------------------------------------------------ access

    def __getitem__(self, name: str) -> RaftPeer:
        return self.peers[name]

    def __iter__(self) -> Iterator[RaftPeer]:
        """Peers in a fixed order: voters, then members, each sorted by name."""
        return iter(self.peers.values())

    def leaders(self) -> list[tuple[str, int]]:
        """(name, term) of every peer that believes it leads, sorted by name."""
        return [(p.name, t) for p in self if (t := p.leader_term()) is not None]

    def leader(self) -> RaftPeer | None:
        """The believing leader of the highest term, if any."""
        best = max(self.leaders(), key=lambda lt: lt[1], default=None)
        return None if best is None else self.peers[best[0]]

    def connected(self, a: str, b: str) -> bool:
        """A TCP connection between the peers would be up: both processes exist (a
        paused one still has its sockets) and both directions pass."""
        pa, pb = self.peers[a], self.peers[b]
        return (
            pa.status is not Status.DOWN
            and pb.status is not Status.DOWN
            and self.net.reachable(a, b)
            and self.net.reachable(b, a)
        )

    def connected_to_anyone(self, name: str) -> bool:
        """pysyncobj's __connectedToAnyone: a lone voter counts as connected."""
        if len(self.voters) == 1:
            return True
        return any(other != name and self.connected(name, other) for other in self.names)

    # ------------------------------------------------------------ running

    def next_time(self) -> float:
        """When the next timer fires or Raft message arrives (inf: nothing pending)."""
        first = self._timers[0][0] if self._timers else _NEVER
        return min(first, self.net.next_time(self.config.channel))

    def step(self, now: float) -> None:
        """Handle every timer and message due by `now`, in time order."""
        if now < self.now:
            raise ValueError(f"time runs backwards: {now} < {self.now}")
        timers, net, channel, peers = self._timers, self.net, self.config.channel, self.peers
        while True:
            t_timer = timers[0][0] if timers else _NEVER
            t_net = net.next_time(channel)
            if t_timer <= t_net:
                if t_timer > now:
                    break
                at, _, peer, token = heapq.heappop(timers)
                self.now = at
                peer.wake(token, at)
                continue
            if t_net > now:
                break
            d = net.pop(min(now, t_timer), channel)
            if d is None:
                continue
            self.now = d.at
            target = peers.get(d.dst)
            if target is not None and target.status is Status.UP:
                target.receive(d.src, d.payload, d.at)
        self.now = now

    # ------------------------------------------------------------ used by the peers

    def schedule(self, at: float, peer: RaftPeer, token: int) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (at, self._timer_seq, peer, token))

    def send(self, src: str, dst: str, msg: object) -> None:
        # A crashed process refuses connections: nothing sent now reaches its next life.
        if self.lost_vote_requests and src in self.lost_vote_requests and \
                isinstance(msg, RequestVote):
            return
        if self.peers[dst].status is not Status.DOWN:
            self.net.send(self.now, src, dst, self.config.channel, msg)

    def hold_inbound(self, peer: RaftPeer) -> None:
        self.net.hold(peer.name, self.config.channel)

    def release_inbound(self, peer: RaftPeer) -> None:
        self.net.release(self.now, peer.name, self.config.channel)

    def discard_inbound(self, peer: RaftPeer) -> None:
        self.net.release(self.now, peer.name, self.config.channel)  # stop holding
        self.net.discard(peer.name, self.config.channel)

    def note(self, peer: RaftPeer, what: str, value: int) -> None:
        for listener in self.listeners:
            listener.on_note(self.now, peer, what, value)

    def committed(self, peer: RaftPeer, old: int, new: int) -> None:
        for listener in self.listeners:
            listener.on_commit(self.now, peer, old, new)

    def applied(self, peer: RaftPeer, record: AppliedRecord) -> None:
        for listener in self.listeners:
            listener.on_apply(self.now, peer, record)
