"""The pysyncobj SyncObj subclass behind RaftNode: the only place touching its internals.

What we override or replace, and why (pysyncobj 0.3.17):

* the journal: SyncObj builds its own (an mmap never fsync'ed); we build it with no
  journal file and swap our DurableJournal in before the first tick, then restore term,
  vote and commit index from it exactly as SyncObj.__init__ does;
* `__doApplyCommand`: regular commands are our opaque bytes (one type byte, no pickle);
  we pass the log index to the state machine and return an `Applied` record carrying the
  entry's term and the term in which this node saw it committed;
* `__generateRaftTimeout`: a rebuilt peer must not stand for election before it caught
  up (its log is empty), so its election timer is parked until then;
* the transport (DurableTransport): fsync barrier before every outgoing message, and
  a monotonic nextIndex on acknowledgements (pysyncobj rewinds it on stale acks);
* the snapshot serializer hooks: our checksummed format, no pickle, no fork;
* the admin commands pysyncobj serves on the Raft port (add/remove/transfer/version)
  are denied: membership changes go through RaftNode only;
* read index support (core/readindex.py): a leader's append_entries carry an
  increasing sequence number (`ha_seq`), a follower's answer echoes the term and
  sequence number of the append_entries it is answering (`ha_echo`);
* pre-vote (prevote.py `PreVoting`): where `_onTick` would start an election, it first asks the
  voters whether they would vote for us, and starts it only once a majority said yes;
* self-fencing allowances (allowances.py `Allowances`): numbered answers, the leader's
  grants, both also passed through other voters.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.config import FAIL_REASON
from pysyncobj.monotonic import monotonic as raft_clock  # CLOCK_MONOTONIC_RAW
from pysyncobj.node import TCPNode

from hacluster.core.readindex import ReadMark
from hacluster.raft.allowances import Allowances, answer_id
from hacluster.raft.errors import ApplyFailed, RaftError, StorageError
from hacluster.raft.files import Disk
from hacluster.raft.journal import DurableJournal
from hacluster.raft.prevote import PreVote, PreVoting
from hacluster.raft.settings import RaftSettings
from hacluster.raft.snapshot import SnapshotData, read_snapshot, write_snapshot
from hacluster.raft.transport import DurableTransport, InboundLimits

log = logging.getLogger(__name__)

REGULAR = b"\x00"  # pysyncobj _COMMAND_TYPE.REGULAR: the type byte of our commands
_NO_OP = b"\x01"
_LEADER_STATE = 2  # pysyncobj _RAFT_STATE.LEADER
_PARKED_TIMEOUT_S = 1e9
MAX_HEARS_REPORT = 1000  # hosts in one follower's report (a sanity bound)
@dataclass(frozen=True)
class AppliedEntry:
    """Where an applied entry sits in the log, and who committed it.

    `term` is the term of the leader that appended the entry: replicated, identical on
    every peer. `commit_term` is the term of the leader from which *this* node learned
    that the entry is committed (0 when unknown, e.g. for entries replayed at start).
    `own_term` is true when this node was the leader of `term` and committed the entry
    itself in that same term: the condition for acting on the entry's side effects.
    """

    index: int
    term: int
    commit_term: int
    own_term: bool


@dataclass(frozen=True)
class Applied:
    entry: AppliedEntry
    result: object


@dataclass(frozen=True)
class Machine:
    apply: Callable[[bytes, int], object]
    snapshot: Callable[[], bytes]
    restore: Callable[[bytes], None]


class CommitTerms:
    """Records the term in force each time the commit index advanced."""

    def __init__(self, commit_index: int) -> None:
        self._high = commit_index
        # (up to index, term), ascending; entries committed before this start (replayed
        # from the journal) have an unknown commit term, 0.
        self._ranges: deque[tuple[int, int]] = deque([(commit_index, 0)])

    def advance(self, commit_index: int, term: int) -> None:
        if commit_index > self._high:
            self._ranges.append((commit_index, term))
        elif commit_index < self._high:
            # pysyncobj lowered the commit index (log cut below it): forget what we
            # knew above it; 0 means "unknown" and is never treated as our own term.
            while self._ranges and self._ranges[-1][0] > commit_index:
                self._ranges.pop()
            self._ranges.append((commit_index, 0))
        self._high = commit_index

    def term_for(self, index: int) -> int:
        """Commit term of `index`; call with non-decreasing indexes (apply order)."""
        while self._ranges and self._ranges[0][0] < index:
            self._ranges.popleft()
        return self._ranges[0][1] if self._ranges else 0


class Engine(Allowances, PreVoting, SyncObj):
    def __init__(
        self,
        self_address: str | None,
        partners: list[str],
        conf_kwargs: dict[str, Any],
        settings: RaftSettings,
        journal: DurableJournal,
        disk: Disk,
        machine: Machine,
        rebuilding: bool,
        on_caught_up: Callable[[], None] | None = None,
    ) -> None:
        # Attributes the overridden hooks read must exist before SyncObj.__init__ runs.
        self._ha_settings = settings
        self._ha_journal = journal
        self._ha_disk = disk
        self._ha_machine = machine
        self._ha_fatal: BaseException | None = None
        self._ha_fatal_lock = threading.Lock()
        self._ha_abstain = rebuilding
        self._ha_on_caught_up = on_caught_up  # makes the end of the abstention durable
        self._ha_catchup_target: int | None = None
        self._ha_led_terms: deque[int] = deque(maxlen=64)
        self._ha_applying: AppliedEntry | None = None
        self._ha_commits = CommitTerms(journal.getRaftCommitIndex())
        self._ha_seq = 0  # sequence number of the last append_entries this leader made
        self._ha_echoes: dict[str, int] = {}  # voter -> highest seq echoed in our term
        self._ha_answering: dict[Any, tuple[int, int]] = {}  # node -> (term, seq) processed
        self._ha_committed_in = 0  # last term in which we, leading, committed an entry of it
        self._ha_heard: dict[str, float] = {}  # partner -> raft_clock() of its last answer
        self._ha_reports: dict[str, dict[str, float]] = {}  # partner -> whom its host hears
        self.ha_hears: dict[str, float] = {}  # set by the daemon: whom it heard, when
        self._ha_init_allowances()
        self._ha_prevote = PreVote(settings.election_timeout_min_s)

        conf = SyncObjConf(
            serializer=self._ha_serialize,
            deserializer=self._ha_deserialize,
            onStateChanged=self._ha_state_changed,
            **conf_kwargs,
        )
        super().__init__(self_address, partners, conf, transportClass=DurableTransport)
        self._ha_install_journal(journal)
        self._ha_deny_admin_commands()

    def _ha_install_journal(self, journal: DurableJournal) -> None:
        """Replace the throw-away in-memory journal SyncObj made (see module doc)."""
        names = (
            "_SyncObj__raftLog",
            "_SyncObj__raftCurrentTerm",
            "_SyncObj__votedForNodeId",
            "_SyncObj__raftCommitIndex",
        )
        if not all(hasattr(self, n) for n in names):
            raise RaftError("unsupported pysyncobj version: SyncObj internals changed")
        if len(journal) == 0:
            journal.add(_NO_OP, 1, 0)  # what SyncObj.__init__ puts in an empty log
        journal.on_commit_index = self._ha_on_commit_index
        journal.on_failure = self.ha_fail
        self._SyncObj__raftLog = journal
        self._SyncObj__raftCurrentTerm = max(journal.getCurrentTerm(), journal[-1][2])
        self._SyncObj__votedForNodeId = journal.getVotedForNodeId()
        self._SyncObj__raftCommitIndex = journal.getRaftCommitIndex()

    def _ha_deny_admin_commands(self) -> None:
        """pysyncobj serves membership, code-version and leadership-transfer commands
        to any holder of the secret on the Raft port (syncobj_admin): they would bypass
        RaftNode and the daemon's audit trail. Only 'status' stays."""

        def deny(args: object, callback: Callable[[object, int], None]) -> None:
            callback(None, FAIL_REASON.REQUEST_DENIED)

        for command in ("add", "remove", "set_version", "transfer"):
            self._SyncObj__transport.setOnUtilityMessageCallback(command, deny)

    # ------------------------------------------------------------ pysyncobj overrides

    def _SyncObj__doApplyCommand(self, command: bytes) -> Applied:
        # SyncObj increments raftLastApplied right after this returns.
        index = self.raftLastApplied + 1
        term = self._ha_journal.term_at(index)
        commit_term = self._ha_commits.term_for(index)
        entry = AppliedEntry(
            index, term, commit_term, own_term=commit_term == term and term in self._ha_led_terms
        )
        if command[:1] != REGULAR:
            return Applied(entry, SyncObj._SyncObj__doApplyCommand(self, command))
        self._ha_applying = entry
        try:
            result = self._ha_machine.apply(command[1:], index)
        except Exception as exc:
            raise self.ha_fail(ApplyFailed(f"apply of log index {index} raised {exc!r}")) from exc
        finally:
            self._ha_applying = None
        return Applied(entry, result)

    def _onTick(self, timeToWait: float = 0.0) -> None:
        self._ha_pre_vote_gate()
        self._ha_carry_answer()
        super()._onTick(timeToWait)

    def _SyncObj__generateRaftTimeout(self) -> float:
        if self._ha_abstain:
            return _PARKED_TIMEOUT_S
        return float(SyncObj._SyncObj__generateRaftTimeout(self))

    # ------------------------------------------------------------ hooks

    def _ha_state_changed(self, old: int, new: int) -> None:
        self._ha_echoes = {}  # echoes count in the term we lead now only
        self._ha_heard = {}  # pysyncobj pretends every partner answered at election
        self._ha_reports = {}
        self._ha_answers = {}
        self._ha_allows = {}
        self._ha_relays_sent = {}
        if new == _LEADER_STATE:
            self._ha_led_terms.append(self.raftCurrentTerm)
            log.info("became leader in term %d", self.raftCurrentTerm)

    def _ha_on_commit_index(self, commit_index: int) -> None:
        # Called from the leader's commit step and from append_entries handling; in
        # both the current term is the term of the leader that committed.
        self._ha_commits.advance(commit_index, self.raftCurrentTerm)
        term = self.raftCurrentTerm
        if self._isLeader() and self._ha_journal.term_at(commit_index) == term:
            self._ha_committed_in = term
        if self._isLeader():
            # A follower may apply before its own fsync: the leader saw a majority hold
            # the entry durably. A leader counts itself, so it syncs first.
            self._ha_journal.sync_through(commit_index)

    def _ha_serialize(self, path: str, data: tuple[Any, Any, Any]) -> None:
        last, prev, cluster = data
        try:
            state = self._ha_machine.snapshot()
        except Exception as exc:
            raise self.ha_fail(ApplyFailed(f"snapshot() raised {exc!r}")) from exc
        members = sorted(
            (n.id if n is not None else None for n in cluster), key=lambda a: (a is None, a or "")
        )
        try:
            write_snapshot(
                path, SnapshotData(last, prev, tuple(members), bytes(state)), self._ha_disk
            )
        except StorageError as exc:
            raise self.ha_fail(exc) from exc

    def _ha_deserialize(self, path: str) -> tuple[Any, Any, Any]:
        try:
            snap = read_snapshot(path, self._ha_disk)
        except RaftError as exc:
            raise self.ha_fail(exc) from exc
        try:
            self._ha_machine.restore(snap.state)
        except Exception as exc:
            raise self.ha_fail(ApplyFailed(f"restore() raised {exc!r}")) from exc
        log.info("state restored from snapshot at index %d", snap.index)
        cluster = [TCPNode(a) if a is not None else None for a in snap.cluster]
        return snap.last, snap.prev, cluster

    def durability_barrier(self) -> None:
        self._ha_journal.sync()

    def term_barrier(self) -> None:
        self._ha_journal.sync_term()

    def ha_current_term(self) -> int:
        return int(self.raftCurrentTerm)

    def abstains_from_voting(self) -> bool:
        return self._ha_abstain

    def handshake_limits(self) -> InboundLimits:
        s = self._ha_settings
        return InboundLimits(s.handshake_timeout_s, s.max_handshake_bytes,
                             s.max_pending_handshakes, s.refusal_log_interval_s)

    def ha_refusals(self) -> dict[str, Any]:
        """Refused Raft connections (transport.py), for status."""
        transport: DurableTransport = self._SyncObj__transport
        return transport.refusal_summary()

    def ha_next_index(self, node: Any) -> int | None:
        value = self._SyncObj__raftNextIndex.get(node)
        return None if value is None else int(value)

    def ha_keep_next_index(self, node: Any, before: int | None) -> None:
        table = self._SyncObj__raftNextIndex
        if before is not None and self._isLeader() and table.get(node, before) < before:
            table[node] = before

    # ------------------------------------------------------------ read index (transport)

    def ha_stamp_append(self, message: dict[str, Any]) -> dict[str, Any]:
        """An append_entries this leader sends: give it the next sequence number."""
        self._ha_seq += 1
        return {**message, "ha_seq": self._ha_seq}

    def ha_note_append(self, node: Any, message: dict[str, Any]) -> None:
        """An append_entries arrived: the answer sent while processing it echoes it; a
        grant in it allows our self-fencing from when that answer of ours left."""
        if int(message.get("term", 0)) >= self._SyncObj__raftCurrentTerm:
            self._ha_prevote.leader_heard(raft_clock())  # a leader we would follow
        seq = message.get("ha_seq")
        if isinstance(seq, int):
            self._ha_answering[node] = (int(message.get("term", 0)), seq)
        self._ha_take_allow(answer_id(message.get("ha_allow")))
        if "ha_relay" in message:
            self.ha_relay(message["ha_relay"])

    def ha_echo_for(self, node: Any) -> tuple[int, int] | None:
        return self._ha_answering.get(node)

    def ha_note_answer(self, node: Any, message: dict[str, Any]) -> None:
        """A follower answered our replication: when, what it echoes, what it hears."""
        if self._isLeader():
            self._ha_heard[str(node.id)] = raft_clock()
            ans = answer_id(message.get("ha_ans"))
            known = self._ha_answers.get(str(node.id))
            if ans is not None and (known is None or known[0] != ans[0] or ans[1] > known[1]):
                self._ha_answers[str(node.id)] = ans  # a new boot replaces the old one
            carried = message.get("ha_carried")
            if isinstance(carried, dict) and len(carried) <= MAX_HEARS_REPORT:
                self._ha_take_carried(str(node.id), carried)
            hears = message.get("ha_hears")
            if isinstance(hears, dict) and len(hears) <= MAX_HEARS_REPORT and all(
                    isinstance(k, str) and isinstance(v, int | float) for k, v in hears.items()):
                self._ha_reports[str(node.id)] = hears
        self.ha_note_echo(node, message.get("ha_echo"))

    def ha_note_echo(self, node: Any, echo: object) -> None:
        """Count a follower's echo if it is for our current term."""
        if not (isinstance(echo, list | tuple) and len(echo) == 2):
            return
        term, seq = echo
        if term == self.raftCurrentTerm and self._isLeader() and node in self.otherNodes \
                and isinstance(seq, int):
            key = str(node.id)
            if seq > self._ha_echoes.get(key, -1):
                self._ha_echoes[key] = seq

    def ha_read_mark(self) -> ReadMark | None:
        """The read index for a request arriving now (any thread; see core/readindex.py).
        The sequence number is read first: everything read after it is at least as new."""
        seq = self._ha_seq
        term = self.raftCurrentTerm
        commit = self.raftCommitIndex
        if not self._isLeader() or self.raftCurrentTerm != term:
            return None
        if self._ha_committed_in != term:  # our commit index may lag: no entry of ours yet
            return None
        return ReadMark(term, commit, seq)

    def ha_heard_ages(self) -> dict[str, float]:
        """Leader: seconds since each partner (voter or member) last answered our
        replication in this leadership (any thread)."""
        if not self._isLeader():
            return {}
        now = raft_clock()
        return {node: now - at for node, at in dict(self._ha_heard).items()}

    def ha_hears_now(self) -> dict[str, float]:
        """What an answer leaving now reports: host -> seconds since its last renewal."""
        now = time.monotonic()  # the daemon's clock (its lease service), not raft_clock
        return {host: round(max(0.0, now - at), 3) for host, at in self.ha_hears.items()}

    def ha_hears_reports(self) -> dict[str, dict[str, float]]:
        """Leader: what each partner last reported it hears (voters renewing to it)."""
        return dict(self._ha_reports) if self._isLeader() else {}

    def ha_read_echoes(self) -> tuple[int | None, int, dict[str, int]]:
        """(term we lead or None, number of voters, echoes of the other voters)."""
        echoes = dict(self._ha_echoes)
        term = self.ha_leader_term()
        return term, len(self.otherNodes) + 1, echoes

    # ------------------------------------------------------------ used by RaftNode

    def ha_fail(self, exc: BaseException) -> BaseException:
        """Record the first fatal error; the event loop halts after this tick."""
        with self._ha_fatal_lock:
            if self._ha_fatal is None:
                self._ha_fatal = exc
        return exc

    def ha_fatal(self) -> BaseException | None:
        return self._ha_fatal

    def ha_after_tick(self) -> None:
        """Flush queued messages; end a rebuilt peer's abstention once caught up."""
        self._SyncObj__transport.flush()
        if not self._ha_abstain:
            return
        target = self._SyncObj__leaderCommitIndex
        if self._ha_catchup_target is None and target is not None:
            self._ha_catchup_target = target
        if self._ha_catchup_target is not None and self.raftLastApplied >= self._ha_catchup_target:
            if self._ha_on_caught_up is not None:
                self._ha_on_caught_up()
            self._ha_abstain = False
            log.warning("rebuilt peer caught up at index %d: voting again", self.raftLastApplied)

    def ha_leader_term(self) -> int | None:
        before = self.raftCurrentTerm
        leading = self._isLeader()
        return before if leading and self.raftCurrentTerm == before else None

    def ha_applying(self) -> AppliedEntry | None:
        return self._ha_applying

    def ha_entry_is_own(self, term: int, commit_term: int) -> bool:
        return commit_term == term and term in self._ha_led_terms

    def ha_role(self) -> str:
        return {0: "follower", 1: "candidate", 2: "leader"}[self._SyncObj__raftState]

    def ha_partner_views(self) -> list[tuple[str, bool, int | None, float | None]]:
        """(address, connected, match index, seconds since last answer) per partner;
        the last two only on a leader."""
        leading = self._isLeader()
        match = self._SyncObj__raftMatchIndex if leading else {}
        answered = self._SyncObj__lastResponseTime if leading else {}
        now = raft_clock()
        return [
            (
                str(n.id),
                bool(self.isNodeConnected(n)),
                match.get(n),
                (now - answered[n]) if n in answered else None,
            )
            for n in sorted(self.otherNodes, key=lambda n: str(n.id))
        ]

    def ha_wake(self) -> None:
        """Interrupt the event loop's poll() (a full pipe means it is due anyway)."""
        with contextlib.suppress(BlockingIOError, AttributeError, OSError):
            self._SyncObj__pipeNotifier.notify()

    def ha_destroy(self) -> None:
        """Stop networking and close the journal (event loop must be stopped). A halted
        node drops its unsent messages: their barrier may be what failed."""
        if self._ha_fatal is not None:
            self._SyncObj__transport.discard_outbox()
        try:
            self._SyncObj__transport.destroy()
        finally:
            self._ha_journal.close()
