"""The simulated cluster: a manual clock, one in-memory Raft log with a simple
model of elections and partitions (only a leader with a majority commits; a
cut-off old leader keeps believing it leads for a while), fake hypervisors
and BMCs, and the real manager and agent code on every peer."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

from hacluster.core import agent as ag
from hacluster.core.manager import Decision, Manager, Propose, RunFence, StepDown
from hacluster.fsm import apply, encode_command, state_digest
from hacluster.fsm import commands as c
from hacluster.fsm.events import Event
from hacluster.fsm.model import ClusterState, HostRole
from hacluster.sim.fakes import BmcMode, FakeHypervisor, Network, bmc_plan
from hacluster.sim.invariants import Observer

ELECTION_DELAY_S = 0.3  # leader loss to a new leader (pysyncobj tuned: ~0.2-0.4 s)
STALE_LEADER_S = 3.0  # a cut-off leader believes it leads this long (leaderFallbackTimeout)


@dataclass
class SimHost:
    name: str
    role: HostRole
    memory_mib: int
    vcpus: int
    bmc: BmcMode = BmcMode.WORKS
    powered: bool = True
    boot: int = 0  # bumped at every power-on; stale timers compare it
    hyper: FakeHypervisor = field(default_factory=FakeHypervisor)
    state: ClusterState = field(default_factory=ClusterState)  # the peer's replica (journal)
    manager: Manager | None = None
    busy: set[str] = field(default_factory=set)
    throttle: ag.Throttle = field(default_factory=ag.Throttle)
    next_renewal: float = 0.0

    @property
    def votes(self) -> bool:
        return self.role in (HostRole.VOTER, HostRole.WITNESS)


@dataclass
class Faults:
    start_fails: set[str] = field(default_factory=set)
    stop_fails: set[str] = field(default_factory=set)
    migrate_fails: set[str] = field(default_factory=set)


class Simulation:
    def __init__(
        self,
        step_s: float = 0.05,
        start_s: float = 0.4,
        stop_s: float = 0.2,
        migrate_s: float = 0.6,
        check_digests: bool = True,
    ) -> None:
        self.now = 0.0
        self.step_s = step_s
        self.delays = {"start": start_s, "stop": stop_s, "migrate": migrate_s}
        self.check_digests = check_digests
        self.hosts: dict[str, SimHost] = {}
        self.net = Network()
        self.log: list[bytes] = []
        self.term = 0
        self.leader: str | None = None
        self.leaderless_since: float | None = 0.0
        self.stale: dict[str, float] = {}  # peers that still believe they lead, until
        self.faults = Faults()
        self.observer = Observer()
        self.timeline: list[tuple[float, str]] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0

    # ------------------------------------------------------------ setup

    def add_host(
        self,
        name: str,
        memory_mib: int,
        vcpus: int,
        role: HostRole,
        links: tuple[str, ...] = ("mgmt",),
        bmc: BmcMode = BmcMode.WORKS,
    ) -> None:
        self.hosts[name] = SimHost(name, role, memory_mib, vcpus, bmc)
        self.net.add(name, links)

    def note(self, text: str) -> None:
        self.timeline.append((self.now, text))

    def at(self, delay_s: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (self.now + delay_s, self._seq, fn))

    # ------------------------------------------------------------ connectivity / raft model

    def connected(self, a: str, b: str) -> bool:
        ha, hb = self.hosts[a], self.hosts[b]
        return ha.powered and hb.powered and self.net.connected(a, b)

    def _has_majority(self, name: str) -> bool:
        voters = [h for h in self.hosts.values() if h.votes]
        reach = sum(1 for v in voters if self.connected(name, v.name))
        return self.hosts[name].powered and self.hosts[name].votes and reach * 2 > len(voters)

    def _update_leadership(self) -> None:
        if self.leader is not None and not self._has_majority(self.leader):
            if self.hosts[self.leader].powered:
                self.stale[self.leader] = self.now + STALE_LEADER_S
                self.note(f"raft: leader {self.leader} lost its majority (still believes it leads)")
            else:
                self.note(f"raft: leader {self.leader} is down")
            self.leader, self.leaderless_since = None, self.now
        if (
            self.leader is None
            and self.leaderless_since is not None
            and self.now - self.leaderless_since >= ELECTION_DELAY_S - 1e-9
        ):
            self._elect()
        for name, until in sorted(self.stale.items()):
            host = self.hosts[name]
            if (
                self.now >= until
                or not host.powered
                or (self.leader is not None and self.connected(name, self.leader))
            ):
                del self.stale[name]
                if host.manager is not None:
                    host.manager.lose_leadership()
                self.note(f"raft: {name} steps down")

    def _hand_over(self, peer: str) -> None:
        """Raft leadership transfer (TimeoutNow) to the most up-to-date other voter."""
        manager = self.hosts[peer].manager
        if manager is not None:
            manager.lose_leadership()
        self.leader, self.leaderless_since = None, self.now
        self._elect(exclude=peer)

    def _elect(self, exclude: str = "") -> None:
        candidates = [n for n in sorted(self.hosts) if self._has_majority(n) and n != exclude]
        if not candidates:
            return
        # Raft elects a peer with the most complete log; ties go to the lowest name.
        best = min(candidates, key=lambda n: (-self.hosts[n].state.applied_index, n))
        self.term += 1
        self.leader, self.leaderless_since = best, None
        self.stale.pop(best, None)
        host = self.hosts[best]
        self._catch_up(host)
        host.manager = host.manager or Manager(best)
        self.note(f"raft: {best} elected leader (term {self.term})")
        self._execute(best, host.manager.become_leader(self.term, host.state, self.now))

    # ------------------------------------------------------------ the log

    def propose(self, origin: str, command: c.Command) -> tuple[bool, int]:
        """Commit if origin reaches the leader (which has a majority by construction)."""
        if self.leader is None or not self.connected(origin, self.leader):
            return False, 0
        self._seq += 1
        envelope = c.Envelope(command, f"sim-{self._seq}", origin, self.now, self.now)
        self.log.append(encode_command(envelope))
        index = len(self.log)
        leader = self.hosts[self.leader]
        self._catch_up(leader, record=True)
        for name in sorted(self.hosts):
            if name != self.leader and self.connected(name, self.leader):
                self._catch_up(self.hosts[name])
        self._after_commit(origin, command, index)
        return True, index

    def _catch_up(self, host: SimHost, record: bool = False) -> None:
        applied_any = False
        while host.state.applied_index < len(self.log):
            index = host.state.applied_index + 1
            events = apply(host.state, self.log[index - 1], index)
            applied_any = True
            if record:
                self._record_events(events)
        if applied_any and self.check_digests:
            self.observer.check_digest(
                host.name, host.state.applied_index, state_digest(host.state), self.now
            )

    def _record_events(self, events: list[Event]) -> None:
        for event in events:
            self.note(
                f"log[{event.index}] {event.kind} {event.subject}: {event.message}"
                if event.subject
                else f"log[{event.index}] {event.kind}: {event.message}"
            )
            if event.kind == "fence-confirmed":
                self.observer.fence_confirmed(event.subject)

    def _after_commit(self, origin: str, command: c.Command, index: int) -> None:
        if isinstance(command, c.VmReport) and command.observed in (
            "crashed",
            "stopped",
            "start-failed",
        ):
            self.observer.host_vouched(origin, command.name)
        if isinstance(command, c.RequestFence) and self.leader:
            self.observer.check_fence_cap(self.hosts[self.leader].state, self.now)

    # ------------------------------------------------------------ stepping

    def step(self) -> None:
        self.now = round(self.now + self.step_s, 6)
        while self._timers and self._timers[0][0] <= self.now + 1e-9:
            _, _, fn = heapq.heappop(self._timers)
            fn()
        self._update_leadership()
        if self.leader is not None:  # followers fetch what they missed (Raft's AppendEntries)
            for name in sorted(self.hosts):
                if self.connected(name, self.leader):
                    self._catch_up(self.hosts[name])
        self._renewals()
        for name in self._leaders():
            host = self.hosts[name]
            if host.manager is not None:
                self._execute(name, host.manager.tick(host.state, self.now, self.now))
        for name in sorted(self.hosts):
            if self.hosts[name].powered:
                self._agent(self.hosts[name])
        self._check_copies()

    def run_until(self, t: float) -> None:
        while self.now < t - 1e-9:
            self.step()

    def _leaders(self) -> list[str]:
        names = sorted(self.stale)
        if self.leader is not None:
            names.append(self.leader)
        return names

    def _renewals(self) -> None:
        for name in sorted(self.hosts):
            host = self.hosts[name]
            renew_s = host.state.settings.lease_renew_s
            if not host.powered or self.now < host.next_renewal:
                continue
            host.next_renewal = self.now + renew_s
            for leader in self._leaders():
                manager = self.hosts[leader].manager
                if manager is None or leader == name:
                    continue
                for link in self.net.shared_links(name, leader):
                    if self.hosts[leader].powered:
                        manager.renewal(name, link, self.now)

    def _check_copies(self) -> None:
        running: dict[str, list[str]] = {}
        for name in sorted(self.hosts):
            host = self.hosts[name]
            if host.powered:
                for vm in host.hyper.live():
                    running.setdefault(vm, []).append(name)
        self.observer.check_single_copy(running, self.now)

    # ------------------------------------------------------------ manager decisions

    def _execute(self, peer: str, decisions: list[Decision]) -> None:
        for decision in decisions:
            if isinstance(decision, Propose):
                committed, index = self.propose(peer, decision.command)
                manager = self.hosts[peer].manager
                if manager is not None:
                    manager.proposal_done(decision.key, decision.command, committed, index,
                                          own_term=committed)
            elif isinstance(decision, RunFence):
                self._run_fence(peer, decision)
            elif isinstance(decision, StepDown) and peer == self.leader:
                self.note(f"raft: {peer} steps down: {decision.reason}")
                self._hand_over(peer)

    def _run_fence(self, peer: str, order: RunFence) -> None:
        target = self.hosts[order.host]
        deadline = self.hosts[peer].state.settings.fence_timeout_s
        plan = bmc_plan(target.bmc, order.action, target.powered, deadline)
        self.note(
            f"bmc {order.host}: {order.action.value} requested by {peer} (token "
            f"{order.token}, BMC {target.bmc.value})"
        )
        if plan.power_off_after_s is not None:
            self.at(plan.power_off_after_s, lambda: self.power_off(order.host, "BMC"))
        if plan.power_on_after_s is not None:
            self.at(plan.power_on_after_s, lambda: self.power_on(order.host, "BMC"))
        fencer = self.hosts[peer]
        boot = fencer.boot

        def answer() -> None:
            self.note(f"bmc {order.host}: {plan.result.value} ({plan.evidence})")
            if not fencer.powered or fencer.boot != boot or fencer.manager is None:
                return
            decisions = fencer.manager.fence_result(
                order.host,
                order.token,
                plan.result,
                plan.evidence,
                f"sim-bmc {order.host}",
                self.now,
            )
            self._execute(peer, decisions)

        self.at(plan.answer_after_s, answer)

    # ------------------------------------------------------------ power

    def power_off(self, name: str, why: str) -> None:
        host = self.hosts[name]
        if not host.powered:
            return
        self.observer.power_lost(name, host.hyper.live(), self.now)
        host.powered = False
        host.hyper.domains.clear()
        host.busy.clear()
        host.manager = None
        self.stale.pop(name, None)
        self.note(f"power {name}: off ({why})")
        if name == self.leader:  # at once: a reboot within one step must not keep it leader
            self.note(f"raft: leader {name} is down")
            self.leader, self.leaderless_since = None, self.now

    def power_on(self, name: str, why: str) -> None:
        host = self.hosts[name]
        if host.powered:
            return
        host.powered, host.boot = True, host.boot + 1
        host.next_renewal = self.now
        host.throttle = ag.Throttle()
        self.note(
            f"power {name}: on ({why}); peer restarts from its journal at index "
            f"{host.state.applied_index}"
        )

    # ------------------------------------------------------------ agents

    def _agent(self, host: SimHost) -> None:
        fresh = (
            self.leader is not None
            and self.connected(host.name, self.leader)
            and host.state.applied_index == len(self.log)
        )
        actions = ag.reconcile(
            host.name,
            host.state,
            host.hyper.domains,
            frozenset(host.busy),
            fresh,
            (host.memory_mib, host.vcpus),
        )
        for action in actions:
            self._agent_action(host, action)

    def _agent_action(self, host: SimHost, action: ag.AgentAction) -> None:
        if isinstance(action, ag.Report):
            key = encode_command(c.Envelope(action.command))
            if host.throttle.allow(key, self.now):
                self.propose(host.name, action.command)
        elif isinstance(action, ag.DestroyVm):
            host.hyper.domains.pop(action.name, None)
            self.note(f"agent {host.name}: destroyed {action.name} ({action.reason})")
        elif isinstance(action, ag.StartVm):
            self._later(host, action.name, "start", lambda: self._started(host, action))
        elif isinstance(action, ag.StopVm):
            self._later(host, action.name, "stop", lambda: self._stopped(host, action))
        elif isinstance(action, ag.MigrateVm):
            self._later(host, action.name, "migrate", lambda: self._migrated(host, action))

    def _later(self, host: SimHost, vm: str, op: str, fn: Callable[[], None]) -> None:
        host.busy.add(vm)
        boot = host.boot

        def done() -> None:
            if host.powered and host.boot == boot:
                host.busy.discard(vm)
                fn()

        self.at(self.delays[op], done)

    def _report(
        self, host: SimHost, vm: str, placement: int, observed: str, detail: str = ""
    ) -> None:
        self.propose(
            host.name,
            c.VmReport(
                name=vm, host=host.name, placement=placement, observed=observed, detail=detail
            ),
        )

    def _started(self, host: SimHost, action: ag.StartVm) -> None:
        if action.name in self.faults.start_fails:
            self._report(host, action.name, action.placement, "start-failed", "sim fault")
            return
        self.observer.vm_started(action.name, host.name, self.now)
        host.hyper.domains[action.name] = ag.DomainState.RUNNING
        self.note(f"agent {host.name}: started {action.name}")
        self._report(host, action.name, action.placement, "started")

    def _stopped(self, host: SimHost, action: ag.StopVm) -> None:
        if action.name in self.faults.stop_fails:
            self._report(host, action.name, action.placement, "stop-failed", "sim fault")
            return
        host.hyper.domains.pop(action.name, None)
        self.note(f"agent {host.name}: stopped {action.name}")
        self._report(host, action.name, action.placement, "stopped")

    def _migrated(self, host: SimHost, action: ag.MigrateVm) -> None:
        target = self.hosts.get(action.target)
        ok = (
            target is not None
            and self.connected(host.name, action.target)
            and action.name not in self.faults.migrate_fails
            and action.name in host.hyper.domains
        )
        if not ok or target is None:
            self._report(host, action.name, action.placement, "migrate-failed", "sim fault")
            return
        target.hyper.domains[action.name] = host.hyper.domains.pop(action.name)
        self.note(f"agent {host.name}: migrated {action.name} to {action.target}")
        self._report(host, action.name, action.placement, "migrated")

    # ------------------------------------------------------------ admin

    def admin(self, command: c.Command) -> bool:
        """An operator command, sent through the current leader."""
        origin = self.leader
        if origin is None:
            self.note(f"admin: {command.TYPE} not committed (no leader)")
            return False
        committed, _ = self.propose(origin, command)
        return committed
