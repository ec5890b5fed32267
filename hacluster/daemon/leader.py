"""Drives the pure Manager while this peer leads: lease renewals in, proposals
and fences out. Every Manager call happens on the asyncio loop thread."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any

from hacluster.config import StorageConfig
from hacluster.core.bmc import bmc_spec
from hacluster.core.fencelevels import FencePlan, fence_plan
from hacluster.core.leaderloop import LeaderLoop
from hacluster.core.manager import Decision, Manager, Propose, RunFence
from hacluster.core.readindex import ReadIndex, ReadMark
from hacluster.core.renewal import Renewal
from hacluster.core.silence import PROBE_TIMEOUT_S, Challenge, ProbePower
from hacluster.core.storage import CheckStorage
from hacluster.daemon.fencing import SecretError, bmc_target, run_plan
from hacluster.daemon.leases import LeaseService
from hacluster.daemon.logs import decision
from hacluster.daemon.proposer import Proposer
from hacluster.daemon.replica import Replica
from hacluster.daemon.storage import StorageReader
from hacluster.fsm.model import FenceResult
from hacluster.ports import Fencer, PowerState
from hacluster.raft import RaftNode

log = logging.getLogger("hacluster.manager")
FENCE_CONFIRM_TIMEOUT_S = 1.0  # a leader that cannot confirm its majority this fast skips
CHALLENGE_SPACING_S = (0.0, 0.05, 0.1)  # a lost datagram or two must not decide


class LeaderDriver:
    def __init__(self, me: str, raft: RaftNode, replica: Replica, proposer: Proposer,
                 fencer: Fencer, cluster_secret: str, pool: Executor,
                 tick_s: float = 0.1, storage: StorageConfig | None = None) -> None:
        self.me = me
        self.tick_s = tick_s  # how often tick() is due
        self.raft = raft
        self.replica = replica
        self.proposer = proposer
        self.fencer = fencer
        self.secret = cluster_secret
        self.pool = pool
        self.loop = LeaderLoop(me, tick_s)
        self.manager: Manager = self.loop.manager
        self.storage = storage or StorageConfig()
        self.manager.storage.configure(self.storage.checks, self.storage.check_interval_s,
                                       bool(self.storage.heartbeat_paths),
                                       self.storage.read_timeout_s)
        self.storage_reader = StorageReader()
        self.stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.reads: ReadIndex[Callable[[ReadMark], None]] = ReadIndex()
        self.leases: LeaseService | None = None  # set once the lease service exists
        self._reads_waiting = asyncio.Event()

    # ------------------------------------------------------------ inputs

    def renewal(self, renewal: Renewal, credit_at: float | None,
                answer: Callable[[ReadMark], None]) -> None:
        """A renewal that is no replay arrived (daemon/leases.py). If we lead: credit the
        host's lease at the moment it proves (core/renewal.py), and answer once our read
        index is confirmed (core/readindex.py)."""
        if self.stopping or self.raft.leader_term() is None:
            return
        if credit_at is not None:
            self.manager.renewal(renewal.host, renewal.link, credit_at)

        def answer_and_note(mark: ReadMark) -> None:
            answer(mark)  # the host may feed its watchdog on it (core/selffence.py)
            if self.manager.leading and mark.term == self.manager.term:
                self.manager.acked(renewal.host, time.monotonic())

        self.read(answer_and_note)

    def read(self, answer: Callable[[ReadMark], None]) -> bool:
        """Queue a read request; False when this peer cannot take one now (it does not
        lead, or has not committed an entry of its term yet)."""
        mark = self.raft.read_mark()
        if mark is None:
            return False
        self.reads.request(answer, mark)
        self._reads_waiting.set()
        return True

    def grant_raft_allowances(self, own: Callable[[float], None] | None) -> None:
        """Grant every partner's latest Raft answer once a majority confirms a mark taken
        now (core/selffence.py): their self-fencing may count from those answers, and so
        may ours (`own`) from now. Each grant is an acknowledgement the manager counts
        (`Manager.acked`) when it bounds a watchdog's reset; granting the same answer
        again is not (it allows nothing later)."""
        asked, answers = time.monotonic(), self.raft.answers()

        def confirmed(mark: ReadMark) -> None:
            if own is not None:
                own(asked)
            if not self.manager.leading or mark.term != self.manager.term:
                return
            now = time.monotonic()
            with self.replica.read() as state:
                by_address = {h.raft_address: name for name, h in state.hosts.items()}
            known = {a: ans for a, ans in answers.items() if a in by_address}
            # counted as acknowledged `now`, after the grant: later than the departure
            # of every answer granted (the leader bounds a watchdog's reset from it)
            for address in self.raft.grant(known, mark.term):
                self.manager.acked(by_address[address], now)

        self.read(confirmed)

    async def read_barrier(self, timeout_s: float) -> ReadMark | None:
        """The leader's own read barrier: the same rule as for every other host."""
        done: asyncio.Future[ReadMark] = asyncio.get_running_loop().create_future()

        def answer(mark: ReadMark) -> None:
            if not done.done():
                done.set_result(mark)

        if not self.read(answer):
            return None
        try:
            return await asyncio.wait_for(done, timeout_s)
        except TimeoutError:
            return None

    async def serve_reads(self, poll_s: float = 0.003) -> None:
        """Answer read requests as their confirmations come in (runs for ever)."""
        while True:
            await self._reads_waiting.wait()
            while len(self.reads):
                for answer, mark in self.reads.release(*self.raft.read_echoes()):
                    answer(mark)
                await asyncio.sleep(poll_s)
            self._reads_waiting.clear()

    @property
    def ready(self) -> bool:
        """Leading in the current term with our Noop committed (state is current)."""
        return (self.manager.leading and self.manager.ready
                and self.raft.leader_term() == self.manager.term)

    def tick(self) -> None:
        term = None if self.stopping else self.raft.leader_term()
        heard = self.raft.heard_from() if term is not None else {}
        reports = self.raft.hears_reports() if term is not None else {}
        now = time.monotonic()
        with self.replica.read() as state:
            by_address = {h.raft_address: name for name, h in state.hosts.items()}
            raft_heard = {by_address[a]: now - age for a, age in heard.items()
                          if a in by_address}
            hears = {by_address[a]: n for a, n in reports.items() if a in by_address}
            result = self.loop.tick(term, state, now, self.replica.log_now(),
                                    self.replica.clock.running, raft_heard, hears)
            if result.start_log_clock:
                self.replica.start_clock()
        for note in result.notes:
            decision(log, note.what, note.why, term=term or self.manager.term)
        for d in result.decisions:
            self._spawn(self._dispatch(d))

    async def _dispatch(self, d: Decision) -> None:
        if isinstance(d, Propose):
            await self._propose(d)
        elif isinstance(d, RunFence):
            await self._fence(d)
        elif isinstance(d, ProbePower):
            await self._probe(d)
        elif isinstance(d, Challenge):
            self._challenge(d)
        elif isinstance(d, CheckStorage):
            await self._check_storage(d)
        else:
            decision(log, "step down", d.reason, target=d.target or "any")
            with self.replica.read() as state:
                host = state.hosts.get(d.target)
                address = host.raft_address if host is not None else ""
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.pool, self.raft.transfer_leadership,
                                       address or None)

    # ------------------------------------------------------------ outputs

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _propose(self, d: Propose) -> None:
        decision(log, f"propose {d.command.TYPE}", d.reason, key=d.key)
        try:
            outcome = await self.proposer.propose(d.command)
        except Exception:
            log.exception("proposal failed", extra={"key": d.key})
            self.manager.proposal_done(d.key, d.command, False, 0)
            return
        self.manager.proposal_done(d.key, d.command, outcome.committed, outcome.index,
                                   outcome.own_term)
        for event in outcome.events:
            if event.kind == "rejected":
                log.warning("proposal refused", extra={"key": d.key, "reason": event.message})

    async def _fence(self, d: RunFence) -> None:
        # Confirm, right before acting, that a majority still follows us in the term
        # that committed the token (a deposed leader believes it leads for a while).
        if await self._fence_not_ours(d):
            decision(log, "fence skipped", "leadership could not be confirmed (or this peer "
                     "is stopping) before the fence ran", host=d.host, token=d.token)
            self.manager.fence_result(d.host, d.token, FenceResult.ERROR, "leader changed",
                                      "none", time.monotonic())
            return
        with self.replica.read() as state:
            plan = fence_plan(state, d.host)
            deadline = state.settings.fence_timeout_s
        decision(log, "fence", d.reason, host=d.host, token=d.token, action=d.action.value)
        result, evidence, method = await self._run_backend(d, plan, deadline)
        decision(log, "fence result", evidence, host=d.host, token=d.token, result=result.value)
        for follow in self.manager.fence_result(d.host, d.token, result, evidence, method,
                                                time.monotonic()):
            self._spawn(self._dispatch(follow))

    async def _probe(self, d: ProbePower) -> None:
        """Read a silent host's power through its BMC; command nothing (core/silence.py)."""
        with self.replica.read() as state:
            spec = bmc_spec(state, d.host)
        off, detail = False, "no BMC address configured"
        if spec is not None:
            try:
                target = bmc_target(spec, self.secret)
                loop = asyncio.get_running_loop()
                probe = await loop.run_in_executor(self.pool, self.fencer.probe, target,
                                                   PROBE_TIMEOUT_S)
                off = probe.ok and probe.power is PowerState.OFF
                detail = f"{probe.detail} (power {probe.power.value})"
            except SecretError as exc:
                detail = str(exc)
        decision(log, "power read", f"{d.reason}: {detail}", host=d.host,
                 power="off" if off else "not off")
        self.manager.probe_result(d.host, off, detail, time.monotonic())

    async def _check_storage(self, d: CheckStorage) -> None:
        """Read a silent host's heartbeats and disk files, within the deadline
        (core/storage.py judges what the reads show)."""
        read = await self.storage_reader.read(d, self.storage.read_timeout_s)
        log.debug("storage check", extra={"host": d.host, "files": [
            f"{f.kind} {f.path}: {f.state} {f.shown}" for f in read.files]})
        self.manager.storage_result(read, time.monotonic())

    def _challenge(self, d: Challenge) -> None:
        """A silent host's last chance: ask it on every link to renew now, three times."""
        leases, term = self.leases, self.manager.term
        if leases is None:
            return
        with self.replica.read() as state:
            host = state.hosts.get(d.host)
            routes = [(link, address) for link, _, address in
                      (e.partition("=") for e in (host.addresses if host else ()))
                      if link in leases.links]
        decision(log, "challenge", f"before a fence on the lease alone: {d.reason}",
                 host=d.host, links=",".join(link for link, _ in routes) or "none")
        loop = asyncio.get_running_loop()
        for delay in CHALLENGE_SPACING_S:
            loop.call_later(delay, leases.challenge, d.host, routes, term)

    async def _fence_not_ours(self, d: RunFence) -> bool:
        """Right before acting: does a majority still follow us in the term that
        committed the token? (A deposed leader believes it leads for a while.)"""
        mark = None if self.stopping else await self.read_barrier(FENCE_CONFIRM_TIMEOUT_S)
        term = None if mark is None else mark.term
        return self.stopping or not self.manager.fence_still_ours(d.token, term) or \
            self.raft.leader_term() != term

    async def _run_backend(self, d: RunFence, plan: FencePlan,
                           deadline: float) -> tuple[FenceResult, str, str]:
        """The host's fencing levels in order (one device: its BMC, as before levels);
        leadership is confirmed again before each further level."""
        async def still_ours() -> str:
            if await self._fence_not_ours(d):
                return "leadership could not be confirmed (or this peer is stopping)"
            return ""

        return await run_plan(plan, d.action, deadline, self.fencer, self.secret, self.pool,
                              still_ours)

    async def drain(self) -> None:
        """Wait for in-flight proposals and fences (used on shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        self.storage_reader.close()
