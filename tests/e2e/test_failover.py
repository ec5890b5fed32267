"""End-to-end failover on a lab cluster: a host dies (or is cut off), the
leader fences it through its BMC over IPMI, and only then do its VMs run
elsewhere. The observer (independent of the cluster's state) checks where
VMs really run; the BMCs' power logs say when power really went off."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hacluster.lab.bmc import BmcMode
from hacluster.lab.cluster import LabCluster

Factory = Callable[..., LabCluster]


def vms_on(lab: LabCluster, host: str) -> list[str]:
    return sorted(n for n, v in lab.vms().items() if v["host"] == host)


def recovered(lab: LabCluster, names: list[str], dead: str) -> Callable[[], bool]:
    def check() -> bool:
        vms = lab.vms()
        return all(vms[n]["state"] == "started" and vms[n]["host"] != dead for n in names)

    return check


def running_elsewhere(lab: LabCluster, names: list[str], dead: str) -> bool:
    assert lab.observer is not None
    return all(lab.observer.where(n) and dead not in lab.observer.where(n) for n in names)


def cannot_be_fenced(lab: LabCluster, host: str) -> list[str]:
    return [line for line in lab.call("status")["waiting"]
            if line.startswith(f"host {host} cannot be fenced")]


def test_power_loss_restarts_vms_elsewhere(lab_factory: Factory) -> None:
    lab = lab_factory(3)
    lab.add_vms(4)
    victim = lab.vms()["vm1"]["host"]
    moved = vms_on(lab, victim)
    # The victim's BMC address is set just before it dies (as by `hactl bmc set` on a
    # new cluster, after its first check): status must not keep the "no address".
    address = lab.nodes[victim].bmc.address
    lab.call("bmc.set", {"host": victim, "address": ""})
    lab.wait(lambda: "no BMC address" in lab.hosts()[victim]["bmc_detail"], 20, "no address")
    lab.call("bmc.set", {"host": victim, "address": address})
    cut = lab.power_off(victim)
    lab.wait(recovered(lab, moved, victim), 30, "recovery")
    lab.wait(lambda: running_elsewhere(lab, moved, victim), 10, "VMs seen running elsewhere")
    assert lab.observer is not None
    last = max(lab.observer.first_start(n, cut, not_on=victim) or 0.0 for n in moved)
    print(f"\npower loss to last VM running elsewhere: {last - cut:.2f} s")
    assert lab.observer.violations == []
    fences = lab.call("fence.history", {"host": victim})["fences"]
    assert fences[-1]["result"] in ("off", "already-off")
    assert fences[-1]["method"].startswith("ipmi")
    assert lab.hosts()[victim]["state"] == "fenced"
    assert cannot_be_fenced(lab, victim) == [] and lab.hosts()[victim]["bmc_ok"] is True
    lab.power_on(victim)  # back: its own check replaces the fence's word
    lab.wait(lambda: "(power on)" in lab.hosts()[victim]["bmc_detail"], 20, "its own check")
    assert lab.hosts()[victim]["state"] == "online" and cannot_be_fenced(lab, victim) == []


@pytest.mark.parametrize("victim_is_leader", [False, True], ids=["follower", "leader"])
def test_cut_off_host_is_fenced_before_its_vms_start_elsewhere(
        lab_factory: Factory, victim_is_leader: bool) -> None:
    """The host keeps running its VMs while cut off. A cut-off leader keeps believing
    it leads for a while: it must fence nobody and start nothing."""
    lab = lab_factory(3)
    lab.add_vms(4)
    leader = lab.wait_leader()
    victim = leader if victim_is_leader else next(n for n in lab.nodes if n != leader)
    moved = vms_on(lab, victim)
    assert moved, "placement put no VM on the victim"
    with lab.cut_off(victim) as cut:
        lab.wait(recovered(lab, moved, victim), 40, "recovery")
        lab.wait(lambda: running_elsewhere(lab, moved, victim), 10, "VMs running elsewhere")
    observer = lab.observer
    assert observer is not None and observer.violations == []
    offs = [e for e in lab.nodes[victim].bmc.events() if e.event == "power-off"]
    assert offs, "the cut-off host was never powered off"
    for name in moved:  # started elsewhere only after the BMC cut the victim's power
        started = observer.first_start(name, cut, not_on=victim)
        assert started is not None and started > offs[0].mono
    others = [n for n in lab.nodes if n != victim]
    assert all(not lab.nodes[n].bmc.events() or
               all(e.event != "power-off" for e in lab.nodes[n].bmc.events()) for n in others)
    fences = lab.call("fence.history")["fences"]
    assert all(f["requested_by"] != victim for f in fences)
    # a start the observer saw late (its look before did not begin after the cut) is older
    late = [s for s in observer.sightings if s.host == victim and s.running and s.after > cut]
    assert late == [], "the cut-off host started a VM"


def test_leader_host_dies_and_the_new_leader_finishes(lab_factory: Factory) -> None:
    lab = lab_factory(3)
    lab.add_vms(4)
    leader = lab.wait_leader()
    moved = vms_on(lab, leader)
    assert moved, "placement put no VM on the leader"
    lab.power_off(leader)
    lab.wait(recovered(lab, moved, leader), 30, "recovery by the new leader")
    lab.wait(lambda: lab.leader() not in (None, leader), 10, "a new leader")
    assert lab.observer is not None and lab.observer.violations == []
    fence = lab.call("fence.history", {"host": leader})["fences"][-1]
    # a new leader did it (on a loaded machine leadership may move again afterwards)
    assert fence["requested_by"] not in ("", leader)
    assert fence["confirmed_by"] not in ("", leader)


def test_unreachable_bmc_waits_for_an_operator(lab_factory: Factory) -> None:
    lab = lab_factory(3)
    lab.set_settings({"fence_retry_limit": 1})  # each attempt waits out a silent BMC
    lab.add_vms(3)
    victim = lab.vms()["vm1"]["host"]
    frozen = vms_on(lab, victim)
    lab.wait(lambda: all(h["bmc_ok"] for h in lab.hosts().values()), 20,
             "every host's own BMC check answered")
    lab.nodes[victim].bmc.set_mode(BmcMode.UNREACHABLE)
    # the host's own periodic check sees it first: status says it cannot be fenced
    lab.wait(lambda: not lab.hosts()[victim]["bmc_ok"], 20, "the failing BMC reported")
    assert any(victim in line and "cannot be fenced" in line
               for line in lab.call("status")["waiting"])
    lab.power_off(victim)
    lab.wait(lambda: lab.hosts()[victim]["state"] == "fence-failed", 60, "fence-failed")
    vms = lab.vms()
    assert all(vms[n]["state"] == "fence" for n in frozen)
    assert lab.observer is not None
    assert all(lab.observer.where(n) == [] for n in frozen)
    results = {f["result"] for f in lab.call("fence.history", {"host": victim})["fences"]}
    # a leader elected meanwhile starts its own attempt and supersedes the running one
    assert results & {"unreachable", "timeout"}
    assert results <= {"unreachable", "timeout", "superseded"}
    lab.call("fence.confirm", {"host": victim, "reason": "power cords pulled by hand"})
    lab.wait(recovered(lab, frozen, victim), 20, "recovery after the confirm")
    record = lab.call("fence.history", {"host": victim})["fences"][-1]
    assert record["result"] == "manual" and record["confirmed_by"] == "root"


def test_fence_cap_stops_fencing_and_says_so(lab_factory: Factory) -> None:
    lab = lab_factory(5)
    lab.call("fence.cap", {"cap": 1})
    lab.add_vms(5)
    first, second = lab.vms()["vm1"]["host"], lab.vms()["vm2"]["host"]
    assert first != second
    lab.power_off(first)
    lab.wait(lambda: lab.hosts()[first]["state"] == "fenced", 30, "first fence")
    blocked = vms_on(lab, second)
    lab.power_off(second)
    lab.wait(lambda: lab.hosts()[second]["state"] == "fence-blocked", 30, "cap reached")
    assert all(lab.vms()[n]["state"] == "fence" for n in blocked)
    status = lab.call("status")
    assert any(second in line and "fence cap reached" in line for line in status["waiting"])
    cap = lab.call("fence.cap")["cap"]
    assert cap["reached"] and cap["used"] == 1
