"""A BMC in its own network namespace, fenced across a bridge; then the
namespace's traffic is dropped (a truly dropped port, not a closed one)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hacluster.fence.ipmi import IpmiFencer
from hacluster.lab import netns
from hacluster.lab.bmc import BmcSim
from hacluster.ports import FenceAction, FenceOutcome, PowerState

from .support import PASSWORD, need, timed

pytestmark = pytest.mark.netns


@pytest.fixture
def bmc_in_netns(tmp_path: Path) -> Iterator[tuple[netns.LabNetwork, BmcSim]]:
    need("ipmi_sim")
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with netns.LabNetwork() as net:
        space = net.add("bmc")
        sim = BmcSim.start(
            tmp_path / "bmc",
            address=space.address,
            password=PASSWORD,
            launch_prefix=net.argv("bmc", []),
        )
        try:
            yield net, sim
        finally:
            sim.stop()


def test_fence_across_the_bridge_then_dropped(
    bmc_in_netns: tuple[netns.LabNetwork, BmcSim], ipmi: IpmiFencer
) -> None:
    net, bmc = bmc_in_netns
    assert ipmi.probe(bmc.target(), 10).power is PowerState.ON
    bmc.set_power(True)
    net.cut("bmc")  # every packet to and from the BMC's namespace is dropped
    result = timed(lambda: ipmi.fence(bmc.target(), FenceAction.OFF, 1.5), 1.5)
    assert result.outcome is FenceOutcome.UNREACHABLE, result.evidence
    net.restore("bmc")
    result = ipmi.fence(bmc.target(), FenceAction.OFF, 10)
    assert result.outcome is FenceOutcome.OFF, result.evidence
    assert bmc.power is PowerState.OFF
