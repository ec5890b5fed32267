"""The simulated cluster: hosts (chassis power, BMC, hypervisor), a network (SimNet), a
Raft model with real misbehaviour (sim/raftmodel.py) and on every host a peer process
that runs the daemon's own decision code (sim/peer.py). Faults change any of these at
any time; an Observer (sim/invariants.py) judges what really happened, in simulated real
time. Same seed, same run."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
from collections.abc import Callable

from hacluster.core.fencelevels import fence_plan
from hacluster.core.manager import RunFence
from hacluster.core.silence import ProbePower
from hacluster.core.storage import CheckStorage
from hacluster.fsm import ClusterState, state_digest
from hacluster.fsm import commands as c
from hacluster.fsm import events as ev
from hacluster.fsm.codec import decode_command
from hacluster.fsm.events import Event
from hacluster.fsm.model import FenceAction, HostRole
from hacluster.sim.fakes import BmcMode, SimBmc, bmc_plan, probe_plan
from hacluster.sim.hypervisors import run_hypervisor_action
from hacluster.sim.invariants import Observer
from hacluster.sim.levels import LevelWalk
from hacluster.sim.machines import Attempt, HypervisorAction, SimHost, VmFaults
from hacluster.sim.net import SimNet
from hacluster.sim.peer import LEASE_CHANNEL, SimPeer
from hacluster.sim.raftmodel import RaftCluster, RaftModelConfig
from hacluster.sim.storage import SimStorage

REBOOT_S = 30.0  # a machine a watchdog reset boots again after this long


class World:
    def __init__(self, seed: int = 0, step_s: float = 0.05, check_digests: bool = True,
                 raft_config: RaftModelConfig | None = None) -> None:
        self.now = 0.0
        self.seed = seed
        self.step_s = step_s
        self.check_digests = check_digests
        self.rng = random.Random(seed)
        self.net = SimNet(random.Random(seed * 7919 + 1))
        self.net.set_fifo("raft")
        self.raft_config = raft_config or RaftModelConfig()
        self.raft: RaftCluster = None  # type: ignore[assignment]  # made by start()
        self.hosts: dict[str, SimHost] = {}
        self.outlets: dict[str, SimBmc] = {}  # fence devices by address (sim/levels.py)
        self.observer = Observer()
        self.vm_faults = VmFaults()
        self._dark: list[Attempt] = []  # fence attempts waiting on a dark BMC
        self.lease_blocked: set[str] = set()  # hosts whose lease port a firewall drops
        self.disk_leases = False  # libvirt's lock manager: a disk held elsewhere refuses a start
        self.storage = SimStorage()  # shared storage (sim/storage.py)
        self.timeline: list[tuple[float, str]] = []
        self.debug: list[tuple[float, str]] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count(1)
        self._requests = itertools.count(1)
        self.boots = itertools.count(1)  # peer process generations, per simulation

    # ------------------------------------------------------------ setup

    def add_host(self, name: str, memory_mib: int, vcpus: int, role: HostRole,
                 links: tuple[str, ...] = ("mgmt",), bmc: BmcMode = BmcMode.WORKS,
                 watchdog: tuple[float, float] | None = None,
                 storage: tuple[str, ...] = ()) -> None:
        """watchdog: (timeout_s, self_fence_s), or None for a host without one;
        storage: the shared directories it writes heartbeats to ([storage])."""
        self.hosts[name] = SimHost(name, role, memory_mib, vcpus, links,
                                   SimPeer(self, name, role), SimBmc(bmc), watchdog=watchdog,
                                   storage=storage)
        self.net.add_host(name, links)
        # Every peer's clocks: an arbitrary monotonic origin, a wall clock about right.
        self.hosts[name].peer.clock.mono_origin = self.rng.uniform(100.0, 1e6)

    def start(self) -> None:
        voters = [h.name for h in self.hosts.values() if h.votes]
        members = [h.name for h in self.hosts.values() if not h.votes]
        self.raft = RaftCluster(self.net, random.Random(self.seed * 104729 + 7), voters,
                                members, self.raft_config, start=self.now)
        for host in self.hosts.values():
            host.peer.start(self.now)

    def note(self, text: str, quiet: bool = False) -> None:
        (self.debug if quiet else self.timeline).append((self.now, text))

    def at(self, delay_s: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (self.now + delay_s, next(self._seq), fn))

    def next_request_id(self) -> int:
        return next(self._requests)

    # ------------------------------------------------------------ stepping

    def step(self) -> None:
        self.now = round(self.now + self.step_s, 6)
        while self._timers and self._timers[0][0] <= self.now + 1e-9:
            _, _, fn = heapq.heappop(self._timers)
            fn()
        self.raft.step(self.now)
        for d in self.net.due(self.now, [LEASE_CHANNEL]):
            self._deliver_lease(d.src, d.dst, d.link, d.payload)  # type: ignore[arg-type]
        for name in sorted(self.hosts):
            self.hosts[name].peer.step(self.now)
        if self.storage.disks or any(h.storage for h in self.hosts.values()):
            self.storage.write_disks(self)
        self._watchdogs()
        self._observe()

    def run_until(self, t: float) -> None:
        while self.now < t - 1e-9:
            self.step()

    def elect(self, preferred: str | None = None, limit_s: float = 10.0) -> None:
        """Wait for a first leader; with `preferred`, hand leadership to that voter
        (a scenario names its leader): the leader transfers it while it reaches no other
        voter, then the network is whole again."""
        deadline = self.now + limit_s
        while self.leader is None and self.now < deadline:
            self.step()
        while preferred and self.leader != preferred and self.now < deadline:
            leader = self.leader
            if leader is None:
                self.step()
                continue
            others = [v for v in self.raft.voters if v not in (leader, preferred)]
            for v in others:
                self.net.cut(leader, v, both=True)
            self.run_until(self.now + 0.2)  # the preferred voter holds the whole log
            self.hosts[leader].peer.raft.transfer_leadership()
            self.run_until(self.now + 0.5)
            for v in others:
                self.net.restore(leader, v, both=True)
        self.debug.append((self.now, f"first leader: {self.leader}"))

    @property
    def leader(self) -> str | None:
        """The peer that believes it leads in the highest term (None: nobody)."""
        leading = [(term, name) for name, h in self.hosts.items()
                   if h.peer.running and (term := h.peer.raft.leader_term()) is not None]
        return max(leading)[1] if leading else None

    def committed_index(self) -> int:
        """The highest log index committed anywhere by now (a follower learns it from a
        leader, a stale leader's is lower)."""
        return max((p.commit_index for p in self.raft.peers.values()), default=0)

    def truth(self) -> ClusterState | None:
        """The most advanced state any running peer applied."""
        peers = [h.peer for h in self.hosts.values() if h.peer.running]
        if not peers:
            return None
        return max(peers, key=lambda p: (p.proc.state.applied_index, p.name)).proc.state

    # ------------------------------------------------------------ the log, as applied

    def applied(self, peer: SimPeer, record: object, events: list[Event]) -> None:
        index, data, term = record.index, record.data, record.term  # type: ignore[attr-defined]
        first = self.observer.entry_applied(index, data, term, self.now)
        if self.check_digests:
            self.observer.check_digest(peer.name, index, state_digest(peer.proc.state),
                                       self.now)
        if first:
            self._first_commit(peer, data, events)

    def _first_commit(self, peer: SimPeer, data: bytes, events: list[Event]) -> None:
        for event in events:
            self.note(f"log[{event.index}] {event.kind} {event.subject}: {event.message}"
                      if event.subject else f"log[{event.index}] {event.kind}: {event.message}")
            if event.kind == ev.FENCE_CONFIRMED:
                if event.get("method") == "watchdog":
                    host = self.hosts[event.subject]
                    self.observer.watchdog_confirmed(event.subject, host.powered,
                                                     host.hyper.live(), self.now)
                self.observer.fence_confirmed(event.subject)
            if event.kind == ev.FENCE_REQUESTED and event.get("attempt") == "1" and \
                    "asked for a retry" not in event.message:  # an operator's: not capped
                s = peer.proc.state.settings
                self.observer.fence_incident(self.now, s.fence_cap, s.fence_window_s)
        envelope = decode_command(data)
        command = getattr(envelope, "command", None)
        if isinstance(command, c.VmReport) and command.observed in (
                "crashed", "stopped", "start-failed", "start-locked"):
            self.observer.host_vouched(command.host, command.name)
        if isinstance(command, c.SetVmOptions) and command.allowed_hosts is not None and \
                events:
            self.observer.limits_changed[command.name] = events[0].index

    # ------------------------------------------------------------ leases

    def send_lease(self, now: float, src: str, dst: str, link: str, data: bytes) -> None:
        if src in self.lease_blocked or dst in self.lease_blocked:
            return
        self.net.send(now, src, dst, LEASE_CHANNEL, data, link)

    def _deliver_lease(self, src: str, dst: str, link: str, data: bytes) -> None:
        host = self.hosts[dst]
        if not host.powered or dst in self.lease_blocked:
            return
        status = host.peer.raft.status.value
        if status == "paused":
            host.held_lease.append((src, link, data))  # the socket buffer keeps it
        elif host.peer.running:
            host.peer.on_lease(src, link, data, self.now)

    # ------------------------------------------------------------ fencing

    def run_fence(self, peer: SimPeer, order: RunFence, term: int) -> None:
        plan = fence_plan(peer.proc.state, order.host)
        if not plan.implicit:  # the host has fencing levels
            LevelWalk(self, peer, order, term, plan, peer.proc.generation).start()
            return
        target = self.hosts[order.host]
        deadline = peer.proc.state.settings.fence_timeout_s
        self.note(f"bmc {order.host}: {order.action.value} requested by {peer.name} (token "
                  f"{order.token}, BMC {target.bmc.mode.value})")
        self._attempt(Attempt(peer, order, term, self.now + min(5.0, deadline),
                               self.now + deadline, peer.proc.generation))

    def _attempt(self, a: Attempt) -> None:
        """Plan what the BMC does now; a dark BMC keeps the attempt waiting for a
        session until it gives up, and answers it if it comes back meanwhile
        (`set_bmc_mode`), as a real client's session retries do."""
        target = self.hosts[a.order.host]
        dark = target.bmc.mode is BmcMode.UNREACHABLE and target.bmc.fail_next == 0
        plan = bmc_plan(target.bmc, a.order.action, target.powered, a.deadline - self.now)
        if dark:
            plan = dataclasses.replace(plan, answer_after_s=a.gives_up - self.now)
            self._dark.append(a)
        if plan.power_off_after_s is not None and a.order.action in (FenceAction.OFF,
                                                                     FenceAction.REBOOT):
            # judged as commanded: a slow BMC may act after the host came back
            ttl = a.peer.proc.state.settings.lease_ttl_s
            deliberate = _deliberate(a.peer.proc.state, a.order.token)
            healthy_since = self._healthy_since(a.order.host, deliberate)
            if a.plans == 0:  # commanded once, when it was sent; a late BMC only acts late
                self.observer.fence_commanded(a.peer.name, a.term, self.now)
            self.at(plan.power_off_after_s, lambda: self._fence_power_off(
                a.order.host, a.peer.name, a.term, ttl, healthy_since, a.order.token))
        if plan.power_on_after_s is not None:
            self.at(plan.power_on_after_s, lambda: self.power_on(a.order.host, "BMC"))
        planned = a.plans = a.plans + 1

        def answer() -> None:
            if a.plans != planned:
                return  # the BMC came back: the attempt was planned again
            if a in self._dark:
                self._dark.remove(a)
            self.note(f"bmc {a.order.host}: {plan.result.value} ({plan.evidence})")
            a.peer.fence_answer(a.order, plan.result, plan.evidence, a.generation)

        self.at(plan.answer_after_s, answer)

    def set_bmc_mode(self, host: str, mode: BmcMode) -> None:
        """A BMC changes mode; attempts waiting on it while it was dark go on now."""
        self.hosts[host].bmc.mode = mode
        if mode is BmcMode.UNREACHABLE:
            return
        for a in [a for a in self._dark if a.order.host == host]:
            self._dark.remove(a)
            self.note(f"bmc {host}: answers the attempt of token {a.order.token} at last")
            self._attempt(a)

    def run_probe(self, peer: SimPeer, order: ProbePower) -> None:
        """A power read through the host's BMC (core/silence.py); commands nothing."""
        target = self.hosts[order.host]
        plan = probe_plan(target.bmc, target.powered)
        generation = peer.proc.generation

        def answer() -> None:
            self.note(f"bmc {order.host}: power read by {peer.name}: {plan.detail} "
                      f"({order.reason})", quiet=not plan.off)
            peer.probe_answer(order.host, plan.off, plan.detail, generation)

        self.at(plan.answer_after_s, answer)

    def run_storage_check(self, peer: SimPeer, order: CheckStorage) -> None:
        """The leader reads a host's heartbeats and disks (core/storage.py)."""
        at = peer.clock.mono(self.now)
        after, read = self.storage.read(peer.name, order, at, f"t={self.now:.2f}")
        generation = peer.proc.generation
        self.at(after, lambda: peer.storage_answer(read, generation))

    def fence_healthy_since(self, host: str, token: int, peer: SimPeer) -> float | None:
        return self._healthy_since(host, _deliberate(peer.proc.state, token))

    def _healthy_since(self, host: str, deliberate: bool) -> float | None:
        """Since when the host has been healthy (None: not now, or a deliberate fence)."""
        last_unhealthy = self.observer.last_unhealthy.get(host, 0.0)
        if deliberate or last_unhealthy >= self.now - self.step_s - 1e-9:
            return None  # (the last look was a step ago)
        return last_unhealthy

    def _fence_power_off(self, host: str, by: str, term: int, lease_s: float,
                         healthy_since: float | None, token: int = 0) -> None:
        target = self.hosts[host]
        if not target.powered:
            return
        self.observer.fence_power_off(host, by, term, self.now, healthy_since, lease_s)
        self.observer.fence_not_superseded(host, token, self.truth(), self.now)
        target.bmc.log.append((self.now, "off"))
        self.power_off(host, "BMC")

    # ------------------------------------------------------------ watchdogs

    def feed_watchdog(self, name: str) -> None:
        host = self.hosts[name]
        if host.powered and host.watchdog is not None:
            if not host.watchdog_armed:
                self.note(f"watchdog {name}: armed", quiet=True)
            host.watchdog_armed, host.watchdog_fed_at = True, self.now

    def disarm_watchdog(self, name: str) -> None:
        """A peer that stops cleanly disarms its watchdog (magic close)."""
        host = self.hosts[name]
        if host.watchdog_armed:
            host.watchdog_armed = False
            self.note(f"watchdog {name}: disarmed (its peer stopped cleanly)", quiet=True)

    def self_fence(self, name: str) -> None:
        """The peer's allowance ran out: it destroys its VMs (and feeds no more)."""
        host = self.hosts[name]
        self.note(f"peer {name}: self-fence: destroys {', '.join(host.hyper.live()) or 'no VM'}"
                  ", stops feeding its watchdog")
        host.hyper.domains.clear()

    def _reboot(self, name: str) -> Callable[[], None]:
        return lambda: self.power_on(name, "rebooted after its watchdog reset")

    def _watchdogs(self) -> None:
        for name in sorted(self.hosts):
            host = self.hosts[name]
            if host.watchdog is None or not (host.powered and host.watchdog_armed):
                continue
            if self.now - host.watchdog_fed_at >= host.watchdog[0] - 1e-9:
                self.observer.watchdog_reset(name, self.now, self._healthy(name))
                self.power_off(name, "watchdog")
                self.at(REBOOT_S, self._reboot(name))

    # ------------------------------------------------------------ power and processes

    def power_off(self, name: str, why: str) -> None:
        host = self.hosts[name]
        if not host.powered:
            return
        self.observer.power_lost(name, host.hyper.live(), self.now)
        host.powered = False
        host.watchdog_armed = False  # a power cut clears the watchdog
        host.hyper.domains.clear()
        host.held_lease.clear()
        host.peer.raft.crash()
        host.peer.stop()
        self.note(f"power {name}: off ({why})")

    def power_on(self, name: str, why: str) -> None:
        host = self.hosts[name]
        if host.powered:
            return
        host.powered = True
        host.bmc.log.append((self.now, "on"))
        self.note(f"power {name}: on ({why}); peer restarts from its journal")
        self.restart_peer(name)

    def crash_peer(self, name: str) -> None:
        """SIGKILL of the peer process; the host and its VMs keep running."""
        host = self.hosts[name]
        if host.powered and host.peer.raft.status.value != "down":
            host.peer.raft.crash()
            host.peer.stop()
            host.held_lease.clear()
            self.note(f"peer {name}: killed")

    def stop_peer(self, name: str) -> None:
        """SIGTERM of the peer: a planned shutdown (core/shutdown.py), then it exits."""
        host = self.hosts[name]
        if host.powered and host.peer.running:
            self.note(f"peer {name}: SIGTERM (planned shutdown)")
            host.peer.stop_cleanly(self.now)

    def restart_peer(self, name: str, rebuild: bool = False,
                     log_prefix: int | None = None) -> None:
        host = self.hosts[name]
        if not host.powered:
            return
        if host.peer.raft.status.value != "down":
            host.peer.raft.crash()
        host.peer.raft.restart(rebuild=rebuild, log_prefix=log_prefix)
        host.peer.start(self.now)

    def pause_peer(self, name: str) -> None:
        host = self.hosts[name]
        if host.powered and host.peer.raft.status.value == "up":
            host.peer.raft.pause()
            self.note(f"peer {name}: paused (SIGSTOP)")

    def resume_peer(self, name: str) -> None:
        host = self.hosts[name]
        if host.peer.raft.status.value != "paused":
            return
        host.peer.raft.resume()
        self.note(f"peer {name}: resumed (SIGCONT)")
        held, host.held_lease = host.held_lease, []
        for src, link, data in held:
            host.peer.on_lease(src, link, data, self.now)

    # ------------------------------------------------------------ the hypervisor

    def hypervisor_action(self, peer: SimPeer, action: HypervisorAction) -> None:
        run_hypervisor_action(self, peer, action)

    # ------------------------------------------------------------ operators

    def admin(self, command: c.Command, on_done: Callable[[bool], None] | None = None,
              force: bool = False) -> bool:
        """An operator command through the peer that leads now (False: no leader);
        `force` passes the version gate."""
        origin = self.leader
        if origin is None:
            self.note(f"admin: {command.TYPE} not sent (no leader)")
            return False

        def done(ok: bool, result: object) -> None:
            if not ok:
                self.note(f"admin: {command.TYPE} not committed")
            if on_done is not None:
                on_done(ok)

        self.hosts[origin].peer.propose(command, done, origin="operator", force=force)
        return True

    def admin_wait(self, command: c.Command, limit_s: float = 5.0) -> bool:
        """An operator command, waiting (in simulated time) until it committed."""
        outcome: list[bool] = []
        deadline = self.now + limit_s
        while not outcome and self.now < deadline:
            if self.admin(command, outcome.append):
                while not outcome and self.now < deadline:
                    self.step()
            else:
                self.step()
            if outcome and not outcome[0]:
                outcome.clear()
                self.step()  # (refused at once, e.g. by the version gate: time must pass)
        return bool(outcome)

    # ------------------------------------------------------------ what really runs

    def _observe(self) -> None:
        running: dict[str, list[str]] = {}
        for name in sorted(self.hosts):
            host = self.hosts[name]
            if host.powered:
                for vm in host.hyper.live():
                    running.setdefault(vm, []).append(name)
            if not self._healthy(name):
                self.observer.last_unhealthy[name] = self.now
        self.observer.check_single_copy(running, self.now)

    def _healthy(self, name: str) -> bool:
        """Powered, its peer running, and clean paths to and from a majority of voters."""
        host = self.hosts[name]
        if not (host.powered and host.peer.running) or name in self.lease_blocked \
                or host.peer.proc.fired:  # fenced itself: its VMs are gone, it renews not
            return False
        voters = [h for h in self.hosts.values() if h.votes]
        clean = sum(1 for v in voters if v.name == name or self._clean(name, v))
        return clean * 2 > len(voters)

    def _clean(self, a: str, other: SimHost) -> bool:
        b = other.name
        if not (other.powered and other.peer.running) or b in self.lease_blocked:
            return False
        return all(self.net.reachable(x, y) and not self.net.path(x, y).loss
                   for x, y in ((a, b), (b, a)))


def _deliberate(state: ClusterState, token: int) -> bool:
    """Was this fence's incident asked for whatever the lease said: a VM that failed to
    stop there, or an operator's retry? (Those may hit a healthy host by design.)"""
    record = state.fence_record(token)
    first = state.fence_record(record.incident) if record is not None else None
    reason = (first or record).reason if record is not None else ""
    return "fence wanted" in reason or "asked for a retry" in reason
