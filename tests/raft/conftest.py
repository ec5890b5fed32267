"""Fixtures for the Raft adapter tests: peer processes on loopback, always cleaned up."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from raftlab.harness import Cluster

# These tests check what Raft keeps and refuses, not how fast it elects (bench/raft.py
# measures that with the defaults). Slower elections keep a peer process that a loaded
# CI machine pauses for 0.3 s from changing the term under a test that checks it.
PATIENT = {
    "election_timeout_min_s": 1.0,
    "election_timeout_max_s": 2.0,
    "leader_fallback_timeout_s": 4.0,
    "connection_timeout_s": 2.0,
}


@pytest.fixture
def make_cluster(tmp_path: Any) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(size: int, **kwargs: Any) -> Cluster:
        workdir = os.path.join(str(tmp_path), f"cluster{len(made)}")
        os.makedirs(workdir)
        kwargs["settings"] = {**PATIENT, **(kwargs.get("settings") or {})}
        cluster = Cluster(workdir, size, **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()
        for peer in cluster.all_peers:  # shown by pytest only when the test failed
            print(f"----- {peer.name} ({peer.address}) log tail -----\n{peer.log_tail(15)}")
