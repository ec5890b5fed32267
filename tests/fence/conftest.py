"""Fixtures for the fencing tests: real ipmi_sim BMCs on loopback, always stopped.

Every BMC listens on its own free UDP port in its own temp dir, so tests never
share a BMC (pyghmi shares sessions per BMC, and a BMC left hanging by one
test must not slow down the next)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hacluster.fence.agent import AgentFencer
from hacluster.fence.ipmi import IpmiFencer
from hacluster.lab.bmc import BmcSim
from raftlab.harness import free_ports

from .support import PASSWORD, need


@pytest.fixture
def make_bmc(tmp_path: Path) -> Iterator[Callable[..., BmcSim]]:
    """Start BmcSims (kwargs go to BmcSim.start); all are stopped afterwards."""
    need("ipmi_sim")
    started: list[BmcSim] = []

    def make(**kwargs: Any) -> BmcSim:
        kwargs.setdefault("password", PASSWORD)
        sim = BmcSim.start(tmp_path / f"bmc{len(started)}", **kwargs)
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def bmc(make_bmc: Callable[..., BmcSim]) -> BmcSim:
    return make_bmc()


@pytest.fixture(scope="module")
def ipmi() -> Iterator[IpmiFencer]:
    # Shared by a module's tests: attempts are isolated in worker processes
    # anyway, and the spare worker it keeps saves each test a Python start.
    fencer = IpmiFencer(poll_interval_s=0.02)
    fencer.warm()
    yield fencer
    fencer.close()


@pytest.fixture
def agent() -> AgentFencer:
    need("fence_ipmilan")
    return AgentFencer(poll_interval_s=0.05)


@pytest.fixture
def silent_udp_port() -> int:
    """A loopback UDP port nobody listens on (the moment we checked)."""
    return free_ports(1)[0]
