"""When the BMC dies with its host (issue 12): every host has a watchdog (the lab's
emulator cuts the host's power when its peer stops feeding it), so a host whose fence
fails because its BMC is dark is counted fenced once it must have reset itself, and
its VMs run elsewhere with no operator. The observer (libvirt on every host) and the
BMCs' power logs are the witnesses, never the cluster's own account."""

from __future__ import annotations

import time
from collections.abc import Callable

from hacluster.lab.bmc import BmcMode
from hacluster.lab.cluster import LabCluster

Factory = Callable[..., LabCluster]
WATCHDOG = (1.5, 2.5)  # (timeout_s, self_fence_s): fast, for the fast profile's 0.9 s lease


def vms_on(lab: LabCluster, host: str) -> list[str]:
    return sorted(n for n, v in lab.vms().items() if v["host"] == host)


def running_elsewhere(lab: LabCluster, names: list[str], dead: str) -> Callable[[], bool]:
    def check() -> bool:
        assert lab.observer is not None
        return all(lab.observer.where(n) and dead not in lab.observer.where(n) for n in names)

    return check


def armed(lab: LabCluster) -> bool:
    return all(h["watchdog"]["armed"] for h in lab.hosts().values())


def armed_lab(lab_factory: Factory) -> LabCluster:
    """Three hosts with watchdogs, four VMs, every watchdog armed and recorded."""
    lab = lab_factory(3, watchdog=WATCHDOG)
    lab.add_vms(4)
    lab.wait(lambda: armed(lab), 20, "every host's watchdog armed and recorded")
    return lab


def follower_with_vms(lab: LabCluster) -> str:
    leader = lab.wait_leader()
    return next(n for n in lab.nodes if n != leader and vms_on(lab, n))


def test_chassis_death_recovers_with_no_operator(lab_factory: Factory) -> None:
    lab = armed_lab(lab_factory)
    victim = lab.vms()["vm1"]["host"]
    moved = vms_on(lab, victim)
    lab.nodes[victim].bmc.set_mode(BmcMode.UNREACHABLE)  # the BMC goes dark with it
    cut = lab.power_off(victim, "chassis death")
    lab.wait(running_elsewhere(lab, moved, victim), 90, "its VMs running elsewhere")
    assert lab.observer is not None and lab.observer.violations == []
    assert all((lab.observer.first_start(n, cut, not_on=victim) or 0) > cut for n in moved)
    fence = lab.call("fence.history", {"host": victim})["fences"][-1]
    assert (fence["result"], fence["method"]) == ("self-fenced", "watchdog")
    assert fence["evidence"], "the BMC's failure is kept in the ledger"
    assert lab.hosts()[victim]["state"] == "fenced"


def test_an_isolated_host_with_a_dead_bmc_resets_itself_first(lab_factory: Factory) -> None:
    lab = armed_lab(lab_factory)
    victim = follower_with_vms(lab)
    moved = vms_on(lab, victim)
    lab.nodes[victim].bmc.set_mode(BmcMode.UNREACHABLE)
    with lab.cut_off(victim) as cut:
        lab.wait(running_elsewhere(lab, moved, victim), 90, "its VMs running elsewhere")
    observer = lab.observer
    assert observer is not None and observer.violations == []
    resets = [e for e in lab.nodes[victim].bmc.events()
              if e.event == "power-off" and e.cause == "watchdog"]
    assert resets, "the isolated host was not reset by its watchdog"
    for name in moved:  # elsewhere only after the watchdog cut the victim's power
        started = observer.first_start(name, cut, not_on=victim)
        assert started is not None and started > resets[0].mono
    fence = lab.call("fence.history", {"host": victim})["fences"][-1]
    assert (fence["result"], fence["method"]) == ("self-fenced", "watchdog")


def test_a_host_cut_off_from_the_leader_one_way_keeps_its_watchdog_fed(
        lab_factory: Factory) -> None:
    """Everything the leader sends the victim is dropped (the victim still reaches the
    leader, the others reach both): no acknowledgement and no Raft grant of the leader
    reaches it directly, but the leader's grants travel through the other voters
    (raft/allowances.py ha_relay) and its answers too (ha_carry): it never fences itself,
    nor is it fenced (soak seed 13 with --watchdog)."""
    from hacluster.lab.linkfaults import Drop

    lab = armed_lab(lab_factory)
    leader = lab.wait_leader()
    victim = follower_with_vms(lab)
    kept = vms_on(lab, victim)
    cut = lab.isolation.links.install([Drop(leader, victim)])
    try:
        time.sleep(4 * WATCHDOG[1])  # four self-fence delays
    finally:
        lab.isolation.links.remove(cut)
    offs = [e for e in lab.nodes[victim].bmc.events() if e.event == "power-off"]
    assert offs == [], f"{victim} was powered off: {offs}"
    assert lab.observer is not None and lab.observer.violations == []
    assert all(lab.observer.where(n) == [victim] for n in kept)
