"""Checks on lab clusters of real peer processes, shared by the tests in tests/daemon."""

from __future__ import annotations

from collections.abc import Callable

from hacluster.lab.cluster import LabCluster


def digests(lab: LabCluster) -> dict[str, tuple[int, str]]:
    out = {}
    for name, node in lab.nodes.items():
        if node.host.peer_pid() is None:
            continue
        peer = lab.call("status", name=name)["peer"]
        out[name] = (peer["applied_index"], peer["digest"])
    return out


def converged(lab: LabCluster, at_least: int = 0) -> Callable[[], bool]:
    """Every peer answers with the same applied index and digest, at or past
    `at_least` (after a whole-cluster restart the peers agree on an empty
    state until a leader commits: Raft does not keep the commit index)."""
    def check() -> bool:
        seen = digests(lab)
        return (len(seen) == len(lab.nodes) and len(set(seen.values())) == 1
                and next(iter(seen.values()))[0] >= at_least)

    return check
