"""The log clock: time in the replicated state that no host's wall clock can move.

Time windows in `apply` (the fence cap, a VM's stable time) count in `log_time`, the
largest log-clock reading any proposer wrote into an entry. Each peer estimates the
log clock as the largest reading it applied plus the time its own *monotonic* clock
measured since it applied that reading.

Why that never runs ahead of real time: a reading was written at or before the moment
a peer applied it, so "reading + monotonic time since applying it" is at most "reading +
real time since writing it". By induction from the first reading, every estimate, and
so `log_time`, advances no faster than real time (up to monotonic clock drift, parts
per million): a cap of K fences per W seconds of log time admits at most K in any real
window of W. Wall clocks (skewed, stepped by an hour, set back) never enter it; the
wall stamp of an entry is for people only.

The estimate lags real time only by how long a reading takes to be applied (a
replication round trip) at each leader change, and by whatever time passed while no
peer was running (a whole-cluster outage): the log clock stands still then.

The very first reading of a new cluster has nothing to extend: the first leader whose
no-op committed (so it has applied everything committed) and who found no log time yet
starts the clock from its wall clock (`start`). That only fixes the origin; no
window depends on it.
"""

from __future__ import annotations


class LogClock:
    """One peer's log clock estimate. Feed it every applied log time (`observe`)."""

    def __init__(self) -> None:
        self._reading = 0.0  # the largest reading applied or extended, 0: none yet
        self._at = 0.0  # this peer's monotonic time when it held that reading

    def observe(self, log_time: float, mono: float) -> None:
        """The state now holds `log_time` (after an apply or a snapshot restore)."""
        if log_time > 0 and log_time > self.now(mono):
            self._reading, self._at = log_time, mono

    def now(self, mono: float) -> float:
        """The estimate at monotonic time `mono` (0.0: this peer has no reading yet)."""
        if self._reading <= 0:
            return 0.0
        return self._reading + max(0.0, mono - self._at)

    def start(self, wall: float, mono: float) -> bool:
        """Start a new cluster's clock (see the module doc); False if it already runs."""
        if self._reading > 0:
            return False
        self._reading, self._at = wall, mono
        return True

    @property
    def running(self) -> bool:
        return self._reading > 0
