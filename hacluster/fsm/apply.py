"""apply(state, entry, index) -> events: the deterministic heart of the cluster.

Same log, same state on every peer. `apply` mutates `state` in place (copying
10,000 VMs per command would make the log crawl) and returns the events. A
refused command is an event, never an exception, and leaves the state untouched
apart from `applied_index`, `log_time` and the request id; the stateless rules come
first, from fsm/validate.py (which also says why apply checks only some of them). An
entry this peer cannot read is the one exception (`UnreadableEntry`, raised before
anything changed): skipping it would leave this peer's state different from the others'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from hacluster.fsm import apply_fence, apply_hosts, apply_shutdown, apply_storage, apply_vms
from hacluster.fsm import commands as c
from hacluster.fsm import events as ev
from hacluster.fsm.codec import UnreadableEntry, decode_command
from hacluster.fsm.context import Ctx, IllegalEdge, Refused
from hacluster.fsm.events import Event
from hacluster.fsm.lifecycle import place_pending, refresh_drains
from hacluster.fsm.model import RECENT_REQUESTS_KEPT, ClusterState
from hacluster.fsm.states import FENCE_PENDING_HOSTS, VmState
from hacluster.fsm.validate import find_problem, settings_given, settings_problem, subject_of


def set_settings(ctx: Ctx, cmd: c.SetSettings) -> None:
    changes = settings_given(cmd)
    updated = dataclasses.replace(ctx.state.settings, **changes)
    problem = settings_problem(updated)  # the values given fit with the others
    if problem:
        raise Refused(problem)
    ctx.state.settings = updated
    ctx.capacity_changed = True
    shown = ", ".join(f"{k}={getattr(v, 'value', v)}" for k, v in sorted(changes.items()))
    ctx.emit(ev.SETTINGS_CHANGED, "", shown)


def set_bmc_defaults(ctx: Ctx, cmd: c.SetBmcDefaults) -> None:
    ctx.state.settings = dataclasses.replace(ctx.state.settings, bmc=cmd.bmc)
    ctx.emit(
        ev.SETTINGS_CHANGED,
        "",
        f"BMC defaults: driver {cmd.bmc.driver}, port "
        f"{cmd.bmc.port}, user {cmd.bmc.username or '-'}",
    )


def set_cluster_maintenance(ctx: Ctx, cmd: c.SetClusterMaintenance) -> None:
    ctx.state.settings = dataclasses.replace(ctx.state.settings, cluster_maintenance=cmd.on)
    who = cmd.who or ctx.origin or "an operator"
    held = frozen_by_fences(ctx.state)
    shown = "; ".join(f"{host} keeps {', '.join(vms) or 'no VM'} frozen"
                      for host, vms in held.items())
    if cmd.on and held:
        shown = (f"; of the fences already committed, an attempt under way ends, but no new "
                 f"one runs while it is on, and no VM of their hosts starts elsewhere before "
                 f"a fence is confirmed: {shown} (until maintenance is off or an operator "
                 "confirms the fence)")
    elif held:
        shown = f"; the fences held meanwhile go on: {', '.join(held)}"
    ctx.emit(
        ev.CLUSTER_MAINTENANCE,
        "",
        f"cluster maintenance {'on' if cmd.on else 'off'} "
        f"by {who}" + (": fencing disabled" if cmd.on else ": fencing enabled") + shown,
        held=",".join(held), frozen=",".join(vm for vms in held.values() for vm in vms),
    )


def frozen_by_fences(state: ClusterState) -> dict[str, list[str]]:
    """Hosts whose fence is pending (committed, failed or held) -> the VMs it keeps
    frozen: cluster maintenance stops those fences from running (core/manager.py)."""
    return {name: [vm.name for vm in state.vms_on(name) if vm.state is VmState.FENCE]
            for name, host in sorted(state.hosts.items())
            if host.state in FENCE_PENDING_HOSTS}


def noop(ctx: Ctx, cmd: c.Noop) -> None:
    ctx.emit(ev.NOOP, "", f"leader {ctx.origin} holds a majority in term {cmd.term}", term=cmd.term)


Handler = Callable[[Ctx, Any], None]

HANDLERS: dict[type[c.Command], Handler] = {
    c.AddHost: apply_hosts.add_host,
    c.RemoveHost: apply_hosts.remove_host,
    c.HostReady: apply_hosts.host_ready,
    c.ReportHostLoad: apply_hosts.report_load,
    c.ReportBmcHealth: apply_hosts.report_bmc_health,
    c.SetPeerStopped: apply_hosts.set_peer_stopped,
    c.PlannedShutdown: apply_shutdown.planned_shutdown,
    c.SetShutdownPolicy: apply_shutdown.set_shutdown_policy,
    c.SetHostAddresses: apply_hosts.set_addresses,
    c.SetHostRole: apply_hosts.set_host_role,
    c.AnnounceVersions: apply_hosts.announce_versions,
    c.SetHostMaintenance: apply_hosts.set_maintenance,
    c.SetHostBmc: apply_hosts.set_host_bmc,
    c.MarkHostSuspect: apply_hosts.mark_suspect,
    c.MarkHostAlive: apply_hosts.mark_alive,
    c.RequestFence: apply_fence.request_fence,
    c.ConfirmFence: apply_fence.confirm_fence,
    c.FenceFailed: apply_fence.fence_failed,
    c.AdminConfirmFence: apply_fence.admin_confirm,
    c.RetryFence: apply_fence.retry_fence,
    c.HoldFence: apply_fence.hold_fence,
    c.CancelFence: apply_fence.cancel_fence,
    c.WatchdogConfirm: apply_fence.watchdog_confirm,
    c.ReportWatchdog: apply_hosts.report_watchdog,
    c.ReportStorage: apply_storage.report_storage,
    c.StorageChecked: apply_storage.storage_checked,
    c.AddVm: apply_vms.add_vm,
    c.RemoveVm: apply_vms.remove_vm,
    c.SetVmOptions: apply_vms.set_vm_options,
    c.SetVmDesired: apply_vms.set_vm_desired,
    c.MigrateVm: apply_vms.migrate_vm,
    c.MakeRoom: apply_vms.make_room,
    c.FailbackVm: apply_vms.failback_vm,
    c.VmReport: apply_vms.vm_report,
    c.SetSettings: set_settings,
    c.SetBmcDefaults: set_bmc_defaults,
    c.SetClusterMaintenance: set_cluster_maintenance,
    c.Noop: noop,
    c.TagHost: apply_hosts.tag_host,
    c.SetHostFencing: apply_hosts.set_host_fencing,
}


def _remember(state: ClusterState, request_id: str, index: int) -> None:
    if not request_id:
        return
    recent = state.recent_requests
    recent[request_id] = index
    if len(recent) > RECENT_REQUESTS_KEPT:
        recent.popitem(last=False)


def apply(
    state: ClusterState, entry: bytes | c.Envelope | c.Undecodable, index: int
) -> list[Event]:
    """Apply one committed log entry (bytes as replicated, or already decoded).

    Raises UnreadableEntry, leaving the state as it was (applied index included),
    when this peer cannot decode the entry: the peer must stop, never skip it."""
    if isinstance(entry, bytes | bytearray | memoryview):
        entry = decode_command(bytes(entry))
    if isinstance(entry, c.Undecodable):
        raise UnreadableEntry(index, entry)
    state.applied_index = index
    seen = state.recent_requests.get(entry.request_id) if entry.request_id else None
    if seen is not None:
        return [
            Event(
                index,
                ev.DUPLICATE,
                "",
                f"request {entry.request_id} was applied at index {seen}",
                (("original", str(seen)),),
            )
        ]
    # Log time: the largest log-clock estimate any proposer wrote. Every estimate lags
    # real time (core/logclock.py), so windows counted in it never end early.
    state.log_time = max(state.log_time, entry.log_clock)
    _remember(state, entry.request_id, index)
    ctx = Ctx(state, index, entry.origin)
    try:
        # the stateless rules apply has always had, before any state is looked at
        problem = find_problem(entry.command, at_apply=True)
        if problem is not None:
            raise Refused(problem.message, subject_of(entry.command))
        HANDLERS[type(entry.command)](ctx, entry.command)
        if ctx.capacity_changed:
            place_pending(ctx)
            refresh_drains(ctx)
    except Refused as exc:
        ctx.events.append(
            Event(index, ev.REJECTED, exc.subject, str(exc), (("command", entry.command.TYPE),))
        )
    except IllegalEdge as exc:  # a bug: report it loudly, identically on every peer
        ctx.events.append(
            Event(
                index,
                ev.REJECTED,
                "",
                f"internal error: illegal edge {exc}",
                (("command", entry.command.TYPE), ("bug", "1")),
            )
        )
    return ctx.events
