"""Fencing levels end to end on a lab cluster: a host is cut off while alive; its own
BMC (level 1) refuses the credentials set for it, and level 2 (its BMC with the right
ones, plus a second ipmi_sim standing for the outlet of its second power supply,
through fence_ipmilan when installed) must switch both off. The BMCs' power logs and
the observer are the witnesses; the fence history must name level 2."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hacluster.lab.bmc import BmcSim
from hacluster.lab.cluster import LabCluster

from .test_failover import recovered, running_elsewhere, vms_on

Factory = Callable[..., LabCluster]


def device(bmc: BmcSim, agent: bool = False) -> dict[str, Any]:
    found: dict[str, Any] = {"driver": "ipmi", "address": bmc.address, "port": bmc.port,
                             "username": bmc.user, "password": bmc.password.reveal()}
    if agent and shutil.which("fence_ipmilan"):
        found.update(driver="agent", agent="fence_ipmilan", cipher_suite=3,
                     options={"power_wait": "0"})
    return found


def test_level_two_powers_both_supplies_off_before_any_vm_starts_elsewhere(
        lab_factory: Factory, tmp_path: Path) -> None:
    lab = lab_factory(3)
    lab.add_vms(4)
    leader = lab.wait_leader()
    victim = next(n for n in lab.nodes if n != leader)
    moved = vms_on(lab, victim)
    assert moved, "placement put no VM on the victim"
    own = lab.nodes[victim].bmc
    with BmcSim.start(tmp_path / "outlet") as outlet:
        lab.call("bmc.set", {"host": victim, "password": "Wrong-Pw.1"})  # level 1 refused
        lab.call("host.fencing", {"name": victim, "levels": [
            [{"driver": "bmc"}], [device(own), device(outlet, agent=True)]]})
        with lab.cut_off(victim) as cut:
            lab.wait(recovered(lab, moved, victim), 40, "recovery")
            lab.wait(lambda: running_elsewhere(lab, moved, victim), 10, "VMs running elsewhere")
        offs = [e for bmc in (own, outlet) for e in bmc.events() if e.event == "power-off"]
    assert [e.cause for e in offs] == ["ipmi", "ipmi"]  # each supply once, by the fence
    observer = lab.observer
    assert observer is not None and observer.violations == []
    for name in moved:  # no VM started elsewhere before the whole level was off
        started = observer.first_start(name, cut, not_on=victim)
        assert started is not None and started > max(e.mono for e in offs)
    fences = lab.call("fence.history", {"host": victim})["fences"]
    assert [f["attempt"] for f in fences] == [1]  # one attempt, one fence against the cap
    fence = fences[0]
    assert fence["result"] == "off" and fence["method"].startswith("level 2: ipmi ")
    assert ("+ agent fence_ipmilan" in fence["method"]) == bool(shutil.which("fence_ipmilan"))
    assert "level 1 of 2 failed (1 of 1 device(s) failed)" in fence["result_evidence"]
    assert "auth-rejected" in fence["result_evidence"]
    assert "level 2 of 2 confirmed off (2 of 2 device(s) off)" in fence["result_evidence"]
    shown = lab.call("host.show", {"name": victim})["host"]["fence_levels"]
    assert shown[0] == "1: bmc (the host's BMC settings)" and "password=<sealed>" in shown[1]
