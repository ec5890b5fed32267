"""The storage activity check end to end (issue 12): every lab host writes storage
heartbeats into one shared directory (the lab's hosts share this machine's filesystem).
A host cut off from the network that keeps writing is alive: it is not fenced and its
VMs are not restarted; once it stops writing (its peer frozen) it is fenced, and only
then do its VMs run elsewhere. The witnesses are the observer (libvirt on every host)
and the BMCs' power logs, not the cluster's own account."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from hacluster.lab.bmc import PowerEvent
from hacluster.lab.cluster import LabCluster

Factory = Callable[..., LabCluster]
STORAGE = (3, 0.5)  # [storage] checks, check_interval_s (the fast profile's lease: 0.9 s)
HOLD_S = 8.0  # cut off and writing this long: nine leases, a dozen checks


def vms_on(lab: LabCluster, host: str) -> list[str]:
    return sorted(n for n, v in lab.vms().items() if v["host"] == host)


def power_offs(lab: LabCluster, host: str, after: float) -> list[PowerEvent]:
    return [e for e in lab.nodes[host].bmc.events()
            if e.event == "power-off" and e.mono >= after]


def test_a_cut_off_host_writing_storage_is_not_fenced_until_it_stops(
        lab_factory: Factory) -> None:
    lab = lab_factory(3, storage=STORAGE)
    lab.add_vms(4)
    lab.wait(lambda: all(h["storage"]["heartbeat_paths"] for h in lab.hosts().values()), 20,
             "every host's heartbeat paths in the cluster state")
    leader = lab.wait_leader()
    victim = next(n for n in lab.nodes if n != leader and vms_on(lab, n))
    kept = vms_on(lab, victim)
    observer = lab.observer
    assert observer is not None
    with lab.cut_off(victim) as cut:
        time.sleep(HOLD_S)
        # Witnesses: its power never went off, its VMs run there and nowhere else.
        assert power_offs(lab, victim, cut) == [], "fenced while it wrote its storage"
        for name in kept:
            assert observer.where(name) == [victim], name
            assert observer.first_start(name, cut, not_on=victim) is None, name
            assert observer.first_sighting(name, cut, running=False) is None, name
        assert lab.hosts()[victim]["state"] == "storage-active"  # and the cluster says so
        pid = lab.nodes[victim].host.peer_pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # it writes nothing any more (its VMs keep running)
        stopped = time.monotonic()
        lab.wait(lambda: all(observer.where(n) and victim not in observer.where(n)
                             for n in kept), 60, "its VMs running elsewhere")
    offs = power_offs(lab, victim, cut)
    assert offs and offs[0].began > stopped, "fenced before it stopped writing"
    for name in kept:  # elsewhere only after its power went off
        started = observer.first_start(name, cut, not_on=victim)
        assert started is not None and started > offs[0].mono, name
    assert observer.violations == []
    fences = lab.call("fence.history", {"host": victim})["fences"]
    assert [f["result"] for f in fences if f["requested_at"] > 0][-1] in ("off", "already-off")
    checked = fences[-1]["storage"]
    assert checked["verdict"] == "quiet" and checked["checks"] == STORAGE[0]
