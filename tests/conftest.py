"""Lab clusters for end-to-end tests: real peer processes, real IPMI to
ipmi_sim BMCs, libvirtd instances; on loopback addresses of their own, or
each host in a network namespace with QEMU (isolation="netns", driver="qemu")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hacluster.lab.cluster import LabCluster, lab_unavailable


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[object]:
    made: list[LabCluster] = []

    def make(hosts: int = 3, profile: str = "fast", *, driver: str = "test",
             isolation: str = "loopback", **options: Any) -> LabCluster:
        reason = lab_unavailable(driver, isolation)
        if reason:
            pytest.skip(reason)
        lab = LabCluster(tmp_path / f"lab{len(made)}", hosts, profile=profile, driver=driver,
                         isolation=isolation, **options)
        made.append(lab)  # before start(): a start that fails half-way is cleaned up too
        lab.start()
        return lab

    yield make
    for lab in made:
        lab.stop(keep=False)
