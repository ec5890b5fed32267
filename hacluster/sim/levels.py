"""Fencing levels in the simulator: a host's levels walked as the daemon walks them
(daemon/fencing.py `run_plan`), with the same pure decisions (core/fencelevels.py:
order, all devices must succeed, evidence, leadership confirmed again before each
further level).

The devices are fakes with the BMC fakes' modes (sim/fakes.py): a "bmc" device is the
host's own SimBmc (simulated hosts have no BMC address), any other device the SimBmc of
its address (`World.outlets`, e.g. a PDU outlet feeding one of the host's power
supplies). The power model is deliberately simple: a host loses power once every
device of one level has switched off (its outlets, or its BMC); devices of a failed
level that switched off stay off (logged) without taking the host down.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hacluster.core.fencelevels import (
    DeviceOutcome,
    FencePlan,
    LevelOutcome,
    PlannedDevice,
    device_action,
    fence_verdict,
    next_level,
)
from hacluster.core.manager import RunFence
from hacluster.core.readindex import ReadMark
from hacluster.fsm.model import FenceAction
from hacluster.sim.fakes import BmcPlan, SimBmc, bmc_plan

if TYPE_CHECKING:
    from hacluster.sim.peer import SimPeer
    from hacluster.sim.world import World

FENCE_CONFIRM_TIMEOUT_S = 1.0  # as the daemon's (daemon/leader.py)


@dataclass
class LevelWalk:
    world: World
    peer: SimPeer
    order: RunFence
    term: int
    plan: FencePlan
    generation: int

    def start(self) -> None:
        self._next([])

    def _alive(self) -> bool:
        return self.peer.proc.generation == self.generation and self.peer.running

    def _next(self, done: list[LevelOutcome]) -> None:
        index = next_level(self.plan, done, self.order.action)
        if index is None:
            result, evidence, method = fence_verdict(self.plan, done)
            self.world.note(f"fence {self.order.host}: {result.value} ({method})")
            self.peer.fence_answer(self.order, result, evidence, self.generation, method)
        elif not done:
            self._run(index, done)
        elif self._alive():
            self._confirm(lambda why: self._run(index, done) if not why else self._next(
                [*done, LevelOutcome(index + 1, (), skipped=why)]))

    def _confirm(self, then: Callable[[str], None]) -> None:
        """The leader's read barrier again, before a further level (daemon/leader.py)."""
        manager, lost = self.peer.manager, "leadership could not be confirmed"

        def confirmed(mark: ReadMark) -> None:
            ok = manager is not None and manager.fence_still_ours(self.order.token, mark.term)
            then("" if ok and self.peer.raft.leader_term() == mark.term else lost)

        if not self.peer.read(confirmed, FENCE_CONFIRM_TIMEOUT_S, lambda: then(lost)):
            then(lost)

    def _device_bmc(self, device: PlannedDevice) -> tuple[SimBmc, str]:
        if device.spec is None:  # a "bmc" device: simulated hosts have no BMC address
            return self.world.hosts[self.order.host].bmc, f"sim-bmc {self.order.host}"
        address = device.spec.address
        return self.world.outlets.setdefault(address, SimBmc()), f"sim-outlet {address}"

    def _run(self, index: int, done: list[LevelOutcome]) -> None:
        devices = self.plan.levels[index]
        action = device_action(self.order.action, len(devices))
        host = self.world.hosts[self.order.host]
        deadline = self.peer.proc.state.settings.fence_timeout_s
        if not done:
            self.world.observer.fence_commanded(self.peer.name, self.term, self.world.now)
        planned = []
        for device in devices:
            bmc, method = self._device_bmc(device)
            # an outlet already switched off (by an earlier attempt) reads off
            powered = host.powered if bmc is host.bmc else _outlet_on(bmc)
            planned.append((bmc, method, bmc_plan(bmc, action, powered, deadline)))
        self.world.note(f"fence {self.order.host}: level {index + 1} of "
                        f"{len(self.plan.levels)}: {' + '.join(m for _, m, _ in planned)}")
        offs = [p.power_off_after_s for _, _, p in planned]
        if action in (FenceAction.OFF, FenceAction.REBOOT):
            for bmc, method, plan in planned:
                if plan.power_off_after_s is not None:
                    self.world.at(plan.power_off_after_s, self._switched_off(bmc, method))
            if all(at is not None for at in offs):
                self._host_off_at(max(at for at in offs if at is not None), planned)
        outcomes = tuple(DeviceOutcome(p.result, p.evidence, m) for _, m, p in planned)
        level = LevelOutcome(index + 1, outcomes)
        self.world.at(max(p.answer_after_s for _, _, p in planned),
                      lambda: self._next([*done, level]) if self._alive() else None)

    def _switched_off(self, bmc: SimBmc, method: str) -> Callable[[], None]:
        def off() -> None:
            if bmc is self.world.hosts[self.order.host].bmc or not _outlet_on(bmc):
                return  # the host's BMC logs through the host's power; an outlet once
            bmc.log.append((self.world.now, "off"))
            self.world.note(f"{method}: off (fence of {self.order.host})", quiet=True)
        return off

    def _host_off_at(self, delay: float, planned: list[tuple[SimBmc, str, BmcPlan]]) -> None:
        """Every device of the level switched off: the host loses power then."""
        host = self.order.host
        lease = self.peer.proc.state.settings.lease_ttl_s
        healthy_since = self.world.fence_healthy_since(host, self.order.token, self.peer)
        ons = [p.power_on_after_s for _, _, p in planned]

        def off() -> None:
            if not self.world.hosts[host].powered:
                return
            self.world.observer.fence_power_off(host, self.peer.name, self.term,
                                                self.world.now, healthy_since, lease)
            self.world.observer.fence_not_superseded(host, self.order.token,
                                                     self.world.truth(), self.world.now)
            own = self.world.hosts[host].bmc
            if any(bmc is own for bmc, _, _ in planned):  # its BMC's log, as world.py keeps
                own.log.append((self.world.now, "off"))
            self.world.power_off(host, "fence level: every device off")

        self.world.at(delay, off)
        if len(ons) == 1 and ons[0] is not None:  # a single device's reboot
            self.world.at(ons[0], lambda: self.world.power_on(host, "fence level"))


def _outlet_on(outlet: SimBmc) -> bool:
    return not outlet.log or outlet.log[-1][1] != "off"
