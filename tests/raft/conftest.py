"""Fixtures for the Raft adapter tests: peer processes on loopback, always cleaned up."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hacluster.raft.harness import Cluster


@pytest.fixture
def make_cluster(tmp_path: Any) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(size: int, **kwargs: Any) -> Cluster:
        workdir = os.path.join(str(tmp_path), f"cluster{len(made)}")
        os.makedirs(workdir)
        cluster = Cluster(workdir, size, **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()
        for peer in cluster.all_peers:  # shown by pytest only when the test failed
            print(f"----- {peer.name} ({peer.address}) log tail -----\n{peer.log_tail(15)}")
