"""Drives the pure agent on this host: read libvirt, check freshness, act.

Reconciles every `agent_tick_s` and at once when libvirt reports a domain
event. Hypervisor calls run in a thread pool; a VM with an operation in
flight is `busy` and skipped by the next decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

from hacluster.core import agent as ag
from hacluster.core.bmc import BmcHealth, BmcSpec, bmc_health, bmc_spec
from hacluster.daemon.fencing import SecretError, bmc_target
from hacluster.daemon.logs import decision
from hacluster.daemon.proposer import Proposer, VersionGateError
from hacluster.daemon.replica import Replica
from hacluster.fsm import commands as c
from hacluster.fsm.model import HostRole
from hacluster.ports import (
    DiskLockHeld,
    DomainState,
    Fencer,
    HostCapacity,
    Hypervisor,
    HypervisorError,
)

log = logging.getLogger("hacluster.agent")

Freshness = Callable[[], Awaitable[bool]]
FAILED_STARTS = ("start-failed", "start-locked")


class AgentDriver:
    def __init__(self, me: str, replica: Replica, hypervisor: Hypervisor, proposer: Proposer,
                 fresh: Freshness, capacity: HostCapacity, pool: Executor, *,
                 shutdown_timeout_s: float, migrate_timeout_s: float,
                 migration_uri: str) -> None:
        self.me = me
        self.replica = replica
        self.hypervisor = hypervisor
        self.proposer = proposer
        self.fresh = fresh
        self.capacity = capacity
        self.pool = pool
        self.shutdown_timeout_s = shutdown_timeout_s
        self.migrate_timeout_s = migrate_timeout_s
        self.migration_uri = migration_uri
        self.busy: set[str] = set()
        # VM -> the report of a start that failed here: a placement is never started
        # twice (a reconcile may run before the report commits); the report is sent again
        self.failed_starts: dict[str, c.VmReport] = {}
        self.throttle = ag.Throttle(1.0)
        self.wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def domain_event(self, name: str, state: object, reason: str) -> None:
        """libvirt callback (any thread): reconcile now, not at the next tick."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self.wake.set)

    _loop: asyncio.AbstractEventLoop | None = None

    async def run(self, tick_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.hypervisor.subscribe(self.domain_event)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), tick_s)
            self.wake.clear()
            try:
                await self.reconcile_once()
            except HypervisorError as exc:
                log.warning("cannot read the hypervisor", extra={"error": str(exc)})

    async def reconcile_once(self) -> None:
        loop = asyncio.get_running_loop()
        # What we knew as we read libvirt (core/agent.py LibvirtRead), and libvirt
        # *before* the freshness barrier (core/agent.py).
        with self.replica.read() as state:
            read = ag.libvirt_read(self.me, state, frozenset(self.busy))
        domains = await loop.run_in_executor(self.pool, self.hypervisor.list_domains)
        local = {d.name: d.state for d in domains}
        if self._needs_freshness(local, read):
            fresh = await self.fresh()
            actions = self._decide(local, fresh, read)
        else:  # nothing that needs fresh state: skip the barrier round trip
            actions = self._decide(local, False, read)
        for action in actions:
            self._act(action)

    def _decide(self, local: dict[str, DomainState], fresh: bool,
                read: ag.LibvirtRead) -> list[ag.AgentAction]:
        with self.replica.read() as state:
            return ag.reconcile(self.me, state, local, frozenset(self.busy), fresh,
                                (self.capacity.memory_mib, self.capacity.vcpus), read)

    def _needs_freshness(self, local: dict[str, DomainState], read: ag.LibvirtRead) -> bool:
        """Would fresh state change anything (start, destroy, migrate, ready)?"""
        return self._decide(local, True, read) != self._decide(local, False, read)

    # ------------------------------------------------------------ actions

    def _act(self, action: ag.AgentAction) -> None:
        if isinstance(action, ag.Report):
            command = action.command
            if isinstance(command, c.HostReady):
                command = c.HostReady(name=command.name, memory_mib=command.memory_mib,
                                      vcpus=command.vcpus, migration_uri=self.migration_uri)
            self._send_report(command, action.reason)
            return
        failed = self.failed_starts.get(action.name)
        if isinstance(action, ag.StartVm) and failed and failed.placement == action.placement:
            self._send_report(failed, "this placement failed to start here; not tried again")
            return
        self.busy.add(action.name)
        decision(log, type(action).__name__, action.reason, vm=action.name)
        self._spawn(self._run_blocking(action))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send_report(self, command: c.Command, reason: str) -> None:
        """Every report goes through the throttle: the one an action sends and the one
        the next reconcile would send for the same observation are one report."""
        command = c.keeps_trying(command)  # (VmReport v3: see fsm/apply_vms.py)
        key = (command.TYPE, getattr(command, "name", ""), getattr(command, "observed", ""),
               getattr(command, "placement", 0))
        if self.throttle.allow(key, time.monotonic()):
            decision(log, f"report {command.TYPE}", reason, subject=getattr(command, "name", ""))
            self._spawn(self._report(command))

    async def _report(self, command: c.Command) -> None:
        try:
            outcome = await self.proposer.propose(command)
        except VersionGateError as exc:
            older = _older_report(command)
            if older is None:
                log.error("report not proposed", extra={"reason": str(exc)})
                return
            # a host of an older release cannot read it: what it reads instead
            log.warning("report sent as %s v%d: %s", older.observed, older.wire_version(), exc)
            try:
                outcome = await self.proposer.propose(older)
            except VersionGateError:
                older = older.for_older_peers()  # (v3 -> v2 -> v1)
                if older is None:
                    return
                outcome = await self.proposer.propose(older)
        for event in outcome.events:
            if event.kind == "rejected":
                log.info("report refused", extra={"reason": event.message})

    async def _run_blocking(self, action: ag.AgentAction) -> None:
        name = getattr(action, "name", "")
        try:
            loop = asyncio.get_running_loop()
            report = await loop.run_in_executor(self.pool, self._perform, action)
            if isinstance(report, c.VmReport) and report.observed in FAILED_STARTS:
                self.failed_starts[name] = report
        finally:
            self.busy.discard(name)
            self.wake.set()
        if report is not None:
            self._send_report(report, f"{type(action).__name__} finished")

    def _perform(self, action: ag.AgentAction) -> c.Command | None:
        """Runs in a worker thread; returns the report to propose."""
        if isinstance(action, ag.StartVm):
            return self._start(action)
        if isinstance(action, ag.StopVm):
            return self._stop(action)
        if isinstance(action, ag.MigrateVm):
            return self._migrate(action)
        if isinstance(action, ag.DestroyVm):
            try:
                self.hypervisor.destroy(action.name)
            except HypervisorError as exc:
                log.error("cannot destroy a stale copy", extra={"vm": action.name,
                                                                "error": str(exc)})
        return None

    def _vm_report(self, name: str, placement: int, observed: str, detail: str = "") -> c.Command:
        return c.VmReport(name=name, host=self.me, placement=placement, observed=observed,
                          detail=detail)

    def _start(self, a: ag.StartVm) -> c.Command:
        try:
            self.hypervisor.define(a.name, a.xml)
            self.hypervisor.start(a.name)
            return self._vm_report(a.name, a.placement, "started")
        except DiskLockHeld as exc:
            # a live copy holds the disk: a distinct report, which no restart follows
            log.error("start refused: a disk lock is held", extra={"vm": a.name,
                                                                   "error": str(exc)})
            with contextlib.suppress(HypervisorError):
                self.hypervisor.destroy(a.name)
            return self._vm_report(a.name, a.placement, "start-locked", exc.why)
        except HypervisorError as exc:
            # never leave a half-started copy behind a start-failed report
            with contextlib.suppress(HypervisorError):
                self.hypervisor.destroy(a.name)
            return self._vm_report(a.name, a.placement, "start-failed", str(exc))

    def _stop(self, a: ag.StopVm) -> c.Command:
        try:
            self.hypervisor.shutdown(a.name, self.shutdown_timeout_s)
            return self._vm_report(a.name, a.placement, "stopped")
        except HypervisorError as exc:
            return self._vm_report(a.name, a.placement, "stop-failed", str(exc))

    def _migrate(self, a: ag.MigrateVm) -> c.Command:
        with self.replica.read() as state:
            target = state.hosts.get(a.target)
            uri = target.migration_uri if target else ""
        if not uri:
            return self._vm_report(a.name, a.placement, "migrate-failed",
                                   f"host {a.target} has no migration URI")
        try:
            self.hypervisor.migrate(a.name, uri, self.migrate_timeout_s)
            return self._vm_report(a.name, a.placement, "migrated")
        except HypervisorError as exc:
            return self._vm_report(a.name, a.placement, "migrate-failed", str(exc))

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)

    async def quiesce(self, timeout_s: float) -> bool:
        """Wait until no operation is under way (its report included); False if one
        still is after timeout_s. Call once the loop has stopped."""
        give_up = time.monotonic() + timeout_s
        while self._tasks or self.busy:
            left = give_up - time.monotonic()
            if left <= 0:
                return False
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=left)
            else:
                await asyncio.sleep(0.05)
        return True


def _older_report(command: c.Command) -> c.VmReport | None:
    """What a peer of an older release reads in place of a newer report, if anything."""
    return command.for_older_peers() if isinstance(command, c.VmReport) else None


class HostReporter:
    """Slow periodic facts about this host: load, and whether its own BMC answers."""

    def __init__(self, me: str, replica: Replica, proposer: Proposer, fencer: Fencer,
                 cluster_secret: str, pool: Executor) -> None:
        self.me = me
        self.replica = replica
        self.proposer = proposer
        self.fencer = fencer
        self.secret = cluster_secret
        self.pool = pool
        self._checked_spec: BmcSpec | None = None  # the settings the last check read
        self._next_check = -math.inf

    async def report_load(self) -> None:
        with self.replica.read() as state:
            host = state.hosts.get(self.me)
        load = round(os.getloadavg()[0], 2)
        if host is not None and host.role is not HostRole.WITNESS and abs(host.load - load) >= 0.1:
            await self.proposer.propose(c.ReportHostLoad(name=self.me, load=load))

    async def check_bmc_when_due(self, interval_s: float, timeout_s: float) -> None:
        """Called often: check every interval_s, and at once when this host's BMC
        settings changed (a report on the old ones would stand until the next check)."""
        with self.replica.read() as state:
            spec = bmc_spec(state, self.me)
        now = time.monotonic()
        if spec == self._checked_spec and now < self._next_check:
            return
        self._checked_spec, self._next_check = spec, now + interval_s
        await self.check_bmc(timeout_s)

    async def check_bmc(self, timeout_s: float) -> None:
        """Probe the BMC the settings name and report a change. A host without a BMC
        address reports nothing: status reads that from the settings, and a report of
        it would outlive the `hactl bmc set` that usually follows."""
        with self.replica.read() as state:
            spec, host = bmc_spec(state, self.me), state.hosts.get(self.me)
        if spec is None or host is None or not host.runs_vms:
            return
        try:
            target = bmc_target(spec, self.secret)
            loop = asyncio.get_running_loop()
            probe = await loop.run_in_executor(self.pool, self.fencer.probe, target, timeout_s)
            ok, detail = probe.ok, f"{probe.detail} (power {probe.power.value})"
        except SecretError as exc:
            ok, detail = False, str(exc)
        with self.replica.read() as state:
            host = state.hosts.get(self.me)
            if host is None or bmc_spec(state, self.me) != spec:
                return  # changed while it ran: the next check probes the new settings
            shown = bmc_health(state, host)  # what status says now (maybe a fence's word)
        if shown != BmcHealth(ok, detail):
            await self.proposer.propose(c.ReportBmcHealth(name=self.me, ok=ok, detail=detail))
