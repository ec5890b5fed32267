"""Handlers for host commands: membership, readiness, leases, maintenance. The
stateless checks of their fields come first, from fsm/validate.py."""

from __future__ import annotations

from hacluster.fsm import commands as c
from hacluster.fsm import events as ev
from hacluster.fsm.context import Ctx, Refused
from hacluster.fsm.lifecycle import continue_drain, unfreeze
from hacluster.fsm.model import Host, HostRole, HostVersions
from hacluster.fsm.states import FENCE_PENDING_HOSTS, HostState

H = HostState


def add_host(ctx: Ctx, cmd: c.AddHost) -> None:
    existing = ctx.state.hosts.get(cmd.name)
    if existing is not None and existing.state is not H.REMOVED:
        raise Refused(f"host {cmd.name} already exists ({existing.state.value})", cmd.name)
    host = Host(
        name=cmd.name,
        addresses=cmd.addresses,
        raft_address=cmd.raft_address,
        memory_mib=cmd.memory_mib,
        vcpus=cmd.vcpus,
        role=cmd.role,
        state=H.JOINING,
        since=ctx.now,
        reason="added; waiting for its agent to report ready",
        bmc=cmd.bmc,
    )
    ctx.put_host(host)
    ctx.emit(ev.HOST_ADDED, cmd.name, f"added as {cmd.role.value}", role=cmd.role.value)


def set_addresses(ctx: Ctx, cmd: c.SetHostAddresses) -> None:
    host = ctx.host(cmd.name)  # the addresses were checked first (fsm/validate.py)
    if host.addresses == cmd.addresses:
        return
    ctx.put_host(host, addresses=cmd.addresses)
    ctx.emit(ev.HOST_UPDATED, cmd.name, f"lease links now {', '.join(cmd.addresses)} (were "
             f"{', '.join(host.addresses) or 'none'})", addresses=",".join(cmd.addresses))


def remove_host(ctx: Ctx, cmd: c.RemoveHost) -> None:
    host = ctx.host(cmd.name)
    holding = ctx.state.vms_on(cmd.name)
    if holding:
        names = ", ".join(vm.name for vm in holding[:5])
        raise Refused(
            f"host {cmd.name} still holds {len(holding)} VM(s) ({names}); put it "
            "in maintenance first",
            cmd.name,
        )
    if host.state in FENCE_PENDING_HOSTS:
        raise Refused(f"host {cmd.name} is {host.state.value}; confirm the fence first", cmd.name)
    ctx.set_host_state(host, H.REMOVED, f"removed by {ctx.origin or 'an operator'}")
    ctx.state.versions.pop(cmd.name, None)  # added again, it starts from the baseline
    ctx.emit(ev.HOST_REMOVED, cmd.name, "removed from the cluster")


def host_ready(ctx: Ctx, cmd: c.HostReady) -> None:
    host = ctx.host(cmd.name)
    if host.state in FENCE_PENDING_HOSTS:
        raise Refused(
            f"host {cmd.name} is {host.state.value}; it may rejoin only after the "
            "fence is confirmed",
            cmd.name,
        )
    capacity = {}
    if cmd.memory_mib > 0 and cmd.memory_mib != host.memory_mib:
        capacity["memory_mib"] = cmd.memory_mib
    if cmd.vcpus > 0 and cmd.vcpus != host.vcpus:
        capacity["vcpus"] = cmd.vcpus
    if cmd.migration_uri != host.migration_uri:
        host = ctx.put_host(host, migration_uri=cmd.migration_uri)
    if capacity:
        host = ctx.put_host(host, **capacity)
        ctx.capacity_changed = True
        ctx.emit(
            ev.HOST_UPDATED,
            cmd.name,
            "capacity " + ", ".join(f"{k}={v}" for k, v in sorted(capacity.items())),
        )
    if not host.agent_ready:
        host = ctx.put_host(host, agent_ready=True)
    if host.state is H.FENCED:
        ctx.set_host_state(
            host, H.ONLINE, "back after fence; stale local VMs cleaned up", fence_wanted=""
        )
        ctx.emit(ev.HOST_RECOVERED, cmd.name, "rejoined after being fenced")
    elif host.state in (H.JOINING, H.SUSPECT):
        ctx.set_host_state(host, H.ONLINE, "agent ready")


def report_bmc_health(ctx: Ctx, cmd: c.ReportBmcHealth) -> None:
    host = ctx.host(cmd.name)
    changed = host.bmc_ok != cmd.ok or host.bmc_detail != cmd.detail
    ctx.put_host(host, bmc_ok=cmd.ok, bmc_detail=cmd.detail, bmc_checked_at=ctx.now)
    if changed:
        ctx.emit(ev.HOST_UPDATED, cmd.name, f"own BMC {'answers' if cmd.ok else 'FAILS'}: "
                 f"{cmd.detail}", bmc_ok=cmd.ok)


def set_host_role(ctx: Ctx, cmd: c.SetHostRole) -> None:
    host = ctx.host(cmd.name)
    if HostRole.WITNESS in (host.role, cmd.role):
        raise Refused("a witness runs no VMs: remove it and add the host again to change "
                      "that", cmd.name)
    if host.role is cmd.role:
        raise Refused(f"host {cmd.name} already is a {cmd.role.value}", cmd.name)
    ctx.put_host(host, role=cmd.role)
    ctx.emit(ev.HOST_UPDATED, cmd.name, f"now a {cmd.role.value} (its peer restarts in that "
             "Raft role)", role=cmd.role.value)


def set_peer_stopped(ctx: Ctx, cmd: c.SetPeerStopped) -> None:
    host = ctx.host(cmd.name)
    if host.peer_stopped == cmd.stopped:
        return
    ctx.put_host(host, peer_stopped=cmd.stopped)
    ctx.emit(ev.HOST_UPDATED, cmd.name, "peer stopped cleanly: lease not judged, its VMs are "
             "not protected until it returns" if cmd.stopped else "peer running again",
             peer_stopped=cmd.stopped)


def report_watchdog(ctx: Ctx, cmd: c.ReportWatchdog) -> None:
    host = ctx.host(cmd.name)
    if host.watchdog == cmd.watchdog:
        return
    ctx.put_host(host, watchdog=cmd.watchdog)
    w = cmd.watchdog
    shown = (f"watchdog {w.kind.value} {'armed' if w.armed else 'disarmed'}: self-fence "
             f"{w.self_fence_s:g} s after its last acknowledged renewal, reset "
             f"{w.timeout_s:g} s later" if w.kind.value != "none" else "no watchdog")
    ctx.emit(ev.HOST_UPDATED, cmd.name, shown, watchdog=w.kind.value, armed=w.armed)


def announce_versions(ctx: Ctx, cmd: c.AnnounceVersions) -> None:
    """Record what a host's peer understands; proposers read it (core/versions.py)."""
    ctx.host(cmd.name)
    record = HostVersions(cmd.name, tuple(sorted(set(cmd.commands))),
                          tuple(sorted(set(cmd.entry_formats))))
    before = ctx.state.versions.get(cmd.name)
    if record == before:
        return
    ctx.state.versions[cmd.name] = record
    ctx.emit(ev.VERSIONS_ANNOUNCED, cmd.name, _versions_change(before, record),
             entry_formats=",".join(map(str, record.entry_formats)))


def _versions_change(before: HostVersions | None, after: HostVersions) -> str:
    formats = f"reads log entry formats {', '.join(map(str, after.entry_formats))}"
    if before is None:
        return f"understands {len(after.commands)} command versions, {formats}"
    gained = sorted(set(after.commands) - set(before.commands))
    lost = sorted(set(before.commands) - set(after.commands))
    parts = [f"now understands {_pairs(gained)}"] if gained else []
    parts += [f"no longer understands {_pairs(lost)}"] if lost else []
    return "; ".join([*parts, formats])


def _pairs(pairs: list[tuple[str, int]]) -> str:
    return ", ".join(f"{t} v{v}" for t, v in pairs)


def report_load(ctx: Ctx, cmd: c.ReportHostLoad) -> None:
    ctx.put_host(ctx.host(cmd.name), load=cmd.load)


def set_maintenance(ctx: Ctx, cmd: c.SetHostMaintenance) -> None:
    host = ctx.host(cmd.name)
    if cmd.on:
        _enter_maintenance(ctx, host)
        return
    if cmd.ready and host.state in FENCE_PENDING_HOSTS:
        raise Refused(f"host {cmd.name} is {host.state.value}; it can be ready only once "
                      "its fence is confirmed", cmd.name)
    if cmd.ready and host.state not in (H.DRAINING, H.MAINTENANCE):
        _ready_for_failback(ctx, ctx.put_host(host, maintenance_wanted=False))
        return
    host = _leave_maintenance(ctx, host)
    if cmd.ready:
        _ready_for_failback(ctx, host)


def _ready_for_failback(ctx: Ctx, host: Host) -> None:
    """`hactl host ready`: an operator states the host may take VMs back (fsm/failback.py)."""
    if host.failback_ready:
        ctx.emit(ev.HOST_UPDATED, host.name, "already ready: VMs that prefer it may fail back")
        return
    ctx.put_host(host, failback_ready=True)
    ctx.emit(ev.HOST_UPDATED, host.name, f"ready, said {ctx.origin or 'an operator'}: VMs "
             "that prefer it may fail back" + ("" if host.state is H.ONLINE else
                                               f" once it is online ({host.state.value})"),
             failback_ready=True)


def _enter_maintenance(ctx: Ctx, host: Host) -> None:
    if host.state in (H.DRAINING, H.MAINTENANCE):
        ctx.emit(ev.HOST_UPDATED, host.name, f"already {host.state.value}")
        return
    if host.state in (H.JOINING, H.FENCED):
        ctx.set_host_state(
            host, H.MAINTENANCE, "maintenance on (host runs no VMs)", maintenance_wanted=True
        )
        return
    if host.state is not H.ONLINE:
        raise Refused(
            f"host {host.name} is {host.state.value}; only an online host can be drained", host.name
        )
    ctx.set_host_state(
        host, H.DRAINING, "maintenance on: draining by live migration", maintenance_wanted=True
    )
    continue_drain(ctx, host.name)


def _leave_maintenance(ctx: Ctx, host: Host) -> Host:
    if host.state not in (H.DRAINING, H.MAINTENANCE):
        if host.maintenance_wanted:
            host = ctx.put_host(host, maintenance_wanted=False)
        ctx.emit(ev.HOST_UPDATED, host.name, f"not in maintenance ({host.state.value})")
        return host
    if host.agent_ready:
        return ctx.set_host_state(host, H.ONLINE, "maintenance off", maintenance_wanted=False)
    # fenced or new while in maintenance: its agent must report ready first
    return ctx.set_host_state(host, H.JOINING, "maintenance off; waiting for its agent to "
                              "report ready", maintenance_wanted=False)


def set_host_bmc(ctx: Ctx, cmd: c.SetHostBmc) -> None:
    host = ctx.host(cmd.name)
    ctx.put_host(host, bmc=cmd.bmc)
    ctx.emit(ev.HOST_UPDATED, cmd.name, "BMC settings changed")


def set_host_fencing(ctx: Ctx, cmd: c.SetHostFencing) -> None:
    host = ctx.host(cmd.name)
    if cmd.levels and not host.runs_vms:
        raise Refused(f"host {cmd.name} is a witness: it is never fenced", cmd.name)
    ctx.put_host(host, fence_levels=cmd.levels)
    shown = (f"{len(cmd.levels)} level(s), devices per level "
             f"{'/'.join(str(len(level.devices)) for level in cmd.levels)}"
             if cmd.levels else "none: its BMC alone")
    ctx.emit(ev.HOST_UPDATED, cmd.name, f"fencing levels changed: {shown}")


def mark_suspect(ctx: Ctx, cmd: c.MarkHostSuspect) -> None:
    host = ctx.host(cmd.name)
    if host.state not in (H.ONLINE, H.DRAINING):
        raise Refused(f"host {cmd.name} is {host.state.value}, not online", cmd.name)
    ctx.set_host_state(host, H.SUSPECT, cmd.evidence)


def mark_alive(ctx: Ctx, cmd: c.MarkHostAlive) -> None:
    """Renewals resumed before any fence ran: the host keeps its VMs. (A storage-active
    host, too: only peers that applied `StorageChecked` have one, so peers of a release
    before it never meet this case.)"""
    host = ctx.host(cmd.name)
    if host.state not in (H.SUSPECT, H.FENCE_BLOCKED, H.FENCE_FAILED, H.STORAGE_ACTIVE):
        raise Refused(f"host {cmd.name} is {host.state.value}; nothing to clear", cmd.name)
    drain = host.maintenance_wanted or host.shutdown == "migrate"  # (apply_shutdown.py)
    back_to = H.DRAINING if drain else H.ONLINE
    ctx.set_host_state(host, back_to, cmd.evidence)
    unfreeze(ctx, cmd.name)
    if back_to is H.DRAINING:
        continue_drain(ctx, cmd.name)


def tag_host(ctx: Ctx, cmd: c.TagHost) -> None:
    """Add or remove a host tag. VMs already running there keep running when a tag they
    require is removed; they leave the host at their next restart (fsm/lifecycle.py)."""
    host = ctx.host(cmd.name)
    has = cmd.tag in host.tags
    if has == cmd.add:
        ctx.emit(ev.HOST_UPDATED, host.name,
                 f"tag {cmd.tag} {'already set' if has else 'not set'}; nothing changed")
        return
    tags = tuple(sorted({*host.tags, cmd.tag} if cmd.add else set(host.tags) - {cmd.tag}))
    ctx.put_host(host, tags=tags)
    ctx.emit(ev.HOST_UPDATED, host.name, f"tag {cmd.tag} {'added' if cmd.add else 'removed'}"
             f" (tags: {', '.join(tags) or 'none'})")
    ctx.capacity_changed = True  # pending VMs that require it may fit now
