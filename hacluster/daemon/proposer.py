"""Proposing commands through Raft from the asyncio side.

Every command travels in an Envelope with a fresh request id, the proposer's
name, its wall clock (for people) and its log clock estimate (core/logclock.py).
`submit` retries until a deadline: NOT_LEADER (no leader yet) is simply retried;
MAYBE is retried with the *same* request id, which apply treats as a duplicate if the
first attempt did commit.

Before anything enters Raft, the version gate (core/versions.py) checks against this
peer's replica that every host understands the command, and picks the log entry
format they all read; a refused command raises `VersionGateError` and is never proposed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from hacluster.core import versions
from hacluster.fsm import ClusterState, encode_command
from hacluster.fsm import commands as c
from hacluster.fsm.events import Event
from hacluster.ports import ProposeStatus
from hacluster.raft import RaftNode, RaftProposeResult


class NoLeaderError(RuntimeError):
    """A change was not made because no leader took it in time; it never entered the log."""


class VersionGateError(RuntimeError):
    """Some host does not understand this command (version): it was not proposed."""

    def __init__(self, command: c.Command, admission: versions.Admission) -> None:
        super().__init__(admission.refusal)
        self.command_type = command.TYPE
        self.version = command.wire_version()
        self.lacking = admission.lacking


@dataclass(frozen=True)
class Outcome:
    status: ProposeStatus
    index: int = 0
    own_term: bool = False
    events: list[Event] = field(default_factory=list)

    @property
    def committed(self) -> bool:
        return self.status is ProposeStatus.COMMITTED


class Proposer:
    def __init__(self, raft: RaftNode, me: str, pool: Executor, timeout_s: float,
                 log_clock: Callable[[], float],
                 read_state: Callable[[], AbstractContextManager[ClusterState]]) -> None:
        self.raft = raft
        self.me = me
        self.pool = pool
        self.timeout_s = timeout_s
        self.log_clock = log_clock
        self.read_state = read_state

    def admit(self, command: c.Command) -> int:
        """The entry format to write `command` in; raises VersionGateError."""
        with self.read_state() as state:
            admission = versions.admit(state, command.TYPE, command.wire_version())
        if not admission.admitted:
            raise VersionGateError(command, admission)
        return admission.entry_format

    async def propose(self, command: c.Command, *, origin: str = "",
                      request_id: str = "") -> Outcome:
        """One attempt."""
        entry_format = self.admit(command)
        envelope = c.Envelope(command, request_id or uuid.uuid4().hex, origin or self.me,
                              time.time(), self.log_clock())
        data = encode_command(envelope, entry_format)
        loop = asyncio.get_running_loop()
        result: RaftProposeResult = await loop.run_in_executor(
            self.pool, self.raft.propose, data, self.timeout_s)
        events = result.result if isinstance(result.result, list) else []
        return Outcome(result.status, result.index, result.own_term, events)

    async def submit(self, command: c.Command, *, origin: str = "",
                     deadline_s: float = 10.0) -> Outcome:
        """Retry until committed or the deadline passes (then MAYBE or NOT_LEADER)."""
        request_id = uuid.uuid4().hex
        give_up = time.monotonic() + deadline_s
        outcome = Outcome(ProposeStatus.NOT_LEADER)
        maybe = False
        while time.monotonic() < give_up:
            outcome = await self.propose(command, origin=origin, request_id=request_id)
            if outcome.committed:
                return outcome
            maybe = maybe or outcome.status is ProposeStatus.MAYBE
            await asyncio.sleep(0.05)
        return Outcome(ProposeStatus.MAYBE if maybe else outcome.status)
