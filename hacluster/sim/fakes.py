"""Fakes for the simulator only: hypervisors that record where each VM really
runs, BMCs with failure modes, and a network of hosts, links and partitions."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from hacluster.core.agent import DomainState
from hacluster.fsm.model import FenceAction, FenceResult


class BmcMode(enum.StrEnum):
    WORKS = "works"
    UNREACHABLE = "unreachable"
    SLOW = "slow"  # power goes off late; read-back times out
    ALREADY_OFF = "already-off"  # reads off without a command
    BAD_CREDENTIALS = "bad-credentials"


@dataclass
class FakeHypervisor:
    """What really runs on one simulated host."""

    domains: dict[str, DomainState] = field(default_factory=dict)

    def live(self) -> list[str]:
        return sorted(n for n, s in self.domains.items() if s is DomainState.RUNNING)


@dataclass(frozen=True)
class BmcPlan:
    """What a fence attempt against a BMC in some mode does, and when."""

    result: FenceResult
    answer_after_s: float  # when the backend returns its result
    power_off_after_s: float | None  # when the host really loses power (None: never)
    power_on_after_s: float | None = None  # reboot: when power comes back
    evidence: str = ""


def bmc_plan(mode: BmcMode, action: FenceAction, host_powered: bool, deadline_s: float) -> BmcPlan:
    if mode is BmcMode.UNREACHABLE:
        return BmcPlan(
            FenceResult.UNREACHABLE, min(5.0, deadline_s), None, evidence="no answer from the BMC"
        )
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
    if action is FenceAction.REBOOT:
        return BmcPlan(
            FenceResult.REBOOTED,
            0.4,
            0.2,
            power_on_after_s=1.5,
            evidence="power off, read back off, power on",
        )
    return BmcPlan(FenceResult.OFF, 0.3, 0.2, evidence="power off sent, read back off")


@dataclass
class Network:
    """Hosts talk if both are powered, in the same partition group, and share a
    link that neither has cut."""

    links: dict[str, tuple[str, ...]] = field(default_factory=dict)
    group: dict[str, int] = field(default_factory=dict)
    cut: dict[str, set[str]] = field(default_factory=dict)

    def add(self, host: str, links: tuple[str, ...]) -> None:
        self.links[host] = links
        self.group[host] = 0
        self.cut[host] = set()

    def shared_links(self, a: str, b: str) -> list[str]:
        if a == b:
            return list(self.links[a])
        if self.group[a] != self.group[b]:
            return []
        return [
            ln
            for ln in self.links[a]
            if ln in self.links[b] and ln not in self.cut[a] and ln not in self.cut[b]
        ]

    def connected(self, a: str, b: str) -> bool:
        return a == b or bool(self.shared_links(a, b))

    def isolate(self, host: str) -> None:
        self.cut[host] = set(self.links[host])

    def heal(self, host: str) -> None:
        self.cut[host] = set()
        self.group[host] = 0

    def heal_all(self) -> None:
        for host in self.links:
            self.heal(host)
