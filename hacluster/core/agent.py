"""Agent decisions, made on every host: make the local hypervisor match the
committed placement. Pure: the daemon passes in what libvirt reported.

Safety rules:
- Start only VMs the committed state places on this host, and only when the
  state is fresh: at least as new as the cluster's commit index at a moment
  after `domains` was read (a read barrier through the leader). A host whose
  log lags, or that was fenced and comes back with an old journal, therefore
  never starts (or kills) anything on stale information.
- A live local copy of a managed VM the state places elsewhere is destroyed
  (fresh state only); incoming migrations are never touched.
- A failed stop is reported, never ignored: the leader then fences this host.
- Start order (Vm.start_after, fsm/relations.py) is mandatory: a VM placed here is not
  started while a VM it starts after does not run; it keeps its placement and waits.
- The domain list is a picture of a past moment (`LibvirtRead`): it says nothing
  about a VM whose operation here was in flight when it was taken (the operation
  may have finished since), and a domain missing from it counts only against a
  VM state already committed when it was taken. Otherwise a start (or an incoming
  migration) that finished and committed after the read looks like a crash, the
  VM is relocated, and its first copy still runs: two copies (soak seed 11,
  scenario 41).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from hacluster.fsm import commands as c
from hacluster.fsm.model import ClusterState, Desired, Vm, stop_failure
from hacluster.fsm.relations import waiting_for
from hacluster.fsm.states import HostState, VmState

V = VmState


class DomainState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    MIGRATING = "migrating"  # incoming or outgoing live migration in progress
    OTHER = "other"


# Domain states that mean "a copy of this VM is alive here".
LIVE = frozenset(
    {DomainState.RUNNING, DomainState.PAUSED, DomainState.MIGRATING, DomainState.OTHER}
)
# Host states in which the agent may start VMs placed on it.
MAY_START = frozenset({HostState.ONLINE, HostState.DRAINING, HostState.SUSPECT})


@dataclass(frozen=True, slots=True)
class StartVm:
    name: str
    xml: str
    placement: int
    reason: str


@dataclass(frozen=True, slots=True)
class StopVm:
    """Graceful shutdown, then destroy after the timeout; report stopped / stop-failed."""

    name: str
    placement: int
    reason: str


@dataclass(frozen=True, slots=True)
class DestroyVm:
    """Kill a copy the state places elsewhere (no report: it is not ours)."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class MigrateVm:
    name: str
    target: str
    placement: int
    reason: str


@dataclass(frozen=True, slots=True)
class Report:
    command: c.Command
    reason: str


AgentAction = StartVm | StopVm | DestroyVm | MigrateVm | Report


@dataclass(frozen=True, slots=True)
class LibvirtRead:
    """What the agent knew when it read the domain list: the VMs with an operation in
    flight here, and the state and placement the committed state gave each VM held
    by this host (placed here or migrating here)."""

    busy: frozenset[str] = frozenset()
    held: Mapping[str, tuple[VmState, int]] = field(default_factory=dict)


def libvirt_read(me: str, state: ClusterState, busy: frozenset[str]) -> LibvirtRead:
    """Take this right before reading the domain list, and decide with both."""
    held = {name: (state.vms[name].state, state.vms[name].placement)
            for name in state.vms_by_host.get(me, ()) if name in state.vms}
    return LibvirtRead(busy, held)


def _absence_counts(read: LibvirtRead | None, vm: Vm) -> bool:
    """May a domain missing from the list judge this VM: was its state already
    committed when the list was read? (None: read with this very state.)"""
    return read is None or read.held.get(vm.name) == (vm.state, vm.placement)


def reconcile(
    me: str,
    state: ClusterState,
    domains: Mapping[str, DomainState],
    busy: frozenset[str] = frozenset(),
    fresh: bool = False,
    capacity: tuple[int, int] = (0, 0),
    read: LibvirtRead | None = None,
) -> list[AgentAction]:
    """What to do now. `busy`: VMs with an operation still running here; `read`: what
    the agent knew when it read `domains` (None: it read them with this very state,
    nothing in flight then that is not in flight now)."""
    host = state.hosts.get(me)
    if host is None or host.state is HostState.REMOVED:
        return []
    if read is not None:
        busy = busy | read.busy  # a list read mid-operation tells nothing of that VM
    out: list[AgentAction] = []
    may_start = fresh and host.state in MAY_START
    # Only VMs placed here (or migrating here) and VMs with a local domain can need
    # anything from this agent: O(local), not O(cluster).
    relevant = state.vms_by_host.get(me, set()) | (domains.keys() & state.vms.keys())
    for name in sorted(relevant):
        if name in busy:
            continue
        vm = state.vms[name]
        stop_failed = host.fence_wanted.startswith(stop_failure(name))
        in_order = may_start and not _waits_for_order(state, vm)
        action = _for_vm(me, vm, domains.get(name), in_order, fresh, stop_failed,
                         _absence_counts(read, vm))
        if action is not None:
            out.append(action)
    needs_ready = host.state in (HostState.JOINING, HostState.FENCED) or (
        host.state is HostState.MAINTENANCE and not host.agent_ready)
    if (
        needs_ready
        and fresh
        and not any(isinstance(a, DestroyVm) for a in out)
        and not busy
    ):
        out.append(
            Report(
                c.HostReady(name=me, memory_mib=capacity[0], vcpus=capacity[1]),
                "local domains match the committed state",
            )
        )
    return out


def _waits_for_order(state: ClusterState, vm: Vm) -> bool:
    """A VM to start here whose start-after dependencies do not all run yet."""
    return (bool(vm.start_after) and vm.state in (V.STARTING, V.RECOVERY)
            and bool(waiting_for(state, vm)))


def _report(vm: Vm, me: str, observed: str, detail: str, reason: str) -> Report:
    return Report(
        c.VmReport(name=vm.name, host=me, placement=vm.placement, observed=observed, detail=detail),
        reason,
    )


def _for_vm(
    me: str, vm: Vm, dom: DomainState | None, may_start: bool, fresh: bool,
    stop_failed: bool = False, absence_counts: bool = True,
) -> AgentAction | None:
    live = dom in LIVE
    seen = dom.value if dom else "not defined"
    if vm.host == me:
        if not live and not absence_counts and vm.state not in (V.STARTING, V.RECOVERY):
            return None  # committed after the list was read: judge it on the next one
        return _placed_here(me, vm, dom, live, seen, may_start, stop_failed)
    if vm.target_host == me and vm.state in (V.MIGRATING, V.FENCE):
        return None  # incoming migration: the source agent drives it
    if live and fresh and dom is not DomainState.MIGRATING and vm.desired is not Desired.DISABLED:
        where = f"on {vm.host}" if vm.host else "nowhere"
        return DestroyVm(vm.name, f"committed state places it {where} ({vm.state.value})")
    return None


def _placed_here(
    me: str, vm: Vm, dom: DomainState | None, live: bool, seen: str, may_start: bool,
    stop_failed: bool,
) -> AgentAction | None:
    if vm.state in (V.STARTING, V.RECOVERY):
        if live:
            return _report(vm, me, "started", seen, "domain is running")
        if may_start:
            return StartVm(vm.name, vm.xml, vm.placement, f"placed here ({vm.reason})")
        return None
    if vm.state is V.STARTED and not live:
        return _report(vm, me, "crashed", f"domain {seen}", "a started VM is not running")
    if vm.state is V.STOPPING:
        if live and not stop_failed:
            return StopVm(vm.name, vm.placement, vm.reason)
        if live:
            return None  # a stop failed here: the host waits for its fence, no retry loop
        return _report(vm, me, "stopped", f"domain {seen}", "domain is not running")
    if vm.state is V.MIGRATING:
        if not live:
            return _report(
                vm,
                me,
                "crashed",
                f"domain {seen} on the source",
                "a migrating VM vanished from its source",
            )
        if may_start:
            return MigrateVm(vm.name, vm.target_host, vm.placement, vm.reason)
    return None


class Throttle:
    """Send the same report at most once per interval (a refused report must not
    flood the log at tick rate)."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._sent: dict[object, float] = {}

    def allow(self, key: object, now: float) -> bool:
        last = self._sent.get(key)
        if last is not None and now - last < self.interval_s:
            return False
        self._sent[key] = now
        if len(self._sent) > 4096:  # forget old keys; bounded memory
            cutoff = now - self.interval_s
            self._sent = {k: t for k, t in self._sent.items() if t >= cutoff}
        return True
