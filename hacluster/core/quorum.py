"""The quorum guard of the leader (core/manager.py builds on it), pure.

- A host is fenced only while this leader hears renewals from a majority of voters
  without that host (itself included), so the fence can be confirmed (`guard_problem`).
- A leader that hears no majority for a whole lease, while another voter does, is more
  likely the one cut off: it hands leadership over (`StepDown`).
A host another voter hears is alive though the leader does not hear it (`hears`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hacluster.core.lease import VIA, LeaseTable
from hacluster.fsm.model import ClusterState, HostRole
from hacluster.fsm.states import HostState

STEP_DOWN_EVERY_S = 2.0


@dataclass(frozen=True, slots=True)
class StepDown:
    """Hand leadership to another peer (Raft TimeoutNow): our own host must be fenced
    (a leader never fences itself: it could not confirm the fence afterwards), or we
    hear no majority of renewals while `target` does."""

    reason: str
    target: str = ""  # a host name; "" lets Raft pick the most caught-up follower


class QuorumGuard:
    def __init__(self, me: str) -> None:
        self.me = me
        self.leases = LeaseTable()
        self._last_step_down = -1e18
        self._majority_heard_at = -1e18  # last tick a majority of voters renewed to us
        self._hears: dict[str, tuple[frozenset[str], float]] = {}  # host -> (whom, when)

    def hears(self, reporter: str, ages: Mapping[str, float], at: float) -> None:
        """Voter `reporter` said, answering our Raft replication at `at`, whose renewals
        it receives and how long ago it got each (`ages`). A host another voter hears is
        alive though we do not hear it (a one-way cut, a link we lack): its lease counts
        those too, as of when that voter heard it. And a leader that hears no majority
        learns which peer does (see _hear_majority)."""
        self._hears[reporter] = (frozenset(ages), at)
        for host, age in ages.items():
            if host not in (self.me, reporter):
                self.leases.renew(host, f"{VIA}{reporter}", at - age)

    def voters(self, state: ClusterState) -> list[str]:
        """Voting hosts (witnesses included); a leader is one even before the state
        lists it."""
        return sorted({*_voters(state), self.me})

    def live_voters(self, state: ClusterState, now: float, lease_only: bool = False) -> list[str]:
        """Voters this leader hears within a lease (itself included): by a renewal or
        through Raft, or (lease_only) by a renewal only."""
        ttl = state.settings.lease_ttl_s
        return [name for name in self.voters(state)
                if name == self.me or self.leases.renewed_within(name, now, ttl, lease_only)]

    def guard_problem(self, state: ClusterState, target: str, now: float) -> str:
        """Why fencing `target` now could leave no majority to confirm it ("" if not):
        the voters this leader hears, without the target, must be a majority."""
        voters = self.voters(state)
        live = [v for v in self.live_voters(state, now) if v != target]
        if len(live) * 2 > len(voters):
            return ""
        return (f"only {len(live)} of {len(voters)} voters renew their leases to leader "
                f"{self.me} without {target} ({', '.join(live) or 'none'}): a fence now "
                "could not be confirmed; it waits for more voters, or an operator")

    def _hear_majority(self, state: ClusterState, now: float) -> list[StepDown]:
        """A leader that has had renewals from no majority of voters for a whole lease is
        more likely the one cut off (its lease traffic lost, though Raft still flows): it
        hands leadership to a peer that may hear them; the hosts' agents need its acks."""
        voters = self.voters(state)
        if len(self.live_voters(state, now, lease_only=True)) * 2 > len(voters):
            self._majority_heard_at = now
            return []
        ttl = state.settings.lease_ttl_s
        if now - self._majority_heard_at < ttl:
            return []
        better = sorted((-n, host) for host, (heard, at) in self._hears.items()
                        if host in voters and host != self.me and now - at < ttl
                        and (n := len(heard & {*voters} | {host})) * 2 > len(voters))
        if not better:  # nobody hears more: changing leaders would only churn
            return []
        heard = ", ".join(self.live_voters(state, now, lease_only=True))
        target = better[0][1]
        return self._step_down(f"this leader hears lease renewals from {heard} only, no "
                               f"majority of {len(voters)} voters, for "
                               f"{now - self._majority_heard_at:.1f}s; {target} hears "
                               f"{-better[0][0]}", now, target)

    def _step_down(self, why: str, now: float, target: str = "") -> list[StepDown]:
        if now - self._last_step_down < STEP_DOWN_EVERY_S:
            return []
        self._last_step_down = now
        return [StepDown(f"{why}; another peer must do it", target)]


def _voters(state: ClusterState) -> list[str]:
    return sorted(name for name, h in state.hosts.items()
                  if h.role is not HostRole.MEMBER and h.state is not HostState.REMOVED)
