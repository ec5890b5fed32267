"""`hactl explain VM`: why a VM is where it is, or why it does not run, and
where it would go if its host died now. Pure: reads the state only."""

from __future__ import annotations

from hacluster.fsm import failback, relations
from hacluster.fsm.model import ClusterState, Desired, HaPolicy, Vm
from hacluster.fsm.placement import Planner, plan
from hacluster.fsm.room import MAKING_ROOM, MAX_MOVES
from hacluster.fsm.states import HostState, VmState


def explain(state: ClusterState, name: str) -> list[str]:
    vm = state.vms.get(name)
    if vm is None:
        return [f"no VM named {name!r}"]
    lines = [_where(vm), f"why: {vm.reason or '-'}"]
    lines += _policy(vm)
    lines += _start_order(state, vm)
    lines += _colocation(state, vm)
    lines += _tags(state, vm)
    lines += _host_context(state, vm)
    lines += _room(state, vm)
    lines += _failback(state, vm)
    lines.append(_if_host_died(state, vm))
    return lines


def _where(vm: Vm) -> str:
    if vm.state is VmState.MIGRATING:
        return f"{vm.name} is migrating from {vm.host} to {vm.target_host}"
    if vm.state is VmState.FENCE:
        return (f"{vm.name} is frozen on {vm.host} until its fence is confirmed (placement "
                f"{vm.placement})")
    if vm.host:
        return f"{vm.name} is {vm.state.value} on {vm.host} (placement {vm.placement})"
    return f"{vm.name} is {vm.state.value} and placed on no host"


def _policy(vm: Vm) -> list[str]:
    lines = [f"desired {vm.desired.value}, HA policy {vm.ha.value}, priority {vm.priority}, "
             f"restarts {vm.restarts}/{vm.max_restarts}, relocations "
             f"{vm.relocates}/{vm.max_relocates}"]
    if vm.allowed_hosts:
        lines.append(f"host limits: only {', '.join(vm.allowed_hosts)}")
    if vm.tried_hosts:
        lines.append(f"failed on {', '.join(vm.tried_hosts)} since it last ran stably: a "
                     "relocation tries the other eligible hosts first")
    if vm.anti_affinity:
        lines.append(f"anti-affinity group {vm.anti_affinity}: never shares a host with "
                     "another member")
    if vm.desired is Desired.DISABLED:
        lines.append("disabled: the cluster neither starts, recovers nor moves it")
    elif vm.desired is Desired.STOPPED:
        lines.append("stopped on purpose: it stays down until started")
    elif vm.ha is HaPolicy.NONE:
        lines.append("HA policy none: not restarted after a crash or a host failure")
    return lines


def _start_order(state: ClusterState, vm: Vm) -> list[str]:
    """Mandatory start order: what it waits for (core/agent.py does not start it)."""
    lines = []
    if vm.start_after:
        lines.append(f"start order: starts only after {', '.join(vm.start_after)} run "
                     "(mandatory: it waits as long as it takes)")
        waiting = relations.waiting_for(state, vm)
        if waiting and vm.state in (VmState.STARTING, VmState.RECOVERY):
            lines.append(f"waiting for {', '.join(waiting)} to run: "
                         + "; ".join(_dependency(state.vms[n]) for n in waiting))
    later = relations.dependents(state, vm.name)
    if later:
        lines.append(f"start order: {', '.join(later)} start(s) only once it runs")
    return lines


def _dependency(dep: Vm) -> str:
    where = f" on {dep.host}" if dep.host else ""
    line = f"{dep.name} is {dep.state.value}{where}"
    if dep.desired is not Desired.STARTED:
        line += f" (desired {dep.desired.value}: start it or drop the dependency)"
    return line


def _colocation(state: ClusterState, vm: Vm) -> list[str]:
    if not vm.colocation:
        return []
    others = relations.mates(state, vm)
    shown = ", ".join(f"{m.name} ({m.host or m.state.value})" for m in others) or "no other"
    lines = [f"colocation group {vm.colocation}: kept on one host with {shown}; the group "
             "moves together"]
    running = {m.host for m in others if m.state is VmState.STARTED and m.host}
    apart = sorted(running - {vm.host})
    if vm.state is VmState.STARTED and apart:
        # the group was set (or a member added) after its members were placed apart
        how = f"; now: hactl vm migrate {vm.name} {apart[0]}" if running == {apart[0]} \
            else ""
        lines.append(f"not together yet: {vm.name} runs on {vm.host}, other members on "
                     f"{', '.join(apart)}; the group comes together when it is next placed "
                     f"(a failover, a drain){how}")
    return lines


def _tags(state: ClusterState, vm: Vm) -> list[str]:
    if not vm.required_tags:
        return []
    hosts = relations.hosts_with_tags(state, vm.required_tags)
    tags = ", ".join(vm.required_tags)
    if not hosts:
        return [f"requires host tag(s) {tags}: no host carries them all (hactl host tag "
                "HOST add TAG); it cannot run anywhere"]
    return [f"requires host tag(s) {tags}: carried by {', '.join(hosts)}"]


def _room(state: ClusterState, vm: Vm) -> list[str]:
    """A pending VM for which room is being made (fsm/room.py)."""
    if vm.state is not VmState.PENDING:
        return []
    movers = sorted(v.name for v in state.vms.values() if v.state is VmState.MIGRATING
                    and v.reason.startswith(MAKING_ROOM) and f" for {vm.name} " in v.reason)
    if not movers:
        return []
    return [f"room is being made for it: {', '.join(movers)} move away by live migration "
            f"(at most {MAX_MOVES} VMs, VMs without host limits only)"]


def _failback(state: ClusterState, vm: Vm) -> list[str]:
    """Its preferred hosts, and why it is not on the best one (fsm/failback.py), judged
    at the replica's log time."""
    if not vm.preferred_hosts:
        return []
    shown = ", ".join(f"{name} ({score})" for name, score in failback.ranked(vm))
    lines = [f"preferred hosts: {shown}; failback {vm.failback.value}"]
    verdict = failback.judge(state, vm, state.log_time)
    if vm.state is VmState.MIGRATING and vm.reason.startswith(failback.FAILING_BACK):
        lines.append(f"failing back to {vm.target_host} by live migration")
    elif verdict.target:
        lines.append(f"not on its preferred host {verdict.best} yet: it fails back to "
                     f"{verdict.target} next")
    elif verdict.why.startswith("on its preferred host"):
        lines.append(verdict.why)
    elif vm.host:
        lines.append(f"not on its preferred host {verdict.best}: {verdict.why}")
    return lines


def _host_context(state: ClusterState, vm: Vm) -> list[str]:
    host = state.hosts.get(vm.host) if vm.host else None
    if host is None:
        return []
    line = f"host {host.name} is {host.state.value}: {host.reason or '-'}"
    if host.state in (HostState.FENCING, HostState.FENCE_FAILED, HostState.FENCE_BLOCKED):
        line += " (its VMs wait until the fence is confirmed)"
    if host.peer_stopped:
        planned = f" for a planned shutdown ({host.shutdown})" if host.shutdown else ""
        return [line, f"its peer is stopped{planned}: nothing protects this VM until it "
                "returns"]
    return [line]


def _if_host_died(state: ClusterState, vm: Vm) -> str:
    if vm.desired is not Desired.STARTED or vm.ha is not HaPolicy.RESTART:
        return "if its host died now: it would not be restarted"
    exclude = [vm.host] if vm.host else []
    # its colocation group on the same host dies with it (pending, they wait together):
    # they are placed in one plan
    together = [vm, *(m for m in relations.mates(state, vm)
                      if (m.host == vm.host if vm.host else m.state is VmState.PENDING))]
    choice = next(ch for v, ch in plan(Planner(state, exclude=exclude), together)
                  if v.name == vm.name)
    died = f"if {vm.host} died now" if vm.host else "if placed now"
    if choice.host is None:
        return f"{died}: it would wait pending ({choice.reason})"
    return f"{died}: it would go to {choice.host} ({choice.reason})"
