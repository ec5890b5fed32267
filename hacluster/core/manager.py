"""Manager decisions, made by the Raft leader. Pure: time comes in as arguments.

Safety rules implemented here (see docs/safety.md):
- Nothing is decided until the leader's own Noop committed in its term (its
  state is then up to date and it holds a live majority).
- A fence runs only for a token (RequestFence index) that this manager
  proposed and saw committed *in its own term* (`proposal_done` is told), and
  only while Raft still says it leads in that term (`fence_still_ours`); a stale
  leader's proposals never commit, so it never fences. Tokens of earlier leaders
  are replaced by a fresh attempt, never executed.
- The quorum guard: a host is fenced only while this leader hears renewals from a
  majority of voters without that host (itself included), so the fence can be
  confirmed; otherwise the fence is held (HoldFence) and said so. A leader that hears
  no majority for a whole lease hands leadership over: it is more likely the one cut off.
- A host whose renewals resume before any fence of it succeeded keeps its VMs: the
  pending attempt and its retries are cancelled (CancelFence).
- VMs are released only by applying ConfirmFence (or WatchdogConfirm, or an
  operator's confirm); the manager merely proposes it.
- Before a fence on the lease alone (no BMC read off) and before a watchdog confirm, a
  host that writes storage heartbeats has its storage checked (core/storage.py): a host
  that still writes is alive: it becomes storage-active (StorageChecked), is not fenced
  and its VMs are not restarted, until consecutive checks see nothing written.
- A host whose fence failed (its BMC dark with it) and whose watchdog is armed counts
  as fenced (WatchdogConfirm) only once it must have reset itself: its peer feeds the
  watchdog only while a leader acknowledges renewals it sent, for `self_fence_s` after
  sending each, and the watchdog resets it `timeout_s` after the last feed. Every such
  renewal reached a leader before that leader acknowledged it, and a leader's
  acknowledgements are confirmed by a majority before this leadership began, or were
  sent by this manager (`acked`). So the host is reset by `watchdog_fenced_at`.
"""

from __future__ import annotations

from dataclasses import dataclass

from hacluster.core import versions
from hacluster.core.lease import GRANT, RAFT, LeaseView, Verdict
from hacluster.core.quorum import QuorumGuard, StepDown
from hacluster.core.silence import Challenge, ProbePower, SilenceWatch
from hacluster.core.storage import CheckStorage, Gate, StorageRead, StorageWatch
from hacluster.fsm import commands as c
from hacluster.fsm import failback, room
from hacluster.fsm.apply_fence import (
    cap_reopens_at,
    fence_action_for,
    last_failure,
    quorum_problem,
)
from hacluster.fsm.model import (
    ClusterState,
    FenceAction,
    FenceFallback,
    FenceResult,
    Host,
    StorageCheck,
    StorageVerdict,
)
from hacluster.fsm.states import HostState

H = HostState
PROPOSAL_TIMEOUT_S = 10.0  # forget an unanswered proposal after this long
CLOCK_RATE_MARGIN = 0.01  # a host's clock may run this much slower than the leader's
ROOM_EVERY_S = 2.0  # how often the leader looks for a pending VM to make room for
FAILBACK_EVERY_S = 2.0  # how often the leader looks for VMs to fail back
REPEAT_AFTER_S = 1.0  # the same command for the same host at most this often


@dataclass(frozen=True, slots=True)
class Propose:
    command: c.Command
    key: str  # at most one proposal per key in flight
    reason: str


@dataclass(frozen=True, slots=True)
class RunFence:
    host: str
    token: int
    action: FenceAction
    reason: str


Decision = Propose | RunFence | StepDown | ProbePower | Challenge | CheckStorage


class Manager(QuorumGuard):
    def __init__(self, me: str) -> None:
        super().__init__(me)
        self.term = 0
        self.leading = False
        self.ready = False  # our Noop committed in this term
        self._inflight: dict[str, float] = {}  # proposal key -> give up at
        self._last_sent: dict[tuple[str, str], float] = {}  # (key, command type) -> when
        self._my_tokens: set[int] = set()  # RequestFence indexes we committed this term
        self._fencing: set[int] = set()  # tokens with a fence running
        self._results: dict[int, Propose] = {}  # token -> its outcome, until committed
        self._failed_at: dict[str, float] = {}  # host -> last failed attempt (monotonic)
        self._led_since = -1e18  # when this leadership began (monotonic)
        self._acked: dict[str, float] = {}  # host -> when this leader last acked it
        self._room_checked = -1e18  # when _make_room last looked (fsm/room.py)
        self._failback_checked = -1e18  # when _failback last looked (fsm/failback.py)
        self.watch = SilenceWatch()  # power reads and challenges (core/silence.py)
        self.storage = StorageWatch()  # storage activity checks (core/storage.py)

    # ------------------------------------------------------------ leadership

    def become_leader(self, term: int, state: ClusterState, now: float) -> list[Decision]:
        self.term, self.leading, self.ready = term, True, False
        self._inflight.clear()
        self._last_sent.clear()
        self._my_tokens.clear()
        self._fencing.clear()
        self._results.clear()
        self._failed_at.clear()
        self._majority_heard_at = self._led_since = now  # a full lease for us too
        self._hears.clear()
        self._acked.clear()
        self.watch.reset()
        self.storage.reset()
        self.leases.grant_all(sorted(state.hosts), now)
        return [self._propose(c.Noop(term=term), "noop", f"new leader in term {term}", now)]

    def lose_leadership(self) -> None:
        self.leading = self.ready = False
        self._my_tokens.clear()

    def renewal(self, host: str, link: str, now: float) -> None:
        self.leases.renew(host, link, now)

    def acked(self, host: str, at: float) -> None:
        """This leader sent `host` an acknowledgement of a renewal at `at`: its watchdog
        may be fed for `self_fence_s` after that renewal was sent (core/selffence.py)."""
        self._acked[host] = max(at, self._acked.get(host, at))

    def watchdog_fenced_at(self, state: ClusterState, host: Host) -> float | None:
        """When (this leader's clock) a host with an armed watchdog has surely reset
        itself, if it stopped being acknowledged: None without an armed watchdog. No
        acknowledgement of an earlier leader can be later than this leadership's start."""
        w = host.watchdog
        if not w.armed:
            return None
        last = max(self._acked.get(host.name, self._led_since), self._led_since)
        return last + w.resets_within_s * (1 + CLOCK_RATE_MARGIN) + \
            state.settings.watchdog_margin_s

    def raft_contact(self, host: str, at: float) -> None:
        """The host's peer answered our Raft replication at `at`: it is alive, so its
        lease is not judged on the lease channel alone (a firewalled lease port, a flood
        on it, a lost link the Raft traffic does not use)."""
        self.leases.renew(host, RAFT, at)

    def own_pause(self, blind_s: float, now: float) -> None:
        """Our process stood still for blind_s up to now (paused, starved of CPU, its
        machine suspended) and read no renewals meanwhile. That proves nothing about
        the hosts: without this, a leader waking from a pause would fence every host
        at once (corosync likewise discounts a detected process pause)."""
        self.leases.discount(blind_s, now)

    # ------------------------------------------------------------ feedback

    def proposal_done(self, key: str, command: c.Command, committed: bool, index: int,
                      own_term: bool = False) -> None:
        """The daemon reports the fate of a proposal it made for us. `own_term`: Raft
        says this peer led the entry's term and committed it itself in that term: only
        then does a Noop make us ready, or a RequestFence give us a token to run."""
        self._inflight.pop(key, None)
        if not committed or not self.leading or not own_term:
            return
        if isinstance(command, c.Noop) and command.term == self.term:
            self.ready = True
        elif isinstance(command, c.RequestFence) and command.term == self.term:
            self._my_tokens.add(index)

    def probe_result(self, host: str, off: bool, detail: str, now: float) -> None:
        """A power read (ProbePower) came back: off, or on / no answer."""
        self.watch.probe_result(host, off, detail, now)

    def storage_result(self, read: StorageRead, now: float) -> None:
        """A storage check (CheckStorage) came back."""
        self.storage.result(read, now)

    def fence_still_ours(self, token: int, raft_term: int | None) -> bool:
        """Right before a fence runs: does Raft still say we lead in the term that
        committed its token? (A later term means someone else owns the decision.)"""
        return self.leading and raft_term == self.term and token in self._my_tokens

    def fence_result(
        self, host: str, token: int, result: FenceResult, evidence: str, method: str, now: float
    ) -> list[Decision]:
        self._fencing.discard(token)
        if not self.leading:
            return []
        if result.host_is_off:
            cmd: c.Command = c.ConfirmFence(
                host=host, token=token, result=result, evidence=evidence, method=method
            )
            why = f"power read back off for token {token}"
        else:
            self._failed_at[host] = now
            cmd = c.FenceFailed(
                host=host, token=token, result=result, evidence=evidence, method=method
            )
            why = f"fence attempt {token} failed: {result.value}"
        decision = Propose(cmd, f"fence-result:{host}", why)
        self._results[token] = decision
        return [decision] if self._may_send(decision, now) else []

    # ------------------------------------------------------------ decisions

    def tick(self, state: ClusterState, now: float, log_now: float) -> list[Decision]:
        """now: this leader's monotonic clock; log_now: its log clock (core/logclock.py)."""
        if not self.leading:
            return []
        self._inflight = {k: t for k, t in self._inflight.items() if t > now}
        self.renewal(self.me, "local", now)
        if not self.ready:
            return []
        self._results = {t: r for t, r in self._results.items() if _pending(state, t)}
        out: list[Decision] = [*self._hear_majority(state, now)]
        for name in sorted(state.hosts):
            host = state.hosts[name]
            if host.state is H.REMOVED or not host.runs_vms:
                continue
            if host.peer_stopped and host.state in (H.ONLINE, H.DRAINING, H.SUSPECT):
                self.leases.renew(name, GRANT, now)  # left cleanly: never fenced for it
                continue
            lease = self.leases.view(name, now, state.settings)
            probe = self._probe_due(state, host, now)
            if probe is not None:
                out.append(probe)
            check = self._storage_due(state, host, lease, now)
            if check is not None:
                out.append(check)
            decision = self._decide_host(state, host, lease, now, log_now)
            if isinstance(decision, Challenge):
                out.append(decision)
            elif decision is not None and name == self.me and \
                    isinstance(decision.command, c.RequestFence | c.HoldFence):
                out.extend(self._step_down(decision.reason, now))
            elif decision is not None and self._may_send(decision, now):
                out.append(decision)
        out.extend(self._fences_to_run(state, now))
        out.extend(r for r in self._results.values() if self._may_send(r, now))
        out.extend(self._make_room(state, now))
        out.extend(self._failback(state, now, log_now))
        return out

    def _failback(self, state: ClusterState, now: float, log_now: float) -> list[Decision]:
        """VMs whose policy is failback auto go back to their best preferred host once it
        is ready, a bounded number at a time (fsm/failback.py; apply checks again). The
        hold-down and a host's time online count in log time, as apply counts them."""
        if now - self._failback_checked < FAILBACK_EVERY_S or \
                not versions.admit(state, c.FailbackVm.TYPE, c.FailbackVm.VERSION).admitted:
            return []
        self._failback_checked = now
        out: list[Decision] = []
        for name, target in failback.wanted(state, log_now):
            d = Propose(c.FailbackVm(name=name, target=target), f"failback:{name}",
                        f"{name} fails back to its preferred host {target}")
            if self._may_send(d, now):
                out.append(d)
        return out

    def _make_room(self, state: ClusterState, now: float) -> list[Decision]:
        """A VM pending because VMs without limits fill the hosts its limits name: have
        room made there by live migration (fsm/room.py), one batch at a time."""
        if not state.pending or now - self._room_checked < ROOM_EVERY_S or \
                not versions.admit(state, c.MakeRoom.TYPE, c.MakeRoom.VERSION).admitted:
            return []
        self._room_checked = now
        name = room.wanted(state)
        if not name:
            return []
        d = Propose(c.MakeRoom(name=name), f"room:{name}",
                    f"{name} waits pending: its host limits name only hosts that VMs "
                    "without limits fill")
        return [d] if self._may_send(d, now) else []

    def _probe_due(self, state: ClusterState, host: Host, now: float) -> ProbePower | None:
        """A read of a silent host's power, if one is due (core/silence.py)."""
        if host.name == self.me or host.state not in (H.ONLINE, H.DRAINING, H.SUSPECT) \
                or state.settings.cluster_maintenance:
            return None
        return self.watch.probe_due(host.name, self.leases.last_life(host.name), now,
                                    self._led_since, state.settings.probe_after_s)

    def _storage_due(self, state: ClusterState, host: Host, lease: LeaseView,
                     now: float) -> CheckStorage | None:
        """A read of the host's storage, if its check runs and one is due
        (core/storage.py): from its lease's expiry (unless its BMC read it off) while
        storage-active, and while a watchdog may count it fenced."""
        if host.state in (H.SUSPECT, H.FENCE_BLOCKED):
            wanted = lease.verdict is Verdict.EXPIRED and not host.fence_wanted and \
                not self.watch.read_off(host.name, self.leases.last_life(host.name))
        elif host.state in (H.FENCING, H.FENCE_FAILED):
            wanted = self.watchdog_fenced_at(state, host) is not None and \
                state.settings.fence_fallback is FenceFallback.WATCHDOG
        else:
            wanted = host.state is H.STORAGE_ACTIVE
        if not wanted or not host.heartbeat_paths or host.name == self.me or \
                state.settings.cluster_maintenance:
            self.storage.forget(host.name)
            return None
        return self.storage.due(state, host, now, f"{host.name} is {host.state.value}: "
                                "has it written shared storage since its lease expired?")

    def _storage_hold(self, state: ClusterState, host: Host, gate: Gate,
                      token: int = 0) -> Propose | None:
        """The fence waits on the storage check; the state learns a new verdict (only
        once no fence of ours for the host runs, and once every host reads it)."""
        if gate.report is None or self._fence_outcome_pending(token) or \
                not versions.admit(state, c.StorageChecked.TYPE, 1).admitted:
            return None
        why = ("alive on shared storage: not fenced" if gate.report.verdict is
               StorageVerdict.ACTIVE else "its storage cannot be read: the fence waits")
        return Propose(c.StorageChecked(host=host.name, token=token, check=gate.report),
                       f"host:{host.name}", f"{host.name} {why} ({gate.report.summary()})")

    def _decide_host(
        self, state: ClusterState, host: Host, lease: LeaseView, now: float, log_now: float
    ) -> Propose | Challenge | None:
        s = state.settings
        alive = lease.verdict is Verdict.ALIVE
        # Only a real sign of life, and a recent one, proves life: a new leader's grant
        # merely defers judgement, and relayed news can be older than the grant.
        last = self.leases.last_life(host.name)
        renewed = last is not None and now - last < s.lease_suspect_s
        if host.fence_wanted and host.state in (H.ONLINE, H.DRAINING, H.SUSPECT):
            if s.cluster_maintenance:
                return None
            return self._fence(state, now, host, "fence wanted", host.fence_wanted)
        off = self.watch.read_off(host.name, self.leases.last_life(host.name))
        if off:  # read off after its last sign of life: a young lease proves nothing now
            renewed = False
        if off and not s.cluster_maintenance:
            if host.state in (H.ONLINE, H.DRAINING):
                return Propose(c.MarkHostSuspect(name=host.name, evidence=off),
                               f"host:{host.name}", off)
            if host.state in (H.SUSPECT, H.STORAGE_ACTIVE):
                return self._fence(state, now, host, "power read off", off)
        if host.state in (H.ONLINE, H.DRAINING) and not alive:
            return Propose(
                c.MarkHostSuspect(name=host.name, evidence=lease.evidence(s)),
                f"host:{host.name}",
                f"lease overdue: {lease.evidence(s)}",
            )
        if host.state in (H.SUSPECT, H.FENCE_BLOCKED, H.FENCE_FAILED, H.STORAGE_ACTIVE) \
                and renewed and not host.fence_wanted:
            return Propose(
                c.MarkHostAlive(name=host.name, evidence=f"lease renewed {lease.age_s:.2f}s ago"),
                f"host:{host.name}",
                "lease renewed before any fence ran",
            )
        if host.state is H.FENCING and renewed and not host.fence_wanted \
                and not self._fence_outcome_pending(host.fence_token):
            return Propose(
                c.CancelFence(host=host.name, evidence=f"lease renewed {lease.age_s:.2f}s ago, "
                              f"before any fence of it succeeded"),
                f"host:{host.name}",
                "renewals resumed: the pending attempt and its retries are cancelled",
            )
        if host.state is H.SUSPECT and lease.verdict is Verdict.EXPIRED:
            if s.cluster_maintenance:
                return None  # fencing disabled; the host stays suspect, visibly
            may, challenge = self.watch.challenge(host.name, self.leases.last_life(host.name),
                                                  now, lease.evidence(s))
            if not may:  # its last chance first: a challenge over every link
                return challenge
            gate = self.storage.gate(host, strict=False, now=now)
            if not gate.may:
                return self._storage_hold(state, host, gate)
            return self._fence(state, now, host, "lease expired", lease.evidence(s), gate)
        if host.state is H.STORAGE_ACTIVE and not s.cluster_maintenance:
            gate = self.storage.gate(host, strict=False, now=now)
            if not gate.may:
                return self._storage_hold(state, host, gate)
            return self._fence(state, now, host, "lease expired and its storage shows no "
                               "more activity", lease.evidence(s), gate)
        if host.state is H.FENCE_BLOCKED and not s.cluster_maintenance:
            held = state.fence_record(host.fence_token) if host.fence_token else None
            # a held attempt continues its incident, which the cap counted already
            reopens = None if held and held.result is FenceResult.HELD else \
                cap_reopens_at(state)
            quorum_ok = not quorum_problem(state, host.name)
            guard_ok = not self.guard_problem(state, host.name, now)
            if quorum_ok and guard_ok and (reopens is None or log_now >= reopens):
                if host.fence_wanted:
                    return self._fence(state, now, host, "fence wanted", host.fence_wanted)
                gate = Gate(True) if off else self.storage.gate(host, strict=False, now=now)
                if not gate.may:  # it may have written since it was blocked
                    return self._storage_hold(state, host, gate)
                return self._fence(state, now, host, "lease expired; the fence can go ahead "
                                   "again", lease.evidence(s), gate)
        if host.state in (H.FENCING, H.FENCE_FAILED) and not s.cluster_maintenance:
            if self.storage.verdict(host.name) is StorageVerdict.ACTIVE:  # alive after all
                return self._storage_hold(state, host, self.storage.gate(host, True, now),
                                          host.fence_token)
            reset = self._watchdog_confirm(state, host, now)
            if reset is not None or host.state is H.FENCE_FAILED:
                return reset
            return self._continue_fencing(state, host, now)
        return None

    def _watchdog_confirm(self, state: ClusterState, host: Host, now: float) -> Propose | None:
        """Count a host whose fence failed as reset by its own watchdog, once it must be."""
        if state.settings.fence_fallback is not FenceFallback.WATCHDOG or host.name == self.me:
            return None
        record = state.fence_record(host.fence_token)
        due = self.watchdog_fenced_at(state, host)
        failure = last_failure(state, record) if record is not None else None
        if failure is None or due is None or now < due:
            return None
        if self._attempt_under_way(state, host):
            # its BMC may answer it yet (the chassis repaired) and power off a host we
            # would have counted fenced and that came back since: its outcome first
            # (within fence_timeout_s; scenario 43)
            return None
        if self.guard_problem(state, host.name, now):
            return None  # as for any fence: a majority must be there to confirm it
        gate = self.storage.gate(host, strict=True, now=now)  # no read-back: quiet only
        if not gate.may:
            return self._storage_hold(state, host, gate, host.fence_token)
        w = host.watchdog
        last = max(self._acked.get(host.name, self._led_since), self._led_since)
        evidence = (f"fence {failure.result.value}; last acknowledged {now - last:.1f} s ago "
                    f"(self-fence {w.self_fence_s:g} s + {w.kind.value} watchdog "
                    f"{w.timeout_s:g} s + margin {state.settings.watchdog_margin_s:g} s)")
        evidence, storage = _with_storage(state, c.WatchdogConfirm.TYPE, evidence, gate)
        return Propose(c.WatchdogConfirm(host=host.name, token=host.fence_token,
                                         evidence=evidence, storage=storage),
                       f"fence-result:{host.name}", f"{host.name} reset by its watchdog: "
                       f"{evidence}")

    def _attempt_under_way(self, state: ClusterState, host: Host) -> bool:
        """An attempt of ours on the host is committed and not run yet, or runs."""
        record = state.fence_record(host.fence_token)
        if record is not None and record.result is FenceResult.PENDING and \
                host.fence_token in self._my_tokens and host.fence_token not in self._results:
            return True
        return any((r := state.fence_record(t)) is not None and r.host == host.name
                   for t in self._fencing)

    def _fence_outcome_pending(self, token: int) -> bool:
        """A fence of ours for this token runs, or its outcome has not committed yet."""
        return token in self._fencing or token in self._results

    def _continue_fencing(self, state: ClusterState, host: Host, now: float) -> Propose | None:
        """A fencing host whose current attempt is not ours, or failed: new attempt."""
        record = state.fence_record(host.fence_token)
        if record is None:
            return self._fence(state, now, host, "fence attempt record missing", "")
        if record.result is FenceResult.PENDING:
            if host.fence_token in self._my_tokens:
                return None  # ours: _fences_to_run runs it
            return self._fence(state, now, host, f"attempt {record.token} belongs to an "
                               f"earlier leader or an operator; new attempt in term "
                               f"{self.term}", record.evidence)
        failed_at = self._failed_at.get(host.name)
        backoff = state.settings.fence_retry_backoff_s * 2 ** (record.attempt - 1)
        if failed_at is not None and now - failed_at < backoff:
            return None
        return self._fence(
            state, now, host,
            f"retry after {record.result.value} (attempt {record.attempt + 1})",
            record.result_evidence,
        )

    def _fences_to_run(self, state: ClusterState, now: float) -> list[Decision]:
        out: list[Decision] = []
        if state.settings.cluster_maintenance:
            return out  # switched on after the intent committed: do not act on it
        for name in sorted(state.hosts):
            host = state.hosts[name]
            token = host.fence_token
            if host.state is not H.FENCING or token not in self._my_tokens or name == self.me:
                continue
            record = state.fence_record(token)
            if record is None or record.result is not FenceResult.PENDING:
                continue
            if token in self._fencing:
                continue
            if token in self._results:  # answered; its outcome has not committed yet
                continue
            problem = self.guard_problem(state, name, now)
            if problem:  # voters went quiet since the intent committed: do not run it
                hold = Propose(c.HoldFence(host=name, reason=problem), f"host:{name}",
                               f"hold the fence of {name}")
                if self._may_send(hold, now):
                    out.append(hold)
                continue
            self._fencing.add(token)
            out.append(
                RunFence(
                    name,
                    token,
                    fence_action_for(state, host),
                    f"token {token} committed in term {self.term}: {record.reason}",
                )
            )
        return out

    # ------------------------------------------------------------ helpers

    def _may_send(self, decision: Propose, now: float) -> bool:
        """One proposal per key in flight; a refused command is not repeated at tick rate."""
        sent_key = (decision.key, decision.command.TYPE)
        if (
            decision.key in self._inflight
            or now - self._last_sent.get(sent_key, -1e18) < REPEAT_AFTER_S
        ):
            return False
        self._inflight[decision.key] = now + PROPOSAL_TIMEOUT_S
        self._last_sent[sent_key] = now
        return True

    def _fence(self, state: ClusterState, now: float, host: Host, reason: str,
               evidence: str, gate: Gate | None = None) -> Propose | None:
        """RequestFence, or HoldFence when the quorum guard says a fence could not be
        confirmed now (a blocked host simply stays blocked)."""
        problem = "" if host.name == self.me else self.guard_problem(state, host.name, now)
        if problem:  # (our own host: tick() hands leadership over instead)
            if host.state is H.FENCE_BLOCKED or \
                    now - self._led_since < state.settings.lease_suspect_s:
                return None  # already held, or too early to have heard every voter
            return Propose(c.HoldFence(host=host.name, reason=problem), f"host:{host.name}",
                           f"hold the fence of {host.name}")
        evidence, storage = _with_storage(state, c.RequestFence.TYPE, evidence, gate)
        cmd = c.RequestFence(host=host.name, reason=reason, evidence=evidence, term=self.term,
                             storage=storage)
        return Propose(cmd, f"host:{host.name}", f"fence {host.name}: {reason}")

    def _propose(self, cmd: c.Command, key: str, reason: str, now: float) -> Propose:
        self._inflight[key] = now + PROPOSAL_TIMEOUT_S
        return Propose(cmd, key, reason)


def _with_storage(state: ClusterState, command_type: str, evidence: str,
                  gate: Gate | None) -> tuple[str, StorageCheck]:
    """The storage check goes into the command's own field (version 2) once every host
    reads that version; until then its summary goes into the evidence text."""
    if gate is None:
        return evidence, StorageCheck()
    if gate.note:
        evidence = f"{evidence}; {gate.note}"
    if gate.evidence == StorageCheck() or versions.admit(state, command_type, 2).admitted:
        return evidence, gate.evidence
    return f"{evidence}; {gate.evidence.summary()}", StorageCheck()


def _pending(state: ClusterState, token: int) -> bool:
    record = state.fence_record(token)
    return record is not None and record.result is FenceResult.PENDING
