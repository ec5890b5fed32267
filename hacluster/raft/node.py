"""RaftNode: a replicated log of opaque byte commands (ports.ReplicatedLog) on pysyncobj.

Usage::

    node = RaftNode("10.0.0.1:7000", ["10.0.0.2:7000", "10.0.0.3:7000"], secret,
                    "/var/lib/hacluster/raft", fsm.apply, fsm.snapshot, fsm.restore)
    res = node.propose(command_bytes, timeout_s=2.0)   # from a worker thread
    node.close()

Threads: pysyncobj's event loop runs in one thread owned by the node; every state
machine callback (apply, snapshot, restore) runs on it, one at a time. `propose()` blocks
the calling thread (use a thread pool from asyncio) and must not be called from a
callback. Callbacks must have no effect outside the state machine: a snapshot install or
a restart re-applies entries.

Propose outcomes:

* COMMITTED: this very proposal was applied *on this node*, at `index`, and `result` is
  what apply returned. (Matched by log index and term, so it is our entry.)
* NOT_LEADER: the command did not and will not enter the log: no leader known, the
  leader refused it, the queue was full, or its slot was taken by another leader's entry.
  Retrying is safe.
* MAYBE: the deadline passed or the leader changed while waiting: the command may still
  be committed later. pysyncobj's own sync timeout is not used.

Leader safety (acting only on what you committed in your own term)
-----------------------------------------------------------------
An isolated old leader keeps reporting `is_leader()` for up to leader_fallback_timeout_s,
and an entry appended by a deposed leader can still be committed by its successor. So
side effects (fencing) must not hang on `is_leader()`. Every applied entry carries:

* `term`: the term of the leader that appended it (same on every peer);
* `commit_term`: the term in force when *this* node saw the commit index pass it (the
  leader records its own term when it advances the commit index; a follower records the
  term of the append_entries that told it). 0 means unknown (entries replayed at start).
* `own_term`: this node was leader in `term` *and* committed the entry itself in that
  same term (`commit_term == term`).

`RaftProposeResult` (a ProposeResult) carries all three; inside an apply callback
`current_entry()` returns the same `AppliedEntry`. Rule for the daemon: run a side effect
for an entry only if `own_term` is true, and check `leader_term() == entry.term` right
before acting (a later term means someone else now owns the decision). A stale leader's
entry committed by its successor has `commit_term > term`, so neither the stale leader
(own_term false) nor the successor (its term differs) acts on it blindly: the successor
sees it applied and decides anew in its own term.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from pysyncobj.config import FAIL_REASON
from pysyncobj.syncobj import SyncObjException

from hacluster.core.readindex import ReadMark
from hacluster.ports import ProposeStatus, Secret
from hacluster.raft.engine import REGULAR, AppliedEntry, Engine, Machine
from hacluster.raft.errors import NodeHalted, RaftError
from hacluster.raft.files import Disk
from hacluster.raft.recovery import open_storage
from hacluster.raft.results import (
    PartnerStatus,
    RaftProposeResult,
    RaftStatus,
    Waiter,
    collect_status,
    validate_address,
)
from hacluster.raft.settings import RaftSettings

__all__ = ["PartnerStatus", "RaftNode", "RaftProposeResult", "RaftStatus", "validate_address"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class RaftNode:
    """One Raft peer; see the module docstring. Implements ports.ReplicatedLog."""

    def __init__(
        self,
        self_address: str | None,
        partners: list[str] | tuple[str, ...],
        secret: Secret | str | bytes,
        data_dir: str | os.PathLike[str],
        apply: Callable[[bytes, int], object],
        snapshot: Callable[[], bytes],
        restore: Callable[[bytes], None],
        settings: RaftSettings | None = None,
        *,
        rebuild: bool = False,
        bind_address: str | None = None,
        on_halt: Callable[[BaseException], None] | None = None,
    ) -> None:
        """Open storage, bind, and start the event loop.

        self_address None makes a read-only member (receives the log, never votes, can
        propose). Partners equal to self_address are ignored. Raises CorruptStorage
        (naming the bad file) unless rebuild=True, which moves bad files aside and
        starts empty, catching up from the others without voting until it has.
        """
        self._settings = settings if settings is not None else RaftSettings()
        self._self_address = _check_self(self_address)
        partner_list = _check_partners(self_address, partners)
        password = _check_secret(secret)
        self._on_halt = on_halt
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._waiters: set[Waiter] = set()
        self._waiters_lock = threading.Lock()
        self._started = threading.Event()
        self._stopped = threading.Event()
        self._disk = Disk(self._settings.fsync)
        self._storage = open_storage(os.fspath(data_dir), self._disk, rebuild)
        self._engine = self._make_engine(
            partner_list, password, bind_address, Machine(apply, snapshot, restore)
        )
        self._thread = threading.Thread(
            target=self._run, name=f"raft-{self_address or 'readonly'}", daemon=True
        )
        self._loop_ident: int | None = None
        self._thread.start()
        self._await_start()

    def _make_engine(
        self, partners: list[str], password: str | bytes, bind: str | None, machine: Machine
    ) -> Engine:
        conf = self._settings.syncobj_conf_kwargs()
        conf.update(
            password=password,
            bindAddress=bind or self._self_address,
            fullDumpFile=self._storage.snapshot_path,
            journalFile=None,  # SyncObj's own journal is replaced by ours (engine.py)
        )
        try:
            return Engine(
                self._self_address,
                partners,
                conf,
                self._settings,
                self._storage.journal,
                self._disk,
                machine,
                rebuilding=self._storage.catching_up,
                on_caught_up=self._storage.caught_up,
            )
        except BaseException as exc:
            self._storage.journal.close()
            self._storage.lock.release()
            if isinstance(exc, SyncObjException):
                raise RaftError(f"cannot bind {bind or self._self_address}: {exc}") from exc
            raise

    def _await_start(self) -> None:
        if not self._started.wait(self._settings.start_timeout_s):
            self.close()
            raise RaftError("the Raft event loop did not complete its first tick")
        fatal = self._engine.ha_fatal()
        if fatal is not None:
            self.close()
            raise NodeHalted(f"node halted while starting: {fatal}") from fatal

    # ------------------------------------------------------------ ReplicatedLog

    def propose(self, data: bytes, timeout_s: float) -> RaftProposeResult:
        """Replicate one command; see the module docstring for the outcomes."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"propose() takes bytes, got {type(data).__name__}")
        if len(data) > self._settings.max_command_bytes:
            raise ValueError(
                f"command of {len(data)} bytes exceeds max_command_bytes "
                f"({self._settings.max_command_bytes})"
            )
        self._refuse_in_loop("propose")
        if self._stopping.is_set():
            return RaftProposeResult(ProposeStatus.NOT_LEADER)
        command = REGULAR + bytes(data)
        return self._wait_for(lambda w: self._engine._applyCommand(command, w.done), timeout_s)

    def is_leader(self) -> bool:
        return bool(self._engine._isLeader())

    def leader(self) -> str | None:
        node = self._engine._getLeader()
        return None if node is None else str(node.id)

    def term(self) -> int:
        return int(self._engine.raftCurrentTerm)

    def applied_index(self) -> int:
        return int(self._engine.raftLastApplied)

    # ------------------------------------------------------------ leader safety

    def leader_term(self) -> int | None:
        """The term in which this node is leader right now, else None."""
        return self._engine.ha_leader_term()

    def read_mark(self) -> ReadMark | None:
        """Read index for a read request arriving now: None unless this node leads and
        has committed an entry of its term (core/readindex.py; any thread)."""
        return self._engine.ha_read_mark()

    def read_echoes(self) -> tuple[int | None, int, dict[str, int]]:
        """(term this node leads or None, voters, highest sequence number each other
        voter echoed in that term): what ReadIndex.release needs."""
        return self._engine.ha_read_echoes()

    def heard_from(self) -> dict[str, float]:
        """Leader: seconds since each partner's peer last answered our replication in
        this leadership, by Raft address ({} when not leading)."""
        return self._engine.ha_heard_ages()

    def hears_reports(self) -> dict[str, dict[str, float]]:
        """Leader: whose renewals each partner's host receives (host -> age), as it last
        reported in its Raft answers, by Raft address."""
        return self._engine.ha_hears_reports()

    def answers(self) -> dict[str, tuple[int, int]]:
        """Leader: the latest answer id each partner sent, by Raft address; grant them
        (`grant`) once a read mark taken after this call is confirmed."""
        return self._engine.ha_answers_snapshot()

    def grant(self, answers: dict[str, tuple[int, int]], term: int) -> list[str]:
        """Leader: tell each partner, in its next append_entries, that it may count its
        self-fencing allowance from when that answer left (core/selffence.py). Returns
        the partners whose grant moved."""
        return self._engine.ha_grant(answers, term)

    def allowed_since(self) -> float | None:
        """Follower: when (time.monotonic()) the latest answer of ours that a leader
        granted left; None if none was."""
        return self._engine.ha_allowed_anchor()

    def carry_answers(self) -> None:
        """This host self-fences: give the other voters an answer for the leader every
        half second, so that a grant reaches it though its link to the leader is cut one
        way (engine.py `_ha_carry_answer`)."""
        self._engine.ha_carry_enabled = True

    def set_hears(self, heard: dict[str, float]) -> None:
        """What this host reports in its Raft answers: host -> when (time.monotonic())
        it last received that host's renewal; each answer carries the ages then."""
        self._engine.ha_hears = dict(heard)

    def current_entry(self) -> AppliedEntry:
        """The entry being applied; only valid inside the apply callback."""
        entry = self._engine.ha_applying()
        if entry is None:
            raise RaftError("current_entry() is only valid inside the apply callback")
        return entry

    # ------------------------------------------------------------ membership, admin

    def add_member(self, address: str, timeout_s: float = 5.0) -> RaftProposeResult:
        """Add a voting member (start it first with the current members as partners)."""
        validate_address(address)
        return self._membership(self._engine.addNodeToCluster, address, timeout_s)

    def remove_member(self, address: str, timeout_s: float = 5.0) -> RaftProposeResult:
        """Remove a voting member; stop its process once this returns COMMITTED."""
        validate_address(address)
        return self._membership(self._engine.removeNodeFromCluster, address, timeout_s)

    def _membership(
        self, change: Callable[..., None], address: str, timeout_s: float
    ) -> RaftProposeResult:
        self._refuse_in_loop("a membership change")
        if self._stopping.is_set():
            return RaftProposeResult(ProposeStatus.NOT_LEADER)
        return self._wait_for(lambda w: change(address, callback=w.done), timeout_s)

    def _wait_for(self, submit: Callable[[Waiter], None], timeout_s: float) -> RaftProposeResult:
        waiter = Waiter()
        with self._waiters_lock:
            self._waiters.add(waiter)
        try:
            if self._stopped.is_set():
                return RaftProposeResult(ProposeStatus.NOT_LEADER)
            # A full wake-up pipe means the loop is already due to wake up.
            with contextlib.suppress(BlockingIOError):
                submit(waiter)
            return waiter.wait(timeout_s)
        finally:
            with self._waiters_lock:
                self._waiters.discard(waiter)

    def transfer_leadership(self, target: str | None = None) -> bool:
        """Ask `target` (a Raft address), or the most caught-up connected follower, to
        take over (Raft TimeoutNow); pysyncobj refuses a target that lags. Best effort:
        True when the request was sent; poll leader() for the result."""
        self._refuse_in_loop("a leadership transfer")
        if self._stopping.is_set():
            return False
        errors: list[object] = []  # pysyncobj answers synchronously, on its loop
        self._call_in_loop(lambda: self._engine.transferLeadership(
            target, lambda _result, error: errors.append(error)))
        return bool(errors) and errors[0] == FAIL_REASON.SUCCESS

    def compact(self) -> None:
        """Take a snapshot and compact the log at the next tick (admin, tests)."""
        self._engine.forceLogCompaction()
        self._wake()

    def status(self) -> RaftStatus:
        """A consistent view for `hactl status` (collected on the event-loop thread)."""
        return self._call_in_loop(self._collect_status)

    def run_on_loop(self, call: Callable[[], T]) -> T:
        """Run `call` on the event-loop thread between ticks and return its result: a
        consistent read of the state machine from another thread. Keep it short."""
        return self._call_in_loop(call)

    @property
    def fsync_count(self) -> int:
        return self._disk.count

    def close(self) -> None:
        """Flush, stop the event loop, close sockets and files. Idempotent."""
        self._stopping.set()
        self._wake()
        if threading.get_ident() == self._loop_ident:
            return  # the loop exits after the current tick
        if self._thread.is_alive():
            self._thread.join(self._settings.close_timeout_s)
            if self._thread.is_alive():
                log.error(
                    "Raft event loop did not stop within %.1fs", self._settings.close_timeout_s
                )

    def __enter__(self) -> RaftNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ event loop

    def _run(self) -> None:
        self._loop_ident = threading.get_ident()
        engine = self._engine
        try:
            while not self._stopping.is_set():
                self._tick_once()
                if engine.ha_fatal() is not None:
                    break
                self._started.set()
                self._run_calls()
        finally:
            self._shutdown()

    def _tick_once(self) -> None:
        engine = self._engine
        try:
            engine._onTick(self._settings.tick_interval_s)
            engine.ha_after_tick()
        except RaftError as exc:
            engine.ha_fail(exc)
        except Exception:
            if engine.ha_fatal() is None:
                # Same policy as pysyncobj's own tick thread: log and carry on.
                log.exception("Raft event loop iteration failed")
                time.sleep(self._settings.tick_interval_s)

    def _shutdown(self) -> None:
        fatal = self._engine.ha_fatal()
        if fatal is not None:
            log.critical("Raft node halted: %s", fatal)
        try:
            self._engine.ha_destroy()  # flushes messages, closes sockets and the journal
        except Exception:
            log.exception("error while closing the Raft node")
        finally:
            self._storage.lock.release()
            self._stopping.set()
            self._started.set()
            self._stopped.set()
            self._run_calls()
            with self._waiters_lock:
                waiting = list(self._waiters)
            for waiter in waiting:
                waiter.abandon()
        if fatal is not None and self._on_halt is not None:
            self._on_halt(fatal)

    def _run_calls(self) -> None:
        while True:
            try:
                call, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as exc:
                    future.set_exception(exc)

    def _call_in_loop(self, call: Callable[[], T]) -> T:
        if threading.get_ident() == self._loop_ident or self._stopped.is_set():
            return call()
        future: Future[T] = Future()
        self._calls.put((call, future))
        self._wake()
        if self._stopped.is_set():
            self._run_calls()
        return future.result(timeout=self._settings.close_timeout_s)

    def _wake(self) -> None:
        self._engine.ha_wake()

    def _refuse_in_loop(self, what: str) -> None:
        if threading.get_ident() == self._loop_ident:
            raise RaftError(f"{what} from inside a state machine callback would deadlock")

    def _collect_status(self) -> RaftStatus:
        return collect_status(
            self._engine,
            self._storage.journal,
            self._disk,
            self._self_address,
            self._storage.rebuilt_into,
        )


def _check_self(self_address: str | None) -> str | None:
    return None if self_address is None else validate_address(self_address, "self_address")


def _check_partners(self_address: str | None, partners: list[str] | tuple[str, ...]) -> list[str]:
    if isinstance(partners, str):
        raise TypeError("partners must be a list of host:port strings, not one string")
    result = []
    for p in partners:
        validate_address(p, "partner address")
        if p != self_address and p not in result:
            result.append(p)
    if self_address is None and not result:
        raise ValueError("a read-only member needs at least one partner")
    return result


def _check_secret(secret: Secret | str | bytes) -> str | bytes:
    value = secret.reveal() if isinstance(secret, Secret) else secret
    if not isinstance(value, str | bytes) or not value:
        raise ValueError("the cluster secret is mandatory and must not be empty")
    return value
