"""Fencing levels against real BMCs: two ipmi_sim simulators on loopback, real IPMI
(pyghmi) and, when installed, the real fence_ipmilan agent. The host's own BMC
(level 1) rejects our credentials; level 2 holds two devices (two PSUs on two
outlets) that must both power off. The BMCs' own power logs are the witnesses."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from hacluster.core.fencelevels import fence_plan
from hacluster.daemon.fencing import run_plan
from hacluster.fence import make_fencer
from hacluster.fsm import commands as c
from hacluster.fsm.model import (
    BmcOverride,
    BmcSettings,
    FenceAction,
    FenceDevice,
    FenceLevel,
    FenceResult,
)
from hacluster.fsm.states import HostState
from hacluster.lab.bmc import BmcSim
from hacluster.ports import PowerState
from hacluster.secrets import seal
from tests.core.builders import Cluster

from .support import PASSWORD, assert_no_secret

SECRET = "cluster-secret-for-levels"
DEADLINE_S = 5.0


def second_device(bmc: BmcSim) -> FenceDevice:
    """The other outlet: through fence_ipmilan when it is installed, else IPMI."""
    sealed = seal(SECRET, PASSWORD)
    if shutil.which("fence_ipmilan"):
        return FenceDevice("agent", bmc.address, port=bmc.port, username=bmc.user,
                           sealed_password=sealed, agent="fence_ipmilan", cipher_suite=3,
                           options=(("power_wait", "0"),))
    return FenceDevice("ipmi", bmc.address, port=bmc.port, username=bmc.user,
                       sealed_password=sealed)


def host_with_levels(outlet_a: BmcSim, outlet_b: BmcSim) -> Cluster:
    """h1's own BMC (the first simulator) is set with a wrong password: level 1 is
    refused. Level 2: both simulators with the right one."""
    cluster = Cluster()
    cluster.ok(c.SetBmcDefaults(bmc=BmcSettings(username=outlet_a.user,
                                                sealed_password=seal(SECRET, "Wrong-Pw.1"))))
    cluster.add_hosts("h1", "h2", bmc=BmcOverride(address=outlet_a.address,
                                                  port=outlet_a.port))
    first = FenceDevice("ipmi", outlet_a.address, port=outlet_a.port,
                        sealed_password=seal(SECRET, PASSWORD))  # username: the default's
    cluster.ok(c.SetHostFencing(name="h1", levels=(
        FenceLevel((FenceDevice("bmc"),)),
        FenceLevel((first, second_device(outlet_b))))))
    return cluster


def walk(cluster: Cluster, still_ours: Callable[[], str]) -> tuple[FenceResult, str, str]:
    plan = fence_plan(cluster.state, "h1")
    router = make_fencer()

    async def confirm() -> str:
        return still_ours()

    try:
        with ThreadPoolExecutor(4) as pool:
            return asyncio.run(run_plan(plan, FenceAction.OFF, DEADLINE_S, router, SECRET,
                                        pool, confirm))
    finally:
        router.close()


def offs(bmc: BmcSim) -> list[str]:
    return [e.cause for e in bmc.events() if e.event == "power-off"]


def test_level_one_refused_then_both_devices_of_level_two_power_the_host_off(
        make_bmc: Callable[..., BmcSim]) -> None:
    outlet_a, outlet_b = make_bmc(), make_bmc()
    cluster = host_with_levels(outlet_a, outlet_b)
    token = cluster.fence("h1")
    asked: list[str] = []
    result, evidence, method = walk(cluster, lambda: asked.append("level 2") or "")

    assert asked == ["level 2"]  # leadership confirmed again before the second level
    assert outlet_a.power is PowerState.OFF and outlet_b.power is PowerState.OFF
    assert offs(outlet_a) == ["ipmi"] and offs(outlet_b) == ["ipmi"]  # each once, by IPMI
    assert result is FenceResult.OFF
    assert method.startswith(f"level 2: ipmi 127.0.0.1:{outlet_a.port} + ")
    assert f"127.0.0.1:{outlet_b.port}" in method
    assert "level 1 of 2 failed (1 of 1 device(s) failed)" in evidence
    assert "auth-rejected" in evidence.split("; level 2")[0]
    assert "level 2 of 2 confirmed off (2 of 2 device(s) off)" in evidence
    assert_no_secret(evidence, method)

    cluster.ok(c.ConfirmFence(host="h1", token=token, result=result, evidence=evidence,
                              method=method))
    record = cluster.state.fence_record(token)
    assert record is not None and record.method.startswith("level 2: ")
    assert "level 2 of 2 confirmed off" in record.result_evidence
    assert cluster.host_state("h1") is HostState.FENCED


def test_no_further_level_runs_once_leadership_is_not_confirmed(
        make_bmc: Callable[..., BmcSim]) -> None:
    outlet_a, outlet_b = make_bmc(), make_bmc()
    cluster = host_with_levels(outlet_a, outlet_b)
    cluster.fence("h1")
    result, evidence, method = walk(cluster, lambda: "a newer term began")
    assert result is FenceResult.AUTH_REJECTED and method == "level 1"
    assert evidence.endswith("level 2 of 2 not run: a newer term began")
    assert offs(outlet_a) == [] and offs(outlet_b) == []
    assert outlet_a.power is PowerState.ON and outlet_b.power is PowerState.ON
