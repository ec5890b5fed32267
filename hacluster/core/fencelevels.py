"""Fencing levels (Pacemaker's fencing topology), without I/O: which devices fence a
host, in which order, and what their results prove.

A host's levels (`Host.fence_levels`, set by `SetHostFencing`) are tried in order. A
level fences the host only when every one of its devices powered off and read back off
(two PSUs on two PDU outlets: both outlets off); if any device of a level fails, the
next level is tried (devices of the failed level already switched off stay off, and the
evidence says so). The fence is confirmed only when one whole level succeeded; when all
fail, the attempt failed as a single-BMC attempt does (retries, cap, operator, watchdog).
The whole walk is one attempt of one incident: the fence cap counts it once.

A host without levels has one implicit level: its BMC (cluster defaults with its
overrides), and its result, evidence and method read exactly as before levels existed.

The daemon (daemon/fencing.py) runs the devices; this module plans (`fence_plan`), says
what runs next (`next_level`, `device_action`) and judges (`fence_verdict`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hacluster.core.bmc import BmcSpec, bmc_spec
from hacluster.fsm.model import (
    BmcSettings,
    ClusterState,
    FenceAction,
    FenceDevice,
    FenceResult,
)

DEFAULT_PORTS = {"ipmi": 623, "redfish": 443, "agent": 623}  # agent: BmcTarget's default,
# for which the agent backend passes no ipport to a non-IPMI agent (its own default)
DEVICE_EVIDENCE_MAX = 400  # characters of one device's evidence inside a level's


@dataclass(frozen=True, slots=True)
class PlannedDevice:
    """One device to run: its resolved settings (None: the host's BMC has no address)."""

    spec: BmcSpec | None
    name: str  # for evidence: "ipmi 10.0.1.5:623", "agent fence_apc_snmp pdu1"


@dataclass(frozen=True, slots=True)
class FencePlan:
    host: str
    levels: tuple[tuple[PlannedDevice, ...], ...]
    implicit: bool  # no levels configured: the host's BMC alone, reported as before


@dataclass(frozen=True, slots=True)
class DeviceOutcome:
    result: FenceResult
    evidence: str
    method: str

    @property
    def off(self) -> bool:
        """This device powered its outlet/host off and read it back off."""
        return self.result.host_is_off and self.result is not FenceResult.MANUAL


@dataclass(frozen=True, slots=True)
class LevelOutcome:
    number: int  # 1-based
    devices: tuple[DeviceOutcome, ...]
    skipped: str = ""  # not run, and why (leadership could not be confirmed before it)

    @property
    def succeeded(self) -> bool:
        return bool(self.devices) and not self.skipped and all(d.off for d in self.devices)


def device_name(spec: BmcSpec | None) -> str:
    if spec is None:
        return "host BMC (no address)"
    if spec.driver == "agent":
        return f"agent {spec.agent} {spec.address}:{spec.port}"
    return f"{spec.driver} {spec.address}:{spec.port}"


def resolve_device(state: ClusterState, host: str, device: FenceDevice) -> BmcSpec | None:
    """A device's settings as a backend needs them (see `FenceDevice` for defaults)."""
    if device.driver == "bmc":
        return bmc_spec(state, host)
    base: BmcSettings = state.settings.bmc
    inherits = device.driver in ("ipmi", "redfish")
    cipher = device.cipher_suite
    if cipher < 0 and inherits and device.driver == base.driver:
        cipher = base.cipher_suite
    return BmcSpec(
        host=host, driver=device.driver, address=device.address,
        port=device.port or DEFAULT_PORTS.get(device.driver, 623),
        username=device.username or (base.username if inherits else ""),
        sealed_password=device.sealed_password or (base.sealed_password if inherits else b""),
        cipher_suite=cipher, agent=device.agent, options=device.options,
        verify_tls=base.verify_tls)


def fence_plan(state: ClusterState, name: str) -> FencePlan:
    host = state.hosts.get(name)
    if host is None or not host.fence_levels:
        spec = bmc_spec(state, name)
        return FencePlan(name, ((PlannedDevice(spec, device_name(spec)),),), implicit=True)
    levels = []
    for level in host.fence_levels:
        specs = [resolve_device(state, name, d) for d in level.devices]
        levels.append(tuple(PlannedDevice(s, device_name(s)) for s in specs))
    return FencePlan(name, tuple(levels), implicit=False)


def device_action(action: FenceAction, level_size: int) -> FenceAction:
    """A reboot through several devices would power-cycle one outlet while the others
    still feed the host: a level of several devices powers off only (the host stays off)."""
    if action is FenceAction.REBOOT and level_size > 1:
        return FenceAction.OFF
    return action


def next_level(plan: FencePlan, done: Sequence[LevelOutcome], action: FenceAction) -> int | None:
    """The index of the level to run next, or None when the walk is over: a level
    succeeded, every level was tried, one was skipped, or the action powers nothing off
    (none/identify notify through the first level only)."""
    if not done:
        return 0
    last = done[-1]
    if last.succeeded or last.skipped or action not in (FenceAction.OFF, FenceAction.REBOOT):
        return None
    return len(done) if len(done) < len(plan.levels) else None


def _short(text: str) -> str:
    return text if len(text) <= DEVICE_EVIDENCE_MAX else text[: DEVICE_EVIDENCE_MAX - 3] + "..."


def _level_line(level: LevelOutcome, total: int) -> str:
    head = f"level {level.number} of {total}"
    if level.skipped:
        return f"{head} not run: {level.skipped}"
    devices = " | ".join(f"{d.method}: {d.result.value}: {_short(d.evidence)}"
                         for d in level.devices)
    if level.succeeded:
        return f"{head} confirmed off ({len(level.devices)} of {len(level.devices)} " \
               f"device(s) off): {devices}"
    failed = sum(not d.off for d in level.devices)
    line = f"{head} failed ({failed} of {len(level.devices)} device(s) failed): {devices}"
    still_off = [d.method for d in level.devices if d.off]
    if still_off:
        line += f" (left off: {', '.join(still_off)})"
    return line


def _level_result(level: LevelOutcome) -> FenceResult:
    if len(level.devices) == 1:
        return level.devices[0].result
    if all(d.result is FenceResult.ALREADY_OFF for d in level.devices):
        return FenceResult.ALREADY_OFF
    return FenceResult.OFF


def _failure_result(done: Sequence[LevelOutcome]) -> FenceResult:
    """The failure recorded: the first failed device of the last level that ran (the
    last resort is what failed last)."""
    for level in reversed(done):
        for d in level.devices:
            if not d.off:
                return d.result
    return FenceResult.ERROR


def fence_verdict(plan: FencePlan, done: Sequence[LevelOutcome]) -> tuple[FenceResult, str, str]:
    """(result, evidence, method) for the attempt's fence record."""
    if plan.implicit and len(done) == 1 and len(done[0].devices) == 1 and not done[0].skipped:
        only = done[0].devices[0]
        return only.result, only.evidence, only.method  # as before levels existed
    total = len(plan.levels)
    evidence = "; ".join(_level_line(level, total) for level in done) or "no level ran"
    confirmed = next((level for level in done if level.succeeded), None)
    if confirmed is not None:
        methods = " + ".join(d.method for d in confirmed.devices)
        return _level_result(confirmed), evidence, f"level {confirmed.number}: {methods}"
    tried = [level for level in done if not level.skipped]
    method = f"levels 1-{tried[-1].number}" if len(tried) > 1 else \
        f"level {tried[0].number}" if tried else "none"
    if len(done) < total and not (done and done[-1].skipped):
        evidence += f"; levels {len(done) + 1}-{total} not run"
    return _failure_result(done), evidence, method
