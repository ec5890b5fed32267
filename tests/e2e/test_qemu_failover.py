"""End-to-end failover with real QEMU: three hosts, each a network namespace
with its own peer and its own libvirtd running 32 MiB diskless KVM domains,
each behind an ipmi_sim BMC in the root namespace (the management network).

What happened is judged from outside the cluster: the observer polls every
libvirtd through its Unix socket (network partitions do not blind it) and
reads every BMC's power log; the cluster's own view is only used to wait."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from hacluster.lab.cluster import LabCluster
from hacluster.lab.observer import Observer, PowerChange

pytestmark = pytest.mark.netns

Factory = Callable[..., LabCluster]


@pytest.fixture
def qemu_lab(lab_factory: Factory) -> LabCluster:
    return lab_factory(3, "fast", driver="qemu", isolation="netns")


def _observer(lab: LabCluster) -> Observer:
    assert lab.observer is not None
    return lab.observer


def assert_watched_at_10_hz(observer: Observer) -> None:
    """The observer looks at every host's libvirtd at least 10 times a second:
    95 % of the intervals between two looks at a host are under 0.1 s, and
    none is long (a libvirtd starting a QEMU may answer a look late, and a
    loaded machine delays a thread now and then: at most 3 s)."""
    gaps = sorted(observer.gaps_s)
    p95, worst = gaps[int(0.95 * (len(gaps) - 1))], gaps[-1]
    print(f"observer: {observer.samples} looks, gap p95 {p95 * 1000:.0f} ms, "
          f"max {worst * 1000:.0f} ms")
    assert p95 <= 0.1 and worst <= 3.0


def vms_on(lab: LabCluster, host: str) -> list[str]:
    return sorted(n for n, v in lab.vms().items() if v["host"] == host)


def recovered(lab: LabCluster, names: list[str], dead: str) -> Callable[[], bool]:
    """The cluster says so, and the observer sees each VM running elsewhere."""
    def check() -> bool:
        vms = lab.vms()
        placed = all(vms[n]["state"] == "started" and vms[n]["host"] != dead for n in names)
        seen = [_observer(lab).where(n) for n in names]
        return placed and all(where and dead not in where for where in seen)

    return check


def assert_started_after(observer: Observer, names: list[str], dead: str, moment: float,
                         power_off: float) -> float:
    """Each VM started elsewhere provably after the dead host's power was off:
    the last look at its new host that did not see it began after that.
    Returns when the last of them was seen running."""
    seen = []
    for name in names:
        start = observer.first_sighting(name, moment, not_on=dead)
        assert start is not None, f"{name} never seen running elsewhere"
        assert start.after >= power_off, f"{name} may have started before the power-off"
        seen.append(start.at)
    return max(seen)


def assert_host_is_dead(lab: LabCluster, name: str) -> None:
    """Every process of the host is gone (peer, its workers, libvirtd, QEMU)."""
    assert lab.nodes[name].host.pids() == set()


def observed_power_offs(lab: LabCluster, host: str, after: float) -> list[PowerChange]:
    """The host's power-offs since `after`, once the observer has read its BMC's log
    (each host's thread reads it between looks at libvirt)."""
    observer = _observer(lab)
    lab.wait(lambda: bool(observer.power_offs(host, after)), 10,
             f"the observer reading {host}'s BMC log")
    return observer.power_offs(host, after)


def assert_nobody_else_lost_power(lab: LabCluster, victim: str) -> None:
    observer = _observer(lab)
    assert [c for c in observer.power_changes if c.host != victim] == []


def test_power_off_through_the_bmc_restarts_its_vms_elsewhere(qemu_lab: LabCluster) -> None:
    lab = qemu_lab
    lab.add_vms(4)
    victim = lab.vms()["vm1"]["host"]
    moved = vms_on(lab, victim)
    cut = lab.power_off(victim)
    lab.wait(recovered(lab, moved, victim), 30, "VMs running elsewhere")
    observer = _observer(lab)
    (off,) = observed_power_offs(lab, victim, cut)
    last = assert_started_after(observer, moved, victim, cut, off.at)
    print(f"\npower loss to last VM running elsewhere ({len(moved)} VMs, QEMU): "
          f"{last - cut:.2f} s (from the BMC's power-off record: {last - off.at:.2f} s)")
    assert observer.violations == []
    assert_watched_at_10_hz(observer)
    assert_host_is_dead(lab, victim)
    assert_nobody_else_lost_power(lab, victim)
    fence = lab.call("fence.history", {"host": victim})["fences"][-1]
    assert fence["result"] in ("off", "already-off") and fence["method"].startswith("ipmi")
    assert lab.hosts()[victim]["state"] == "fenced"


def test_cut_off_host_is_fenced_before_any_of_its_vms_start_elsewhere(
        qemu_lab: LabCluster) -> None:
    """Data network down, management network up: the host keeps running its
    VMs (and could still reach every BMC) until the leader powers it off."""
    lab = qemu_lab
    lab.add_vms(4)
    leader = lab.wait_leader()
    placement = {h: vms_on(lab, h) for h in lab.nodes if h != leader}
    victim = max(sorted(placement), key=lambda h: len(placement[h]))
    moved = placement[victim]
    assert moved, "placement put no VM on a follower"
    with lab.cut_off(victim) as cut:
        lab.wait(recovered(lab, moved, victim), 40, "VMs running elsewhere")
    observer = _observer(lab)
    offs = observed_power_offs(lab, victim, cut)
    assert [c.cause for c in offs] == ["ipmi"], "the cut-off host was not fenced over IPMI"
    off = offs[0]
    assert_started_after(observer, moved, victim, cut, off.at)
    for name in moved:  # it kept running on the victim after the cut, until the power cut
        stop = observer.first_sighting(name, cut, running=False, on=victim)
        assert stop is not None and stop.after > cut, f"{name} not seen running after the cut"
        assert stop.by >= off.began, f"{name} stopped on the victim before its fence"
    assert observer.violations == [], "a VM ran on two powered hosts"
    assert_watched_at_10_hz(observer)
    # a start counts as after the cut only if the look before it began after the cut
    assert [s for s in observer.sightings
            if s.host == victim and s.running and s.after > cut] == [], \
        "the cut-off host started a VM"
    assert_host_is_dead(lab, victim)
    assert_nobody_else_lost_power(lab, victim)
    fences = lab.call("fence.history")["fences"]
    assert {f["host"] for f in fences} == {victim}
    assert all(f["requested_by"] != victim for f in fences)


def test_leader_host_dies_and_the_new_leader_finishes(qemu_lab: LabCluster) -> None:
    lab = qemu_lab
    lab.add_vms(4)
    leader = lab.wait_leader()
    moved = vms_on(lab, leader)
    assert moved, "placement put no VM on the leader"
    cut = lab.power_off(leader)
    lab.wait(recovered(lab, moved, leader), 30, "recovery by the new leader")
    lab.wait(lambda: lab.leader() not in (None, leader), 10, "a new leader")
    observer = _observer(lab)
    assert observer.violations == []
    assert_watched_at_10_hz(observer)
    (off,) = observed_power_offs(lab, leader, cut)
    assert_started_after(observer, moved, leader, cut, off.at)
    fence = lab.call("fence.history", {"host": leader})["fences"][-1]
    # a new leader did it all (on a loaded machine leadership may move again afterwards)
    assert fence["requested_by"] not in ("", leader)
    assert fence["confirmed_by"] not in ("", leader)
    assert_host_is_dead(lab, leader)
    assert_nobody_else_lost_power(lab, leader)
    time.sleep(0.3)  # a last look: nothing came back on the dead host
    assert all(leader not in observer.where(n) for n in moved)
