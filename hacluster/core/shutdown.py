"""A planned shutdown, step by step: what a peer stopped by SIGTERM does before it leaves.

Pure: the daemon (daemon/shutdown.py) and the simulator (sim/peer.py) call `step` with
what they see (the replica, Raft's view of leadership, the local domains when read) and
carry out the action it returns, reporting back through the `*_done` methods.

1. Leadership first: a leader hands leadership over (Raft TimeoutNow, the StepDown
   machinery of core/manager.py) and waits, briefly, until another peer leads in a later
   term; nobody waits for an election timeout. Whenever it finds itself leading again
   before it leaves, it hands over again.
2. The policy (fsm/apply_shutdown.py `policy_of`), read once:
   - freeze: record "done" at once: its VMs run on, unprotected until it returns.
   - stop, failover: record "begin" (no new VMs here), stop the agent (nothing starts
     here any more), wait out live migrations into or out of this host, shut the VMs
     down (in reverse start order, wave after wave, within one shutdown timeout), read
     libvirt, record "done" with the placements found stopped.
   - migrate: record "begin" (the host drains by live migration, fsm/lifecycle.py),
     wait until it holds no VM, or until nothing can move, or until the budget for it is
     spent; whatever is left then goes as for failover.
3. Leave. A step that cannot be recorded (no quorum) leaves the VMs as they are: a host
   whose shutdown was not recorded is judged by its lease like any other, so it is
   fenced before any of its VMs starts elsewhere.

The budget: the whole shutdown must end within `total_s` (systemd's TimeoutStopSec,
`[timing] stop_timeout_s`); the VM shutdowns (`vm_shutdown_s`) and two commits
(`grace_s` each) are kept back from the time migrations may take.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from hacluster.core import versions
from hacluster.core.agent import LIVE, DomainState
from hacluster.fsm import commands as c
from hacluster.fsm.apply_shutdown import RELEASABLE, policy_of
from hacluster.fsm.model import ClusterState, ShutdownPolicy
from hacluster.fsm.relations import stop_waves
from hacluster.fsm.states import FENCE_PENDING_HOSTS, HostState, VmState

P = ShutdownPolicy
HANDOFF_S = 3.0  # how long a leader waits for a successor before it goes on regardless
HANDOFF_EVERY_S = 0.5  # TimeoutNow again if nobody took over (the target may have lagged)
RETRY_EVERY_S = 0.5  # a step that did not commit is proposed again this often
STUCK_S = 5.0  # a drain in which nothing can move for this long falls back at once
MARGIN_S = 5.0  # kept back from systemd's stop timeout
NOT_MIGRATED = "not migrated: its source host's peer stops (planned shutdown)"


class Phase(enum.StrEnum):
    HANDOFF = "handoff"
    BEGIN = "begin"
    DRAIN = "drain"
    QUIESCE = "quiesce"
    SHUT_DOWN = "shut-down"
    DONE = "done"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class View:
    now: float  # this peer's monotonic clock
    state: ClusterState  # its replica
    leading: bool  # Raft says this peer leads now
    leader: str  # the host Raft reports as leader ("" none or unknown)
    term: int  # Raft's current term
    domains: Mapping[str, DomainState] | None = None  # libvirt, read after the shutdowns


@dataclass(frozen=True, slots=True)
class HandOff:
    reason: str


@dataclass(frozen=True, slots=True)
class Propose:
    command: c.Command
    reason: str


@dataclass(frozen=True, slots=True)
class StopAgent:
    reason: str


@dataclass(frozen=True, slots=True)
class ShutDownVms:
    names: tuple[str, ...]
    reason: str
    # the names in the order they stop, wave after wave (fsm/relations.py `stop_waves`):
    # an application before the database it starts after
    waves: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class Wait:
    reason: str


@dataclass(frozen=True, slots=True)
class Leave:
    reason: str
    unprotected: tuple[str, ...] = ()  # VMs left running here without protection


Action = HandOff | Propose | StopAgent | ShutDownVms | Wait | Leave


@dataclass(frozen=True, slots=True)
class Budget:
    total_s: float = 300.0  # systemd's TimeoutStopSec ([timing] stop_timeout_s)
    vm_shutdown_s: float = 30.0  # [hypervisor] shutdown_timeout_s
    grace_s: float = 5.0  # [timing] stop_grace_s: one commit

    @property
    def moving_s(self) -> float:
        """How long live migrations may take (in and out) before the VMs are shut down."""
        return max(0.0, self.total_s - self.vm_shutdown_s - 2 * self.grace_s - MARGIN_S)


class PlannedShutdown:
    """One peer's planned shutdown, from SIGTERM until it leaves."""

    def __init__(self, me: str, started: float, budget: Budget = Budget()) -> None:
        self.me = me
        self.started = started
        self.budget = budget
        self.phase = Phase.HANDOFF
        self.policy: ShutdownPolicy | None = None
        self.notes: list[str] = []  # what happened, for the log (drained by the driver)
        self._led_in: int | None = None  # the term this peer led in when it was stopped
        self._handed_at = -1e18
        self._proposing = False
        self._retry_at = -1e18
        self._step_since: float | None = None  # the first proposal of the current step
        self._step_phase: Phase | None = None
        self._stuck_since: float | None = None
        self._stopped: tuple[tuple[str, int], ...] = ()
        self._acting = False  # an agent stop or VM shutdown is under way
        self._agent_stopping = False  # StopAgent was returned
        self._unsafe = ""  # why no VM may be released (an agent operation outlived it)
        self._reported: set[tuple[str, int]] = set()  # migrations reported not run

    @property
    def wants_domains(self) -> bool:
        """The next step needs libvirt's domain list in its View."""
        quiet = self.phase is Phase.QUIESCE and self._agent_stopping
        return (self.phase is Phase.SHUT_DOWN or quiet) and not self._acting and \
            not self._proposing

    # ------------------------------------------------------------ feedback

    def proposed(self, committed: bool, now: float, refused: str = "") -> None:
        """The driver's proposal came back: committed, or not (no quorum, timeout), or
        refused (by apply or the version gate: proposing it again would not help)."""
        self._proposing = False
        if refused:
            self.notes.append(f"{self.phase.value} refused: {refused}")
            self.phase = Phase.LEFT
            return
        if not committed:
            self._retry_at = now + RETRY_EVERY_S
            return
        self.phase = {Phase.BEGIN: Phase.DRAIN if self.policy is P.MIGRATE else Phase.QUIESCE,
                      Phase.DONE: Phase.LEFT}.get(self.phase, self.phase)

    @property
    def stopping_agent(self) -> bool:
        """StopAgent was returned and has not been answered yet."""
        return self._agent_stopping and self._acting and self.phase is Phase.QUIESCE

    def agent_stopped(self, idle: bool) -> None:
        """The agent's loop ended; `idle`: no operation of it is still under way (a start
        or a migration that ends later could run a VM the domain list did not show: then
        nothing is released, everything stays where it is, unprotected)."""
        self._acting = False
        if not idle:
            self._unsafe = "an operation of the agent did not end in time"
            self.notes.append(f"{self._unsafe}: no VM is released to start elsewhere")

    def vms_shut_down(self, state: ClusterState, domains: Mapping[str, DomainState] | None
                      ) -> None:
        """The shutdowns ended; `domains`: libvirt read afterwards (None: unreadable)."""
        self._acting = False
        self._stopped = () if self._unsafe else stopped_placements(state, self.me, domains)
        self.phase = Phase.DONE

    # ------------------------------------------------------------ the next step

    def step(self, view: View) -> Action:
        if self.phase is Phase.LEFT:
            return Leave(self._left_reason(view.state), self._unprotected(view.state))
        handoff = self._hand_off(view)
        if handoff is not None:
            return handoff
        if self._proposing or self._acting:
            return Wait(f"{self.phase.value}: waiting for the step under way")
        if self.phase is Phase.BEGIN:
            return self._begin(view)
        if self.phase is Phase.DRAIN:
            return self._drain(view)
        if self.phase is Phase.QUIESCE:
            return self._quiesce(view)
        if self.phase is Phase.SHUT_DOWN:
            names = to_shut_down(view.state, self.me, view.domains or {})
            self._acting = True
            waves = stop_waves(view.state, names)
            order = f" in {len(waves)} waves (start order reversed)" if len(waves) > 1 else ""
            return ShutDownVms(names, f"planned shutdown ({self._policy_name}): shut down "
                               f"{len(names)} VM(s){order} before leaving", waves)
        return self._done(view)

    @property
    def _policy_name(self) -> str:
        return self.policy.value if self.policy is not None else "?"

    def _hand_off(self, view: View) -> Action | None:
        if self.phase is not Phase.HANDOFF:
            if view.leading:  # elected again meanwhile: hand over again
                return self._handoff_now(view, "this peer is stopping and leads again")
            return None
        if view.leading and self._led_in is None:
            self._led_in = view.term
        if self._led_in is None:  # it did not lead: nothing to hand over
            self.phase = Phase.BEGIN
            return None
        if not view.leading and view.leader not in ("", self.me) and view.term > self._led_in:
            self.notes.append(f"leadership handed over: {view.leader} leads in term "
                              f"{view.term} (this peer led in term {self._led_in})")
            self.phase = Phase.BEGIN
            return None
        if view.now - self.started >= HANDOFF_S:
            self.notes.append(f"no successor within {HANDOFF_S:g} s: the others elect one "
                              "once this peer has left")
            self.phase = Phase.BEGIN
            return None
        if view.leading:
            return self._handoff_now(view, "this leader is stopping")
        return Wait("waiting for a successor to lead")

    def _handoff_now(self, view: View, why: str) -> Action:
        if view.now - self._handed_at < HANDOFF_EVERY_S:
            return Wait("waiting for another peer to take over leadership")
        self._handed_at = view.now
        return HandOff(f"{why}: leadership goes to the most caught-up follower first")

    def _propose(self, command: c.Command, reason: str, view: View) -> Action:
        """(Called only while no proposal is under way.)"""
        if view.now < self._retry_at:
            return Wait(f"{self.phase.value}: proposing again shortly")
        if self._step_since is None or self._step_phase is not self.phase:
            self._step_since, self._step_phase = view.now, self.phase
        self._proposing = True
        return Propose(command, reason)

    def _given_up(self, now: float, by_s: float) -> bool:
        """A step that did not commit within a commit time (no quorum, most likely: the
        driver retries each proposal that long), or past its place in the budget."""
        stuck = self._step_phase is self.phase and self._step_since is not None and \
            now - self._step_since > self.budget.grace_s
        return stuck or now - self.started > by_s

    def _begin(self, view: View) -> Action:
        state = view.state
        host = state.hosts.get(self.me)
        if host is None or not host.runs_vms or host.state is HostState.REMOVED:
            self.phase = Phase.LEFT
            return Leave("this host runs no VMs")
        if self.policy is None:
            self.policy = policy_of(state, host)
        legacy = _legacy_reason(state, self.me)
        if legacy:
            self.notes.append(legacy)
            self.phase = Phase.DONE
            return self._done(view)
        if self.policy is P.FREEZE:
            self.phase = Phase.DONE
            return self._done(view)
        if self._given_up(view.now, self.budget.moving_s):
            self.phase = Phase.LEFT
            return Leave("the planned shutdown could not be recorded (no quorum?): VMs left "
                         "as they are; the host's lease is judged as usual")
        cmd = c.PlannedShutdown(name=self.me, step="begin", policy=self.policy.value)
        return self._propose(cmd, f"planned shutdown ({self.policy.value}): begin", view)

    def _drain(self, view: View) -> Action:
        state, me = view.state, self.me
        if not state.vms_by_host.get(me):
            self.notes.append("drained: every VM left by live migration")
            self.phase = Phase.QUIESCE
            return self._quiesce(view)
        if view.now - self.started >= self.budget.moving_s:
            self.notes.append(f"live migrations still unfinished after {self.budget.moving_s:g}"
                              " s: the rest is shut down and starts elsewhere")
            self.phase = Phase.QUIESCE
            return self._quiesce(view)
        stuck = drain_stuck(state, me)
        if stuck:
            self._stuck_since = view.now if self._stuck_since is None else self._stuck_since
            if view.now - self._stuck_since >= STUCK_S:
                self.notes.append(f"nothing can move ({stuck}): the rest is shut down and "
                                  "starts elsewhere")
                self.phase = Phase.QUIESCE
                return self._quiesce(view)
        else:
            self._stuck_since = None
        return Wait(f"draining: {len(state.vms_by_host.get(me, ()))} VM(s) still here")

    def _quiesce(self, view: View) -> Action:
        """Stop the agent (once); then a migration out of here that it never ran (its
        domain still runs here) is reported failed, as the agent would, and migrations
        into here (other hosts' agents run them) are waited out."""
        state, me = view.state, self.me
        if not self._agent_stopping:
            self._agent_stopping = self._acting = True
            return StopAgent("nothing may start here any more")
        for vm in state.vms_on(me):
            if vm.state is VmState.MIGRATING and vm.host == me and \
                    (view.domains or {}).get(vm.name) in LIVE and \
                    (vm.name, vm.placement) not in self._reported:
                self._reported.add((vm.name, vm.placement))
                report = c.VmReport(name=vm.name, host=me, placement=vm.placement,
                                    observed="migrate-failed", detail=NOT_MIGRATED)
                return self._propose(report, f"{vm.name}: {NOT_MIGRATED}", view)
        incoming = [vm.name for vm in state.vms_on(me)
                    if vm.state is VmState.MIGRATING and vm.target_host == me]
        if incoming and view.now - self.started < self.budget.moving_s:
            return Wait(f"waiting out live migrations into this host: {', '.join(incoming)}")
        self.phase = Phase.SHUT_DOWN
        return Wait("shutting the VMs down next (libvirt read first)")

    def _done(self, view: View) -> Action:
        state = view.state
        if _legacy_reason(state, self.me):
            cmd: c.Command = c.SetPeerStopped(name=self.me, stopped=True)
        else:
            cmd = c.PlannedShutdown(name=self.me, step="done", policy=self._policy_name,
                                    stopped=self._stopped)
        if self._given_up(view.now, self.budget.total_s - MARGIN_S):
            self.phase = Phase.LEFT
            return Leave("could not record that this peer stops (no quorum?): its host's "
                         "lease is judged as usual, so it is fenced before any VM of it "
                         "starts elsewhere", self._unprotected(state))
        return self._propose(cmd, f"planned shutdown ({self._policy_name}): done", view)

    def _left_reason(self, state: ClusterState) -> str:
        left = self._unprotected(state)
        if not left:
            return f"planned shutdown ({self._policy_name}) done: no VM left here"
        return (f"planned shutdown ({self._policy_name}) done: {len(left)} VM(s) left "
                f"UNPROTECTED until this peer returns: {', '.join(left)}")

    def _unprotected(self, state: ClusterState) -> tuple[str, ...]:
        """VMs that may still run here: not shut down and released (for "stop", those
        shut down stay placed here, but run nowhere)."""
        down = {name for name, _ in self._stopped}
        return tuple(vm.name for vm in state.vms_on(self.me) if vm.name not in down)


def _legacy_reason(state: ClusterState, me: str) -> str:
    """Why only the old way (SetPeerStopped: VMs left as they are) is open ("" if not)."""
    host = state.hosts[me]
    if host.state in FENCE_PENDING_HOSTS or host.state is HostState.FENCED:
        return f"host {me} is {host.state.value}: its VMs are left to the fence"
    admitted = versions.admit(state, c.PlannedShutdown.TYPE, c.PlannedShutdown.VERSION)
    if not admitted.admitted:
        return f"VMs left as they are (freeze): {admitted.refusal}"
    return ""


def migrating_here(state: ClusterState, me: str) -> list[str]:
    """VMs in a live migration into or out of this host."""
    return [vm.name for vm in state.vms_on(me) if vm.state is VmState.MIGRATING]


def drain_stuck(state: ClusterState, me: str) -> str:
    """Why nothing on this draining host can move now ("" if something can, or moves)."""
    on_me = state.vms_on(me)
    if any(vm.state is not VmState.STARTED or vm.host != me for vm in on_me):
        return ""
    waiting = [vm for vm in on_me if vm.reason.startswith("drain waits")]
    if len(waiting) != len(on_me):
        return ""
    return waiting[0].reason if waiting else ""


def to_shut_down(state: ClusterState, me: str,
                 domains: Mapping[str, DomainState]) -> tuple[str, ...]:
    """Cluster VMs alive here that are not in a live migration: the agent has stopped,
    so these are shut down by the peer itself."""
    moving = set(migrating_here(state, me))
    return tuple(sorted(name for name, d in domains.items()
                        if d in LIVE and name in state.vms and name not in moving))


def stopped_placements(state: ClusterState, me: str,
                       domains: Mapping[str, DomainState] | None) -> tuple[tuple[str, int], ...]:
    """(VM, placement) of each VM the state places here alone whose domain libvirt, read
    after the shutdowns, does not list as alive: what the "done" step may release.
    Nothing when libvirt could not be read."""
    if domains is None:
        return ()
    return tuple((vm.name, vm.placement) for vm in state.vms_on(me)
                 if vm.host == me and vm.state in RELEASABLE and not vm.target_host
                 and domains.get(vm.name) not in LIVE)
