"""One tick of the leader, as the daemon (daemon/leader.py) and the simulator (sim/peer.py)
both run it: follow Raft's view of leadership, discount the leader's own pauses, then ask
the Manager what to do. Pure: Raft's answer and the clocks come in as arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hacluster.core.manager import Decision, Manager
from hacluster.fsm.model import ClusterState


def stood_still(last_tick: float | None, now: float, tick_s: float) -> float:
    """How much later than due this tick comes (0 when on time, or late by mere
    jitter): the loop, and with it the renewals it reads, stood still that long."""
    late = 0.0 if last_tick is None else now - last_tick - tick_s
    return late if late > 2 * tick_s else 0.0


@dataclass(frozen=True, slots=True)
class Note:
    """A decision worth a log line: what, and why."""

    what: str
    why: str


@dataclass
class TickResult:
    decisions: list[Decision] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    start_log_clock: bool = False  # a new cluster's first ready leader starts the log clock


class LeaderLoop:
    def __init__(self, me: str, tick_s: float) -> None:
        self.manager = Manager(me)
        self.tick_s = tick_s
        self._last_tick: float | None = None

    def tick(self, raft_term: int | None, state: ClusterState, now: float, log_now: float,
             log_clock_running: bool, raft_heard: Mapping[str, float] | None = None,
             hears: Mapping[str, Mapping[str, float]] | None = None) -> TickResult:
        """raft_term: the term Raft says this peer leads in (None: it does not lead);
        now: this peer's monotonic clock; log_now: its log clock (core/logclock.py);
        raft_heard: host -> when (monotonic) its peer last answered our replication;
        hears: host -> whose renewals it receives, host -> age (from those answers)."""
        out = TickResult()
        last, self._last_tick = self._last_tick, now
        blind_s = stood_still(last, now, self.tick_s)
        manager = self.manager
        if raft_term is None:
            if manager.leading:
                manager.lose_leadership()
                out.notes.append(Note("not leader any more", "Raft reports another leader "
                                      f"or none (was leading in term {manager.term})"))
            return out
        if not manager.leading or manager.term != raft_term:
            out.notes.append(Note("leading", f"elected in term {raft_term}; every host gets a "
                                  "full lease, nothing is decided before our no-op commits"))
            out.decisions += manager.become_leader(raft_term, state, now)
        elif blind_s:
            manager.own_pause(blind_s, now)
            out.notes.append(Note("own pause discounted", f"this peer stood still for "
                                  f"{blind_s:.2f}s; the hosts' leases did not age meanwhile"))
        for host, at in sorted((raft_heard or {}).items()):
            manager.raft_contact(host, at)
            if hears and host in hears:
                manager.hears(host, hears[host], at)
        if manager.ready and not log_clock_running and state.log_time <= 0:
            out.start_log_clock = True
            out.notes.append(Note("log clock started", "a new cluster: its first leader's "
                                  "wall clock sets the origin"))
        out.decisions += manager.tick(state, now, log_now)
        return out
