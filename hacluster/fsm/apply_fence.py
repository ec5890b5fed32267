"""Handlers for the fence protocol: intent (with the cap), confirm, failure, hold,
cancel, operator confirm and retry. The token of an attempt is its RequestFence index."""

from __future__ import annotations

import dataclasses

from hacluster.fsm import commands as c
from hacluster.fsm import events as ev
from hacluster.fsm.context import Ctx, Refused
from hacluster.fsm.lifecycle import (
    continue_drain,
    freeze_for_fence,
    release_after_fence,
    unfreeze,
)
from hacluster.fsm.model import (
    FENCE_HISTORY_KEPT,
    ClusterState,
    FenceAction,
    FenceFallback,
    FenceRecord,
    FenceResult,
    Host,
    HostRole,
    StorageCheck,
    StorageVerdict,
)
from hacluster.fsm.states import FENCE_PENDING_HOSTS, HostState

H = HostState


def fences_in_window(state: ClusterState) -> list[FenceRecord]:
    """Automatic fence incidents that count against the cap right now (log time)."""
    since = state.log_time - state.settings.fence_window_s
    return [
        r
        for r in state.fences
        if r.attempt == 1 and r.result is not FenceResult.MANUAL and r.requested_at > since
    ]


def cap_reopens_at(state: ClusterState) -> float | None:
    """Log time at which one more fence fits under the cap (None: it fits now)."""
    counted = fences_in_window(state)
    cap = state.settings.fence_cap
    if len(counted) < cap:
        return None
    if cap == 0:
        return float("inf")
    return counted[len(counted) - cap].requested_at + state.settings.fence_window_s


def quorum_problem(state: ClusterState, name: str) -> str:
    """Why fencing this host now would cost the majority that must confirm it ("" if
    it would not). Hosts being fenced or fenced count as gone; so does this one."""
    voters = [h for h in state.hosts.values()
              if h.role is not HostRole.MEMBER and h.state is not H.REMOVED]
    if name not in {h.name for h in voters}:
        return ""
    gone = [h.name for h in voters if h.name == name or h.state in (H.FENCING, H.FENCED)]
    left = len(voters) - len(gone)
    if left * 2 > len(voters):
        return ""
    return (f"fencing {name} would leave {left} of {len(voters)} voters (gone or going: "
            f"{', '.join(sorted(gone))}): no majority could confirm it; it waits until "
            "fenced voters return, or an operator confirms it off by hand")


def fence_action_for(state: ClusterState, host: Host) -> FenceAction:
    if host.bmc.action:
        return FenceAction(host.bmc.action)
    return state.settings.fence_action


def _append(ctx: Ctx, record: FenceRecord) -> None:
    fences = ctx.state.fences
    fences.append(record)
    if len(fences) > FENCE_HISTORY_KEPT:
        del fences[: len(fences) - FENCE_HISTORY_KEPT]


def replace_record(ctx: Ctx, record: FenceRecord, **changes: object) -> FenceRecord:
    fences = ctx.state.fences
    for i in range(len(fences) - 1, -1, -1):
        if fences[i].token == record.token:
            fences[i] = dataclasses.replace(record, **changes)  # type: ignore[arg-type]
            return fences[i]
    return record


def _supersede_pending(ctx: Ctx, host: Host) -> FenceRecord | None:
    prev = ctx.state.fence_record(host.fence_token) if host.fence_token else None
    if prev is not None and prev.result is FenceResult.PENDING:
        prev = replace_record(ctx, prev, result=FenceResult.SUPERSEDED, finished_at=ctx.now)
    return prev


def _check_fenceable(ctx: Ctx, host: Host) -> None:
    if not host.runs_vms:
        raise Refused(
            f"host {host.name} is a witness; it runs no VMs and is never fenced", host.name
        )
    if ctx.state.settings.cluster_maintenance:
        raise Refused("cluster maintenance is on: fencing is disabled", host.name)
    wanted = host.fence_wanted and host.state in (H.ONLINE, H.DRAINING)
    if host.state in (H.SUSPECT, H.FENCE_BLOCKED, H.FENCING, H.STORAGE_ACTIVE) or wanted:
        return
    hints = {
        H.MAINTENANCE: "it is in maintenance and never fenced for missing leases",
        H.FENCE_FAILED: "its fence failed; it waits for an operator (fence confirm or retry)",
        H.FENCED: "it is already fenced",
    }
    why = hints.get(host.state, "its lease is fresh")
    raise Refused(f"host {host.name} is {host.state.value}: {why}", host.name)


def _held_attempt(ctx: Ctx, host: Host) -> FenceRecord | None:
    """The attempt a HoldFence ended, if the host has waited fence-blocked since."""
    if host.state is not H.FENCE_BLOCKED or not host.fence_token:
        return None
    record = ctx.state.fence_record(host.fence_token)
    return record if record is not None and record.result is FenceResult.HELD else None


def request_fence(ctx: Ctx, cmd: c.RequestFence) -> None:
    host = ctx.host(cmd.host)
    _check_fenceable(ctx, host)
    held = _held_attempt(ctx, host)
    if host.state is H.FENCING or held is not None:
        # the same outage: counted once against the cap, when it began
        prev = held or _supersede_pending(ctx, host)
        incident = prev.incident if prev else ctx.index
        attempt = prev.attempt + 1 if prev else 1
        problem = quorum_problem(ctx.state, host.name) if held else ""
        if problem:
            _block(ctx, host, ev.FENCE_REFUSED, problem)
            return
    else:
        reopens = cap_reopens_at(ctx.state)
        if reopens is not None:
            s = ctx.state.settings
            _block(ctx, host, ev.FENCE_CAP_REACHED, (
                f"fence cap reached: {s.fence_cap} fence(s) per {s.fence_window_s:g} s; "
                f"next possible at log time {reopens:.0f} or by an operator"))
            return
        problem = quorum_problem(ctx.state, host.name)
        if problem:
            _block(ctx, host, ev.FENCE_REFUSED, problem)
            return
        incident, attempt = ctx.index, 1
    _start_attempt(ctx, host, incident, attempt, cmd.reason, cmd.evidence, cmd.storage)


def _block(ctx: Ctx, host: Host, kind: str, reason: str) -> None:
    """The host waits, frozen and visible, for the cap window or for its peers."""
    if host.state is not H.FENCE_BLOCKED:
        ctx.set_host_state(host, H.FENCE_BLOCKED, reason)
        freeze_for_fence(ctx, host.name)
    elif host.reason != reason:
        ctx.put_host(host, reason=reason)
    s = ctx.state.settings
    ctx.emit(kind, host.name, reason, cap=s.fence_cap, window_s=s.fence_window_s)


def _start_attempt(
    ctx: Ctx, host: Host, incident: int, attempt: int, reason: str, evidence: str,
    storage: StorageCheck | None = None,
) -> None:
    storage = storage or StorageCheck()
    action = fence_action_for(ctx.state, host)
    _append(
        ctx,
        FenceRecord(
            token=ctx.index,
            host=host.name,
            incident=incident,
            attempt=attempt,
            action=action,
            reason=reason,
            evidence=evidence,
            requested_by=ctx.origin,
            requested_at=ctx.now,
            storage=storage,
        ),
    )
    ctx.set_host_state(
        host,
        H.FENCING,
        f"fence requested (token {ctx.index}, attempt {attempt}): {reason}",
        fence_token=ctx.index,
        **({"storage_check": storage} if storage != StorageCheck() else {}),
    )
    freeze_for_fence(ctx, host.name)
    checked = f" [{storage.summary(last_read=False)}]" if storage != StorageCheck() else ""
    ctx.emit(
        ev.FENCE_REQUESTED,
        host.name,
        f"{reason} [{evidence}]{checked}",
        token=ctx.index,
        attempt=attempt,
        action=action.value,
    )
    if storage.verdict is StorageVerdict.UNREADABLE:  # the operator should know
        ctx.emit(ev.STORAGE_UNREADABLE, host.name, "the leader cannot read its storage: "
                 "the BMC fence goes ahead, a fence without read-back would wait "
                 f"({storage.summary()})", verdict=storage.verdict.value,
                 checks=storage.checks)


def _current_attempt(ctx: Ctx, host: Host, token: int, what: str) -> FenceRecord:
    """The record of the attempt a result is about; it must be the host's current one."""
    record = ctx.state.fence_record(token)
    if record is None or record.host != host.name:
        raise Refused(f"no fence attempt {token} for host {host.name}", host.name)
    if host.state is not H.FENCING or host.fence_token != token:
        raise Refused(f"stale {what} for token {token}: host {host.name} is "
                      f"{host.state.value} with token {host.fence_token}", host.name)
    return record


def confirm_fence(ctx: Ctx, cmd: c.ConfirmFence) -> None:
    host = ctx.host(cmd.host)  # the result proves the host off (fsm/validate.py)
    record = _current_attempt(ctx, host, cmd.token, "confirm")
    replace_record(
        ctx,
        record,
        result=cmd.result,
        result_evidence=cmd.evidence,
        method=cmd.method,
        confirmed_by=ctx.origin,
        finished_at=ctx.now,
    )
    ctx.set_host_state(host, H.FENCED, f"fence confirmed: {cmd.result.value} ({cmd.method})",
                       agent_ready=False)
    ctx.emit(
        ev.FENCE_CONFIRMED,
        host.name,
        f"{cmd.result.value}: {cmd.evidence}",
        token=cmd.token,
        method=cmd.method,
    )
    release_after_fence(ctx, host.name)


def fence_failed(ctx: Ctx, cmd: c.FenceFailed) -> None:
    host = ctx.host(cmd.host)
    record = _current_attempt(ctx, host, cmd.token, "failure")  # a failure: validate.py
    replace_record(
        ctx,
        record,
        result=cmd.result,
        result_evidence=cmd.evidence,
        method=cmd.method,
        finished_at=ctx.now,
    )
    limit = ctx.state.settings.fence_retry_limit
    final = record.attempt >= limit or cmd.result is FenceResult.NOTIFIED
    ctx.emit(
        ev.FENCE_FAILED,
        host.name,
        f"{cmd.result.value}: {cmd.evidence}",
        token=cmd.token,
        attempt=record.attempt,
        final=final,
    )
    if final:
        why = (
            "operator notified (fence action none/identify)"
            if cmd.result is FenceResult.NOTIFIED
            else f"{record.attempt} attempt(s) failed"
        )
        ctx.set_host_state(
            host,
            H.FENCE_FAILED,
            f"{why}; waiting for an operator to confirm the host is off (last: {cmd.result.value})",
        )


def hold_fence(ctx: Ctx, cmd: c.HoldFence) -> None:
    host = ctx.host(cmd.host)
    wanted = host.fence_wanted and host.state in (H.ONLINE, H.DRAINING)
    if host.state not in (H.SUSPECT, H.FENCING, H.STORAGE_ACTIVE) and not wanted:
        raise Refused(f"host {host.name} is {host.state.value}: no fence to hold", host.name)
    if host.state is H.FENCING:
        record = ctx.state.fence_record(host.fence_token)
        if record is not None and record.result is FenceResult.PENDING:
            replace_record(ctx, record, result=FenceResult.HELD, result_evidence=cmd.reason,
                     finished_at=ctx.now)
    _block(ctx, host, ev.FENCE_REFUSED, f"held by the leader: {cmd.reason}")


def cancel_fence(ctx: Ctx, cmd: c.CancelFence) -> None:
    host = ctx.host(cmd.host)
    if host.state is not H.FENCING:
        raise Refused(f"host {host.name} is {host.state.value}: no fence to cancel",
                      host.name)
    if host.fence_wanted:
        raise Refused(f"host {host.name} must be fenced although it renews: "
                      f"{host.fence_wanted}", host.name)
    record = ctx.state.fence_record(host.fence_token)
    if record is not None and record.result is FenceResult.PENDING:
        replace_record(ctx, record, result=FenceResult.CANCELLED, result_evidence=cmd.evidence,
                 finished_at=ctx.now)
    back_to = H.DRAINING if host.maintenance_wanted else H.ONLINE
    ctx.set_host_state(host, back_to, f"fence cancelled: {cmd.evidence}")
    ctx.emit(ev.FENCE_CANCELLED, host.name, cmd.evidence, token=host.fence_token,
             attempt=record.attempt if record else 0)
    unfreeze(ctx, host.name)
    if back_to is H.DRAINING:
        continue_drain(ctx, host.name)


def admin_confirm(ctx: Ctx, cmd: c.AdminConfirmFence) -> None:
    host = ctx.host(cmd.host)
    if host.state not in (*FENCE_PENDING_HOSTS, H.SUSPECT, H.STORAGE_ACTIVE):
        raise Refused(
            f"host {host.name} is {host.state.value}; only a suspect or unfenced "
            "host can be confirmed off by hand",
            host.name,
        )
    prev = _supersede_pending(ctx, host)
    same_incident = prev is not None and host.state in (H.FENCING, H.FENCE_FAILED)
    _append(
        ctx,
        FenceRecord(
            token=ctx.index,
            host=host.name,
            incident=prev.incident if same_incident and prev else ctx.index,
            attempt=prev.attempt + 1 if same_incident and prev else 1,
            action=FenceAction.OFF,
            reason=cmd.reason,
            evidence="operator confirmed power off",
            requested_by=cmd.who,
            requested_at=ctx.now,
            result=FenceResult.MANUAL,
            result_evidence=cmd.reason,
            method="manual",
            confirmed_by=cmd.who,
            finished_at=ctx.now,
        ),
    )
    freeze_for_fence(ctx, host.name)
    ctx.set_host_state(
        ctx.state.hosts[host.name],
        H.FENCED,
        f"confirmed off by {cmd.who}: {cmd.reason}",
        fence_token=ctx.index,
        agent_ready=False,
    )
    ctx.emit(
        ev.FENCE_CONFIRMED,
        host.name,
        f"manual: {cmd.who}: {cmd.reason}",
        token=ctx.index,
        method="manual",
    )
    release_after_fence(ctx, host.name)


def failed_attempt(record: FenceRecord) -> bool:
    """An attempt that ended without the host read off, nor on purpose (none/identify),
    nor because the host showed itself alive on storage."""
    return not record.result.host_is_off and record.result not in (
        FenceResult.PENDING, FenceResult.NOTIFIED, FenceResult.SUPERSEDED,
        FenceResult.STORAGE_ACTIVE)


def last_failure(state: ClusterState, record: FenceRecord) -> FenceRecord | None:
    """The latest failed attempt of `record`'s incident (it, or one before it)."""
    if failed_attempt(record):
        return record
    return next((r for r in reversed(state.fences)
                 if r.incident == record.incident and failed_attempt(r)), None)


def watchdog_confirm(ctx: Ctx, cmd: c.WatchdogConfirm) -> None:
    """A host whose fence failed counts as reset by its own watchdog (the leader judged
    the time; this checks what the log can: the fallback is chosen, the watchdog was
    armed, the attempt is the host's current one and it failed)."""
    host = ctx.host(cmd.host)
    if ctx.state.settings.fence_fallback is not FenceFallback.WATCHDOG:
        raise Refused("fence_fallback is operator: a failed fence waits for an operator",
                      host.name)
    if not host.watchdog.armed:
        raise Refused(f"host {host.name} has no armed watchdog", host.name)
    if host.state not in (H.FENCING, H.FENCE_FAILED) or host.fence_token != cmd.token:
        raise Refused(f"stale watchdog confirm for token {cmd.token}: host {host.name} is "
                      f"{host.state.value} with token {host.fence_token}", host.name)
    record = ctx.state.fence_record(cmd.token)
    failure = last_failure(ctx.state, record) if record is not None else None
    if record is None or failure is None:
        shown = record.result.value if record else "missing"
        raise Refused(f"no fence attempt of {host.name}'s incident failed yet (attempt "
                      f"{cmd.token}: {shown})", host.name)
    if record.result is FenceResult.PENDING:  # a retry runs: the watchdog came first
        record = replace_record(ctx, record, result=FenceResult.SUPERSEDED, finished_at=ctx.now)
    _append(
        ctx,
        FenceRecord(
            token=ctx.index,
            host=host.name,
            incident=record.incident,
            attempt=record.attempt + 1,
            action=FenceAction.OFF,
            reason=f"its fence failed ({failure.result.value}); its watchdog reset it",
            evidence=failure.result_evidence,
            requested_by=ctx.origin,
            requested_at=ctx.now,
            result=FenceResult.SELF_FENCED,
            result_evidence=cmd.evidence,
            method="watchdog",
            confirmed_by=ctx.origin,
            finished_at=ctx.now,
            storage=cmd.storage,
        ),
    )
    ctx.set_host_state(host, H.FENCED, f"fence confirmed: reset by its watchdog "
                       f"({cmd.evidence})", fence_token=ctx.index, agent_ready=False)
    checked = f" [{cmd.storage.summary(last_read=False)}]" \
        if cmd.storage != StorageCheck() else ""
    ctx.emit(ev.FENCE_CONFIRMED, host.name, f"self-fenced: {cmd.evidence}{checked}",
             token=ctx.index, method="watchdog")
    release_after_fence(ctx, host.name)


def retry_fence(ctx: Ctx, cmd: c.RetryFence) -> None:
    host = ctx.host(cmd.host)
    if host.state not in (H.FENCE_FAILED, H.FENCE_BLOCKED):
        raise Refused(
            f"host {host.name} is {host.state.value}; only fence-failed or "
            "fence-blocked hosts can be retried",
            host.name,
        )
    if ctx.state.settings.cluster_maintenance:
        raise Refused("cluster maintenance is on: fencing is disabled", host.name)
    problem = quorum_problem(ctx.state, host.name)
    if problem:  # an operator may override the cap, never the quorum guard
        raise Refused(problem, host.name)
    prev = ctx.state.fence_record(host.fence_token) if host.fence_token else None
    if host.state is H.FENCE_FAILED and prev is not None:
        incident, attempt = prev.incident, prev.attempt + 1
    else:
        incident, attempt = ctx.index, 1
    reason = f"{cmd.who or ctx.origin} asked for a retry"
    if host.state is H.FENCE_BLOCKED:
        reason += " (overrides the fence cap)"
    _start_attempt(ctx, host, incident, attempt, reason, f"retry by {cmd.who or ctx.origin}")
