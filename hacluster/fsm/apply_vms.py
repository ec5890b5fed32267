"""Handlers for VM commands: define, options, desired state, migration, agent reports.
The stateless checks of their fields come first, from fsm/validate.py."""

from __future__ import annotations

import dataclasses

from hacluster.fsm import commands as c
from hacluster.fsm import events as ev
from hacluster.fsm import failback, placement, relations, room
from hacluster.fsm.context import Ctx, Refused
from hacluster.fsm.lifecycle import continue_drain, place, restart_or_relocate, stop_here
from hacluster.fsm.model import Desired, Failback, Vm, stop_failure
from hacluster.fsm.states import VM_SHOULD_RUN, HostState, VmState
from hacluster.fsm.validate import limits_problem

V = VmState
DRAIN_LIVE_ATTEMPTS = 3  # live migrations of one VM per drain move before stop and start


def add_vm(ctx: Ctx, cmd: c.AddVm) -> None:
    if cmd.name in ctx.state.vms:
        raise Refused(f"VM {cmd.name} already exists", cmd.name)
    vm = Vm(
        name=cmd.name,
        xml=cmd.xml,
        memory_mib=cmd.memory_mib,
        vcpus=cmd.vcpus,
        priority=cmd.priority,
        ha=cmd.ha,
        desired=cmd.desired,
        allowed_hosts=tuple(sorted(set(cmd.allowed_hosts))),
        anti_affinity=cmd.anti_affinity,
        max_restarts=cmd.max_restarts,
        max_relocates=cmd.max_relocates,
        preferred_hosts=cmd.preferred_hosts,
        failback=cmd.failback,
        state=V.STOPPED,
        since=ctx.now,
        reason="defined",
        start_after=tuple(sorted(set(cmd.start_after))),
        colocation=cmd.colocation,
        required_tags=tuple(sorted(set(cmd.required_tags))),
    )
    problem = relations.relation_problem(ctx.state, vm)
    if problem:
        raise Refused(problem, cmd.name)
    ctx.state.put_vm(vm)
    ctx.emit(
        ev.VM_ADDED,
        cmd.name,
        f"{cmd.memory_mib} MiB, {cmd.vcpus} vCPU, priority "
        f"{cmd.priority}, desired {cmd.desired.value}",
    )
    if cmd.desired is Desired.STARTED:
        place(ctx, [vm])


def remove_vm(ctx: Ctx, cmd: c.RemoveVm) -> None:
    vm = ctx.vm(cmd.name)
    if vm.state not in (V.STOPPED, V.PENDING, V.ERROR):
        raise Refused(f"VM {cmd.name} is {vm.state.value}; stop it first", cmd.name)
    waiting = relations.dependents(ctx.state, cmd.name)
    if waiting:
        raise Refused(f"VM {cmd.name} is a start-after dependency of {', '.join(waiting)}; "
                      "remove it from their start-after first", cmd.name)
    ctx.state.drop_vm(cmd.name)
    ctx.emit(ev.VM_REMOVED, cmd.name, "removed")


def set_vm_options(ctx: Ctx, cmd: c.SetVmOptions) -> None:
    vm = ctx.vm(cmd.name)
    changes = {
        f.name: getattr(cmd, f.name)
        for f in dataclasses.fields(cmd)
        if f.name != "name" and getattr(cmd, f.name) is not None
    }
    for listed in ("allowed_hosts", "start_after", "required_tags"):
        if listed in changes:
            changes[listed] = tuple(sorted(set(changes[listed])))
    updated = dataclasses.replace(vm, **changes)
    problem = limits_problem(updated.memory_mib, updated.vcpus, updated.max_restarts,
                             updated.max_relocates) or relations.relation_problem(ctx.state,
                                                                                  updated)
    if problem:
        raise Refused(problem, cmd.name)
    ctx.state.put_vm(updated)
    shown = ", ".join(f"{k}={_shown(v)}" for k, v in sorted(changes.items()) if k != "xml")
    ctx.emit(
        ev.VM_UPDATED,
        cmd.name,
        shown + (" (new XML: used at next start)" if "xml" in changes else ""),
    )
    if updated.state is V.PENDING:
        ctx.capacity_changed = True


def _shown(value: object) -> str:
    return repr(value.value if isinstance(value, Failback) else value)


def set_vm_desired(ctx: Ctx, cmd: c.SetVmDesired) -> None:
    vm = ctx.vm(cmd.name)
    if vm.state is V.MIGRATING and cmd.desired is not Desired.STARTED:
        raise Refused(f"VM {cmd.name} is migrating; stop it when the migration ends", cmd.name)
    if (
        vm.desired is Desired.DISABLED
        and cmd.desired is Desired.STARTED
        and vm.state is not V.STOPPED
    ):
        raise Refused(f"VM {cmd.name} is disabled and {vm.state.value}", cmd.name)
    vm = dataclasses.replace(vm, desired=cmd.desired)
    ctx.state.put_vm(vm)
    ctx.emit(ev.VM_UPDATED, cmd.name, f"desired {cmd.desired.value}")
    if cmd.desired is Desired.STARTED:
        if vm.state in (V.STOPPED, V.ERROR):
            vm = ctx.set_vm(vm, vm.state, vm.reason, restarts=0, relocates=0, tried_hosts=())
            place(ctx, [vm])
        return
    why = f"{cmd.desired.value} by {ctx.origin or 'an operator'}"
    if vm.state in (V.STARTING, V.STARTED, V.RECOVERY):
        ctx.set_vm(vm, V.STOPPING, why)
    elif vm.state in (V.PENDING, V.ERROR):
        stop_here(ctx, vm, why)
    # FENCE: stays frozen; released as stopped once the fence is confirmed


def migrate_vm(ctx: Ctx, cmd: c.MigrateVm) -> None:
    vm = ctx.vm(cmd.name)
    if vm.state is not V.STARTED:
        raise Refused(f"VM {cmd.name} is {vm.state.value}; only a started VM can migrate", cmd.name)
    if cmd.target == vm.host:
        raise Refused(f"VM {cmd.name} already runs on {vm.host}", cmd.name)
    source = ctx.state.hosts.get(vm.host)
    if source is not None and source.shutdown:  # (its agent may have stopped already)
        raise Refused(f"host {vm.host} is shutting down ({source.shutdown}): its peer "
                      "decides where its VMs go", cmd.name)
    planner = placement.Planner(ctx.state, exclude=[vm.host])
    choice = planner.check(vm, cmd.target) if cmd.target else planner.choose(vm)
    if choice.host is None:
        raise Refused(f"cannot migrate {cmd.name}: {choice.reason}", cmd.name)
    apart = [m.name for m in relations.mates(ctx.state, vm)
             if m.state in VM_SHOULD_RUN and m.host != choice.host]
    if apart:
        raise Refused(f"cannot migrate {cmd.name} alone: colocation group {vm.colocation} "
                      f"keeps it with {', '.join(apart)}; drain {vm.host} to move the group "
                      "together", cmd.name)
    ctx.set_vm(
        vm,
        V.MIGRATING,
        f"live migration to {choice.host} ({choice.reason})",
        target_host=choice.host,
        placement=ctx.index,
    )


def make_room(ctx: Ctx, cmd: c.MakeRoom) -> None:
    """Live-migrate a few VMs without limits away from a host the pending VM may use."""
    vm = ctx.vm(cmd.name)
    if room.moving(ctx.state):
        raise Refused("room is being made for another VM already", cmd.name)
    plan = room.plan(ctx.state, vm)
    if plan is None:
        raise Refused(f"no room can be made for {cmd.name} on its hosts "
                      f"({', '.join(vm.allowed_hosts) or 'any'})", cmd.name)
    limits = ", ".join(vm.allowed_hosts)
    for name, target in plan.moves:
        ctx.set_vm(ctx.state.vms[name], V.MIGRATING,
                   f"{room.MAKING_ROOM} {plan.host} for {vm.name} (pending: its host limits "
                   f"allow only {limits}): live migration to {target}", target_host=target,
                   placement=ctx.index, migrate_tried=())
    ctx.set_vm(vm, V.PENDING, f"waiting for room on {plan.host}: "
               f"{', '.join(n for n, _ in plan.moves)} move away by live migration")


def failback_vm(ctx: Ctx, cmd: c.FailbackVm) -> None:
    """Live-migrate a VM back to its preferred host, if the committed state still says
    so now (fsm/failback.py): a repeated or stale proposal is refused, never doubled."""
    vm = ctx.vm(cmd.name)
    verdict = failback.judge(ctx.state, vm, ctx.now)
    if not verdict.target or verdict.target != cmd.target:
        why = verdict.why if not verdict.target else f"its best target now is {verdict.target}"
        raise Refused(f"no failback of {cmd.name} to {cmd.target}: {why}", cmd.name)
    head, _, better = verdict.why.partition("; ")  # (why not a better host, if any)
    ctx.set_vm(vm, V.MIGRATING, f"{head}: live migration" + (f" ({better})" if better else ""),
               target_host=cmd.target, placement=ctx.index, migrate_tried=())


def vm_report(ctx: Ctx, cmd: c.VmReport) -> None:
    vm = ctx.vm(cmd.name)
    if cmd.placement != vm.placement or cmd.host not in (vm.host, vm.target_host) or not vm.host:
        raise Refused(
            f"stale report {cmd.observed} from {cmd.host} for placement "
            f"{cmd.placement} (current: {vm.state.value} on {vm.host or '-'}, "
            f"placement {vm.placement})",
            cmd.name,
        )
    handler = _REPORTS[cmd.observed]
    handler(ctx, vm, cmd)
    for host in sorted({vm.host, vm.target_host} - {""}):
        if ctx.state.hosts.get(host) and ctx.state.hosts[host].state is HostState.DRAINING:
            continue_drain(ctx, host)


def _wrong_state(vm: Vm, cmd: c.VmReport) -> Refused:
    return Refused(f"report {cmd.observed} does not apply to a {vm.state.value} VM", vm.name)


def _started(ctx: Ctx, vm: Vm, cmd: c.VmReport) -> None:
    if vm.state not in (V.STARTING, V.RECOVERY) or cmd.host != vm.host:
        raise _wrong_state(vm, cmd)
    ctx.set_vm(vm, V.STARTED, f"running on {vm.host}")


def _failed(ctx: Ctx, vm: Vm, cmd: c.VmReport) -> None:
    detail = f"{cmd.observed} on {cmd.host}" + (f": {cmd.detail}" if cmd.detail else "")
    if vm.state is V.STOPPING and cmd.host == vm.host:
        _stopped(ctx, vm, cmd)
    elif vm.state is V.MIGRATING and cmd.host == vm.host:
        # The domain vanished from the source mid-migration: make sure the target holds no copy
        # before anything starts again.
        ctx.set_vm(
            vm,
            V.STOPPING,
            f"{detail}; stopping any copy on {vm.target_host}",
            host=vm.target_host,
            target_host="",
        )
    elif vm.state in (V.STARTING, V.STARTED, V.RECOVERY) and cmd.host == vm.host:
        restart_or_relocate(ctx, vm, detail, remember=cmd.keep_trying)
    else:
        raise _wrong_state(vm, cmd)


def _start_locked(ctx: Ctx, vm: Vm, cmd: c.VmReport) -> None:
    """libvirt's lock manager refused the start: a disk of the VM is leased by a live
    QEMU, most likely a copy still running on a host the cluster believes fenced (a
    BMC that lied, a wrong operator confirm). Restarting or relocating cannot help and
    must not loop: the VM waits in error, without a host, until an operator starts it."""
    if vm.state not in (V.STARTING, V.RECOVERY) or cmd.host != vm.host:
        raise _wrong_state(vm, cmd)
    why = (f"start refused on {cmd.host}: a disk lock is held by a live copy elsewhere "
           f"({cmd.detail or 'no detail'}); not retried, not relocated: make sure no other "
           f"copy runs, then hactl vm start {vm.name}")
    ctx.emit(ev.VM_START_LOCKED, vm.name, why, host=cmd.host)
    ctx.set_vm(vm, V.ERROR, why, host="", target_host="")


def _stopped(ctx: Ctx, vm: Vm, cmd: c.VmReport) -> None:
    if vm.state is not V.STOPPING or cmd.host != vm.host:
        raise _wrong_state(vm, cmd)
    host = ctx.state.hosts.get(vm.host)
    if host is not None and host.fence_wanted.startswith(stop_failure(vm.name)):
        # the stop that failed has now succeeded: no second copy is possible any more
        ctx.put_host(host, fence_wanted="")
        ctx.emit(ev.HOST_UPDATED, host.name, f"VM {vm.name} stopped after all; no fence needed")
    if vm.desired is Desired.STARTED:
        vm = ctx.set_vm(vm, V.STOPPING, f"stopped on {vm.host}; relocating")
        place(ctx, [vm], exclude=[vm.host])
    else:
        stop_here(ctx, vm, f"stopped on {vm.host}")


def _stop_failed(ctx: Ctx, vm: Vm, cmd: c.VmReport) -> None:
    if vm.state is not V.STOPPING or cmd.host != vm.host:
        raise _wrong_state(vm, cmd)
    host = ctx.state.hosts[vm.host]
    if host.fence_wanted:
        return  # already on its way to a fence; nothing new to record
    why = (f"{stop_failure(vm.name)}: {cmd.detail or 'no detail'}; fencing {vm.host} so that "
           "two copies can never run")
    ctx.put_host(host, fence_wanted=why)
    ctx.set_vm(vm, V.STOPPING, why)
    ctx.emit(ev.HOST_UPDATED, vm.host, why)



def _migrated(ctx: Ctx, vm: Vm, cmd: c.VmReport) -> None:
    if vm.state is not V.MIGRATING:
        raise _wrong_state(vm, cmd)
    why = f"live-migrated from {vm.host} to {vm.target_host}"
    vm = ctx.set_vm(vm, V.STARTED, why, host=vm.target_host, target_host="",
                    placement=ctx.index, migrate_tried=())
    if vm.desired is not Desired.STARTED:
        ctx.set_vm(vm, V.STOPPING, f"{why}; desired {vm.desired.value}")


def _migrate_failed(ctx: Ctx, vm: Vm, cmd: c.VmReport) -> None:
    if vm.state is not V.MIGRATING:
        raise _wrong_state(vm, cmd)
    detail = f"migration to {vm.target_host} failed: {cmd.detail or 'no detail'}"
    source = ctx.state.hosts.get(vm.host)
    if source is not None and source.state is HostState.DRAINING:
        tried = (*vm.migrate_tried, vm.target_host)
        if cmd.keep_trying and _migrate_again(ctx, vm, tried, detail):
            return
        after = f" after {len(tried)} live attempts ({', '.join(tried)})" \
            if cmd.keep_trying else ""
        ctx.set_vm(
            vm,
            V.STOPPING,
            f"{detail}; draining by stop and start instead{after}",
            target_host="",
            placement=ctx.index,
            migrate_tried=(),
        )
    else:
        ctx.set_vm(vm, V.STARTED, f"{detail}; still on {vm.host}", target_host="")


def _migrate_again(ctx: Ctx, vm: Vm, tried: tuple[str, ...], detail: str) -> bool:
    """A drain's live migration failed: try live again, a target not tried yet first,
    else the same one, while DRAIN_LIVE_ATTEMPTS allows (VmReport v3 `keep_trying`)."""
    if len(tried) >= DRAIN_LIVE_ATTEMPTS:
        return False
    choice = placement.Planner(ctx.state, exclude=[vm.host, *tried]).choose(vm)
    target = choice.host
    if target is None and vm.target_host in placement.Planner(ctx.state).hosts:
        target, why = vm.target_host, "no other host fits; the same target again"
    else:
        why = choice.reason
    if target is None:
        return False
    ctx.set_vm(vm, V.MIGRATING, f"{detail}; live migration again ({len(tried) + 1}/"
               f"{DRAIN_LIVE_ATTEMPTS}) to {target} ({why})", target_host=target,
               placement=ctx.index, migrate_tried=tried)
    return True


_REPORTS = {
    "started": _started,
    "start-failed": _failed,
    "crashed": _failed,
    "stopped": _stopped,
    "stop-failed": _stop_failed,
    "migrated": _migrated,
    "migrate-failed": _migrate_failed,
    "start-locked": _start_locked,
}
