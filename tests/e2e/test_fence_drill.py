"""The operator guide's fencing drill (docs/operator-guide.md, "Test fencing safely"),
as written there: with the fence action `identify` a host whose peer falls silent is
fenced by blinking its chassis light, not by a power-off; it then waits `fence-failed`
for an operator while its VMs keep running where they are, and comes back online when
its peer resumes. Judged by the BMC's own log and the lab observer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable

from hacluster.lab.cluster import LabCluster
from hacluster.lab.observer import Observer

Factory = Callable[..., LabCluster]


def hactl(lab: LabCluster, peer: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "hacluster.cli.hactl", "--connect",
                           lab.nodes[peer].host.spec.rpc_socket, *args],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_identify_blinks_the_light_and_fences_nothing(lab_factory: Factory) -> None:
    lab = lab_factory(3, "fast")
    lab.add_vms(3)
    observer = lab.observer
    assert isinstance(observer, Observer)
    leader = lab.wait_leader()  # a follower is stopped: the leader answers throughout
    victim = next(n for n in sorted(lab.nodes)
                  if n != leader and any(v["host"] == n for v in lab.vms().values()))
    placed = {vm: observer.where(vm) for vm in lab.vms()}

    def state() -> str:  # asked of the leader: the stopped peer would not answer
        return str(lab.call("host.show", {"name": victim}, name=leader)["host"]["state"])

    hactl(lab, leader, "settings", "set", "fence_action=identify")
    pid = lab.nodes[victim].host.peer_pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the guide: systemctl kill --signal=SIGSTOP hacluster
    try:
        lab.wait(lambda: state() == "fence-failed", 30,
                 f"{victim} fence-failed (waiting for an operator)")
        fences = lab.call("fence.history", {"host": victim}, name=leader)["fences"]
        assert [(f["action"], f["result"]) for f in fences] == [("identify", "notified")]
        assert "fence-failed" in hactl(lab, leader, "host", "show", victim)
        assert {vm: observer.where(vm) for vm in placed} == placed  # nothing moved
    finally:
        os.kill(pid, signal.SIGCONT)
    lab.wait(lambda: state() == "online", 30, f"{victim} back online")
    hactl(lab, leader, "settings", "set", "fence_action=off")
    bmc = [e.event for e in lab.nodes[victim].bmc.events() if e.cause == "ipmi"]
    assert "identify" in bmc and "power-off" not in bmc
    assert all(observer.power_offs(n) == [] for n in lab.nodes)
    assert {vm: observer.where(vm) for vm in placed} == placed
    assert observer.violations == []
