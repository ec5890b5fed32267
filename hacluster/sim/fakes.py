"""Fakes for the simulator only: hypervisors that record where each VM really runs,
and BMCs with failure modes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from hacluster.core.agent import DomainState
from hacluster.core.silence import PROBE_TIMEOUT_S
from hacluster.fsm.model import FenceAction, FenceResult


class BmcMode(enum.StrEnum):
    WORKS = "works"
    UNREACHABLE = "unreachable"  # no answer; the deadline passes
    SLOW = "slow"  # power goes off late, after the read-back gave up (timeout)
    SLOW_OK = "slow-ok"  # power goes off late but within the deadline: success, slowly
    ALREADY_OFF = "already-off"  # reads off without a command
    BAD_CREDENTIALS = "bad-credentials"
    FROZEN = "frozen"  # accepts the session, never answers the command
    LIES = "lies"  # powers the host off, then answers an error (a safe lie)


@dataclass
class FakeHypervisor:
    """What really runs on one simulated host."""

    domains: dict[str, DomainState] = field(default_factory=dict)

    def live(self) -> list[str]:
        return sorted(n for n, s in self.domains.items() if s is DomainState.RUNNING)


@dataclass
class SimBmc:
    mode: BmcMode = BmcMode.WORKS
    fail_next: int = 0  # the next n commands fail as unreachable, then the mode applies
    log: list[tuple[float, str]] = field(default_factory=list)  # its own power log


@dataclass(frozen=True)
class BmcPlan:
    """What a fence attempt against a BMC in some mode does, and when."""

    result: FenceResult
    answer_after_s: float  # when the backend returns its result
    power_off_after_s: float | None  # when the host really loses power (None: never)
    power_on_after_s: float | None = None  # reboot: when power comes back
    evidence: str = ""


def bmc_plan(bmc: SimBmc, action: FenceAction, host_powered: bool,
             deadline_s: float) -> BmcPlan:
    """What a command does; consumes one of `fail_next`."""
    if bmc.fail_next > 0:
        bmc.fail_next -= 1
        return BmcPlan(FenceResult.UNREACHABLE, min(5.0, deadline_s), None,
                       evidence="no answer from the BMC (fails for now)")
    return _plan(bmc.mode, action, host_powered, deadline_s)


def _plan(mode: BmcMode, action: FenceAction, host_powered: bool,
          deadline_s: float) -> BmcPlan:
    if mode is BmcMode.UNREACHABLE:
        return BmcPlan(
            FenceResult.UNREACHABLE, min(5.0, deadline_s), None, evidence="no answer from the BMC"
        )
    if mode is BmcMode.FROZEN:
        return BmcPlan(FenceResult.TIMEOUT, deadline_s, None,
                       evidence=f"no answer within {deadline_s:g}s")
    if mode is BmcMode.BAD_CREDENTIALS:
        return BmcPlan(
            FenceResult.AUTH_REJECTED, 0.1, None, evidence="BMC rejected the credentials"
        )
    if action in (FenceAction.NONE, FenceAction.IDENTIFY):
        return BmcPlan(FenceResult.NOTIFIED, 0.1, None, evidence=f"action {action.value}")
    if not host_powered or mode is BmcMode.ALREADY_OFF:
        return BmcPlan(FenceResult.ALREADY_OFF, 0.1, 0.0, evidence="power read: off")
    if mode is BmcMode.SLOW:
        return BmcPlan(
            FenceResult.TIMEOUT,
            deadline_s,
            deadline_s + 2.0,
            evidence=f"power still on after {deadline_s:g}s",
        )
    if mode is BmcMode.SLOW_OK:
        late = min(3.0, deadline_s * 0.6)
        return BmcPlan(FenceResult.OFF, late + 0.1, late, evidence=f"read back off after {late:g}s")
    if mode is BmcMode.LIES:
        return BmcPlan(FenceResult.ERROR, 0.3, 0.2, evidence="BMC answered an error")
    if action is FenceAction.REBOOT:
        return BmcPlan(
            FenceResult.REBOOTED,
            0.4,
            0.2,
            power_on_after_s=1.5,
            evidence="power off, read back off, power on",
        )
    return BmcPlan(FenceResult.OFF, 0.3, 0.2, evidence="power off sent, read back off")




@dataclass(frozen=True)
class ProbePlan:
    """What reading a host's power through its BMC in some mode gives, and when."""

    answer_after_s: float
    off: bool
    detail: str


def probe_plan(bmc: SimBmc, host_powered: bool) -> ProbePlan:
    """A power read commands nothing; a BMC that does not answer in time reads nothing."""
    if bmc.fail_next > 0:
        bmc.fail_next -= 1
        return ProbePlan(PROBE_TIMEOUT_S, False, "no answer from the BMC (fails for now)")
    if bmc.mode in (BmcMode.UNREACHABLE, BmcMode.FROZEN):
        return ProbePlan(PROBE_TIMEOUT_S, False, f"no answer within {PROBE_TIMEOUT_S:g}s")
    if bmc.mode is BmcMode.BAD_CREDENTIALS:
        return ProbePlan(0.05, False, "BMC rejected the credentials")
    off = not host_powered or bmc.mode is BmcMode.ALREADY_OFF
    delay = 0.6 if bmc.mode in (BmcMode.SLOW, BmcMode.SLOW_OK) else 0.05
    return ProbePlan(delay, off, f"power read: {'off' if off else 'on'}")
