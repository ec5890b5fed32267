"""VM lifecycle steps shared by the command handlers: place, fail, freeze,
release after a fence, drain. Each step changes records through the Ctx."""

from __future__ import annotations

from collections.abc import Iterable

from hacluster.fsm import placement, relations
from hacluster.fsm.context import Ctx
from hacluster.fsm.model import Desired, HaPolicy, Vm
from hacluster.fsm.states import FENCE_PENDING_HOSTS, HostState, VmState

V = VmState
DRAINED_FOR_SHUTDOWN = "drained for a planned shutdown: no VMs left"


def place(
    ctx: Ctx, vms: Iterable[Vm], exclude: Iterable[str] = (), *, recovery: bool = False,
    cause: str = "",
) -> None:
    """Place VMs in one plan (priority order, capacity booked); misfits go pending."""
    planner = placement.Planner(ctx.state, exclude)
    before = f"{cause}; " if cause else ""
    placed = placement.plan(planner, vms)
    for vm, choice in placed:
        if choice.host is None:
            ctx.set_vm(vm, V.PENDING, before + choice.reason, host="", target_host="")
            continue
        new_state = V.RECOVERY if recovery else V.STARTING
        ctx.set_vm(
            vm,
            new_state,
            f"{before}placed on {choice.host}: {choice.reason}",
            host=choice.host,
            target_host="",
            placement=ctx.index,
        )
    planned = {vm.name for vm, _ in placed}
    for vm, choice in placed:
        if choice.host is not None and vm.colocation:
            pull_colocated(ctx, vm, choice.host, planned)


# A colocated VM in these states on another (online) host follows its group: it stops
# there and is placed again where the group now runs (fsm/apply_vms.py `_stopped`).
_PULLED = frozenset({V.STARTING, V.RECOVERY, V.STARTED})


def pull_colocated(ctx: Ctx, vm: Vm, host: str, planned: set[str]) -> None:
    """vm was placed on host apart from its colocation group (it had to leave the
    group's host): the group moves with it, each member by stop and start."""
    for mate in relations.mates(ctx.state, vm):
        where = ctx.state.hosts.get(mate.host)
        if (mate.name in planned or mate.state not in _PULLED or mate.host == host
                or where is None or where.state is not HostState.ONLINE):
            continue
        ctx.set_vm(mate, V.STOPPING, f"colocation group {vm.colocation} moves to {host} "
                   f"with {vm.name}: stopping on {mate.host}, then starting there")


def place_pending(ctx: Ctx) -> None:
    if not ctx.state.pending:
        return
    waiting = [ctx.state.vms[n] for n in sorted(ctx.state.pending)]
    planner = placement.Planner(ctx.state)
    for vm, choice in placement.plan(planner, waiting):
        if choice.host is None:
            if choice.reason != vm.reason:
                ctx.set_vm(vm, V.PENDING, choice.reason)
            continue
        ctx.set_vm(
            vm,
            V.STARTING,
            f"capacity appeared on {choice.host}: {choice.reason}",
            host=choice.host,
            placement=ctx.index,
        )


def stop_here(ctx: Ctx, vm: Vm, reason: str) -> None:
    """Nothing runs: mark it stopped and free its host."""
    ctx.set_vm(vm, V.STOPPED, reason, host="", target_host="")


def restart_or_relocate(ctx: Ctx, vm: Vm, why: str, remember: bool = False) -> None:
    """A VM that should run failed on vm.host: restart in place, then relocate, then error.
    `remember` (a report of this release, VmReport v3 keep_trying): the hosts it failed
    on are kept, a relocation goes to an eligible host not tried yet, and the VM goes to
    error only once every eligible host was tried and the relocate cap is used up."""
    if vm.ha is HaPolicy.NONE or vm.desired is not Desired.STARTED:
        stop_here(
            ctx, vm, f"{why}; not restarted (HA policy {vm.ha.value}, desired {vm.desired.value})"
        )
        return
    if vm.state is V.STARTED and ctx.now - vm.since >= ctx.state.settings.vm_stable_s:
        vm = ctx.set_vm(vm, vm.state, vm.reason, restarts=0, relocates=0, tried_hosts=())
    host = ctx.state.hosts.get(vm.host)
    if (vm.allowed_hosts and vm.host not in vm.allowed_hosts) or (
            host is not None and relations.missing_tags(vm, host)):
        # its host limits (or tags) changed while it ran there: it moves, and that is
        # no failure
        place(ctx, [vm], exclude=[vm.host],
              cause=f"{why}; {vm.host} is not among its hosts any more")
        return
    host_ok = host is not None and host.state is HostState.ONLINE
    if vm.restarts < vm.max_restarts and host_ok:
        ctx.set_vm(
            vm,
            V.STARTING,
            f"{why}; restart {vm.restarts + 1}/{vm.max_restarts} on {vm.host}",
            restarts=vm.restarts + 1,
            placement=ctx.index,
        )
        return
    tried = tuple(sorted({*vm.tried_hosts, vm.host})) if remember else ()
    untried = remember and placement.Planner(ctx.state, exclude=tried).choose(vm).host
    if vm.relocates < vm.max_relocates or untried:
        vm = ctx.set_vm(vm, vm.state, why, restarts=0, relocates=vm.relocates + 1,
                        tried_hosts=tried)
        count = f"{vm.relocates}/{vm.max_relocates}" if vm.relocates <= vm.max_relocates \
            else f"{vm.relocates}, beyond the cap to a host not tried yet"
        shown = f" (tried: {', '.join(tried)})" if tried else ""
        place(ctx, [vm], exclude=tried if untried else [vm.host],
              cause=f"{why}; relocation {count}{shown}")
        return
    every = f"; every eligible host tried ({', '.join(tried)})" if remember else ""
    ctx.set_vm(
        vm,
        V.ERROR,
        f"{why}; restart cap {vm.max_restarts} and relocate cap {vm.max_relocates} used "
        f"up{every}",
        host="",
        target_host="",
    )


def freeze_for_fence(ctx: Ctx, host: str) -> None:
    """Every VM that may run on the host waits (FENCE) until the fence is confirmed."""
    for vm in ctx.state.vms_on(host):
        if vm.state is not V.FENCE:
            ctx.set_vm(
                vm, V.FENCE, f"host {host} is being fenced; VM frozen until the fence is confirmed"
            )


def unfreeze(ctx: Ctx, host: str) -> None:
    """The host proved alive before any fence: its VMs were never moved; resume them."""
    for vm in ctx.state.vms_on(host):
        if vm.state is not V.FENCE:
            continue
        other = vm.target_host if vm.host == host else vm.host
        if other and _fence_pending(ctx, other):
            continue  # still waits for the other host of its migration
        why = f"host {host} is alive again"
        if vm.target_host and vm.desired is Desired.STARTED:
            ctx.set_vm(vm, V.MIGRATING, f"{why}; the live migration resumes")
        elif vm.desired is Desired.STARTED:
            # STARTING, not STARTED: the agent reports it running, or starts it, and no
            # restart is counted for what happened while the host was cut off.
            ctx.set_vm(vm, V.STARTING, f"{why}; checking that the VM runs")
        else:
            ctx.set_vm(vm, V.STOPPING, why, target_host="")


def release_after_fence(ctx: Ctx, host: str) -> None:
    """The host is confirmed off: restart its VMs elsewhere in one recovery plan."""
    to_plan = []
    for vm in ctx.state.vms_on(host):
        if vm.state is not V.FENCE:
            continue
        other = vm.target_host if vm.host == host else vm.host
        if other and other != host:
            _release_migrating(ctx, vm, other)
        elif vm.desired is Desired.STARTED and vm.ha is HaPolicy.RESTART:
            to_plan.append(vm)
        else:
            stop_here(
                ctx,
                vm,
                f"host {host} fenced; VM not restarted (HA policy "
                f"{vm.ha.value}, desired {vm.desired.value})",
            )
    place(ctx, placement.by_priority(to_plan), exclude=[host], recovery=True)


def _release_migrating(ctx: Ctx, vm: Vm, other: str) -> None:
    """A VM caught mid-migration may run on the other end: pin it there."""
    if _fence_pending(ctx, other):
        ctx.set_vm(
            vm,
            V.FENCE,
            f"waits for host {other} (migration peer) to be fenced",
            host=other,
            target_host="",
        )
        return
    ctx.set_vm(
        vm,
        V.RECOVERY,
        f"migration was cut by a fence; resumes on {other}",
        host=other,
        target_host="",
        placement=ctx.index,
    )


def _fence_pending(ctx: Ctx, host: str) -> bool:
    record = ctx.state.hosts.get(host)
    return record is not None and record.state in FENCE_PENDING_HOSTS


def continue_drain(ctx: Ctx, host_name: str) -> None:
    """Move running VMs off a draining host; enter maintenance once it is empty."""
    host = ctx.state.hosts.get(host_name)
    if host is None or host.state is not HostState.DRAINING:
        return
    on_host = [vm for vm in ctx.state.vms_on(host_name) if vm.host == host_name]
    if not on_host and not ctx.state.vms_by_host.get(host_name):
        if host.shutdown and not host.maintenance_wanted:  # its peer stops, then returns
            if host.reason != DRAINED_FOR_SHUTDOWN and not host.peer_stopped:
                ctx.set_host_state(host, HostState.DRAINING, DRAINED_FOR_SHUTDOWN)
            return
        ctx.set_host_state(host, HostState.MAINTENANCE, "drained: no VMs left")
        return
    planner = placement.Planner(ctx.state, exclude=[host_name])
    batch = placement.by_priority(v for v in on_host if v.state is V.STARTED)
    for vm in batch:
        choice = planner.choose_in(vm, batch)  # a colocation group moves together
        if choice.host is None:
            if vm.reason != f"drain waits: {choice.reason}":
                ctx.set_vm(vm, vm.state, f"drain waits: {choice.reason}")
            continue
        planner.book(vm, choice.host)
        ctx.set_vm(
            vm,
            V.MIGRATING,
            f"draining {host_name}: live migration to {choice.host} ({choice.reason})",
            target_host=choice.host,
            placement=ctx.index,
            migrate_tried=(),
        )


def refresh_drains(ctx: Ctx) -> None:
    for name in sorted(ctx.state.hosts):
        if ctx.state.hosts[name].state is HostState.DRAINING:
            continue_drain(ctx, name)
