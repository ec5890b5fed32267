"""Lab clusters for end-to-end tests: real peer processes, real IPMI to
ipmi_sim BMCs, libvirtd instances; on loopback addresses of their own."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hacluster.lab.cluster import LabCluster
from hacluster.lab.libvirtd import unavailable_reason


def lab_unavailable() -> str | None:
    reason = unavailable_reason("test")
    if reason:
        return reason
    for tool in ("ipmi_sim", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt: openipmi, nftables)"
    return None


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
