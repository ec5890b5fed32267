"""RaftPeer: one peer of the simulator's Raft model (see raftmodel.py for the picture).

The dissertation's rules, plus what pysyncobj does that matters for safety: a leader's
no-op at the start of its term, optimistic next indexes, a leader that stays leader
without answers until `leader_fallback_s`, forwarding of proposals to the known leader,
TimeoutNow, read-only members, and (for rebuilt peers) abstaining until caught up.

Leader-side replication lives in raftlead.py (`Leading`), proposals and the apply stream
in raftapply.py (`Proposing`); this module holds the peer's state, timers, the follower
and candidate rules, and process faults. Pre-vote, before an election, is in
raftprevote.py (`PreVoting`).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from hacluster.raft.allowances import CARRY_EVERY_S
from hacluster.sim.raftapply import Proposing
from hacluster.sim.raftlead import Leading
from hacluster.sim.raftmsgs import (
    MAYBE,
    AllowRelay,
    AnswerCarry,
    AppendEntries,
    AppendReply,
    AppliedRecord,
    Entry,
    Forward,
    ForwardReply,
    OnDone,
    PreVoteAsk,
    PreVoteYes,
    RequestVote,
    Role,
    Status,
    Tag,
    TimeoutNow,
    VoteReply,
)
from hacluster.sim.raftprevote import PreVoting

if TYPE_CHECKING:
    from collections.abc import Callable

    from hacluster.sim.raftmodel import RaftCluster

_NEVER = float("inf")
TELL_TERM_EVERY_S = 1.0  # raft/transport.py `_tell_term_if_stale`: at most once a second


class RaftPeer(Proposing, Leading, PreVoting):
    """One peer; its public methods are listed in raftmodel.py's docstring."""

    def __init__(self, cluster: RaftCluster, name: str, voter: bool) -> None:
        self._c = cluster
        self.name = name
        self.voter = voter
        self.carry_answers = False  # its host self-fences (daemon/peer.py carry_answers)
        # durable (a journal and a meta file in production)
        self.term = 0
        self.voted_for: str | None = None
        self.log: list[Entry] = []
        self.persisted_commit = 0
        # model bookkeeping that survives restarts: unique tags, and the first answer
        # given to each forwarded proposal (so a duplicated Forward is never appended
        # twice, and a refusal stays true: see _on_forward)
        self._tags = 0
        self._seq = 0
        self._fwd_answers: dict[Tag, tuple[int, int]] = {}
        self.status = Status.UP
        self.abstaining = False
        self.anomalies: list[str] = []  # what a real peer would log as critical
        self.dirty_from = 1  # lowest log index changed since a checker last looked
        self.hears: dict[str, float] = {}  # set by the host's peer: whom it heard, when
        self._token = 0  # identifies the one valid scheduled wake-up
        self._wake_at = _NEVER
        self._paused_calls: list[tuple[bytes, OnDone, float | None]] = []
        self._handlers = self._make_handlers()
        self._reset_volatile()

    def _reset_volatile(self) -> None:
        self.role = Role.FOLLOWER
        self.leader: str | None = None
        self.commit_index = min(self.persisted_commit, len(self.log))
        self.last_applied = 0
        # (up to index, term in force when the commit index reached it); 0 = unknown
        self._commit_terms: deque[tuple[int, int]] = deque([(self.commit_index, 0)])
        self._led_terms: set[int] = set()
        self._votes: set[str] = set()
        self._echo_seq = 0  # highest seq processed from `leader` in `term`
        # self-fencing grants over Raft (raft/engine.py): answers numbered per process
        self._ans_boot = next(self._c.answer_boots)  # numbered afresh per process
        self._ans = 0
        self._ans_sent: dict[int, float] = {}  # number -> simulated time it left
        self._allowed = 0
        self._relayed: dict[str, tuple[int, int]] = {}  # voter -> grant passed on to it
        self._carried: dict[str, tuple[int, int]] = {}  # voter -> its answer to pass on
        self._carry_at = self._c.now + CARRY_EVERY_S if self.carry_answers else _NEVER
        self._timeout = 0.0  # the election timeout drawn last
        self._term_told: dict[str, float] = {}  # stale leader -> when we last told it
        self._catchup_target: int | None = None
        self._reset_proposals()
        self._reset_pre_vote()
        self._election_at = _NEVER
        self._heartbeat_at = _NEVER
        self._reset_leading()

    # ------------------------------------------------------------ views

    def leader_term(self) -> int | None:
        """The term in which this peer believes it leads right now, else None."""
        if self.role is Role.LEADER and self.status is not Status.DOWN:
            return self.term
        return None

    def is_leader(self) -> bool:
        return self.leader_term() is not None

    def allowed_since(self) -> float | None:
        """When (simulated time) the latest answer of ours a leader granted left."""
        return self._ans_sent.get(self._allowed)

    @property
    def applied_index(self) -> int:
        return self.last_applied

    def last_index(self) -> int:
        return len(self.log)

    def term_at(self, index: int) -> int:
        return self.log[index - 1].term if 0 < index <= len(self.log) else 0

    # ------------------------------------------------------------ timers

    def _arm(self, at: float) -> None:
        """Make sure a wake-up is scheduled no later than `at`."""
        if at < self._wake_at and self.status is Status.UP:
            self._wake_at = at
            self._token += 1
            self._c.schedule(at, self, self._token)

    def _rearm(self) -> None:
        first = min(self._election_at, self._heartbeat_at, self._carry_at)
        if self._deadlines:
            first = min(first, self._deadlines[0][0])
        self._arm(first)

    def wake(self, token: int, now: float) -> None:
        """A scheduled wake-up fired (ignored unless it is the current one)."""
        if token != self._token or self.status is not Status.UP:
            return
        self._wake_at = _NEVER
        if self._heartbeat_at <= now:
            self._on_heartbeat(now)
        if self._election_at <= now:
            self._on_election_timeout(now)
        if self._carry_at <= now:
            self._carry(now)
        self._expire_proposals(now)
        self._rearm()

    def enable_carry(self) -> None:
        if not self.carry_answers:
            self.carry_answers = True
            self._carry_at = self._c.now + CARRY_EVERY_S
            self._rearm()

    def _carry(self, now: float) -> None:
        """raft/engine.py `_ha_carry_answer`: a voter not leading gives every other voter
        a numbered answer; the leader takes it, the others pass it on."""
        self._carry_at = now + CARRY_EVERY_S
        if not self.carry_answers or not self.voter or self.role is Role.LEADER:
            return
        ans = self._stamp_answer(now)
        for voter in self._c.voters:
            if voter != self.name:
                self._c.send(self.name, voter, AnswerCarry(ans))

    def _stamp_answer(self, now: float) -> tuple[int, int]:
        self._ans += 1
        self._ans_sent[self._ans] = now
        self._ans_sent.pop(self._ans - 4096, None)
        return (self._ans_boot, self._ans)

    def _on_answer_carry(self, src: str, m: AnswerCarry, now: float) -> None:
        if src not in self._c.voters:
            return
        if self.role is Role.LEADER:
            self._take_carried("", {src: m.ans})
        else:
            self._carried[src] = m.ans

    def _note(self, what: str, value: int) -> None:
        self._c.note(self, what, value)

    def _applied(self, record: AppliedRecord) -> None:
        self._c.applied(self, record)

    def _reset_election_timer(self, now: float, redraw: bool = True) -> None:
        """Restart the election timer; a heartbeat from the same leader keeps the
        randomly drawn timeout, a new leader, vote or election draws another."""
        if not self.voter or self.abstaining or self.role is Role.LEADER:
            self._election_at = _NEVER
            return
        if redraw:
            cfg = self._c.config
            self._timeout = self._c.rng.uniform(cfg.election_min_s, cfg.election_max_s)
        self._election_at = now + self._timeout
        if self._election_at < self._wake_at:
            self._arm(self._election_at)

    # ------------------------------------------------------------ terms, roles

    def _new_term(self, term: int) -> None:
        """A higher term was seen: adopt it, forget the vote, follow."""
        self.term = term
        self.voted_for = None
        self._become_follower()
        self._set_leader(None)

    def _become_follower(self) -> None:
        if self.role is Role.FOLLOWER:
            return
        was_leader = self.role is Role.LEADER
        self.role = Role.FOLLOWER
        self._heartbeat_at = _NEVER
        self._reset_election_timer(self._c.now)
        if was_leader:
            self._pre_vote_after_leading()
            self._note("stepped-down", self.term)

    def _set_leader(self, name: str | None) -> None:
        if name == self.leader:
            return
        self.leader = name
        # pysyncobj's __onLeaderChanged: proposals forwarded and not yet acknowledged
        # may or may not be in the old leader's log.
        for p in sorted(self._pending.values(), key=lambda p: p.tag):
            if p.index == 0:
                self._resolve(p, MAYBE)

    # ------------------------------------------------------------ elections

    def _on_election_timeout(self, now: float) -> None:
        if not self.voter or self.abstaining or self.role is Role.LEADER:
            self._election_at = _NEVER
            return
        won = self._pre_vote_won()
        if self._c.config.require_connection and not self._c.connected_to_anyone(self.name):
            self._election_at = now + self._c.config.heartbeat_s  # look again soon
            return
        if self._c.config.pre_vote and not won:
            self._ask_pre_vote(now)  # raftprevote.py: the election waits for a majority
            return
        self._start_election(now)

    def stand_for_election(self) -> bool:
        """Start an election now, as if the election timer fired and pre-vote was won
        (for scripted scenarios; ignores the connection rule). False if this peer may
        not stand."""
        if not self.voter or self.abstaining or self.status is not Status.UP:
            return False
        self._start_election(self._c.now)
        return True

    def _start_election(self, now: float) -> None:
        self.term += 1
        self.voted_for = self.name
        self.role = Role.CANDIDATE
        self._set_leader(None)
        self._votes = {self.name}
        self._reset_election_timer(now)
        msg = RequestVote(self.term, len(self.log), self.term_at(len(self.log)))
        for voter in self._c.voters:
            if voter != self.name:
                self._c.send(self.name, voter, msg)
        self._count_votes(now)

    def _count_votes(self, now: float) -> None:
        if self.role is Role.CANDIDATE and len(self._votes) >= self._c.majority:
            self._become_leader(now)

    def _on_request_vote(self, src: str, m: RequestVote, now: float) -> None:
        if not self.voter:
            return  # read-only members never vote
        if m.term > self.term:
            self._new_term(m.term)
        if self.abstaining:
            return  # a rebuilt peer does not vote until it caught up
        granted = m.term == self.term and self._may_grant(src, m)
        if granted:
            self.voted_for = src
            self._reset_election_timer(now)
        self._c.send(self.name, src, VoteReply(self.term, granted))

    def _may_grant(self, candidate: str, m: RequestVote) -> bool:
        """Not voted for another in this term, and the candidate's log is at least as
        up to date as ours (dissertation 3.6.1)."""
        if self.voted_for not in (None, candidate):
            return False
        last = len(self.log)
        my_term = self.term_at(last)
        return m.last_term > my_term or (m.last_term == my_term and m.last_index >= last)

    def _on_vote_reply(self, src: str, m: VoteReply, now: float) -> None:
        if m.term > self.term:
            self._new_term(m.term)
            return
        if m.granted and m.term == self.term and self.role is Role.CANDIDATE:
            self._votes.add(src)
            self._count_votes(now)

    def _on_timeout_now(self, src: str, m: TimeoutNow, now: float) -> None:
        # pysyncobj: only from the leader we follow, only a voter that may stand; no
        # pre-vote (raft/prevote.py: the leader asked for it).
        if m.term >= self.term and src == self.leader and self.voter and not self.abstaining:
            self._start_election(now)

    # ------------------------------------------------------------ following

    def _on_append(self, src: str, m: AppendEntries, now: float) -> None:
        self._leader_heard(m.term, now)
        if m.term == self.term and src == self.leader and self.role is Role.FOLLOWER:
            self._reset_election_timer(now, redraw=False)  # the usual heartbeat
        elif not self._follow(src, m, now):
            return
        if m.seq > self._echo_seq:
            self._echo_seq = m.seq
        self._take_allow(m.allow)
        if m.relay:
            self._relay(m.relay)
        reply = self._append_entries(m, now)
        reply.ans = self._stamp_answer(now)
        if self._carried:
            reply.carried = dict(self._carried)
        self._c.send(self.name, src, reply)
        if self.abstaining:
            if self._catchup_target is None:
                self._catchup_target = m.commit
            self._check_caught_up(now)

    def _take_allow(self, allow: tuple[int, int] | None) -> None:
        if allow is not None and allow[0] == self._ans_boot and \
                self._allowed < allow[1] <= self._ans:
            self._allowed = allow[1]

    def _relay(self, relay: dict[str, tuple[int, int]]) -> None:
        """raft/engine.py `ha_relay`: pass each voter its grant, when it moved."""
        for voter, allow in relay.items():
            if voter != self.name and voter in self._c.voters and \
                    self._relayed.get(voter) != allow:
                self._relayed[voter] = allow
                self._c.send(self.name, voter, AllowRelay(allow))

    def _on_allow_relay(self, src: str, m: AllowRelay, now: float) -> None:
        self._take_allow(m.allow)

    def _follow(self, src: str, m: AppendEntries, now: float) -> bool:
        """An AppendEntries from a leader we did not follow yet: adopt it unless stale."""
        if m.term < self.term:
            # A rebuilt peer may have kept a term above the leader's (its meta file) and
            # would never catch up: it says its term (raft/transport.py does the same),
            # so that the cluster elects anew above it.
            told = self._term_told.get(src, -_NEVER)
            if (self._c.config.reply_to_stale_leader or self.abstaining) and \
                    now - told > TELL_TERM_EVERY_S:
                self._term_told[src] = now
                self._c.send(self.name, src, AppendReply(self.term, False, 0, 0, 0))
            return False
        if m.term > self.term:
            self._new_term(m.term)
        elif self.role is Role.LEADER:
            self.anomalies.append(f"t={now:.3f}: another leader {src} in my term {self.term}")
        self._become_follower()
        self._set_leader(src)
        self._reset_election_timer(now)
        self._echo_seq = 0  # echoes count per (term, leader)
        return True

    def _append_entries(self, m: AppendEntries, now: float) -> AppendReply:
        """The consistency check, conflict truncation and commit rules (Figure 2)."""
        prev = m.prev_index
        if prev > len(self.log):
            return AppendReply(self.term, False, 0, len(self.log) + 1, self._echo_seq,
                               self._hears_now(now))
        if prev > 0 and self.log[prev - 1].term != m.prev_term:
            return AppendReply(self.term, False, 0, self._first_of_term(prev), self._echo_seq,
                               self._hears_now(now))
        log = self.log
        for k, entry in enumerate(m.entries):
            index = prev + 1 + k
            if index <= len(log):
                if log[index - 1].term == entry.term:
                    continue  # already have it (a duplicate or an older message)
                self._truncate(index, now)
            log.extend(m.entries[k:])
            self.dirty_from = min(self.dirty_from, index)
            break
        match = prev + len(m.entries)
        if m.commit > self.commit_index:
            commit = min(m.commit, match)
            if commit > self.commit_index:
                self._set_commit(commit)
        return AppendReply(self.term, True, match, 0, self._echo_seq, self._hears_now(now))

    def _hears_now(self, now: float) -> dict[str, float]:
        """Ages of the renewals its host received, as this reply leaves."""
        return {host: max(0.0, now - at) for host, at in self.hears.items()}

    def _first_of_term(self, index: int) -> int:
        """First index of the term found at `index` (a faster back-off than one by one)."""
        term = self.log[index - 1].term
        while index > 1 and self.log[index - 2].term == term and index > self.commit_index + 1:
            index -= 1
        return index

    def _truncate(self, index: int, now: float) -> None:
        if index <= self.commit_index:
            self.anomalies.append(
                f"t={now:.3f}: truncating committed entries from {index} "
                f"(commit index {self.commit_index}, applied {self.last_applied})"
            )
            self._lower_commit(index - 1)
        del self.log[index - 1 :]
        self.dirty_from = min(self.dirty_from, index)

    def _lower_commit(self, commit: int) -> None:
        # pysyncobj clips its commit index to a log cut below it; what was already
        # applied stays applied (the peer's state may have diverged).
        while self._commit_terms and self._commit_terms[-1][0] > commit:
            self._commit_terms.pop()
        self._commit_terms.append((commit, 0))
        self.commit_index = commit
        self.persisted_commit = min(self.persisted_commit, commit)

    def _set_commit(self, commit: int) -> None:
        old = self.commit_index
        self.commit_index = commit
        self.persisted_commit = commit
        self._commit_terms.append((commit, self.term))
        self._c.committed(self, old, commit)

    def _check_caught_up(self, now: float) -> None:
        target = self._catchup_target
        if self.abstaining and target is not None and self.commit_index >= target:
            self.abstaining = False
            self._note("caught-up", self.commit_index)
            self._reset_election_timer(now)

    # ------------------------------------------------------------ process faults

    def crash(self) -> None:
        """SIGKILL: volatile state and waiting proposals are gone (their callers died
        too: no outcome is delivered), durable state is kept."""
        self.status = Status.DOWN
        self._token += 1
        self._wake_at = _NEVER
        self._paused_calls.clear()
        self._c.discard_inbound(self)
        self._note("crashed", self.term)

    def restart(self, rebuild: bool = False, log_prefix: int | None = None,
                term: int | None = None, lose_meta: bool = False) -> None:
        """Start again from the durable state (crashing first if running).

        rebuild: the journal is lost (raft/recovery.py _rebuild): empty log, commit 0;
        term and vote are kept (a readable meta file is kept) unless `lose_meta`; the
        peer neither votes nor stands for election until its commit index reaches the
        first commit index a leader told it (engine.py _ha_abstain).
        log_prefix=k: restarted from an old copy of its journal and meta file: the first
        k entries, the term of entry k (or `term`), no vote. This may break Raft's
        assumptions, on purpose."""
        if self.status is not Status.DOWN:
            self.crash()
        if rebuild:
            self.log, self.persisted_commit = [], 0
            if lose_meta:
                self.term, self.voted_for = 0, None
        elif log_prefix is not None:
            del self.log[max(log_prefix, 0):]
            self.term = term if term is not None else self.term_at(len(self.log))
            self.voted_for = None
            self.persisted_commit = min(self.persisted_commit, len(self.log))
        self.abstaining = rebuild
        self.dirty_from = 1
        self.status = Status.UP
        self._wake_at = _NEVER
        self._reset_volatile()
        self._reset_election_timer(self._c.now)
        self._note("restarted", self.term)

    def pause(self) -> None:
        """SIGSTOP: no timer fires; deliveries are held until resume()."""
        if self.status is not Status.UP:
            return
        self.status = Status.PAUSED
        self._token += 1
        self._wake_at = _NEVER
        self._c.hold_inbound(self)

    def resume(self) -> None:
        """SIGCONT: overdue timers fire first (at the next step), then held messages are
        handled; a leader still believes it leads until its fallback or a higher term."""
        if self.status is not Status.PAUSED:
            return
        self.status = Status.UP
        self._rearm_after_pause()
        self._c.release_inbound(self)
        calls, self._paused_calls = self._paused_calls, []
        for data, on_done, timeout_s in calls:
            self.propose(data, on_done, timeout_s)

    def _rearm_after_pause(self) -> None:
        now = self._c.now
        first = min(self._election_at, self._heartbeat_at)
        if self._deadlines:
            first = min(first, self._deadlines[0][0])
        self._arm(max(first, now))

    # ------------------------------------------------------------ dispatch

    def receive(self, src: str, msg: object, now: float) -> None:
        handler = self._handlers.get(type(msg))
        if handler is None:
            raise TypeError(f"unknown Raft message {msg!r}")
        handler(src, msg, now)

    def _make_handlers(self) -> dict[type, Callable[[str, Any, float], None]]:
        # Bound methods, so that a subclass (a deliberately broken variant) overrides.
        return {
            AppendEntries: self._on_append,
            AppendReply: self._on_append_reply,
            RequestVote: self._on_request_vote,
            VoteReply: self._on_vote_reply,
            PreVoteAsk: self._on_pre_vote_ask,
            PreVoteYes: self._on_pre_vote_yes,
            TimeoutNow: self._on_timeout_now,
            AllowRelay: self._on_allow_relay,
            AnswerCarry: self._on_answer_carry,
            Forward: self._on_forward,
            ForwardReply: self._on_forward_reply,
        }
