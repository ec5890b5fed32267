"""Placement: which host a VM goes to, with the one line that explains why.

Pure and deterministic: hosts are ranked by the replicated selector, ties
broken by host name; constraints are host limits, required host tags,
anti-affinity groups, colocation groups and capacity (never beyond the replicated
overcommit ratios). A `Planner` books capacity as it goes, so one plan places all
VMs of a dead host at once; the members of a colocation group in one plan go to one
host that fits them all, and a member placed alone goes where its group runs.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from hacluster.fsm.model import ClusterState, Host, Selector, Settings, Usage, Vm
from hacluster.fsm.relations import missing_tags
from hacluster.fsm.states import SCHEDULABLE_HOSTS, VM_SHOULD_RUN, VmState


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
    lacking = missing_tags(vm, host)
    if lacking:
        return f"lacks tag(s) {', '.join(lacking)}"
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
        self._state = state
        self._anchors: dict[str, str] | None = None  # computed when a colocated VM comes

    @property
    def anchors(self) -> dict[str, str]:
        """Colocation group -> the host it runs on (booked members included)."""
        if self._anchors is None:
            self._anchors = _anchors(self._state, self.hosts)
        return self._anchors

    def _key(self, name: str) -> float:
        return _score(self.selector, self.hosts[name], self.usage[name], self.settings,
                      self.booked_vcpus[name])

    def choose(self, vm: Vm) -> Choice:
        if vm.preferred_hosts:
            return self._preferred(vm)
        for _, name in self.ranking:
            host = self.hosts[name]
            usage = self.usage[name]
            if not self._misfit(vm, name):
                return Choice(name, _describe(self.selector, host, usage, self.settings))
        return Choice(None, self._why_nothing_fits(vm))

    def choose_in(self, vm: Vm, batch: Iterable[Vm]) -> Choice:
        """Choose for vm, placed in a batch: a colocation group with no host yet
        goes to a host that fits all its members of the batch."""
        if not vm.colocation:  # the usual VM: no pass over the whole batch
            return self.choose(vm)
        together = [v for v in batch if v.colocation == vm.colocation]
        if len(together) < 2 or vm.colocation in self.anchors:
            return self.choose(vm)
        return self._choose_together(vm.colocation, together)

    def _misfit(self, vm: Vm, name: str) -> str:
        anchor = self.anchors.get(vm.colocation) if vm.colocation else None
        if anchor is not None and anchor != name:
            return f"not where colocation group {vm.colocation} runs ({anchor})"
        return misfit(vm, self.hosts[name], self.usage[name], self.settings)

    def _choose_together(self, group: str, members: list[Vm]) -> Choice:
        names = ", ".join(v.name for v in members)
        why: dict[str, list[str]] = {}
        for _, name in self.ranking:
            usage = self.usage[name].copy()
            problem = ""
            for member in members:
                problem = misfit(member, self.hosts[name], usage, self.settings)
                if problem:
                    problem = f"{problem} for {member.name}"
                    break
                usage.add(member, 1)
            if not problem:
                fits = _describe(self.selector, self.hosts[name], self.usage[name],
                                 self.settings)
                return Choice(name, f"{fits}; with its colocation group {group} ({names})")
            why.setdefault(problem, []).append(name)
        parts = [f"{w} ({_names(sorted(h))})" for w, h in sorted(why.items())]
        return Choice(None, f"colocation group {group} ({names}) fits on no host together"
                      + (": " + "; ".join(parts) if parts else ": no schedulable host"))

    def _preferred(self, vm: Vm) -> Choice:
        """A VM with preferred hosts: the best score among the hosts that fit (hosts it
        does not prefer score 0), then the selector's ranking (fsm/failback.py)."""
        scores = dict(vm.preferred_hosts)
        fits = [(-scores.get(name, 0), rank, name) for rank, (_, name) in
                enumerate(self.ranking)
                if not self._misfit(vm, name)]
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
        problem = self._misfit(vm, name)
        return Choice(None, f"host {name} {problem}") if problem else Choice(name, "requested")

    def book(self, vm: Vm, name: str) -> None:
        old_key = self._key(name)
        self.usage[name].add(vm, 1)
        self.booked_vcpus[name] += vm.vcpus
        if vm.colocation:
            self.anchors.setdefault(vm.colocation, name)
        del self.ranking[bisect.bisect_left(self.ranking, (old_key, name))]
        bisect.insort(self.ranking, (self._key(name), name))

    def _why_nothing_fits(self, vm: Vm) -> str:
        need = f"{vm.memory_mib} MiB, {vm.vcpus} vCPU"
        if not self.hosts:
            return f"no schedulable host for {need}"
        by_reason: dict[str, list[str]] = {}
        for name in sorted(self.hosts):
            why = self._misfit(vm, name)
            by_reason.setdefault(why, []).append(name)
        parts = [f"{why} ({_names(hosts)})" for why, hosts in sorted(by_reason.items())]
        return f"no host fits {need}: " + "; ".join(parts)


def _names(hosts: list[str], shown: int = 4) -> str:
    more = f" and {len(hosts) - shown} more" if len(hosts) > shown else ""
    return ", ".join(hosts[:shown]) + more


def _anchors(state: ClusterState, hosts: dict[str, Host]) -> dict[str, str]:
    """Where each colocation group runs: the usable host holding most of its members
    that should run (ties: host name). A member on a host this plan may not use (dead,
    draining, excluded) anchors nothing, so the group may go elsewhere together."""
    counts: dict[str, dict[str, int]] = {}
    for vm in state.vms.values():
        if not vm.colocation or vm.state not in VM_SHOULD_RUN:
            continue
        where = vm.target_host if vm.state is VmState.MIGRATING else vm.host
        if where in hosts:
            on = counts.setdefault(vm.colocation, {})
            on[where] = on.get(where, 0) + 1
    return {group: min(on, key=lambda h: (-on[h], h)) for group, on in counts.items()}


def by_priority(vms: Iterable[Vm]) -> list[Vm]:
    """Highest priority first, then name: the order in which a plan places VMs."""
    return sorted(vms, key=lambda vm: (-vm.priority, vm.name))


def plan(planner: Planner, vms: Iterable[Vm]) -> list[tuple[Vm, Choice]]:
    """Place VMs in priority order, booking capacity as each one is placed."""
    out = []
    ordered = by_priority(vms)
    for vm in ordered:
        choice = planner.choose_in(vm, ordered)
        if choice.host is not None:
            planner.book(vm, choice.host)
        out.append((vm, choice))
    return out
