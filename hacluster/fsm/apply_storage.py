"""Handlers for the storage activity check (core/storage.py): where a host writes its
heartbeats, and what the leader's check of a silent host found."""

from __future__ import annotations

from hacluster.fsm import commands as c
from hacluster.fsm import events as ev
from hacluster.fsm.apply_fence import replace_record
from hacluster.fsm.context import Ctx, Refused
from hacluster.fsm.model import FenceResult, Host, StorageVerdict
from hacluster.fsm.states import HostState

H = HostState


def report_storage(ctx: Ctx, cmd: c.ReportStorage) -> None:
    host = ctx.host(cmd.name)
    if host.heartbeat_paths == cmd.heartbeat_paths:
        return
    ctx.put_host(host, heartbeat_paths=cmd.heartbeat_paths)
    shown = (f"writes storage heartbeats to {', '.join(cmd.heartbeat_paths)}"
             if cmd.heartbeat_paths else "writes no storage heartbeats")
    ctx.emit(ev.HOST_UPDATED, cmd.name, shown, heartbeat_paths=",".join(cmd.heartbeat_paths))


def storage_checked(ctx: Ctx, cmd: c.StorageChecked) -> None:
    host = ctx.host(cmd.host)
    _check_current(host, cmd.token)
    check = cmd.check
    if check.verdict is not StorageVerdict.ACTIVE or host.state is H.STORAGE_ACTIVE:
        ctx.put_host(host, storage_check=check)
        kind = ev.STORAGE_UNREADABLE if check.verdict is StorageVerdict.UNREADABLE \
            else ev.HOST_UPDATED
        ctx.emit(kind, host.name, check.summary(), verdict=check.verdict.value,
                 checks=check.checks)
        return
    if host.state is H.FENCING:  # no fence of it runs (the leader waited for its outcome)
        record = ctx.state.fence_record(host.fence_token)
        if record is not None and record.result is FenceResult.PENDING:
            replace_record(ctx, record, result=FenceResult.STORAGE_ACTIVE,
                           result_evidence=check.summary(), finished_at=ctx.now,
                           storage=check)
    ctx.set_host_state(host, H.STORAGE_ACTIVE, "lease expired, but it still writes shared "
                       f"storage: not fenced, its VMs not restarted "
                       f"({check.summary(last_read=False)})",
                       storage_check=check)
    ctx.emit(ev.STORAGE_ACTIVE, host.name, check.summary(), checks=check.checks)


def _check_current(host: Host, token: int) -> None:
    """A check is about a host whose lease is out, and about its current attempt."""
    if host.state in (H.FENCING, H.FENCE_FAILED):
        if token != host.fence_token:
            raise Refused(f"stale storage check for token {token}: host {host.name} is "
                          f"{host.state.value} with token {host.fence_token}", host.name)
    elif host.state not in (H.SUSPECT, H.STORAGE_ACTIVE, H.FENCE_BLOCKED):
        raise Refused(f"host {host.name} is {host.state.value}: no storage check is due",
                      host.name)
