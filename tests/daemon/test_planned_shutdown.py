"""Planned shutdowns with real peer processes (a lab cluster on loopback): a leader
stopped by SIGTERM hands leadership over before it leaves, so the cluster never waits
for an election timeout; the shutdown policy is carried out and nobody is fenced."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from hacluster.lab.cluster import LabCluster

Factory = Callable[..., LabCluster]
STAMP = r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)"


def log_of(lab: LabCluster, name: str) -> str:
    return (Path(lab.nodes[name].host.spec.path) / "peer.log").read_text()


def first_stamp(text: str, pattern: str) -> str:
    """The timestamp of the first log line matching `pattern` (ISO, so it sorts)."""
    found = re.search(STAMP + r".*" + pattern, text)
    assert found is not None, f"no line matching {pattern!r}"
    return found.group(1)


def test_a_stopping_leader_hands_leadership_over_before_it_leaves(
        lab_factory: Factory) -> None:
    lab = lab_factory(3)
    lab.add_vms(2)
    old = lab.wait_leader()
    term = lab.call("status", name=old)["peer"]["term"]
    lab.nodes[old].host.stop_peer()
    others = [n for n in lab.nodes if n != old]
    new = lab.wait_leader()
    assert new in others
    # One election, no more: the successor leads in the very next term ...
    assert lab.call("status", name=new)["peer"]["term"] == term + 1
    mine = log_of(lab, old)
    # ... and the stopping leader saw it lead while its own Raft still ran: without the
    # hand-over, the followers would have kept hearing it until it closed and only then,
    # an election timeout later, elected someone.
    handed = re.search(r"leadership handed over: (\S+) leads in term (\d+) \(this peer led "
                       r"in term (\d+)\)", mine)
    assert handed is not None, mine[-3000:]
    assert (handed.group(1), int(handed.group(2)), int(handed.group(3))) == \
        (new, term + 1, term)
    # The successor's own log agrees on the order: elected before the old leader left.
    elected = first_stamp(log_of(lab, new), f"leading .*elected in term {term + 1}")
    assert elected <= first_stamp(mine, "peer stopped")
    # A planned shutdown is no failure: nothing fenced, the host not judged.
    lab.wait(lambda: lab.hosts()[old]["peer_stopped"], 10, "the old leader marked stopped")
    assert lab.call("fence.history")["fences"] == []
    assert lab.hosts()[old]["state"] == "online"


def test_a_peer_without_quorum_leaves_without_lingering(lab_factory: Factory) -> None:
    """Nothing can be recorded: the peer says so and leaves after one commit time (its
    host is then judged by its lease, as any silent host), instead of spending the whole
    stop timeout (300 s) on it and being killed by systemd."""
    lab = lab_factory(3)
    lab.add_vms(1)
    for name in ("h2", "h3"):
        lab.nodes[name].host.stop_peer()
    lab.nodes["h1"].host.stop_peer(timeout_s=60)  # SIGKILL after that: no "peer stopped"
    text = log_of(lab, "h1")
    assert "could not record that this peer stops (no quorum?)" in text, text[-2000:]
    assert text.rstrip().splitlines()[-1].split()[3:5] == ["peer", "stopped"]
