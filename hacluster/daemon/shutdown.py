"""Carries out a planned shutdown (core/shutdown.py) when the peer gets SIGTERM, before
it closes anything: leases keep being renewed, the systemd watchdog fed, and the agent
runs (it performs the live migrations of a drain) until the plan stops it."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from hacluster.core import shutdown as sd
from hacluster.daemon.logs import decision
from hacluster.daemon.proposer import VersionGateError
from hacluster.fsm import ClusterState
from hacluster.fsm import events as ev
from hacluster.ports import DomainState, HypervisorError

if TYPE_CHECKING:
    from hacluster.daemon.peer import Peer

log = logging.getLogger("hacluster.shutdown")
POLL_S = 0.1


def budget_of(peer: Peer) -> sd.Budget:
    cfg = peer.config
    return sd.Budget(cfg.timing.stop_timeout_s, cfg.hypervisor.shutdown_timeout_s,
                     cfg.timing.stop_grace_s)


async def carry_out(peer: Peer) -> sd.Leave:
    """Run the plan until it says leave; returns how it ended."""
    plan = sd.PlannedShutdown(peer.me, time.monotonic(), budget_of(peer))
    if plan.budget.moving_s <= 0:
        log.warning("[timing] stop_timeout_s leaves no time for live migrations: it must "
                    "exceed [hypervisor] shutdown_timeout_s + 2 x stop_grace_s + %g s",
                    sd.MARGIN_S)
    while True:
        domains = await _domains(peer) if plan.wants_domains else None
        with peer.replica.read() as state:
            action = plan.step(await _view(peer, state, domains))
        for note in plan.notes:
            decision(log, "planned shutdown", note, host=peer.me)
        plan.notes.clear()
        if isinstance(action, sd.Leave):
            if action.unprotected:
                log.warning("peer stopping: %s", action.reason, extra={"host": peer.me})
            else:
                decision(log, "peer stopping", action.reason, host=peer.me)
            return action
        if isinstance(action, sd.Wait):
            await asyncio.sleep(POLL_S)
            continue
        decision(log, f"planned shutdown: {type(action).__name__}", action.reason,
                 host=peer.me)
        await _act(peer, plan, action)


async def _view(peer: Peer, state: ClusterState, domains: dict[str, DomainState] | None
                ) -> sd.View:
    assert peer.raft is not None
    status = peer.raft.status()
    by_address = {h.raft_address: name for name, h in state.hosts.items()}
    leader = by_address.get(status.leader or "", "") if status.leader else ""
    return sd.View(time.monotonic(), state, peer.raft.leader_term() is not None, leader,
                   status.term, domains)


async def _domains(peer: Peer) -> dict[str, DomainState] | None:
    hypervisor = peer.hypervisor_in_use
    if hypervisor is None:
        return {}
    loop = asyncio.get_running_loop()
    try:
        found = await loop.run_in_executor(peer.pool, hypervisor.list_domains)
    except HypervisorError as exc:
        log.error("planned shutdown: cannot read libvirt", extra={"error": str(exc)})
        return None
    return {d.name: d.state for d in found}


async def _act(peer: Peer, plan: sd.PlannedShutdown, action: sd.Action) -> None:
    loop = asyncio.get_running_loop()
    if isinstance(action, sd.HandOff):
        assert peer.raft is not None
        await loop.run_in_executor(peer.pool, peer.raft.transfer_leadership, None)
    elif isinstance(action, sd.Propose):
        await _propose(peer, plan, action)
    elif isinstance(action, sd.StopAgent):
        left_s = plan.budget.moving_s - (time.monotonic() - plan.started)
        plan.agent_stopped(await peer.stop_agent(max(left_s, peer.config.timing.stop_grace_s)))
    elif isinstance(action, sd.ShutDownVms):
        await _shut_down(peer, action.waves)
        domains = await _domains(peer)
        with peer.replica.read() as state:
            plan.vms_shut_down(state, domains)


async def _propose(peer: Peer, plan: sd.PlannedShutdown, action: sd.Propose) -> None:
    assert peer.proposer is not None
    try:
        outcome = await peer.proposer.submit(action.command,
                                             deadline_s=peer.config.timing.stop_grace_s)
    except VersionGateError as exc:
        plan.proposed(False, time.monotonic(), refused=str(exc))
        return
    refused = next((e.message for e in outcome.events if e.kind == ev.REJECTED), "")
    plan.proposed(outcome.committed, time.monotonic(), refused=refused)


async def _shut_down(peer: Peer, waves: tuple[tuple[str, ...], ...]) -> None:
    """Wave after wave (an application before its database), every VM of a wave at
    once: each shuts down gracefully and is destroyed when its wave's share of the
    shutdown timeout is spent (the last wave gets what the earlier ones left)."""
    hypervisor = peer.hypervisor_in_use
    if hypervisor is None:
        return
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + peer.config.hypervisor.shutdown_timeout_s
    for i, names in enumerate(waves):
        share = max(deadline - time.monotonic(), 0.0) / (len(waves) - i)
        results = await asyncio.gather(*(loop.run_in_executor(
            peer.pool, hypervisor.shutdown, name, share) for name in names),
            return_exceptions=True)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                log.error("planned shutdown: a VM did not stop",
                          extra={"vm": name, "error": str(result)})
