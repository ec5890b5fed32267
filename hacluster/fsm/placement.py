"""Placement: which host a VM goes to, with the one line that explains why.

Pure and deterministic: hosts are ranked by the replicated selector, ties
broken by host name; constraints are host limits, anti-affinity groups and
capacity (never beyond the replicated overcommit ratios). A `Planner` books
capacity as it goes, so one plan places all VMs of a dead host at once.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from hacluster.fsm.model import ClusterState, Host, Selector, Settings, Usage, Vm
from hacluster.fsm.states import SCHEDULABLE_HOSTS


@dataclass(frozen=True, slots=True)
class Choice:
    host: str | None  # None: nothing fits
    reason: str


def _score(selector: Selector, host: Host, usage: Usage, settings: Settings,
           booked_vcpus: int = 0) -> float:
    """Lower is better. The reported load does not know about VMs booked in this plan
    yet, so each booked vCPU counts as one unit of load (else a plan piles up)."""
    if selector is Selector.FREE_MEMORY:
        return -(host.memory_mib * settings.memory_overcommit - usage.memory_mib)
    if selector is Selector.PROVISIONED_MEMORY:
        return usage.memory_mib
    if selector is Selector.VCPUS:
        return usage.vcpus
    if selector is Selector.VM_COUNT:
        return usage.count
    return host.load + booked_vcpus


def _describe(selector: Selector, host: Host, usage: Usage, settings: Settings) -> str:
    if selector is Selector.FREE_MEMORY:
        free = host.memory_mib * settings.memory_overcommit - usage.memory_mib
        return f"most free memory ({free:.0f} MiB before placing)"
    if selector is Selector.PROVISIONED_MEMORY:
        return f"least provisioned memory ({usage.memory_mib} MiB)"
    if selector is Selector.VCPUS:
        return f"fewest vCPUs allocated ({usage.vcpus})"
    if selector is Selector.VM_COUNT:
        return f"fewest VMs ({usage.count})"
    return f"lowest load ({host.load:g})"


def misfit(vm: Vm, host: Host, usage: Usage, settings: Settings) -> str:
    """Why vm cannot go to host ("" if it can)."""
    if vm.allowed_hosts and host.name not in vm.allowed_hosts:
        return "outside the VM's host limits"
    if vm.anti_affinity and usage.groups.get(vm.anti_affinity):
        return f"already runs anti-affinity group {vm.anti_affinity}"
    if usage.memory_mib + vm.memory_mib > host.memory_mib * settings.memory_overcommit:
        return "lacks memory"
    if usage.vcpus + vm.vcpus > host.vcpus * settings.vcpu_overcommit:
        return "lacks vCPUs"
    return ""


class Planner:
    """Books VMs onto schedulable hosts; `exclude` names hosts never to use."""

    def __init__(self, state: ClusterState, exclude: Iterable[str] = ()) -> None:
        excluded = set(exclude)
        self.settings = state.settings
        self.selector = state.settings.selector
        self.hosts = {
            name: host
            for name, host in state.hosts.items()
            if host.state in SCHEDULABLE_HOSTS and host.runs_vms and name not in excluded
            and not host.shutdown  # a planned shutdown is under way (fsm/apply_shutdown.py)
        }
        self.usage = {name: state.usage_of(name).copy() for name in self.hosts}
        self.booked_vcpus = dict.fromkeys(self.hosts, 0)
        self.ranking = sorted((self._key(name), name) for name in self.hosts)

    def _key(self, name: str) -> float:
        return _score(self.selector, self.hosts[name], self.usage[name], self.settings,
                      self.booked_vcpus[name])

    def choose(self, vm: Vm) -> Choice:
        if vm.preferred_hosts:
            return self._preferred(vm)
        for _, name in self.ranking:
            host = self.hosts[name]
            usage = self.usage[name]
            if not misfit(vm, host, usage, self.settings):
                return Choice(name, _describe(self.selector, host, usage, self.settings))
        return Choice(None, self._why_nothing_fits(vm))

    def _preferred(self, vm: Vm) -> Choice:
        """A VM with preferred hosts: the best score among the hosts that fit (hosts it
        does not prefer score 0), then the selector's ranking (fsm/failback.py)."""
        scores = dict(vm.preferred_hosts)
        fits = [(-scores.get(name, 0), rank, name) for rank, (_, name) in
                enumerate(self.ranking)
                if not misfit(vm, self.hosts[name], self.usage[name], self.settings)]
        if not fits:
            return Choice(None, self._why_nothing_fits(vm))
        score, _, name = min(fits)
        why = _describe(self.selector, self.hosts[name], self.usage[name], self.settings)
        return Choice(name, f"preferred host (score {-score}), {why}" if score else why)

    def check(self, vm: Vm, name: str) -> Choice:
        """Can vm go to this particular host?"""
        host = self.hosts.get(name)
        if host is None:
            return Choice(None, f"host {name} is not schedulable")
        problem = misfit(vm, host, self.usage[name], self.settings)
        return Choice(None, f"host {name} {problem}") if problem else Choice(name, "requested")

    def book(self, vm: Vm, name: str) -> None:
        old_key = self._key(name)
        self.usage[name].add(vm, 1)
        self.booked_vcpus[name] += vm.vcpus
        del self.ranking[bisect.bisect_left(self.ranking, (old_key, name))]
        bisect.insort(self.ranking, (self._key(name), name))

    def _why_nothing_fits(self, vm: Vm) -> str:
        need = f"{vm.memory_mib} MiB, {vm.vcpus} vCPU"
        if not self.hosts:
            return f"no schedulable host for {need}"
        by_reason: dict[str, list[str]] = {}
        for name in sorted(self.hosts):
            why = misfit(vm, self.hosts[name], self.usage[name], self.settings)
            by_reason.setdefault(why, []).append(name)
        parts = [f"{why} ({_names(hosts)})" for why, hosts in sorted(by_reason.items())]
        return f"no host fits {need}: " + "; ".join(parts)


def _names(hosts: list[str], shown: int = 4) -> str:
    more = f" and {len(hosts) - shown} more" if len(hosts) > shown else ""
    return ", ".join(hosts[:shown]) + more


def by_priority(vms: Iterable[Vm]) -> list[Vm]:
    """Highest priority first, then name: the order in which a plan places VMs."""
    return sorted(vms, key=lambda vm: (-vm.priority, vm.name))


def plan(planner: Planner, vms: Iterable[Vm]) -> list[tuple[Vm, Choice]]:
    """Place VMs in priority order, booking capacity as each one is placed."""
    out = []
    for vm in by_priority(vms):
        choice = planner.choose(vm)
        if choice.host is not None:
            planner.book(vm, choice.host)
        out.append((vm, choice))
    return out
