"""A test driver for the Raft model: a cluster on a SimNet, random fault schedules,
proposals and ReadIndex probes, with every property checked after every step."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from hacluster.ports import ProposeStatus
from hacluster.sim.net import PathFaults, SimNet
from hacluster.sim.raftcheck import RaftChecker
from hacluster.sim.raftmodel import (
    AppliedRecord,
    RaftCluster,
    RaftListener,
    RaftModelConfig,
    RaftPeer,
    ReadMark,
    Role,
    SimProposeResult,
    Status,
)

ReadRule = Callable[[RaftPeer, ReadMark], bool]


def echo_rule(peer: RaftPeer, mark: ReadMark) -> bool:
    """The sound ReadIndex rule: a majority echoed an AppendEntries sent after the mark."""
    return peer.read_confirmed(mark)


def naive_rule(peer: RaftPeer, mark: ReadMark) -> bool:
    """A broken rule for the checker's sake: 'I believe I lead' is enough."""
    return peer.leader_term() == mark.term


@dataclass
class Proposal:
    data: bytes
    origin: str
    at: float
    outcome: SimProposeResult | None = None
    during_apply: bool = False  # the outcome came from apply_committed()


@dataclass
class ReadProbe:
    peer: str
    mark: ReadMark
    at: float
    higher_commit: int  # highest index committed by a leader of a higher term by `at`


@dataclass
class _LeaderCommits(RaftListener):
    by_term: dict[int, int] = field(default_factory=dict)  # term -> its leader's commit

    def on_commit(self, now: float, peer: RaftPeer, old: int, new: int) -> None:
        if peer.role is Role.LEADER:
            self.by_term[peer.term] = max(self.by_term.get(peer.term, 0), new)

    def above(self, term: int) -> int:
        return max((c for t, c in self.by_term.items() if t > term), default=0)


class Harness:
    def __init__(
        self,
        seed: int,
        voters: int = 3,
        members: int = 0,
        config: RaftModelConfig | None = None,
        peer_class: type[RaftPeer] = RaftPeer,
        read_rule: ReadRule = echo_rule,
        links: tuple[str, ...] = ("mgmt", "backend"),
    ) -> None:
        self.rng = random.Random(seed)
        self.net = SimNet(random.Random(seed * 7919 + 1), PathFaults(delay=(0.0005, 0.003)))
        self.voters = [f"v{i}" for i in range(1, voters + 1)]
        self.members = [f"m{i}" for i in range(1, members + 1)]
        for name in self.voters + self.members:
            self.net.add_host(name, links)
        self.cluster = RaftCluster(self.net, random.Random(seed * 7919 + 2), self.voters,
                                   self.members, config, peer_class=peer_class)
        self.checker = RaftChecker.attach(self.cluster)
        self.commits = _LeaderCommits()
        self.cluster.listeners.append(self.commits)
        self.read_rule = read_rule
        self.now = 0.0
        self.proposals: list[Proposal] = []
        self.probes: list[ReadProbe] = []
        self.reads_answered = 0
        self.problems: list[str] = []
        self.applied: dict[str, dict[int, tuple[int, bytes]]] = {n: {} for n in self.cluster.names}
        self.committed_data: set[bytes] = set()
        self._applying = False
        self._counter = 0

    # ------------------------------------------------------------ running

    @property
    def violations(self) -> list[str]:
        return self.checker.violations + self.problems

    def step(self, dt: float) -> None:
        self.now = round(self.now + dt, 9)
        self.cluster.step(self.now)
        self._applying = True
        for peer in self.cluster:
            peer.apply_committed(partial(self._apply, peer.name))
        self._applying = False
        self.checker.check(self.cluster)
        self._check_reads()

    def run(self, until: float, dt: float = 0.02) -> None:
        while self.now < until - 1e-9:
            self.step(min(dt, until - self.now))

    def _apply(self, name: str, record: AppliedRecord) -> str:
        if record.index in self.applied[name]:
            self.applied[name] = {}  # restarted: the state machine is rebuilt
        self.applied[name][record.index] = (record.term, record.data)
        self.committed_data.add(record.data)
        return f"result-{record.index}"

    # ------------------------------------------------------------ proposals

    def propose(self, name: str) -> Proposal:
        self._counter += 1
        p = Proposal(f"{name}-{self._counter}".encode(), name, self.now)
        self.proposals.append(p)
        self.cluster[name].propose(p.data, lambda r: self._outcome(p, r))
        return p

    def _outcome(self, p: Proposal, result: SimProposeResult) -> None:
        if p.outcome is not None:
            self.problems.append(f"{p.data!r} got a second outcome {result}")
        p.outcome, p.during_apply = result, self._applying
        if result.status is ProposeStatus.COMMITTED:
            got = self.applied[p.origin].get(result.index)
            if got != (result.term, p.data):
                self.problems.append(f"{p.data!r} COMMITTED at {result.index} term "
                                     f"{result.term} but {p.origin} applied {got}")
            if result.result != f"result-{result.index}":
                self.problems.append(f"{p.data!r}: apply's result lost: {result.result!r}")

    def check_outcomes(self) -> None:
        """NOT_LEADER: refused ones never entered a log; a slot lost at apply time never
        commits anywhere. (Call at the end: a later commit would show up then.)"""
        for p in self.proposals:
            if p.outcome is None or p.outcome.status is not ProposeStatus.NOT_LEADER:
                continue
            if p.data in self.committed_data:
                self.problems.append(f"{p.data!r} NOT_LEADER but committed")
            elif not p.during_apply and p.data in self.checker.logged:
                self.problems.append(f"{p.data!r} refused (NOT_LEADER) but entered a log")

    # ------------------------------------------------------------ ReadIndex probes

    def probe_reads(self) -> None:
        for peer in self.cluster:
            mark = peer.read_mark() if peer.status is Status.UP else None
            if mark is not None:
                peer.heartbeat()
                self.probes.append(
                    ReadProbe(peer.name, mark, self.now, self.commits.above(mark.term)))

    def _check_reads(self) -> None:
        waiting = []
        for probe in self.probes:
            peer = self.cluster[probe.peer]
            if peer.leader_term() != probe.mark.term or self.now - probe.at > 3.0:
                continue  # could not be answered: fine
            if peer.status is Status.UP and self.read_rule(peer, probe.mark):
                self.reads_answered += 1
                if probe.higher_commit > probe.mark.commit_index:
                    self.problems.append(
                        f"t={self.now:.3f}: read-index: {probe.peer} answers a read of "
                        f"t={probe.at:.3f} with commit {probe.mark.commit_index} (term "
                        f"{probe.mark.term}) while a later term had committed "
                        f"{probe.higher_commit} before it")
                continue
            waiting.append(probe)
        self.probes = waiting

    # ------------------------------------------------------------ faults

    def up_peers(self) -> list[RaftPeer]:
        return [p for p in self.cluster if p.status is Status.UP]

    def _target(self) -> str:
        """A host to hit: the believed leader half of the time."""
        leader = self.cluster.leader()
        if leader is not None and self.rng.random() < 0.5:
            return leader.name
        return self.rng.choice(self.cluster.names)

    def random_fault(self, allow_rebuild: bool = True) -> str:
        rng, net, names = self.rng, self.net, self.cluster.names
        a = self._target()
        b = rng.choice([n for n in names if n != a])
        kind = rng.choice(FAULTS)
        if kind == "isolate":
            net.isolate(a)
        elif kind == "heal":
            net.heal(a)
        elif kind == "heal_all":
            net.heal_all(quality=rng.random() < 0.5)
        elif kind == "partition":
            shuffled = rng.sample(names, len(names))
            cut = rng.randrange(1, len(names))
            net.partition(shuffled[:cut], shuffled[cut:])
        elif kind == "one_way":
            src, dst = rng.sample([a, b], 2)
            net.cut(src, dst, rng.choice([None, "mgmt", "backend"]))
        elif kind == "cut_link":
            net.cut_link(a, rng.choice(["mgmt", "backend"]))
        elif kind == "degrade":
            lo = rng.uniform(0.0, 0.01)
            net.set_path(a, b, loss=rng.uniform(0, 0.4), duplicate=rng.uniform(0, 0.3),
                         delay=(lo, lo + rng.uniform(0, 0.3)), both=rng.random() < 0.5)
        else:
            return self._process_fault(kind, a, allow_rebuild)
        return f"{kind} {a} {b}"

    def _process_fault(self, kind: str, target: str, allow_rebuild: bool) -> str:
        rng, cluster = self.rng, self.cluster
        peer = cluster[target]
        if kind in ("restart", "resume"):
            wanted = Status.DOWN if kind == "restart" else Status.PAUSED
            choices = [p for p in cluster if p.status is wanted]
            if not choices:
                return f"{kind}: nobody"
            peer = rng.choice(choices)
        if kind == "crash":
            peer.crash()
        elif kind == "restart":
            rebuild = (allow_rebuild and rng.random() < 0.3
                       and not any(p.abstaining for p in cluster))
            peer.restart(rebuild=rebuild)
            kind += " rebuild" if rebuild else ""
        elif kind == "pause":
            peer.pause()
        elif kind == "resume":
            peer.resume()
        elif kind == "transfer":
            leader = cluster.leader()
            if leader is None:
                return "transfer: no leader"
            peer = leader
            leader.transfer_leadership()
        return f"{kind} {peer.name}"

    def heal_everything(self) -> None:
        self.net.heal_all(quality=True)
        for peer in self.cluster:
            if peer.status is Status.DOWN:
                peer.restart()
            elif peer.status is Status.PAUSED:
                peer.resume()

    def chaos(self, seconds: float, dt: float) -> list[str]:
        """Random faults, proposals and read probes for `seconds`; returns the actions."""
        actions: list[str] = []
        end = self.now + seconds
        next_fault = self.now + self.rng.uniform(0.2, 1.0)
        while self.now < end - 1e-9:
            if self.now >= next_fault:
                actions.append(f"{self.now:.2f} {self.random_fault()}")
                next_fault = self.now + self.rng.uniform(0.1, 0.8)
            if self.rng.random() < 0.3:
                self.propose(self.rng.choice(self.cluster.names))
            if self.rng.random() < 0.1:
                self.probe_reads()
            self.step(dt)
            if self.violations:
                break
        return actions

    def settle(self, within: float, dt: float = 0.02) -> float | None:
        """Heal everything; the time until a leader got a fresh proposal COMMITTED."""
        self.heal_everything()
        start = self.now
        probe: Proposal | None = None
        while self.now - start < within:
            self.step(dt)
            if probe is not None and probe.outcome is not None:
                if probe.outcome.status is ProposeStatus.COMMITTED:
                    return self.now - start
                probe = None
            leader = self.cluster.leader()
            if probe is None and leader is not None:
                probe = self.propose(leader.name)
        return None

FAULTS = [
    "isolate", "heal", "heal", "heal_all", "partition", "one_way", "cut_link", "degrade",
    "degrade", "crash", "restart", "restart", "pause", "resume", "resume", "transfer",
]
