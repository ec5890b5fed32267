"""The simulated hypervisors at work: an agent's operation on its host takes DELAYS[op],
may fail as a scenario says (VmFaults), may be refused by a disk lease held elsewhere,
and is reported back to the agent as the daemon's agent reports it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hacluster.core import agent as ag
from hacluster.fsm import commands as c
from hacluster.sim.machines import DELAYS, HypervisorAction, SimHost
from hacluster.sim.peer import SimPeer

if TYPE_CHECKING:
    from hacluster.sim.world import World


def run_hypervisor_action(world: World, peer: SimPeer, action: HypervisorAction) -> None:
    """An agent's StartVm, StopVm, DestroyVm or MigrateVm on its host: done, and reported
    back, after DELAYS[op]; judged by the observer as it happens."""
    host = world.hosts[peer.name]
    if isinstance(action, ag.DestroyVm):
        host.hyper.domains.pop(action.name, None)
        world.note(f"agent {peer.name}: destroyed {action.name} ({action.reason})")
        return
    op = {ag.StartVm: "start", ag.StopVm: "stop", ag.MigrateVm: "migrate"}[type(action)]
    if op == "start":
        world.observer.start_decided(action.name, peer.name, world.now, world.truth(),
                                     host.hyper.live())
        world.observer.start_in_order(action.name, peer.name, world.now, world.truth(), {
            vm for h in world.hosts.values() if h.powered for vm in h.hyper.live()})
    peer.proc.busy.add(action.name)
    generation = peer.proc.generation

    def done() -> None:
        if not host.powered:
            return
        report = _finish(world, host, op, action)
        if peer.proc.generation == generation:
            peer.proc.busy.discard(action.name)
            if report is not None:
                peer.report(report)

    world.at(DELAYS[op], done)


def _finish(world: World, host: SimHost, op: str, action: HypervisorAction) -> c.Command | None:
    name, placement = action.name, getattr(action, "placement", 0)

    def report(observed: str, detail: str = "") -> c.Command:
        return c.VmReport(name=name, host=host.name, placement=placement,
                          observed=observed, detail=detail)

    if world.vm_faults.fails(op, name, host.name):
        return report(f"{op}-failed", "sim fault")
    holders = [h.name for h in world.hosts.values() if op == "start" and world.disk_leases
               and h is not host and h.powered and name in h.hyper.live()]
    if holders:
        world.note(f"agent {host.name}: start of {name} refused, its disk is leased "
                  f"on {holders[0]}")
        return report("start-locked", f"sim: disk lease held on {holders[0]}")
    if op == "start":
        world.observer.vm_started(name, host.name, world.now)
        host.hyper.domains[name] = ag.DomainState.RUNNING
        world.note(f"agent {host.name}: started {name}")
        return report("started")
    if op == "stop":
        host.hyper.domains.pop(name, None)
        world.note(f"agent {host.name}: stopped {name}")
        return report("stopped")
    target_name = getattr(action, "target", "")
    target = world.hosts.get(target_name)
    if target is None or not target.powered or name not in host.hyper.domains or \
            not world.net.reachable(host.name, target_name):
        return report("migrate-failed", "sim: target unreachable")
    target.hyper.domains[name] = host.hyper.domains.pop(name)
    world.note(f"agent {host.name}: migrated {name} to {target_name}")
    return report("migrated")
