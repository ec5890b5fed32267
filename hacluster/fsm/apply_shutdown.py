"""Planned shutdowns: what a peer stopped by SIGTERM does with its host's VMs.

The policy (`shutdown_policy`: a cluster setting, a host may override it) is carried out
by the stopping peer (core/shutdown.py), in steps it records with `PlannedShutdown`:

- "begin": no new VM is placed on the host (placement skips a host with `shutdown` set);
  with "migrate" an online host drains by live migration, as for maintenance, but ends
  drained instead of in maintenance.
- "done": its peer leaves (`peer_stopped`: its lease is not judged, it is never fenced
  for it). The VMs named in `stopped`, each with the placement its peer saw, were shut
  down by its own agent and then not listed as running by its libvirt: only those start
  elsewhere ("failover", and "migrate" for what did not move in time) or again on this
  host when its peer returns ("stop"). Any other VM of the host (frozen, migrating, not
  verified stopped) stays where it is, unprotected until its peer returns, and the event
  names it.
- "back": its peer runs again; the host takes VMs again.

A planned shutdown never counts as a failure: no restart or relocation is counted, no
fence is asked for. Why a VM may start elsewhere without a fence: its only copy ran on
this host, its agent (the only thing that starts VMs here) had stopped before it shut the
VM down, and no incoming migration was under way (the peer waited them out); the entry
names each placement, so a VM placed or moved here since is not released.
"""

from __future__ import annotations

import dataclasses

from hacluster.fsm import commands as c
from hacluster.fsm import events as ev
from hacluster.fsm import placement
from hacluster.fsm.context import Ctx, Refused
from hacluster.fsm.lifecycle import continue_drain, place, stop_here
from hacluster.fsm.model import ClusterState, Desired, HaPolicy, Host, ShutdownPolicy, Vm
from hacluster.fsm.states import FENCE_PENDING_HOSTS, HostState, VmState

H, V = HostState, VmState
P = ShutdownPolicy
# VMs whose only copy is on their host, which its own agent can shut down.
RELEASABLE = frozenset({V.STARTING, V.STARTED, V.STOPPING, V.RECOVERY})


def policy_of(state: ClusterState, host: Host) -> ShutdownPolicy:
    """The host's own shutdown policy, else the cluster's."""
    return P(host.shutdown_policy) if host.shutdown_policy else state.settings.shutdown_policy


def set_shutdown_policy(ctx: Ctx, cmd: c.SetShutdownPolicy) -> None:
    settings = ctx.state.settings
    if not cmd.host:
        ctx.state.settings = dataclasses.replace(settings, shutdown_policy=P(cmd.policy))
        ctx.emit(ev.SETTINGS_CHANGED, "", f"shutdown_policy={cmd.policy}",
                 shutdown_policy=cmd.policy)
        return
    host = ctx.host(cmd.host)
    if not host.runs_vms:
        raise Refused(f"host {cmd.host} is a witness: it runs no VMs", cmd.host)
    ctx.put_host(host, shutdown_policy=cmd.policy)
    shown = cmd.policy or f"the cluster's ({settings.shutdown_policy.value})"
    ctx.emit(ev.HOST_UPDATED, cmd.host, f"shutdown policy: {shown}",
             shutdown_policy=cmd.policy)


def planned_shutdown(ctx: Ctx, cmd: c.PlannedShutdown) -> None:
    host = ctx.host(cmd.name)
    if cmd.step == "back":
        _back(ctx, host)
        return
    if not host.runs_vms:
        raise Refused(f"host {cmd.name} is a witness: it runs no VMs", cmd.name)
    if host.state in FENCE_PENDING_HOSTS or host.state is H.FENCED:
        raise Refused(f"host {cmd.name} is {host.state.value}: its fence decides what "
                      "happens to its VMs", cmd.name)
    if host.peer_stopped:
        raise Refused(f"the peer of {cmd.name} has stopped already", cmd.name)
    policy = P(cmd.policy)
    if cmd.step == "begin":
        _begin(ctx, host, policy)
    else:
        _done(ctx, host, policy, dict(cmd.stopped), cmd.detail)


def _begin(ctx: Ctx, host: Host, policy: ShutdownPolicy) -> None:
    if host.shutdown == policy.value:
        return  # the same step again (its outcome was not known to the proposer)
    host = ctx.put_host(host, shutdown=policy.value)
    what = {P.MIGRATE: "its VMs leave by live migration first",
            P.STOP: "its VMs are shut down; they start again here when its peer returns",
            P.FREEZE: "its VMs stay as they are, unprotected until its peer returns",
            P.FAILOVER: "its VMs are shut down, then start elsewhere"}[policy]
    ctx.emit(ev.HOST_SHUTDOWN, host.name, f"planned shutdown ({policy.value}): no new VMs "
             f"here; {what}", step="begin", policy=policy.value)
    if policy is P.MIGRATE and host.state is H.ONLINE:
        ctx.set_host_state(host, H.DRAINING, "planned shutdown: draining by live migration")
    if policy is P.MIGRATE:
        continue_drain(ctx, host.name)


def _done(ctx: Ctx, host: Host, policy: ShutdownPolicy, stopped: dict[str, int],
          detail: str) -> None:
    released, left = [], []
    for vm in ctx.state.vms_on(host.name):
        if vm.host == host.name and stopped.get(vm.name) == vm.placement and \
                vm.state in RELEASABLE and not vm.target_host and policy is not P.FREEZE:
            released.append(vm)
        else:
            left.append(vm)
    why = f"{host.name}'s peer shut it down for a planned shutdown ({policy.value})"
    if policy is P.STOP:
        for vm in released:
            _stop_until_back(ctx, vm, why)
    else:
        _start_elsewhere(ctx, host.name, released, why)
    reason = f"peer stopped for a planned shutdown ({policy.value})"
    ctx.set_host_state(host, host.state, reason, peer_stopped=True, shutdown=policy.value)
    message = f"{reason}: lease not judged" + (f"; {detail}" if detail else "")
    if released:
        message += f"; shut down: {_names(released)}"
    if left:
        message += f"; LEFT UNPROTECTED until its peer returns: {_names(left)}"
    ctx.emit(ev.HOST_SHUTDOWN, host.name, message, step="done", policy=policy.value,
             unprotected=",".join(vm.name for vm in left))


def _stop_until_back(ctx: Ctx, vm: Vm, why: str) -> None:
    if vm.desired is Desired.STARTED and vm.allowed_hosts and vm.host not in vm.allowed_hosts:
        # its host limits changed while it ran there: it moves (as for a restart)
        place(ctx, [vm], exclude=[vm.host], cause=f"{why}; {vm.host} is not among its "
              "hosts any more")
    elif vm.desired is Desired.STARTED:
        ctx.set_vm(vm, V.STARTING, f"{why}; starts again on {vm.host} when its peer returns",
                   placement=ctx.index)
    else:
        stop_here(ctx, vm, why)


def _start_elsewhere(ctx: Ctx, host: str, vms: list[Vm], why: str) -> None:
    """Like a release after a fence, but no failure: nothing is counted."""
    to_place = []
    for vm in vms:
        if vm.desired is Desired.STARTED and vm.ha is HaPolicy.RESTART:
            to_place.append(vm)
        else:
            stop_here(ctx, vm, f"{why}; not restarted (HA policy {vm.ha.value}, desired "
                      f"{vm.desired.value})")
    place(ctx, placement.by_priority(to_place), exclude=[host], cause=why)


def _back(ctx: Ctx, host: Host) -> None:
    if not host.shutdown and not host.peer_stopped:
        return
    was = host.shutdown or "none"
    host = ctx.put_host(host, shutdown="", peer_stopped=False)
    ctx.emit(ev.HOST_SHUTDOWN, host.name, f"peer running again after a planned shutdown "
             f"({was}); it takes VMs again", step="back", policy=was)
    if host.state is H.DRAINING and not host.maintenance_wanted:
        ctx.set_host_state(host, H.ONLINE, "back from a planned shutdown")
    elif host.state is H.ONLINE:
        ctx.put_host(host, reason="back from a planned shutdown")
    ctx.capacity_changed = True  # schedulable again: pending VMs may fit here


def _names(vms: list[Vm]) -> str:
    shown = ", ".join(vm.name for vm in vms[:20])
    return shown + (f" and {len(vms) - 20} more" if len(vms) > 20 else "")
