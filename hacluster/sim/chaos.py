"""Random fault schedules over the simulated cluster, replayable by seed.

A schedule builds a cluster (3 to 7 voters, sometimes non-voting members), adds VMs,
then injects random faults for a while: power loss, peer crashes, planned shutdowns
(SIGTERM, under a random shutdown policy, the leader's too), restarts from a
rebuilt journal and pauses (the leader's too), isolation, partitions, one-way cuts,
packet loss, a firewall on the lease port, stepped and skewed wall clocks, BMCs that
fail, hang, lie or are slow, a shared storage some hosts lose (in the clusters that
write storage heartbeats), VM operations that fail, and operators who stop, start,
migrate, remove and re-add VMs and change their options. Then everything heals, an
operator settles what waits for a person, and the VMs must run again. The Observer
(sim/invariants.py) judges every step.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from hacluster.fsm import commands as c
from hacluster.fsm import state_digest
from hacluster.fsm.model import Desired, Failback, HaPolicy, HostRole, ShutdownPolicy
from hacluster.fsm.states import FENCE_PENDING_HOSTS, HostState, VmState
from hacluster.sim.fakes import BmcMode
from hacluster.sim.raftmodel import RaftModelConfig
from hacluster.sim.world import World

HEAL_ROUNDS = 3
RECOVERY_BOUND_S = 15.0  # after healing and settling, every HA VM runs again within this
STORAGE = ("/pool",)
Action = tuple[str, Callable[[], object]]


@dataclass
class ChaosResult:
    seed: int
    violations: list[str]
    actions: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)  # HA VMs not running after healing
    false_fences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations and not self.stuck


def build_cluster(rng: random.Random, seed: int) -> World:
    # A coarser step and heartbeat than production keep 500 schedules inside CI's
    # budget; the Raft model still runs every message at its own time within a step.
    world = World(seed=seed, step_s=0.1, check_digests=False,
                  raft_config=RaftModelConfig(heartbeat_s=0.05))
    voters = rng.choice([3, 3, 3, 4, 5, 5, 7])
    members = rng.choice([0, 0, 0, 1, 2]) if voters < 7 else rng.choice([0, 3, 20])
    links = ("mgmt", "backend")
    # half the clusters self-fence: (watchdog timeout, self-fence delay) on every host
    watchdog = rng.choice([None, (2.0, 4.0), (5.0, 8.0)]) if rng.random() < 0.5 else None
    # some share a storage the hosts write heartbeats and VM disks to (its own draw, so
    # the schedules of the other clusters stay what they were)
    storage = STORAGE if random.Random(seed * 7 + 3).random() < 0.4 else ()
    for i in range(1, voters + 1):
        world.add_host(f"h{i}", 8192, 8, HostRole.VOTER, links, watchdog=watchdog,
                       storage=storage)
    for i in range(voters + 1, voters + members + 1):
        world.add_host(f"h{i}", 8192, 8, HostRole.MEMBER, links, watchdog=watchdog,
                       storage=storage)
    world.start()
    while world.leader is None:
        world.step()
    world.admin_wait(c.SetSettings(fence_cap=rng.randint(1, 3),
                                   fence_retry_limit=rng.randint(2, 3),
                                   fence_retry_backoff_s=rng.choice([0.5, 1.0]),
                                   fence_timeout_s=4.0))
    for name, host in sorted(world.hosts.items()):
        world.admin_wait(c.AddHost(name=name, memory_mib=host.memory_mib, vcpus=host.vcpus,
                                   role=host.role,
                                   addresses=tuple(f"{ln}={name}" for ln in links)))
    world.run_until(world.now + 1.0)
    # what a peer stopped by SIGTERM (stop-peer) does with its VMs (core/shutdown.py);
    # admitted once every peer announced it understands the command
    world.admin_wait(c.SetShutdownPolicy(policy=rng.choice(list(ShutdownPolicy)).value))
    world.admin_wait(c.SetSettings(failback_hold_down_s=2.0))  # failback within a run
    for i in range(rng.randint(3, 2 * voters)):
        world.admin_wait(_random_vm(rng, f"vm{i}", sorted(world.hosts), i, bool(storage)))
    return world


def _random_vm(rng: random.Random, name: str, hosts: list[str], i: int,
               disk: bool = False) -> c.AddVm:
    limits = tuple(sorted(rng.sample(hosts, 2))) if rng.random() < 0.2 else ()
    xml = (f"<domain><name>{name}</name><devices><disk type='file'><source "
           f"file='{STORAGE[0]}/{name}.qcow2'/></disk></devices></domain>") if disk \
        else "<domain/>"
    prefer = ((rng.choice(hosts), 100),) if rng.random() < 0.3 else ()
    return c.AddVm(name=name, xml=xml, memory_mib=rng.choice([512, 1024, 2048]),
                   vcpus=1, priority=rng.randint(0, 3), allowed_hosts=limits,
                   anti_affinity="grp" if i < 2 else "", max_restarts=10, max_relocates=10,
                   ha=HaPolicy.RESTART, desired=Desired.STARTED, preferred_hosts=prefer,
                   failback=Failback.AUTO if prefer else Failback.NEVER)


def _host_faults(world: World, rng: random.Random, host: str) -> list[Action]:
    other = rng.choice([h for h in sorted(world.hosts) if h != host])
    net = world.net
    loss = rng.uniform(0.1, 0.5)
    skew = rng.choice([-3600.0, -40.0, 45.0, 3700.0])
    mode = rng.choice(list(BmcMode))
    return [
        (f"power-off {host}", lambda: world.power_off(host, "chaos")),
        (f"chassis-death {host}", lambda: _chassis_death(world, host)),
        (f"power-on {host}", lambda: world.power_on(host, "chaos")),
        (f"kill-peer {host}", lambda: world.crash_peer(host)),
        (f"stop-peer {host}", lambda: world.stop_peer(host)),
        (f"restart-peer {host}", lambda: world.restart_peer(host)),
        (f"restart-peer {host} rebuild", lambda: _rebuild(world, host)),
        (f"pause {host}", lambda: world.pause_peer(host)),
        (f"resume {host}", lambda: world.resume_peer(host)),
        (f"isolate {host}", lambda: net.isolate(host)),
        (f"heal {host}", lambda: net.heal(host)),
        (f"cut-link {host} mgmt", lambda: net.cut_link(host, "mgmt")),
        (f"cut {host} -> {other}", lambda: net.cut(host, other)),
        (f"cut {other} -> {host}", lambda: net.cut(other, host)),
        (f"loss {host} {other} {loss:.0%}",
         lambda: net.set_path(host, other, loss=loss, both=True)),
        (f"lease-block {host}", lambda: world.lease_blocked.add(host)),
        (f"lease-unblock {host}", lambda: world.lease_blocked.discard(host)),
        (f"clock {host} {skew:+g}",
         lambda: setattr(world.hosts[host].peer.clock, "wall_skew", skew)),
        (f"bmc {host} {mode.value}", lambda: world.set_bmc_mode(host, mode)),
        (f"bmc-fails {host} 2", lambda: setattr(world.hosts[host].bmc, "fail_next", 2)),
    ] + (_storage_faults(world, host) if world.hosts[host].storage else [])


def _storage_faults(world: World, host: str) -> list[Action]:
    return [(f"storage-cut {host}", lambda: world.storage.cut.add(host)),
            (f"storage-restore {host}", lambda: world.storage.cut.discard(host))]


def _chassis_death(world: World, host: str) -> None:
    world.set_bmc_mode(host, BmcMode.UNREACHABLE)
    world.power_off(host, "chassis death")


def _leader_faults(world: World) -> list[Action]:
    def on_leader(fn: Callable[[str], object]) -> Callable[[], object]:
        return lambda: fn(world.leader) if world.leader else None

    return [
        ("kill-leader", on_leader(lambda h: world.power_off(h, "chaos"))),
        ("kill-leader-peer", on_leader(world.crash_peer)),
        ("stop-leader", on_leader(world.stop_peer)),
        ("pause-leader", on_leader(world.pause_peer)),
        ("isolate-leader", on_leader(world.net.isolate)),
        ("lease-block-leader", on_leader(world.lease_blocked.add)),
    ]


def _operator(world: World, rng: random.Random, host: str, vm: str | None) -> list[Action]:
    out: list[Action] = [
        ("cluster maintenance on", lambda: world.admin(c.SetClusterMaintenance(on=True))),
        ("cluster maintenance off", lambda: world.admin(c.SetClusterMaintenance(on=False))),
        (f"maintenance {host} on", lambda: world.admin(c.SetHostMaintenance(name=host,
                                                                            on=True))),
        (f"maintenance {host} off", lambda: world.admin(c.SetHostMaintenance(name=host,
                                                                             on=False))),
        (f"host ready {host}", lambda: world.admin(c.SetHostMaintenance(name=host, on=False,
                                                                         ready=True))),
        (f"confirm-if-off {host}", lambda: _confirm_if_off(world, host)),
        (f"retry {host}", lambda: world.admin(c.RetryFence(host=host, who="chaos"))),
    ]
    if vm is None:
        return out
    hosts = sorted(world.hosts)
    out += [
        (f"crash {vm}", lambda: _crash(world, vm)),
        (f"stop-fails {vm}", lambda: world.vm_faults.stop.__setitem__(vm, -1)),
        (f"start-fails {vm} 2", lambda: world.vm_faults.start.__setitem__(vm, 2)),
        (f"start-fails {vm} on {host}", lambda: world.vm_faults.start_on.add((vm, host))),
        (f"migrate-fails {vm}", lambda: world.vm_faults.migrate.__setitem__(vm, -1)),
        (f"vm stop {vm}", lambda: world.admin(c.SetVmDesired(name=vm, desired=Desired.STOPPED))),
        (f"vm start {vm}", lambda: world.admin(c.SetVmDesired(name=vm,
                                                                desired=Desired.STARTED))),
        (f"vm migrate {vm}", lambda: world.admin(c.MigrateVm(name=vm))),
        (f"vm remove {vm}", lambda: world.admin(c.RemoveVm(name=vm))),
        (f"vm re-add {vm}", lambda: world.admin(_random_vm(rng, vm, hosts, 9, bool(
            world.hosts[host].storage)))),
        (f"vm limit {vm}", lambda: world.admin(c.SetVmOptions(
            name=vm, allowed_hosts=tuple(sorted(rng.sample(hosts, 2)))))),
        (f"vm unlimit {vm}", lambda: world.admin(c.SetVmOptions(name=vm, allowed_hosts=()))),
        (f"vm prefer {vm}", lambda: world.admin(c.SetVmOptions(  # failback (fsm/failback.py)
            name=vm, preferred_hosts=((rng.choice(hosts), 100),), failback=Failback.AUTO))),
    ]
    return out


def random_action(world: World, rng: random.Random) -> Action:
    hosts = sorted(world.hosts)
    host = rng.choice(hosts)
    truth = world.truth()
    vms = sorted(truth.vms) if truth else []
    choices = _host_faults(world, rng, host) + _leader_faults(world)
    choices += _operator(world, rng, host, rng.choice(vms) if vms else None)
    split = rng.randint(1, len(hosts) // 2)
    minority = sorted(rng.sample(hosts, split))
    choices.append((f"partition {','.join(minority)}",
                    lambda: world.net.partition(minority)))
    return rng.choice(choices)


def _rebuild(world: World, host: str) -> None:
    """Its journal was lost: restart it empty. Not while another voter still catches up
    from a rebuild, nor while another voter is down (its journal stale): a majority
    without journals loses committed entries in any Raft, and no operator procedure
    here recovers that."""
    others = [h for name, h in world.hosts.items() if name != host and h.role is not
              HostRole.MEMBER]
    if any(h.peer.raft.abstaining or not h.peer.running for h in others):
        world.restart_peer(host)
    else:
        world.restart_peer(host, rebuild=True)


def _crash(world: World, vm: str) -> None:
    for host in world.hosts.values():
        host.hyper.domains.pop(vm, None)


def _confirm_if_off(world: World, name: str) -> None:
    """An honest operator: confirms only hosts that really are off."""
    truth = world.truth()
    if truth is None or world.hosts[name].powered:
        return
    host = truth.hosts.get(name)
    if host is not None and (host.state in FENCE_PENDING_HOSTS
                             or host.state is HostState.SUSPECT):
        world.admin(c.AdminConfirmFence(host=name, who="chaos", reason="verified off"))


def heal_everything(world: World) -> None:
    world.net.heal_all(quality=True)
    world.lease_blocked.clear()
    world.storage.cut.clear()
    world.vm_faults.clear()
    for name, host in sorted(world.hosts.items()):
        host.bmc.fail_next = 0
        world.set_bmc_mode(name, BmcMode.WORKS)
        host.peer.clock.wall_skew = 0.0
        world.resume_peer(name)
        world.power_on(name, "heal")
        if host.peer.raft.status.value == "down" or host.peer.proc.shutdown is not None:
            world.restart_peer(name)  # (a planned shutdown under way: its host is back)


def _settle(world: World) -> None:
    """What an operator does once the faults are gone: maintenance off, a new attempt
    for every host whose fence waits for a person, re-start VMs left in error."""
    world.admin_wait(c.SetClusterMaintenance(on=False))
    state = world.truth()
    for name in sorted(state.hosts if state else []):
        world.admin_wait(c.SetHostMaintenance(name=name, on=False))
        state = world.truth()
        if state and state.hosts[name].state in (HostState.FENCE_BLOCKED,
                                                 HostState.FENCE_FAILED):
            if world.hosts[name].powered:
                world.admin_wait(c.RetryFence(host=name, who="chaos operator"))
            else:
                world.admin_wait(c.AdminConfirmFence(host=name, who="chaos operator",
                                                     reason="verified off"))


def stuck_vms(world: World) -> list[str]:
    """HA VMs that should run but do not run exactly once where the state says."""
    state = world.truth()
    if world.leader is None or state is None:
        return ["no leader after healing"]
    out = []
    for name, vm in sorted(state.vms.items()):
        if vm.desired is not Desired.STARTED or vm.ha is not HaPolicy.RESTART:
            continue
        running = [h for h, host in sorted(world.hosts.items())
                   if host.powered and name in host.hyper.live()]
        if vm.state is not VmState.STARTED or running != [vm.host]:
            out.append(f"{name}: {vm.state.value} on {vm.host or '-'} ({vm.reason}); "
                       f"running on {running}")
    return out


def _recovers(world: World, within_s: float) -> bool:
    """Do the HA VMs all run again within the bound (looked at every second)?"""
    deadline = world.now + within_s
    while world.now < deadline:
        world.run_until(world.now + 1.0)
        if not stuck_vms(world):
            return True
    return False


def converged(world: World) -> list[str]:
    """After healing every peer holds the same state at the same index."""
    seen = {name: (h.peer.proc.state.applied_index, state_digest(h.peer.proc.state))
            for name, h in sorted(world.hosts.items()) if h.peer.running}
    if len(set(seen.values())) <= 1:
        return []
    return [f"peers differ after healing: {seen}"]


def run_schedule(seed: int, fault_s: float = 30.0, actions: int = 12) -> ChaosResult:
    rng = random.Random(seed)
    world = build_cluster(rng, seed)
    start = world.now
    times = sorted(rng.uniform(start, start + fault_s) for _ in range(actions))
    log = []
    for when in times:
        world.run_until(when)
        text, act = random_action(world, rng)
        log.append(f"t={world.now:.1f} {text}")
        act()
    world.run_until(start + fault_s)
    for _ in range(HEAL_ROUNDS):
        heal_everything(world)
        world.run_until(world.now + 2.0)
        _settle(world)
        if _recovers(world, within_s=RECOVERY_BOUND_S):
            break
    world.run_until(world.now + 2.0)
    if stuck_vms(world):  # a slow BMC's late power-off, say: it must recover from that too
        _recovers(world, within_s=RECOVERY_BOUND_S)
    problems = stuck_vms(world) + converged(world)
    return ChaosResult(seed, list(world.observer.violations), log, problems,
                       list(world.observer.false_fences))


@dataclass
class ChaosSummary:
    base: int
    ran: int = 0
    failures: list[ChaosResult] = field(default_factory=list)
    false_fences: int = 0
    seconds: float = 0.0


def _run_chunk(seeds: list[int]) -> list[ChaosResult]:
    return [run_schedule(seed) for seed in seeds]


def run_many(base: int, count: int, workers: int = 1, stop_after: int = 3,
             chunk: int = 10) -> ChaosSummary:
    """Schedules base .. base+count-1, over `workers` processes; stops early once
    `stop_after` schedules failed. Every schedule is replayable by its seed alone."""
    import concurrent.futures
    import multiprocessing
    import time

    started = time.monotonic()
    summary = ChaosSummary(base)
    chunks = [list(range(s, min(s + chunk, base + count))) for s in range(base, base + count,
                                                                          chunk)]

    def take(results: list[ChaosResult]) -> None:
        summary.ran += len(results)
        summary.false_fences += sum(len(r.false_fences) for r in results)
        summary.failures += [r for r in results if not r.ok]

    if workers <= 1:
        for seeds in chunks:
            take(_run_chunk(seeds))
            if len(summary.failures) >= stop_after:
                break
    else:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(_run_chunk, seeds) for seeds in chunks]
            for future in futures:
                take(future.result())
                if len(summary.failures) >= stop_after:
                    for other in futures:
                        other.cancel()
                    break
    summary.failures.sort(key=lambda r: r.seed)
    summary.seconds = time.monotonic() - started
    return summary
