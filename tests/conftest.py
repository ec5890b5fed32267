"""Lab clusters for end-to-end tests: real peer processes, real IPMI to
ipmi_sim BMCs, libvirtd instances; on loopback addresses of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hacluster.lab.cluster import LabCluster, lab_unavailable


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[object]:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    made: list[LabCluster] = []

    def make(hosts: int = 3, profile: str = "fast") -> LabCluster:
        lab = LabCluster(tmp_path / f"lab{len(made)}", hosts, profile=profile)
        made.append(lab)
        lab.start()
        return lab

    yield make
    for lab in made:
        lab.stop(keep=False)
