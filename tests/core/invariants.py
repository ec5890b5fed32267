"""Invariants that must hold after every applied entry, whatever the log.

`Checker.step` applies one entry and returns every problem it sees: internal
errors, derived indexes out of sync, inconsistent records, unfrozen VMs on hosts
awaiting a fence, placements that break a constraint, rejected commands that
changed something, sealed secrets in events, and (the safety property) a VM the
state lost track of while it may still run somewhere.
"""

from __future__ import annotations

from hacluster.fsm import apply, encode_command
from hacluster.fsm import commands as c
from hacluster.fsm.events import Event
from hacluster.fsm.model import ClusterState, Vm
from hacluster.fsm.states import FENCE_PENDING_HOSTS, VM_ON_HOST, HostState, VmState

from .builders import indexes, rebuilt_indexes
from .generators import SECRET_MARK

H = HostState
# Only these commands may move a VM out of FENCE (confirm, operator confirm, lease back).
RELEASING = (c.ConfirmFence, c.AdminConfirmFence, c.MarkHostAlive)
# Hosts that never hold VMs.
EMPTY_HOSTS = frozenset({H.JOINING, H.FENCED, H.MAINTENANCE, H.REMOVED})
NOT_RUNNING = ("stopped", "crashed", "start-failed", "start-locked")  # no copy runs there
NOTHING_DONE = ("rejected", "undecodable", "duplicate")


class Checker:
    def __init__(self, state: ClusterState | None = None) -> None:
        self.state = ClusterState() if state is None else state
        self.index = self.state.applied_index
        self.may_run: dict[str, set[str]] = {}

    def step(self, envelope: c.Envelope) -> tuple[list[Event], list[str]]:
        before_vms = dict(self.state.vms)
        before = (dict(self.state.hosts), before_vms, list(self.state.fences), self.state.settings)
        self.index += 1
        events = apply(self.state, encode_command(envelope), self.index)
        command = envelope.command
        found = event_problems(command, events) + state_problems(self.state)
        if any(e.kind in NOTHING_DONE for e in events):
            after = (self.state.hosts, self.state.vms, self.state.fences, self.state.settings)
            if after != before:
                found.append("a refused command changed the state")
        else:
            self._forget_on_evidence(before_vms, command)
        found += self._placement_problems(before_vms)
        found += self._tracking_problems()
        return events, found

    # ------------------------------------------------------------ placements

    def _placement_problems(self, before_vms: dict[str, Vm]) -> list[str]:
        out = []
        s = self.state.settings
        for vm in self.state.vms.values():
            old = before_vms.get(vm.name)
            gained = set(ClusterState.holds(vm)) - set(ClusterState.holds(old) if old else ())
            for name in sorted(gained):
                host = self.state.hosts[name]
                usage = self.state.usage_of(name)
                where = f"{vm.name} placed on {name}"
                if usage.memory_mib > host.memory_mib * s.memory_overcommit:
                    out.append(f"{where}: memory overcommitted ({usage.memory_mib} MiB)")
                if usage.vcpus > host.vcpus * s.vcpu_overcommit:
                    out.append(f"{where}: vCPUs overcommitted ({usage.vcpus})")
                if vm.anti_affinity and usage.groups.get(vm.anti_affinity, 0) > 1:
                    out.append(f"{where}: anti-affinity group {vm.anti_affinity} shared")
                if vm.allowed_hosts and name not in vm.allowed_hosts:
                    out.append(f"{where}: outside its host limits {vm.allowed_hosts}")
                if not host.runs_vms:
                    out.append(f"{where}: a witness")
                if vm.placement != self.index:
                    out.append(f"{where}: placement {vm.placement} is not this entry")
        return out

    # ------------------------------------------------------------ may-run tracking

    def _forget_on_evidence(self, before_vms: dict[str, Vm], command: c.Command) -> None:
        """Drop a host from a VM's may-run set only on evidence in the log."""
        if isinstance(command, c.VmReport):
            vm = before_vms.get(command.name)
            hosts = self.may_run.setdefault(command.name, set())
            if command.observed in NOT_RUNNING:
                hosts.discard(command.host)
            elif command.observed == "migrated" and vm is not None:
                hosts.discard(vm.host)
            elif command.observed == "migrate-failed" and vm is not None:
                hosts.discard(vm.target_host)
        elif isinstance(command, c.ConfirmFence | c.AdminConfirmFence):
            for hosts in self.may_run.values():
                hosts.discard(command.host)

    def _tracking_problems(self) -> list[str]:
        out = []
        for name in sorted(set(self.may_run) | set(self.state.vms)):
            vm = self.state.vms.get(name)
            holds = set(ClusterState.holds(vm)) if vm is not None else set()
            lost = self.may_run.get(name, set()) - holds
            if lost:
                out.append(
                    f"{name}: may still run on {sorted(lost)}, but the state holds it "
                    f"on {sorted(holds) or 'no host'}"
                )
            self.may_run[name] = self.may_run.get(name, set()) | holds
        return out


def state_problems(state: ClusterState) -> list[str]:
    out: list[str] = []
    if indexes(state) != rebuilt_indexes(state):
        out.append("derived indexes differ from a rebuild")
    for vm in state.vms.values():
        out.extend(_vm_problems(state, vm))
    for host in state.hosts.values():
        if host.state in EMPTY_HOSTS and state.vms_by_host.get(host.name):
            out.append(
                f"host {host.name} is {host.state.value} but holds "
                f"{sorted(state.vms_by_host[host.name])}"
            )
        if host.fence_token and host.state in (H.FENCING, H.FENCE_FAILED):
            record = state.fence_record(host.fence_token)
            if record is None or record.host != host.name:
                out.append(f"host {host.name}: token {host.fence_token} has no record")
    return out


def _vm_problems(state: ClusterState, vm: Vm) -> list[str]:
    name = vm.name
    out = []
    if (vm.state in VM_ON_HOST) != bool(vm.host):
        out.append(f"{name}: state {vm.state.value} with host {vm.host!r}")
    if vm.host and vm.host not in state.hosts:
        out.append(f"{name}: on unknown host {vm.host}")
    if vm.state is VmState.MIGRATING and vm.target_host in ("", vm.host):
        out.append(f"{name}: migrating without a target")
    if vm.target_host and vm.state not in (VmState.MIGRATING, VmState.FENCE):
        out.append(f"{name}: target {vm.target_host} while {vm.state.value}")
    for host in ClusterState.holds(vm):
        record = state.hosts.get(host)
        if record and record.state in FENCE_PENDING_HOSTS and vm.state is not VmState.FENCE:
            out.append(f"{name}: {vm.state.value} on {host} which is {record.state.value}")
    if vm.state is VmState.FENCE:
        pending = [
            h
            for h in (vm.host, vm.target_host)
            if h and state.hosts[h].state in FENCE_PENDING_HOSTS
        ]
        if not pending:
            out.append(f"{name}: frozen but no host of it awaits a fence")
    return out


def event_problems(command: c.Command | None, events: list[Event]) -> list[str]:
    """Problems visible in the events of one entry."""
    out = [f"internal error: {e}" for e in events if e.get("bug")]
    for e in events:
        if SECRET_MARK.decode() in e.message + repr(e.data):
            out.append(f"sealed secret in event: {e}")
    if command is not None and not isinstance(command, RELEASING):
        for e in events:
            if e.kind == "vm-state" and e.get("from") == "fence" and e.get("to") != "fence":
                out.append(f"{command.TYPE} released a frozen VM: {e}")
    return out
