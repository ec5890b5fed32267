"""VM relations: start order, colocation groups and required host tags.

Start order is mandatory, as Pacemaker's ordering constraints of kind Mandatory: a VM
whose `start_after` names other VMs is placed as usual (its capacity is booked) but its
agent starts it only once every one of them runs, i.e. its agent reported it started
(state started or migrating). There is no timeout: a dependency that never runs keeps
its dependents waiting, and `hactl explain` says for what. A planned shutdown stops the
VMs of its host in reverse order (`stop_waves`: an application before its database);
other stops (drain, hactl vm stop, a fence) do not wait for each other.

A colocation group (`colocation`) is kept on one host: placement puts the members of a
plan on one host that fits them all, and a member placed alone goes where the rest of
its group runs (fsm/placement.py). A member that must leave that host pulls the others
after it (fsm/lifecycle.py `pull_colocated`).

Pure: reads the state only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from hacluster.fsm.model import ClusterState, Host, Vm
from hacluster.fsm.states import VmState

RUNNING = frozenset({VmState.STARTED, VmState.MIGRATING})  # what a dependency must be


def waiting_for(state: ClusterState, vm: Vm) -> list[str]:
    """The VMs `vm` must wait for before it starts (sorted; [] when it may start).
    A dependency that is not defined (any more) is not waited for."""
    return sorted(name for name in vm.start_after
                  if name in state.vms and state.vms[name].state not in RUNNING)


def order_cycle(vms: Mapping[str, Vm], changed: Vm) -> list[str]:
    """A start-order cycle through `changed` once it replaces its record, as the VM
    names along it (first name repeated at the end), or [] when there is none."""
    def after(name: str) -> tuple[str, ...]:
        vm = changed if name == changed.name else vms.get(name)
        return vm.start_after if vm is not None else ()

    path = [changed.name]
    seen: set[str] = set()

    def walk(name: str) -> bool:  # depth-first; `path` holds the way back to `changed`
        for dep in sorted(after(name)):
            if dep == changed.name:
                path.append(dep)
                return True
            if dep in seen:
                continue
            seen.add(dep)
            path.append(dep)
            if walk(dep):
                return True
            path.pop()
        return False

    return path if walk(changed.name) else []


def relation_problem(state: ClusterState, vm: Vm) -> str:
    """What is wrong with vm's relations against the other VMs ("" if nothing)."""
    unknown = sorted({n for n in vm.start_after if n not in state.vms})  # not O(all VMs)
    if unknown:
        return f"start-after names unknown VM(s): {', '.join(unknown)}"
    cycle = order_cycle(state.vms, vm)
    if cycle:
        return f"start-after would make a cycle: {' -> '.join(cycle)}"
    if vm.colocation and vm.anti_affinity:
        both = sorted(o.name for o in state.vms.values() if o.name != vm.name
                      and o.colocation == vm.colocation and o.anti_affinity == vm.anti_affinity)
        if both:
            return (f"{vm.name} and {', '.join(both)} would be in colocation group "
                    f"{vm.colocation} (kept together) and anti-affinity group "
                    f"{vm.anti_affinity} (kept apart)")
    return ""


def dependents(state: ClusterState, name: str) -> list[str]:
    """The VMs that start only after `name` (sorted)."""
    return sorted(v.name for v in state.vms.values() if name in v.start_after)


def stop_waves(state: ClusterState, names: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    """`names` in waves to stop one after the other: a VM stops in an earlier wave than
    every VM among `names` it starts after, directly or through VMs elsewhere (the
    order is acyclic: apply refuses a cycle). Each wave sorted; () for no names."""
    among = set(names)

    def needs(name: str) -> set[str]:  # what `name` starts after, transitively
        seen: set[str] = set()
        todo = list(state.vms[name].start_after) if name in state.vms else []
        while todo:
            dep = todo.pop()
            if dep not in seen and dep in state.vms:
                seen.add(dep)
                todo.extend(state.vms[dep].start_after)
        return seen & among

    stopped_before = {n: needs(n) for n in among}  # n stops before each of these
    wave: dict[str, int] = {}

    def wave_of(name: str) -> int:
        if name not in wave:
            wave[name] = 1 + max((wave_of(d) for d in among if name in stopped_before[d]),
                                 default=-1)
        return wave[name]

    for name in among:
        wave_of(name)
    return tuple(tuple(sorted(n for n in among if wave[n] == i))
                 for i in range(max(wave.values(), default=-1) + 1))


def mates(state: ClusterState, vm: Vm) -> list[Vm]:
    """The other members of vm's colocation group, sorted by name."""
    if not vm.colocation:
        return []
    return [state.vms[n] for n in sorted(state.vms)
            if n != vm.name and state.vms[n].colocation == vm.colocation]


def missing_tags(vm: Vm, host: Host) -> list[str]:
    """The tags vm requires that host lacks (sorted)."""
    return sorted(set(vm.required_tags) - set(host.tags))


def hosts_with_tags(state: ClusterState, tags: tuple[str, ...]) -> list[str]:
    return sorted(n for n, h in state.hosts.items() if h.runs_vms and set(tags) <= set(h.tags))
