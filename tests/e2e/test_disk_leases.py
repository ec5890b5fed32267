"""Disk leases (issue 12): a second proof that holds when the fence proof is wrong.

Three QEMU hosts in network namespaces, each libvirtd with libvirt's lockd lock manager
and its own virtlockd, all sharing one lockspace directory; every VM has a disk. A host
is cut off from the cluster (its QEMU keeps running), its BMC is unreachable so its
fence fails, and an operator confirms the fence by mistake. The cluster then places the
host's VMs elsewhere, and libvirt on the new host refuses each start: the lease on the
disk is held by the copy still running. Judged from outside the product: the observer
(libvirt on every host) never sees a VM on two hosts, and the QEMU logs of the other
hosts show exactly one start attempt per VM (no retry loop)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hacluster.lab.bmc import BmcMode
from hacluster.lab.cluster import LabCluster

pytestmark = pytest.mark.netns

Factory = Callable[..., LabCluster]
QUIET_S = 6.0  # after the refusals: long enough for several retries of a loop


def vms_on(lab: LabCluster, host: str) -> list[str]:
    return sorted(n for n, v in lab.vms().items() if v["host"] == host)


def start_attempts(lab: LabCluster, vm: str, hosts: list[str]) -> dict[str, int]:
    """QEMU launches of `vm` per host, from libvirt's per-domain QEMU log (libvirt
    writes the command line there before every launch)."""
    counts = {}
    for name in hosts:
        log = Path(lab.nodes[name].host.libvirtd.base) / "log" / "qemu" / f"{vm}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        counts[name] = text.count(f"-name guest={vm},")
    return counts


def lock_refusals(lab: LabCluster, hosts: list[str]) -> int:
    """Lease refusals that libvirtd logged on these hosts."""
    total = 0
    for name in hosts:
        log = Path(lab.nodes[name].host.libvirtd.base) / "log" / "libvirtd.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        total += sum(1 for line in text.splitlines()
                     if " error : " in line and "Lockspace resource" in line
                     and "is locked" in line)
    return total


def test_a_wrong_confirm_on_a_live_host_starts_no_second_copy(lab_factory: Factory) -> None:
    lab = lab_factory(3, "fast", driver="qemu", isolation="netns", disk_leases=True)
    lab.call("settings.set", {"values": {"fence_retry_limit": 1}})  # fail fast
    lab.add_vms(6, timeout_s=180)  # two per host (QEMU under TCG: slow on a busy machine)
    observer = lab.observer
    assert observer is not None
    leader = lab.wait_leader()
    victim = max(sorted(n for n in lab.nodes if n != leader), key=lambda n: len(vms_on(lab, n)))
    held = vms_on(lab, victim)
    assert held, "placement put no VM on a follower"
    others = [n for n in lab.nodes if n != victim]
    before = {vm: start_attempts(lab, vm, others) for vm in held}
    lab.nodes[victim].bmc.set_mode(BmcMode.UNREACHABLE)
    with lab.cut_off(victim):
        lab.wait(lambda: lab.hosts()[victim]["state"] == "fence-failed", 60, "fence-failed")
        lab.call("fence.confirm", {"host": victim, "reason": "I thought it was off"})
        confirmed = time.monotonic()
        lab.wait(lambda: all(lab.vms()[n]["state"] == "error" for n in held), 30,
                 "every start refused")
        refused = time.monotonic()
        print(f"\nconfirm to the last refusal ({len(held)} VMs): {refused - confirmed:.2f} s")
        time.sleep(QUIET_S)
        # the witnesses: one copy each, still on the cut-off host; one start attempt
        assert observer.violations == [], "a VM ran on two hosts"
        assert all(observer.where(n) == [victim] for n in held)
        for vm in held:
            attempts = start_attempts(lab, vm, others)
            tried = {h: attempts[h] - before[vm][h] for h in others}
            assert sum(tried.values()) == 1, f"{vm}: start attempts after the confirm {tried}"
        assert lock_refusals(lab, others) == len(held)
        # the product's account: a distinct reason, one event per VM, waiting for a person
        vms = lab.vms()
        for vm in held:
            assert vms[vm]["host"] == "" and "disk lock is held" in vms[vm]["reason"]
        with lab.client() as rpc:
            events = list(rpc.stream("events", {"last": 1000}))
        locked = [e for e in events if e["kind"] == "vm-start-locked"]
        assert sorted(e["subject"] for e in locked) == held
        assert all(e["data"]["host"] != victim for e in locked)
        waiting = lab.call("status")["waiting"]
        assert all(any(f"vm {n} is error" in w and "disk lock" in w for w in waiting)
                   for n in held)
    # back on the network, the wrongly fenced host destroys its copies (the state places
    # them nowhere); an operator starts them again, and each runs exactly once
    lab.wait(lambda: all(observer.where(n) == [] for n in held), 30, "the copies destroyed")
    for vm in held:
        lab.call("vm.start", {"name": vm})
    lab.wait(lambda: all(lab.vms()[n]["state"] == "started" and len(observer.where(n)) == 1
                         for n in held), 60, "the VMs running again")
    assert observer.violations == []
