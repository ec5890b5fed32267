"""Making room: a VM that waits pending because its host limits name only hosts that
VMs without limits fill gets room made there by live-migrating a few of those away.

Pure and deterministic, used twice: the leader asks `wanted` which pending VM to make
room for (core/manager.py proposes `MakeRoom`), and `apply` asks `plan` again on the
committed state, so every peer moves the same VMs (fsm/apply_vms.py `make_room`).
Bounded: at most MAX_MOVES VMs per pending VM, none while another room-making move is
under way, and only VMs that fit elsewhere without limits of their own, never onto a
host the pending VM may use.
"""

from __future__ import annotations

from dataclasses import dataclass

from hacluster.fsm.model import ClusterState, Vm
from hacluster.fsm.placement import Planner, misfit
from hacluster.fsm.states import VmState

MAX_MOVES = 3
MAKING_ROOM = "making room on"  # the reason of a VM moved for another (its prefix)


@dataclass(frozen=True, slots=True)
class Room:
    host: str  # the allowed host the room is made on
    moves: tuple[tuple[str, str], ...]  # (VM, target) live migrations, in order


def moving(state: ClusterState) -> bool:
    """A room-making live migration is under way (one batch at a time)."""
    return any(vm.state is VmState.MIGRATING and vm.reason.startswith(MAKING_ROOM)
               for vm in state.vms.values())


def wanted(state: ClusterState) -> str:
    """The pending VM to make room for now ("" for none), highest priority first."""
    if moving(state):
        return ""
    waiting = sorted((-state.vms[n].priority, n) for n in state.pending
                     if state.vms[n].allowed_hosts)
    return next((name for _, name in waiting if plan(state, state.vms[name])), "")


def plan(state: ClusterState, vm: Vm) -> Room | None:
    """The fewest moves (at most MAX_MOVES) that make `vm` fit on one of its hosts."""
    if vm.state is not VmState.PENDING or not vm.allowed_hosts:
        return None
    best: Room | None = None
    for host in sorted(vm.allowed_hosts):
        room = _room_on(state, vm, host)
        if room is not None and (best is None or len(room.moves) < len(best.moves)):
            best = room
    return best


def _room_on(state: ClusterState, vm: Vm, name: str) -> Room | None:
    planner = Planner(state, exclude=vm.allowed_hosts)  # never onto a host it may use
    here = Planner(state)
    host = here.hosts.get(name)
    if host is None:
        return None
    usage = here.usage[name].copy()
    movable = sorted((v for v in state.vms_on(name) if v.host == name and not v.allowed_hosts
                      and not v.required_tags and not v.colocation  # (not moved alone)
                      and v.state is VmState.STARTED and not v.target_host),
                     key=lambda v: (-v.memory_mib, -v.vcpus, v.name))
    moves: list[tuple[str, str]] = []
    for candidate in movable:
        if not misfit(vm, host, usage, state.settings) or len(moves) == MAX_MOVES:
            break
        choice = planner.choose(candidate)
        if choice.host is None:
            continue
        planner.book(candidate, choice.host)
        usage.add(candidate, -1)
        moves.append((candidate.name, choice.host))
    if moves and not misfit(vm, host, usage, state.settings):
        return Room(name, tuple(moves))
    return None
