"""The apply context: the one place that changes records and emits events."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from hacluster.fsm import events as ev
from hacluster.fsm.events import Event
from hacluster.fsm.model import ClusterState, Host, StorageCheck, Vm
from hacluster.fsm.releases import RELEASE_0_3_0, everyone_runs
from hacluster.fsm.states import (
    STORAGE_CHECKED_HOSTS,
    HostState,
    VmState,
    host_edge_allowed,
    vm_edge_allowed,
)

# Entering these, a host stops being ready to take VMs back (fsm/failback.py) until an
# operator says `hactl host ready` (or failback_ready_after_s passes online).
NOT_READY_AFTER = frozenset({HostState.FENCING, HostState.FENCED, HostState.DRAINING,
                             HostState.MAINTENANCE})
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class Refused(Exception):
    """A command is refused; raised before anything changed. The message says why."""

    def __init__(self, message: str, subject: str = "") -> None:
        super().__init__(message)
        self.subject = subject


class IllegalEdge(Exception):
    """A state change not in the tables: a bug, caught and reported by apply."""


def name_problem(kind: str, name: str, *, strict: bool = False) -> str:
    """Why `name` cannot name a host, VM or group ("" if it can). Not `strict` (what
    apply has always checked), NAME_RE's `$` lets one trailing newline through."""
    if (NAME_RE.fullmatch(name) if strict else NAME_RE.match(name)):
        return ""
    return (f"invalid {kind} name {name!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit")


@dataclass
class Ctx:
    state: ClusterState
    index: int
    origin: str
    events: list[Event] = field(default_factory=list)
    capacity_changed: bool = False  # re-try pending VMs and drains after this command

    @property
    def now(self) -> float:
        return self.state.log_time

    def emit(self, kind: str, subject: str, message: str, **data: Any) -> None:
        pairs = tuple((k, str(v)) for k, v in data.items())
        self.events.append(Event(self.index, kind, subject, message, pairs))

    # ------------------------------------------------------------ lookups

    def host(self, name: str) -> Host:
        host = self.state.hosts.get(name)
        if host is None or host.state is HostState.REMOVED:
            raise Refused(f"unknown host {name!r}", name)
        return host

    def vm(self, name: str) -> Vm:
        vm = self.state.vms.get(name)
        if vm is None:
            raise Refused(f"unknown VM {name!r}", name)
        return vm

    # ------------------------------------------------------------ changes

    def put_host(self, host: Host, **changes: Any) -> Host:
        new = dataclasses.replace(host, **changes) if changes else host
        self.state.hosts[new.name] = new
        return new

    def set_host_state(self, host: Host, new: HostState, reason: str, **changes: Any) -> Host:
        if new is host.state:
            return self.put_host(host, reason=reason, **changes)
        if not host_edge_allowed(host.state, new):
            raise IllegalEdge(f"host {host.name}: {host.state.value} -> {new.value}")
        if new not in STORAGE_CHECKED_HOSTS and host.storage_check != StorageCheck():
            changes.setdefault("storage_check", StorageCheck())  # that episode is over
        # it takes VMs back only once ready again (failback); tracked once every host
        # runs 0.3.0: an older peer's snapshot cannot hold it (fsm/releases.py)
        if new in NOT_READY_AFTER and everyone_runs(self.state, RELEASE_0_3_0):
            changes.setdefault("failback_ready", False)
        updated = self.put_host(host, state=new, reason=reason, since=self.now, **changes)
        self.emit(ev.HOST_STATE, host.name, reason, **{"from": host.state.value, "to": new.value})
        if new is HostState.ONLINE:
            self.capacity_changed = True
        return updated

    def set_vm(self, vm: Vm, new: VmState, reason: str, **changes: Any) -> Vm:
        if not vm_edge_allowed(vm.state, new):
            raise IllegalEdge(f"vm {vm.name}: {vm.state.value} -> {new.value}")
        since = self.now if new is not vm.state else vm.since
        updated = dataclasses.replace(vm, state=new, reason=reason, since=since, **changes)
        self.state.put_vm(updated)
        if new is not vm.state or updated.host != vm.host or updated.placement != vm.placement:
            self.emit(
                ev.VM_STATE,
                vm.name,
                reason,
                **{"from": vm.state.value, "to": new.value, "host": updated.host},
            )
        if set(ClusterState.holds(vm)) - set(ClusterState.holds(updated)):
            self.capacity_changed = True
        return updated
