"""The simulator's machines: a host (chassis power, BMC, hypervisor, watchdog, the peer
process on it), the hypervisor faults a scenario injects, how long hypervisor operations
take, and a fence attempt in flight (sim/world.py drives them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hacluster.core import agent as ag
from hacluster.core.manager import RunFence
from hacluster.fsm.model import HostRole
from hacluster.sim.fakes import FakeHypervisor, SimBmc

if TYPE_CHECKING:  # (peer.py imports this module)
    from hacluster.sim.peer import SimPeer

DELAYS = {"start": 0.4, "stop": 0.2, "migrate": 0.6}
HypervisorAction = ag.StartVm | ag.StopVm | ag.DestroyVm | ag.MigrateVm


@dataclass
class VmFaults:
    """Hypervisor operations that fail: vm -> times left (-1: always), or only on a host."""

    start: dict[str, int] = field(default_factory=dict)
    stop: dict[str, int] = field(default_factory=dict)
    migrate: dict[str, int] = field(default_factory=dict)
    start_on: set[tuple[str, str]] = field(default_factory=set)  # (vm, host)

    def fails(self, op: str, vm: str, host: str) -> bool:
        if op == "start" and (vm, host) in self.start_on:
            return True
        table: dict[str, int] = getattr(self, op)
        left = table.get(vm, 0)
        if left == 0:
            return False
        if left > 0:
            table[vm] = left - 1
        return True

    def clear(self) -> None:
        self.start.clear()
        self.stop.clear()
        self.migrate.clear()
        self.start_on.clear()


@dataclass(eq=False)
class Attempt:
    """A fence attempt in flight (world.run_fence)."""

    peer: SimPeer
    order: RunFence
    term: int
    gives_up: float  # a dark BMC: when the client stops asking for a session
    deadline: float  # the attempt's hard deadline
    generation: int
    plans: int = 0  # how many times it was planned (a BMC back from the dark: again)


@dataclass
class SimHost:
    """One machine: its power, BMC, hypervisor and the peer process on it."""

    name: str
    role: HostRole
    memory_mib: int
    vcpus: int
    links: tuple[str, ...]
    peer: SimPeer
    bmc: SimBmc = field(default_factory=SimBmc)
    hyper: FakeHypervisor = field(default_factory=FakeHypervisor)
    powered: bool = True
    held_lease: list[tuple[str, str, bytes]] = field(default_factory=list)  # while paused
    # A hardware watchdog (timeout_s, self_fence_s of its peer's configuration), outside
    # the peer process: armed and last fed survive a crash of the peer, not a power cut.
    watchdog: tuple[float, float] | None = None
    watchdog_armed: bool = False
    watchdog_fed_at: float = 0.0
    storage: tuple[str, ...] = ()  # shared storage directories its peer writes heartbeats to

    @property
    def votes(self) -> bool:
        return self.role is not HostRole.MEMBER
