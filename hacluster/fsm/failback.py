"""Failback: a VM whose policy is `auto` returns to its best preferred host by live
migration once that host is back and ready, a few at a time, without ping-pong.

Pure and deterministic (time comes in as an argument), used three times: the leader
asks `wanted` which VMs to move now (core/manager.py proposes `FailbackVm`), `apply`
asks `judge` again on the committed state, so every peer decides alike and a stale or
repeated proposal is refused (fsm/apply_vms.py `failback_vm`), and `hactl explain` asks
`judge` why a VM is not on its preferred host (core/explain.py).

The rules, in the order `judge` applies them:
- only a started VM with failback `auto` and preferred hosts moves; none while the
  cluster is in maintenance;
- a host is a target only when it is online, its agent reported ready, no planned
  shutdown is under way, and it is *ready*: an operator said `hactl host ready` since
  it was last fenced or put in maintenance (Host.failback_ready), or it has been online
  `failback_ready_after_s` (when that setting is not 0);
- stickiness: the target's score must beat the score of the VM's current host (0 when
  not preferred) by more than `failback_stickiness`;
- capacity, host limits and anti-affinity as for any placement (fsm/placement.py);
- hold-down: not within `failback_hold_down_s` of the VM's last start or move (its
  `since` in state started: a migration, a restart or a recovery all reset it);
- at most `failback_max_concurrent` failback migrations in flight in the cluster.
Preferred hosts are tried best score first; a lower one that beats the current host
is used while a better one cannot take the VM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hacluster.fsm.model import ClusterState, Failback, Host, Settings, Vm
from hacluster.fsm.placement import Planner, by_priority
from hacluster.fsm.states import HostState, VmState

FAILING_BACK = "failback to"  # the reason of a failback migration (its prefix)
MAX_PREFERRED = 16  # preferred hosts of one VM
MAX_SCORE = 1_000_000
FAILBACK_SETTINGS = ("failback_max_concurrent", "failback_stickiness", "failback_hold_down_s",
                     "failback_ready_after_s")


@dataclass(frozen=True, slots=True)
class Verdict:
    target: str  # "" when the VM stays
    why: str  # why it moves there, or why it is not on its best preferred host
    best: str = ""  # its best preferred host ("" without preferences)


def preferences_problem(preferred: tuple[tuple[str, int], ...]) -> str:
    """What is wrong with a VM's preferred hosts ("" when nothing; names are checked
    as every host name is, fsm/validate.py)."""
    if len(preferred) > MAX_PREFERRED:
        return f"at most {MAX_PREFERRED} preferred hosts (got {len(preferred)})"
    names = [name for name, _ in preferred]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return f"preferred host {twice[0]} is listed twice"
    for name, score in preferred:
        if not 1 <= score <= MAX_SCORE:
            return f"preferred host {name}: score must be 1 to {MAX_SCORE} (got {score})"
    return ""


def setting_problem(name: str, value: float) -> str:
    """What is wrong with one failback setting ("" when nothing)."""
    if name in ("failback_max_concurrent", "failback_stickiness"):
        return "" if value >= 0 else f"{name} must be >= 0 (got {value}; " + \
            ("0 pauses failback)" if name == "failback_max_concurrent" else "0: any better "
             "score is enough)")
    if math.isfinite(value) and value >= 0:
        return ""
    return f"{name} must be a number of seconds >= 0 (got {value})"


def score_on(vm: Vm, host: str) -> int:
    """The VM's preference score for a host (0 for a host it does not prefer)."""
    return next((score for name, score in vm.preferred_hosts if name == host), 0)


def ranked(vm: Vm) -> list[tuple[str, int]]:
    """Preferred hosts, best score first, ties in the order the operator listed them."""
    order = {name: i for i, (name, _) in enumerate(vm.preferred_hosts)}
    return sorted(vm.preferred_hosts, key=lambda p: (-p[1], order[p[0]]))


def ready_problem(host: Host | None, settings: Settings, now: float, name: str = "") -> str:
    """Why a host may not take VMs back now ("" when it may)."""
    if host is None or host.state is HostState.REMOVED:
        return f"host {name} is not in the cluster"
    if host.state is HostState.MAINTENANCE:
        return f"host {host.name} is in maintenance"
    if host.state is HostState.DRAINING:
        return f"host {host.name} is draining for maintenance"
    if host.state is not HostState.ONLINE or not host.runs_vms:
        return f"host {host.name} is {host.state.value}" + \
            ("" if host.runs_vms else " (a witness runs no VMs)")
    if host.shutdown:
        return f"host {host.name} is shutting down ({host.shutdown})"
    if not host.agent_ready:
        return f"host {host.name}: its agent has not reported ready"
    if host.failback_ready:
        return ""
    after = settings.failback_ready_after_s
    if after > 0 and now - host.since >= after:
        return ""
    auto = f", or for it to be online {after:g} s (online {max(0.0, now - host.since):.0f} s)" \
        if after > 0 else ""
    return (f"host {host.name} is back but not ready: waiting for `hactl host ready "
            f"{host.name}`{auto}")


def in_flight(state: ClusterState) -> list[str]:
    """VMs whose failback live migration is under way."""
    return sorted(vm.name for vm in state.vms.values()
                  if vm.state is VmState.MIGRATING and vm.reason.startswith(FAILING_BACK))


def _vm_problem(state: ClusterState, vm: Vm) -> str:
    """Why this VM does not fail back whatever the hosts ("" when it may)."""
    if vm.failback is Failback.NEVER:
        return "failback never (vm set --failback auto lets it return)"
    if vm.state is VmState.MIGRATING:
        return f"a live migration to {vm.target_host} is in flight"
    if vm.state is not VmState.STARTED:
        return f"it is {vm.state.value}"
    if state.settings.cluster_maintenance:
        return "cluster maintenance is on: no VM fails back meanwhile"
    source = state.hosts.get(vm.host)
    if source is not None and source.shutdown:
        return f"its host {vm.host} is shutting down: its peer decides where its VMs go"
    return ""


def judge(state: ClusterState, vm: Vm, now: float, planner: Planner | None = None,
          moving: int | None = None) -> Verdict:
    """Where this VM fails back now, or why not. `planner` books earlier moves of the
    same round; `moving`: failback migrations in flight (counted when not given)."""
    order = ranked(vm)
    if not order:
        return Verdict("", "no preferred hosts")
    best, best_score = order[0]
    current = score_on(vm, vm.host)
    if vm.host == best or (vm.host and current >= best_score):
        return Verdict("", f"on its preferred host {vm.host} (score {current})", best)
    problem = _vm_problem(state, vm)
    if problem:
        return Verdict("", problem, best)
    planner = planner or Planner(state)
    reasons: list[str] = []
    margin = state.settings.failback_stickiness
    for name, score in order:
        if name == vm.host or score - current <= margin:
            if not reasons:  # the best one itself is not worth a move
                reasons.append(f"stickiness: {name} scores {score}, {vm.host} {current}; "
                               f"a move needs more than {margin} better")
            break
        why = ready_problem(state.hosts.get(name), state.settings, now, name)
        if not why:
            choice = planner.check(vm, name)
            why = "" if choice.host else f"no capacity: {choice.reason}"
        if why:
            reasons.append(why)
            continue
        return _timing(state, vm, now, name, score, current, reasons, moving, best)
    return Verdict("", "; ".join(reasons), best)


def _timing(state: ClusterState, vm: Vm, now: float, target: str, score: int, current: int,
            reasons: list[str], moving: int | None, best: str) -> Verdict:
    """A target fits: the hold-down and the concurrency bound say whether it is now."""
    settings = state.settings
    before = "; ".join(reasons) + "; " if reasons else ""
    until = vm.since + settings.failback_hold_down_s
    if now < until:
        return Verdict("", f"{before}stickiness hold-down: on {vm.host} since log time "
                       f"{vm.since:.0f}, may fail back to {target} from {until:.0f} "
                       f"({until - now:.0f} s)", best)
    count = len(in_flight(state)) if moving is None else moving
    if count >= settings.failback_max_concurrent:
        return Verdict("", f"{before}concurrency limit: {count} failback migration(s) in "
                       f"flight (failback_max_concurrent {settings.failback_max_concurrent})",
                       best)
    # (the reason starts with FAILING_BACK: that is how `in_flight` counts the move)
    better = f"; {'; '.join(reasons)}" if reasons else ""
    return Verdict(target, f"{FAILING_BACK} {target} (score {score}, {vm.host} "
                   f"{current}){better}", best)


def wanted(state: ClusterState, now: float) -> list[tuple[str, str]]:
    """The (VM, target) failback moves to propose now, highest priority first, within
    the concurrency bound, capacity booked as they are chosen."""
    room = state.settings.failback_max_concurrent - len(in_flight(state))
    candidates = [vm for vm in state.vms.values() if vm.failback is Failback.AUTO
                  and vm.preferred_hosts and vm.state is VmState.STARTED]
    moves: list[tuple[str, str]] = []
    planner = Planner(state)  # (a check looks at the target only: the source may stay)
    for vm in by_priority(candidates):
        if len(moves) >= room:
            break
        verdict = judge(state, vm, now, planner, moving=0)
        if verdict.target:
            planner.book(vm, verdict.target)
            moves.append((vm.name, verdict.target))
    return moves
