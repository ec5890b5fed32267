"""Random fault schedules for the simulator (seeded, so any failure replays).

A schedule: a random cluster, faults at random times for `fault_s` seconds,
then everything heals (network, power, BMCs, maintenance) and the cluster gets
time to settle. Safety invariants are checked after every step by the
Observer; at the end every HA VM must run exactly once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from hacluster.fsm import commands as c
from hacluster.fsm.model import Desired, HaPolicy, HostRole
from hacluster.fsm.states import FENCE_PENDING_HOSTS, HostState, VmState
from hacluster.sim.fakes import BmcMode
from hacluster.sim.world import Simulation

HEAL_ROUNDS = 3


@dataclass
class ChaosResult:
    seed: int
    violations: list[str]
    actions: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)  # HA VMs not running after healing

    @property
    def ok(self) -> bool:
        return not self.violations and not self.stuck


def build_cluster(rng: random.Random) -> Simulation:
    sim = Simulation(step_s=0.1)
    hosts = rng.randint(3, 5)
    for i in range(1, hosts + 1):
        sim.add_host(f"h{i}", 8192, 8, HostRole.VOTER, ("mgmt", "backend"))
    if rng.random() < 0.3:
        sim.add_host(f"h{hosts + 1}", 8192, 8, HostRole.MEMBER, ("mgmt", "backend"))
    while sim.leader is None:
        sim.step()
    sim.admin(c.SetSettings(fence_cap=rng.randint(1, 3), fence_retry_limit=rng.randint(2, 3),
                            fence_retry_backoff_s=rng.choice([0.5, 1.0]), fence_timeout_s=4.0))
    for name, host in sorted(sim.hosts.items()):
        sim.admin(c.AddHost(name=name, memory_mib=host.memory_mib, vcpus=host.vcpus,
                            role=host.role))
    sim.run_until(sim.now + 1.0)
    names = sorted(sim.hosts)
    for i in range(rng.randint(3, 2 * hosts)):
        limits = tuple(rng.sample(names, 2)) if rng.random() < 0.2 else ()
        sim.admin(c.AddVm(
            name=f"vm{i}", xml="<domain/>", memory_mib=rng.choice([512, 1024, 2048]),
            vcpus=1, priority=rng.randint(0, 3), allowed_hosts=limits,
            anti_affinity="grp" if i < 2 else "", max_restarts=10, max_relocates=10,
            ha=HaPolicy.RESTART, desired=Desired.STARTED))
    return sim


def _random_action(sim: Simulation, rng: random.Random) -> tuple[str, Callable[[], object]]:
    hosts = sorted(sim.hosts)
    host = rng.choice(hosts)
    vms = sorted(sim.hosts[sim.leader].state.vms) if sim.leader else []
    choices: list[tuple[str, Callable[[], object]]] = [
        (f"power-off {host}", lambda: sim.power_off(host, "chaos")),
        (f"power-on {host}", lambda: sim.power_on(host, "chaos")),
        (f"isolate {host}", lambda: sim.net.isolate(host)),
        (f"heal {host}", lambda: sim.net.heal(host)),
        (f"cut-link {host} mgmt", lambda: sim.net.cut[host].add("mgmt")),
        (f"bmc {host} unreachable", lambda: setattr(sim.hosts[host], "bmc",
                                                     BmcMode.UNREACHABLE)),
        (f"bmc {host} slow", lambda: setattr(sim.hosts[host], "bmc", BmcMode.SLOW)),
        (f"bmc {host} works", lambda: setattr(sim.hosts[host], "bmc", BmcMode.WORKS)),
        ("kill-leader", lambda: _kill_leader(sim)),
        ("cluster maintenance on", lambda: sim.admin(c.SetClusterMaintenance(on=True))),
        ("cluster maintenance off", lambda: sim.admin(c.SetClusterMaintenance(on=False))),
        (f"maintenance {host} on", lambda: sim.admin(c.SetHostMaintenance(name=host, on=True))),
        (f"maintenance {host} off",
         lambda: sim.admin(c.SetHostMaintenance(name=host, on=False))),
        (f"confirm-if-off {host}", lambda: _confirm_if_off(sim, host)),
        (f"retry {host}", lambda: sim.admin(c.RetryFence(host=host, who="chaos"))),
    ]
    if len(hosts) >= 3:
        split = rng.randint(1, len(hosts) - 1)
        shuffled = rng.sample(hosts, len(hosts))
        minority, majority = shuffled[:split], shuffled[split:]
        choices.append((f"partition {','.join(sorted(minority))}",
                        lambda: _partition(sim, minority, majority)))
    if vms:
        vm = rng.choice(vms)
        choices += [
            (f"crash {vm}", lambda: _crash(sim, vm)),
            (f"stop-fails {vm}", lambda: sim.faults.stop_fails.add(vm)),
            (f"migrate-fails {vm}", lambda: sim.faults.migrate_fails.add(vm)),
            (f"vm stop {vm}", lambda: sim.admin(c.SetVmDesired(name=vm, desired=Desired.STOPPED))),
            (f"vm start {vm}",
             lambda: sim.admin(c.SetVmDesired(name=vm, desired=Desired.STARTED))),
            (f"vm migrate {vm}", lambda: sim.admin(c.MigrateVm(name=vm))),
        ]
    return rng.choice(choices)


def _kill_leader(sim: Simulation) -> None:
    if sim.leader is not None:
        sim.power_off(sim.leader, "chaos")


def _partition(sim: Simulation, minority: list[str], majority: list[str]) -> None:
    for name in minority:
        sim.net.group[name] = 1
    for name in majority:
        sim.net.group[name] = 0


def _crash(sim: Simulation, vm: str) -> None:
    for host in sim.hosts.values():
        host.hyper.domains.pop(vm, None)


def _confirm_if_off(sim: Simulation, name: str) -> None:
    """An honest operator: confirms only hosts that really are off."""
    if sim.leader is None or sim.hosts[name].powered:
        return
    state = sim.hosts[sim.leader].state.hosts.get(name)
    if state is not None and (state.state in FENCE_PENDING_HOSTS
                              or state.state is HostState.SUSPECT):
        sim.admin(c.AdminConfirmFence(host=name, who="chaos", reason="verified off"))


def heal_everything(sim: Simulation) -> None:
    sim.net.heal_all()
    sim.faults.stop_fails.clear()
    sim.faults.migrate_fails.clear()
    sim.faults.start_fails.clear()
    for name, host in sorted(sim.hosts.items()):
        host.bmc = BmcMode.WORKS
        sim.power_on(name, "heal")


def _settle(sim: Simulation) -> None:
    """What an operator does once the faults are gone: maintenance off, and a new
    attempt for every host whose fence waits for them (cap reached or failed)."""
    sim.admin(c.SetClusterMaintenance(on=False))
    state = sim.hosts[sim.leader].state if sim.leader else None
    for name in sorted(state.hosts if state else []):
        sim.admin(c.SetHostMaintenance(name=name, on=False))
        if state and state.hosts[name].state in (HostState.FENCE_BLOCKED,
                                                 HostState.FENCE_FAILED):
            if sim.hosts[name].powered:
                sim.admin(c.RetryFence(host=name, who="chaos operator"))
            else:
                sim.admin(c.AdminConfirmFence(host=name, who="chaos operator",
                                              reason="verified off"))


def stuck_vms(sim: Simulation) -> list[str]:
    """HA VMs that should run but do not run exactly once where the state says."""
    if sim.leader is None:
        return ["no leader after healing"]
    state = sim.hosts[sim.leader].state
    out = []
    for name, vm in sorted(state.vms.items()):
        if vm.desired is not Desired.STARTED or vm.ha is not HaPolicy.RESTART:
            continue
        running = [h for h, host in sorted(sim.hosts.items())
                   if host.powered and name in host.hyper.live()]
        if vm.state is not VmState.STARTED or running != [vm.host]:
            out.append(f"{name}: {vm.state.value} on {vm.host or '-'} ({vm.reason}); "
                       f"running on {running}")
    return out


def run_schedule(seed: int, fault_s: float = 30.0, actions: int = 12) -> ChaosResult:
    rng = random.Random(seed)
    sim = build_cluster(rng)
    start = sim.now
    times = sorted(rng.uniform(start, start + fault_s) for _ in range(actions))
    log = []
    for when in times:
        sim.run_until(when)
        text, act = _random_action(sim, rng)
        log.append(f"t={sim.now:.1f} {text}")
        act()
    sim.run_until(start + fault_s)
    # Heal, let the operator act, wait; again, since a fence the operator asked for
    # powers a host off, and it must come back for the capacity to exist.
    for _ in range(HEAL_ROUNDS):
        heal_everything(sim)
        sim.run_until(sim.now + 2.0)
        _settle(sim)
        sim.run_until(sim.now + 15.0)
        if not stuck_vms(sim):
            break
    return ChaosResult(seed, list(sim.observer.violations), log, stuck_vms(sim))
