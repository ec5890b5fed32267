"""A leader cut off from its followers answers no read barrier (issue 8, hole 2).

Real peers: the two followers are SIGSTOPped, so the leader keeps believing it leads
(Raft's fallback) while it cannot confirm that anyone still follows it. A renewal sent
to it, the way a host's agent asks for a barrier before starting a VM, gets no ack
until the followers run again; before the fix it was acked at once with the leader's
old commit index."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

from hacluster.core.renewal import LeaseCodec
from hacluster.daemon.leases import LeaseService, LeaseTimes
from hacluster.lab.cluster import LabCluster

Factory = Callable[..., LabCluster]


async def ask_barrier(lab: LabCluster, leader: str, timeout_s: float) -> int | None:
    """Send a barrier renewal to the leader as host 'probe' would; its commit index or None."""
    node = lab.nodes[leader]
    spec = node.host.spec
    secret = Path(spec.secret_file).read_text().strip()
    probe = LeaseService("probe", LeaseCodec(secret), {"main": "127.0.0.1"}, 0,
                         lambda *a: None, lambda: {leader: [("main", spec.address)]},
                         lambda: LeaseTimes(0.5, 3.0))
    await probe.start()
    probe.port = spec.lease_port  # listen on any port, send to the cluster's
    try:
        ack = await probe.barrier(timeout_s)
        return None if ack is None else ack.commit_index
    finally:
        probe.close()


def test_a_leader_that_cannot_reach_a_majority_answers_no_barrier(lab_factory: Factory) -> None:
    lab = lab_factory(3)
    leader = lab.wait_leader()
    assert asyncio.run(ask_barrier(lab, leader, 5.0)) is not None  # a healthy leader answers
    followers = [n for name, n in lab.nodes.items() if name != leader]
    pids = [n.host.peer_pid() for n in followers]
    assert all(pids)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)  # type: ignore[arg-type]
    try:
        status = lab.call("status", name=leader)["peer"]
        assert status["is_leader"]  # it still believes it leads
        assert asyncio.run(ask_barrier(lab, leader, 1.0)) is None
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)  # type: ignore[arg-type]
    lab.wait(lambda: asyncio.run(ask_barrier(lab, lab.wait_leader(), 2.0)) is not None, 30,
             "a barrier answered once the followers run again")
