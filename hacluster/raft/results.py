"""What RaftNode hands back: proposal results, status for `hactl status`, and the
mapping of pysyncobj's callback outcomes onto COMMITTED / NOT_LEADER / MAYBE."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from pysyncobj.config import FAIL_REASON

from hacluster.ports import ProposeResult, ProposeStatus
from hacluster.raft.engine import Applied, Engine
from hacluster.raft.files import Disk
from hacluster.raft.journal import DurableJournal

# Outcomes after which the command is not, and never will be, in the log.
_NEVER_IN_LOG = {
    FAIL_REASON.QUEUE_FULL,
    FAIL_REASON.MISSING_LEADER,
    FAIL_REASON.NOT_LEADER,
    FAIL_REASON.REQUEST_DENIED,
    FAIL_REASON.DISCARDED,  # our (index, term) slot was applied with another entry
}


@dataclass(frozen=True)
class RaftProposeResult(ProposeResult):
    commit_term: int = 0  # term in which this node saw the entry committed
    own_term: bool = False  # this node led `term` and committed the entry in it


@dataclass(frozen=True)
class PartnerStatus:
    address: str
    connected: bool
    match_index: int | None  # leader only: highest entry known replicated there
    last_response_age_s: float | None  # leader only


@dataclass(frozen=True)
class RaftStatus:
    self_address: str | None
    role: str  # leader | candidate | follower | read-only
    leader: str | None
    term: int
    leader_term: int | None  # term in which this node leads, if it does
    commit_index: int
    applied_index: int
    log_first_index: int
    log_last_index: int
    durable_index: int  # last log index known fsync'ed
    persisted_commit_index: int  # commit index in the meta file (flushed each second)
    has_quorum: bool
    ready: bool  # caught up with the leader's commit index once since start
    partners: tuple[PartnerStatus, ...]
    readonly_members: int
    abstaining: bool  # rebuilt peer not voting until caught up
    rebuilt_into: str | None  # quarantine directory of a rebuild at start
    fsync_count: int
    fsync_seconds: float
    halted: str | None
    # Refused connections on the Raft port (core/ratelimit.py RefusalLog.summary).
    refused: dict[str, Any] = field(default_factory=dict)


class Waiter:
    """Collects one pysyncobj callback (called on the event-loop thread)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._res: object = None
        self._err: int | None = None

    def done(self, res: object, err: int | None) -> None:
        self._res, self._err = res, err
        self._event.set()

    def abandon(self) -> None:
        """The node stopped before an answer: the outcome is unknown (MAYBE)."""
        if not self._event.is_set():
            self.done(None, None)

    def wait(self, timeout_s: float) -> RaftProposeResult:
        if not self._event.wait(max(timeout_s, 0.0)):
            return RaftProposeResult(ProposeStatus.MAYBE)
        res, err = self._res, self._err
        if err == FAIL_REASON.SUCCESS and isinstance(res, Applied):
            e = res.entry
            return RaftProposeResult(
                ProposeStatus.COMMITTED, e.index, e.term, res.result, e.commit_term, e.own_term
            )
        if err in _NEVER_IN_LOG:
            return RaftProposeResult(ProposeStatus.NOT_LEADER)
        return RaftProposeResult(ProposeStatus.MAYBE)  # LEADER_CHANGED, UNKNOWN_OUTCOME


def validate_address(address: str, what: str = "address") -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} must be host:port, got {address!r}")
    return address


def collect_status(
    e: Engine,
    journal: DurableJournal,
    disk: Disk,
    self_address: str | None,
    rebuilt_into: str | None,
) -> RaftStatus:
    """Read the node's state; call on the event-loop thread for a consistent view."""
    partners = tuple(PartnerStatus(*view) for view in e.ha_partner_views())
    fatal = e.ha_fatal()
    leader = e._getLeader()
    return RaftStatus(
        self_address=self_address,
        role="read-only" if self_address is None else e.ha_role(),
        leader=None if leader is None else str(leader.id),
        term=int(e.raftCurrentTerm),
        leader_term=e.ha_leader_term(),
        commit_index=int(e.raftCommitIndex),
        applied_index=int(e.raftLastApplied),
        log_first_index=journal.first_index,
        log_last_index=journal.last_index,
        durable_index=journal.durable_index,
        persisted_commit_index=journal.persisted_commit_index,
        has_quorum=bool(e.hasQuorum),
        ready=bool(e.isReady()),
        partners=partners,
        readonly_members=len(e.readonlyNodes),
        abstaining=e.abstains_from_voting(),
        rebuilt_into=rebuilt_into,
        fsync_count=disk.count,
        fsync_seconds=disk.seconds,
        halted=None if fatal is None else str(fatal),
        refused=e.ha_refusals(),
    )
