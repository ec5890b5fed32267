"""Glue between the replicated BMC settings and a Fencer backend: one device at a
time, and a host's fencing levels in order (core/fencelevels.py decides)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

from hacluster.core.bmc import BmcSpec
from hacluster.core.fencelevels import (
    DeviceOutcome,
    FencePlan,
    LevelOutcome,
    PlannedDevice,
    device_action,
    fence_verdict,
    next_level,
)
from hacluster.fsm.model import FenceAction, FenceResult
from hacluster.ports import BmcTarget, FenceOutcome, Fencer, Secret
from hacluster.secrets import SecretError, unseal

log = logging.getLogger("hacluster.fence")

# Says "" while this peer may still act on the fence, else why it may not (checked
# before every level after the first: a level can take a whole fence_timeout_s).
StillOurs = Callable[[], Awaitable[str]]


def bmc_target(spec: BmcSpec, cluster_secret: str) -> BmcTarget:
    """Unseal the password just before use; raises SecretError if it cannot."""
    password: Secret = unseal(cluster_secret, spec.sealed_password)
    return BmcTarget(
        host=spec.host, driver=spec.driver, address=spec.address, port=spec.port,
        username=spec.username, password=password,
        cipher_suite=spec.cipher_suite if spec.cipher_suite >= 0 else None,
        agent=spec.agent, options=spec.options, verify_tls=spec.verify_tls)


def as_record_result(outcome: FenceOutcome) -> FenceResult:
    """The backend's outcome as the replicated fence-history result."""
    return FenceResult(outcome.value)


async def run_device(fencer: Fencer, secret: str, pool: Executor, host: str,
                     device: PlannedDevice, action: FenceAction,
                     deadline_s: float) -> DeviceOutcome:
    """One device's attempt (power off and read back off, within the deadline)."""
    if device.spec is None:
        return DeviceOutcome(FenceResult.ERROR, f"host {host} has no BMC address configured",
                             "none")
    try:
        target = bmc_target(device.spec, secret)
    except SecretError as exc:
        return DeviceOutcome(FenceResult.ERROR, str(exc), device.name)
    loop = asyncio.get_running_loop()
    res = await loop.run_in_executor(pool, fencer.fence, target, action, deadline_s)
    return DeviceOutcome(as_record_result(res.outcome), res.evidence, res.method)


async def run_plan(plan: FencePlan, action: FenceAction, deadline_s: float, fencer: Fencer,
                   secret: str, pool: Executor,
                   still_ours: StillOurs) -> tuple[FenceResult, str, str]:
    """Walk the levels until one fences the host: the devices of a level run at once,
    each within `deadline_s`. Returns (result, evidence, method) for the record."""
    done: list[LevelOutcome] = []
    while (index := next_level(plan, done, action)) is not None:
        number = index + 1
        why_not = await still_ours() if done else ""
        if why_not:
            done.append(LevelOutcome(number, (), skipped=why_not))
            break
        devices = plan.levels[index]
        act = device_action(action, len(devices))
        outcomes = await asyncio.gather(*(
            run_device(fencer, secret, pool, plan.host, d, act, deadline_s) for d in devices))
        level = LevelOutcome(number, tuple(outcomes))
        done.append(level)
        if not plan.implicit:
            log.info("fence level %d of %d of %s: %s", number, len(plan.levels), plan.host,
                     "confirmed off" if level.succeeded else "failed",
                     extra={"host": plan.host, "level": number})
    return fence_verdict(plan, done)


__all__ = ["SecretError", "as_record_result", "bmc_target", "run_device", "run_plan"]
