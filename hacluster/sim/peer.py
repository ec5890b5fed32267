"""One simulated host's peer process: the daemon's glue around the pure core.

It runs exactly the code the daemon runs for every decision that safety rests on: the
state machine (`fsm.apply`), the leader loop and Manager (core/leaderloop.py), read
barriers (core/readindex.py), the lease protocol (core/renewal.py), the log clock
(core/logclock.py) and the agent (core/agent.py). What differs is only how bytes and
time move: Raft is the simulator's model (sim/raftmodel.py), datagrams cross SimNet,
clocks are the simulated time plus this peer's offsets. Each method below says which
daemon module it mirrors.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hacluster.core import agent as ag
from hacluster.core import shutdown as sd
from hacluster.core import versions
from hacluster.core.leaderloop import LeaderLoop
from hacluster.core.logclock import LogClock
from hacluster.core.manager import Decision, Propose, RunFence, StepDown
from hacluster.core.readindex import ReadIndex, ReadMark, state_is_fresh
from hacluster.core.registration import registration
from hacluster.core.renewal import (
    Ack,
    LeaseCodec,
    LeaseEndpoint,
    Renewal,
    Targets,
    renewal_targets,
)
from hacluster.core.selffence import SelfFence, Verdict
from hacluster.core.silence import Challenge, ProbePower
from hacluster.core.storage import CheckStorage, StorageRead
from hacluster.fsm import ClusterState, apply, decode_command, encode_command
from hacluster.fsm import commands as c
from hacluster.fsm.codec import UnreadableEntry
from hacluster.fsm.events import Event
from hacluster.fsm.model import FenceResult, HostRole, Watchdog, WatchdogKind
from hacluster.fsm.states import HostState
from hacluster.ports import ProposeStatus
from hacluster.sim.machines import DELAYS
from hacluster.sim.raftmodel import Status
from hacluster.sim.storage import CHECKS, INTERVAL_S, READ_TIMEOUT_S

if TYPE_CHECKING:
    from hacluster.sim.world import World

UP = Status.UP

MANAGER_TICK_S = 0.1  # config.py timing defaults
AGENT_TICK_S = 0.2
BARRIER_TIMEOUT_S = 1.0
REGISTER_EVERY_S = 0.2
FENCE_CONFIRM_TIMEOUT_S = 1.0
LEASE_CHANNEL = "lease"
SIM_SECRET = "simulated-cluster-secret-0123456789"
# [timing] stop_timeout_s, [hypervisor] shutdown_timeout_s, [timing] stop_grace_s
SHUTDOWN_BUDGET = sd.Budget(total_s=60.0, vm_shutdown_s=5.0, grace_s=2.0)


@dataclass
class PeerClock:
    """This peer's clocks: monotonic = simulated time + an arbitrary origin; wall = the
    simulated time + a skew that faults change (stepped, an hour off)."""

    mono_origin: float = 0.0
    wall_skew: float = 0.0

    def mono(self, now: float) -> float:
        return now + self.mono_origin

    def wall(self, now: float) -> float:
        return 1.7e9 + now + self.wall_skew


@dataclass
class Barrier:
    """An agent's read barrier in flight (daemon/peer.py `_fresh`)."""

    domains: dict[str, ag.DomainState]  # libvirt as read before asking
    read: ag.LibvirtRead  # what the agent knew as it read them
    seq: int  # the renewal round that asks (0: the leader asks itself)
    give_up: float
    committed_before: int  # what had committed when it asked (the observer's truth)
    read_index: int | None = None


@dataclass
class PendingRead:
    on_answer: Callable[[ReadMark], None]
    give_up: float
    on_timeout: Callable[[], None] = lambda: None


@dataclass
class Process:
    """Everything a peer process holds in memory: gone when it crashes or its host
    loses power; rebuilt from the Raft log when it starts again."""

    state: ClusterState = field(default_factory=ClusterState)
    clock: LogClock = field(default_factory=LogClock)
    loop: LeaderLoop | None = None
    lease: LeaseEndpoint | None = None
    reads: ReadIndex[int] = field(default_factory=ReadIndex)
    pending_reads: dict[int, PendingRead] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)
    throttle: ag.Throttle = field(default_factory=ag.Throttle)
    barrier: Barrier | None = None
    next_manager: float = 0.0
    next_agent: float = 0.0
    next_renewal: float = 0.0
    next_register: float = 0.0
    registering: bool = False
    generation: int = 0
    self_fence: SelfFence | None = None  # with a watchdog (daemon/selffencing.py)
    fired: bool = False  # fenced itself: renews and starts nothing any more
    shutdown: sd.PlannedShutdown | None = None  # SIGTERM: a planned shutdown under way
    agent_stopped: bool = False  # the planned shutdown stopped the agent
    leaving_since: float | None = None  # the plan said leave; its watchdog is disarmed
    disarm_said: bool = False  # the watchdog's "disarmed" record committed


class SimPeer:
    def __init__(self, world: World, name: str, role: HostRole) -> None:
        self.world = world
        self.name = name
        self.role = role
        self.lacks: frozenset[str] = frozenset()  # command types an older release lacks
        self.halted = ""  # why this peer stopped applying (an entry it cannot read)
        self.clock = PeerClock()
        self.proc = Process()
        self._read_ids = itertools.count(1)

    # ------------------------------------------------------------ lifecycle

    @property
    def raft(self) -> Any:
        return self.world.raft.peers[self.name]

    @property
    def running(self) -> bool:
        return self.proc.loop is not None and self.world.raft.peers[self.name].status is UP

    def start(self, now: float) -> None:
        """A new process (daemon/peer.py `_start`): state rebuilt from the journal."""
        self.proc = Process(generation=next(self.world.boots))
        self.proc.loop = LeaderLoop(self.name, MANAGER_TICK_S)
        self.proc.lease = LeaseEndpoint(self.name, LeaseCodec(SIM_SECRET),
                                        self.proc.generation.to_bytes(8, "big"))
        self.proc.next_manager = self.proc.next_agent = self.proc.next_renewal = now
        host = self.world.hosts[self.name]
        if host.watchdog is not None and self.role is not HostRole.WITNESS:
            self.proc.self_fence = SelfFence(host.watchdog[1])
            self.raft.enable_carry()  # daemon/peer.py `_start_self_fencing`
        self.proc.loop.manager.storage.configure(CHECKS, INTERVAL_S, bool(host.storage),
                                                 READ_TIMEOUT_S)

    def stop(self) -> None:
        """The process is gone (crash, power loss): nothing of it survives but the log."""
        self.proc = Process()

    def stop_cleanly(self, now: float) -> None:
        """SIGTERM (daemon/peer.py `_shutdown`): the leader loop stops deciding, and the
        planned shutdown (core/shutdown.py) runs until it says leave."""
        if self.running and self.proc.shutdown is None:
            self.proc.shutdown = sd.PlannedShutdown(self.name, self.clock.mono(now),
                                                    SHUTDOWN_BUDGET)

    # ------------------------------------------------------------ one step

    def step(self, now: float) -> None:
        if not self.running:
            return
        mono = self.clock.mono(now)
        try:
            self.raft.apply_committed(self._apply)
        except UnreadableEntry as exc:  # daemon/halt.py: stop, say why, never skip
            self.halted = str(exc)
            self.world.note(f"peer {self.name}: halted (exit 76): {exc}")
            self.raft.crash()
            self.stop()
            return
        self._serve_reads(mono)
        if now >= self.proc.next_manager - 1e-9:
            self.proc.next_manager = now + MANAGER_TICK_S
            self._lead(now)
        if now >= self.proc.next_renewal - 1e-9 and not self.proc.fired:
            self.proc.next_renewal = now + self.proc.state.settings.lease_renew_s
            self._renew(now)
            self._allow_self_fencing(mono)
            paths = self.world.hosts[self.name].storage  # daemon/storage.py HeartbeatWriter
            if paths and self.role is not HostRole.WITNESS:
                self.world.storage.write_heartbeat(self.name, paths, self.proc.generation, now)
        if now >= self.proc.next_register - 1e-9:
            self.proc.next_register = now + REGISTER_EVERY_S
            self._register()
        self._watchdog(now, mono)
        if self.proc.shutdown is not None:
            self._planned_shutdown(now)
            if not self.running:
                return
        if self.role is not HostRole.WITNESS and now >= self.proc.next_agent - 1e-9 \
                and not self.proc.fired and not self.proc.agent_stopped:
            self.proc.next_agent = now + AGENT_TICK_S
            self._agent(now)

    # ---------------------------------------------------- self-fencing (daemon/selffencing.py)

    def _watchdog(self, now: float, mono: float) -> None:
        policy = self.proc.self_fence
        if policy is None:
            return
        verdict = policy.verdict(mono)
        if verdict is Verdict.FEED:
            self.world.feed_watchdog(self.name)
        elif verdict is Verdict.SELF_FENCE and not self.proc.fired:
            self.proc.fired = True
            self.world.self_fence(self.name)
            self.raft.crash()  # daemon/peer.py `_self_fenced`: it stops answering Raft

    def _allow_self_fencing(self, mono: float) -> None:
        """daemon/peer.py `_allow_self_fencing`: leading, grant the partners' Raft answers
        once a majority confirms (which allows our own host too); following, take the
        latest grant a leader sent."""
        policy, manager = self.proc.self_fence, self.manager
        if manager is not None and manager.ready and self.raft.leader_term() == manager.term:
            answers = self.raft.answers()

            def confirmed(mark: ReadMark) -> None:
                if policy is not None:
                    policy.allow_from(mono)
                if not manager.leading or mark.term != manager.term:
                    return
                known = {n: a for n, a in answers.items() if n in self.proc.state.hosts}
                for name in self.raft.grant(known, mark.term):  # only grants that moved
                    manager.acked(name, self.clock.mono(self.world.now))

            self.read(confirmed, BARRIER_TIMEOUT_S)
        anchor = self.raft.allowed_since()
        if policy is not None and anchor is not None:
            policy.allow_from(self.clock.mono(anchor))

    def wanted_watchdog(self) -> Watchdog:
        host = self.world.hosts[self.name]
        if host.watchdog is None or self.proc.self_fence is None:
            return Watchdog()
        return Watchdog(WatchdogKind.COMMAND, host.watchdog[0], host.watchdog[1],
                        host.watchdog_armed)

    # ------------------------------------------------------------ registration (daemon/peer.py)

    def addresses(self) -> tuple[str, ...]:
        return tuple(f"{ln}={self.name}" for ln in sorted(self.world.net.links_of(self.name)))

    def _register(self) -> None:
        """Once caught up, tell the cluster state what it must know about this host."""
        raft = self.raft
        if self.proc.registering or raft.leader is None or self.proc.shutdown or \
                raft.applied_index < raft.commit_index:
            return
        todo = registration(self.name, self.proc.state, self.role, self.addresses(),
                            understands=self.understands(),
                            heartbeat_paths=self.world.hosts[self.name].storage)
        host = self.proc.state.hosts.get(self.name)
        wanted = self.wanted_watchdog()
        if todo is None and host is not None and host.watchdog != wanted:
            todo = (c.ReportWatchdog(name=self.name, watchdog=wanted), "watchdog record")
        if todo is None:
            return
        self.proc.registering = True
        generation = self.proc.generation

        def done(ok: bool, result: Any) -> None:
            if self.proc.generation == generation:
                self.proc.registering = False

        self.propose(todo[0], done)

    # ------------------------------------------------------------ the replica (daemon/replica.py)

    def understands(self) -> versions.HostVersions:
        build = versions.this_peer(self.name)
        return versions.HostVersions(
            self.name, tuple(cv for cv in build.commands if cv[0] not in self.lacks),
            build.entry_formats)

    def _apply(self, record: Any) -> list[Event] | None:
        if record.data is None:  # a Raft no-op never reaches the state machine
            return None
        state = self.proc.state
        if self.lacks:  # an older release: a command it does not know is undecodable
            decoded = decode_command(record.data)
            kind = getattr(getattr(decoded, "command", None), "TYPE", "")
            if kind in self.lacks:
                raise UnreadableEntry(record.index, c.Undecodable(
                    f"unknown command type {kind!r}", entry_format=2, command_type=kind,
                    version=1))
        events = apply(state, record.data, record.index)
        self.proc.clock.observe(state.log_time, self.clock.mono(self.world.now))
        self.world.applied(self, record, events)
        return events

    def log_now(self, now: float) -> float:
        return self.proc.clock.now(self.clock.mono(now))

    # ------------------------------------------------------------ proposals (daemon/proposer.py)

    def propose(self, command: c.Command, on_done: Callable[[bool, Any], None] | None = None,
                origin: str = "", force: bool = False) -> None:
        """`force`: past the version gate (what a test, or a broken proposer, does)."""
        now = self.world.now
        admission = versions.admit(self.proc.state, command.TYPE, command.wire_version())
        if force and not admission.admitted:
            admission = versions.Admission(entry_format=1)
        if not admission.admitted:  # the version gate (daemon/proposer.py `admit`)
            self.world.note(f"{self.name}: {command.TYPE} refused by the version gate: "
                            f"{admission.refusal}", quiet=True)
            if on_done is not None:
                on_done(False, None)
            return
        envelope = c.Envelope(command, f"{self.name}-{self.world.next_request_id()}",
                              origin or self.name, self.clock.wall(now), self.log_now(now))
        generation = self.proc.generation

        def done(result: Any) -> None:
            if on_done is not None and self.proc.generation == generation:
                on_done(result.status is ProposeStatus.COMMITTED, result)

        self.raft.propose(encode_command(envelope, admission.entry_format), done)

    # ------------------------------------------------------------ leading (daemon/leader.py)

    def _lead(self, now: float) -> None:
        loop = self.proc.loop
        assert loop is not None
        mono = self.clock.mono(now)
        heard = {host: self.clock.mono(at) for host, at in self.raft.heard_from().items()}
        hears = {host: ages for host, (ages, _) in self.raft.hears_reports().items()}
        term = None if self.proc.shutdown is not None else self.raft.leader_term()
        result = loop.tick(term, self.proc.state, mono, self.log_now(now),
                           self.proc.clock.running, heard, hears)
        if result.start_log_clock and self.proc.state.log_time <= 0:
            self.proc.clock.start(self.clock.wall(now), mono)
        for note in result.notes:
            self.world.note(f"{self.name}: {note.what}: {note.why}", quiet=True)
        for d in result.decisions:
            self._dispatch(d)

    def _dispatch(self, d: Decision) -> None:
        manager = self.manager
        if manager is None:
            return
        if isinstance(d, Propose):
            self.propose(d.command, lambda ok, r, d=d: manager.proposal_done(  # type: ignore[misc]
                d.key, d.command, ok, r.index if r else 0, bool(r and r.own_term)))
        elif isinstance(d, RunFence):
            self._confirm_then_fence(d)
        elif isinstance(d, StepDown):
            self.world.note(f"raft: {self.name} steps down: {d.reason}")
            self.raft.transfer_leadership(d.target or None)
        elif isinstance(d, ProbePower):
            self.world.run_probe(self, d)
        elif isinstance(d, Challenge):
            self._challenge(d)
        elif isinstance(d, CheckStorage):
            self.world.run_storage_check(self, d)

    @property
    def manager(self) -> Any:
        return self.proc.loop.manager if self.proc.loop is not None else None

    def _confirm_then_fence(self, order: RunFence) -> None:
        """Confirm the majority right before acting (daemon/leader.py `_fence`)."""
        manager = self.manager

        def confirmed(mark: ReadMark) -> None:
            if manager.fence_still_ours(order.token, mark.term) and \
                    self.raft.leader_term() == mark.term:
                self.world.run_fence(self, order, mark.term)
            else:
                skipped()

        def skipped() -> None:
            follow = manager.fence_result(order.host, order.token, FenceResult.ERROR,
                                          "leadership not confirmed", "none",
                                          self.clock.mono(self.world.now))
            for d in follow:
                self._dispatch(d)

        if not self.read(confirmed, FENCE_CONFIRM_TIMEOUT_S, skipped):
            skipped()

    def probe_answer(self, host: str, off: bool, detail: str, generation: int) -> None:
        manager = self.manager
        if manager is not None and self.proc.generation == generation and self.running:
            manager.probe_result(host, off, detail, self.clock.mono(self.world.now))

    def storage_answer(self, read: StorageRead, generation: int) -> None:
        manager = self.manager
        if manager is not None and self.proc.generation == generation and self.running:
            manager.storage_result(read, self.clock.mono(self.world.now))

    def _challenge(self, d: Challenge) -> None:
        """A silent host's last chance (daemon/leader.py `_challenge`): on every link."""
        lease, term = self.proc.lease, self.raft.leader_term()
        if lease is None or term is None:
            return
        now = self.world.now
        mine = set(self.world.net.links_of(self.name))
        routes = [(ln, d.host) for ln in self.world.net.links_of(d.host) if ln in mine]
        self.world.note(f"{self.name}: challenge {d.host}: {d.reason}", quiet=True)
        for out in lease.challenge(d.host, routes, term, self.clock.mono(now),
                                   self.proc.state.settings.lease_ttl_s):
            self.world.send_lease(now, self.name, out.address, out.link, out.datagram)

    def fence_answer(self, order: RunFence, result: FenceResult, evidence: str,
                     generation: int, method: str = "") -> None:
        manager = self.manager
        if manager is None or self.proc.generation != generation or not self.running:
            return
        for d in manager.fence_result(order.host, order.token, result, evidence,
                                      method or f"sim-bmc {order.host}",
                                      self.clock.mono(self.world.now)):
            self._dispatch(d)

    # ------------------------------------------------------------ read index (daemon/leader.py)

    def read(self, on_answer: Callable[[ReadMark], None], timeout_s: float,
             on_timeout: Callable[[], None] = lambda: None) -> bool:
        mark = self.raft.read_mark()
        if mark is None:
            return False
        key = next(self._read_ids)
        self.proc.reads.request(key, ReadMark(mark.term, mark.commit_index, mark.seq))
        self.proc.pending_reads[key] = PendingRead(on_answer, self.world.now + timeout_s,
                                                   on_timeout)
        return True

    def _serve_reads(self, mono: float) -> None:
        proc = self.proc
        if not proc.pending_reads:
            return
        # core/readindex.py counts the leader itself: only the other voters' echoes
        echoes = {v: seq for v, seq in self.raft.echoes().items() if v != self.name}
        for key, mark in proc.reads.release(self.raft.leader_term(),
                                            len(self.world.raft.voters), echoes):
            pending = proc.pending_reads.pop(key, None)
            if pending is not None:
                pending.on_answer(mark)
        now = self.world.now
        for key, pending in sorted(proc.pending_reads.items()):
            if now > pending.give_up:
                del proc.pending_reads[key]
                pending.on_timeout()

    # ------------------------------------------------------------ leases (daemon/leases.py)

    def renewal_targets(self) -> Targets:
        """Every voter, on the links both hosts have (daemon/peer.py `renewal_targets`)."""
        voters = {name: (name, host.addresses or self._addresses_of(name))
                  for name, host in self.proc.state.hosts.items()
                  if host.role is not HostRole.MEMBER and host.state is not HostState.REMOVED}
        fallback = {name: name for name in self.world.raft.voters}
        return renewal_targets(voters, self.name, set(self.world.net.links_of(self.name)),
                               fallback)

    def _addresses_of(self, name: str) -> tuple[str, ...]:
        return tuple(f"{ln}={name}" for ln in self.world.net.links_of(name))

    def _renew(self, now: float) -> int:
        lease = self.proc.lease
        assert lease is not None
        settings = self.proc.state.settings
        targets = self.renewal_targets()
        seq, datagrams = lease.round(targets, self.clock.mono(now), self.clock.wall(now),
                                     settings.lease_renew_s)
        if self.proc.self_fence is not None:
            self.proc.self_fence.sent(seq, self.clock.mono(now))
        # seen times in simulated time: the reply computes ages when it leaves (like
        # raft/engine.py `ha_hears_now`)
        origin = self.clock.mono_origin
        self.raft.hears = {h: t - origin for h, t in
                           lease.heard(self.clock.mono(now), settings.lease_ttl_s).items()}
        for out in datagrams:
            self.world.send_lease(now, self.name, out.address, out.link, out.datagram)
        return seq

    def on_lease(self, src: str, link: str, data: bytes, now: float) -> None:
        lease = self.proc.lease
        if lease is None or not self.running:
            return
        mono = self.clock.mono(now)
        ttl = self.proc.state.settings.lease_ttl_s
        got = lease.receive(data, mono, ttl)
        if got.ack is not None:
            self._ack(got.ack)
            if got.follow_up:
                self._renew(now)
        elif got.renewal is not None:
            self._renewal(got.renewal, got.credit_at, src, link, ttl)

    def _renewal(self, r: Renewal, credit_at: float | None, src: str, link: str,
                 ttl: float) -> None:
        manager = self.manager
        if manager is None or self.raft.leader_term() is None or self.proc.shutdown:
            return  # (daemon/leader.py `renewal`: a stopping peer credits nothing)
        if credit_at is not None:
            manager.renewal(r.host, r.link, credit_at)
        lease = self.proc.lease
        assert lease is not None

        def answer(mark: ReadMark) -> None:
            now = self.world.now
            data = lease.answer(r, mark.term, mark.commit_index, self.clock.mono(now), ttl)
            self.world.send_lease(now, self.name, src, link, data)
            if manager.leading and mark.term == manager.term:
                manager.acked(r.host, self.clock.mono(now))

        self.read(answer, BARRIER_TIMEOUT_S)

    def _ack(self, ack: Ack) -> None:
        if self.proc.self_fence is not None:
            self.proc.self_fence.acknowledged(ack.seq, ack.challenge)
        barrier = self.proc.barrier
        if barrier is not None and barrier.seq and ack.seq >= barrier.seq and \
                barrier.read_index is None:
            barrier.read_index = ack.commit_index

    # ------------------------------------------------------------ the agent (daemon/agent.py)

    def _agent(self, now: float) -> None:
        proc = self.proc
        barrier = proc.barrier
        if barrier is not None:
            if state_is_fresh(self.raft.applied_index, barrier.read_index):
                proc.barrier = None
                self.world.observer.fresh_read(self.name, self.raft.applied_index,
                                               barrier.committed_before, now)
                self._act(barrier.domains, True, barrier.read)
            elif now > barrier.give_up:
                proc.barrier = None
                self._act(barrier.domains, False, barrier.read)
            return
        read = ag.libvirt_read(self.name, proc.state, frozenset(proc.busy))
        domains = dict(self.world.hosts[self.name].hyper.domains)
        if self._decide(domains, True, read) == self._decide(domains, False, read):
            self._act(domains, False, read)
            return
        self._ask_barrier(domains, read, now)

    def _ask_barrier(self, domains: dict[str, ag.DomainState], read: ag.LibvirtRead,
                     now: float) -> None:
        give_up = now + BARRIER_TIMEOUT_S
        before = self.world.committed_index()
        manager = self.manager
        if manager is not None and manager.ready and \
                self.raft.leader_term() == manager.term:
            barrier = Barrier(domains, read, 0, give_up, before)

            def answered(mark: ReadMark) -> None:
                barrier.read_index = mark.commit_index

            if self.read(answered, BARRIER_TIMEOUT_S):
                self.proc.barrier = barrier
            return
        self.proc.barrier = Barrier(domains, read, self._renew(now), give_up, before)

    def _decide(self, domains: dict[str, ag.DomainState], fresh: bool,
                read: ag.LibvirtRead) -> list[ag.AgentAction]:
        host = self.world.hosts[self.name]
        return ag.reconcile(self.name, self.proc.state, domains, frozenset(self.proc.busy),
                            fresh, (host.memory_mib, host.vcpus), read)

    def _act(self, domains: dict[str, ag.DomainState], fresh: bool,
             read: ag.LibvirtRead) -> None:
        for action in self._decide(domains, fresh, read):
            if isinstance(action, ag.Report):
                self.report(action.command)
            else:
                self.world.hypervisor_action(self, action)  # start, stop, destroy, migrate

    def report(self, command: c.Command) -> None:
        command = c.keeps_trying(command)  # (daemon/agent.py `_send_report`)
        while isinstance(command, c.VmReport) and not versions.admit(
                self.proc.state, command.TYPE, command.wire_version()).admitted:
            older = command.for_older_peers()  # (daemon/agent.py `_report`)
            if older is None:
                break
            command = older
        key = (command.TYPE, getattr(command, "name", ""), getattr(command, "observed", ""),
               getattr(command, "placement", 0))
        if self.proc.throttle.allow(key, self.world.now):
            self.propose(command)

    # ------------------------------------------------------------ SIGTERM (daemon/shutdown.py)

    def _planned_shutdown(self, now: float) -> None:
        plan = self.proc.shutdown
        assert plan is not None
        if self.proc.leaving_since is not None:
            self._leave(now)
            return
        raft, state = self.raft, self.proc.state
        domains = dict(self.world.hosts[self.name].hyper.domains) if plan.wants_domains \
            else None
        action = plan.step(sd.View(self.clock.mono(now), state, raft.leader_term() is not None,
                                   raft.leader or "", raft.term, domains))
        for note in plan.notes:
            self.world.note(f"peer {self.name}: planned shutdown: {note}")
        plan.notes.clear()
        if isinstance(action, sd.Leave):
            self.world.note(f"peer {self.name}: stops: {action.reason}")
            self._leave(now)
        elif isinstance(action, sd.HandOff):
            self.world.note(f"raft: {self.name} hands leadership over: {action.reason}")
            raft.transfer_leadership(None)
        elif isinstance(action, sd.Propose):
            generation = self.proc.generation

            def done(ok: bool, result: Any) -> None:
                if self.proc.generation == generation and self.proc.shutdown is plan:
                    plan.proposed(ok, self.clock.mono(self.world.now))

            self.propose(action.command, done)
        elif isinstance(action, sd.StopAgent):
            self.proc.agent_stopped = True
            self.proc.barrier = None
        if self.proc.agent_stopped and not self.proc.busy and plan.stopping_agent:
            plan.agent_stopped(True)  # (daemon/agent.py `quiesce`: nothing in flight)
        elif isinstance(action, sd.ShutDownVms):
            self._shut_down(plan, action.waves)

    def _leave(self, now: float) -> None:
        """daemon/peer.py `_shutdown` after the plan: a watchdog is said disarmed, then
        disarmed (left armed if that could not be said), and the process exits."""
        generation, proc = self.proc.generation, self.proc
        record = proc.state.hosts.get(self.name)
        if proc.leaving_since is not None:
            if proc.disarm_said:
                self.world.disarm_watchdog(self.name)
            elif now - proc.leaving_since < SHUTDOWN_BUDGET.grace_s:
                return
            else:
                self.world.note(f"watchdog {self.name}: left armed (disarming not recorded)")
        elif record is not None and record.watchdog.armed:
            proc.leaving_since = now

            def said(ok: bool, result: Any) -> None:
                if ok and self.proc.generation == generation:
                    self.proc.disarm_said = True  # (the process exits at its next step)

            self.propose(c.ReportWatchdog(name=self.name, watchdog=dataclasses.replace(
                record.watchdog, armed=False)), said)
            return
        else:
            self.world.disarm_watchdog(self.name)
        self.raft.crash()  # the process exits (cleanly: nothing else differs here)
        self.stop()

    def _shut_down(self, plan: sd.PlannedShutdown, waves: tuple[tuple[str, ...], ...]) -> None:
        """daemon/shutdown.py `_shut_down`: wave after wave, each taking a VM stop."""
        host = self.world.hosts[self.name]
        generation = self.proc.generation

        def finish() -> None:
            if self.proc.generation == generation and host.powered:
                plan.vms_shut_down(self.proc.state, dict(host.hyper.domains))

        def run(left: tuple[tuple[str, ...], ...]) -> None:
            self.world.note(f"peer {self.name}: shuts down {', '.join(left[0])}")

            def done() -> None:
                for name in left[0]:  # (asked of libvirt already: stops whatever follows)
                    host.hyper.domains.pop(name, None)
                if len(left) == 1:
                    finish()
                elif self.proc.generation == generation and host.powered:
                    run(left[1:])

            self.world.at(DELAYS["stop"], done)

        if waves:
            run(waves)
        else:
            self.world.at(DELAYS["stop"], finish)
