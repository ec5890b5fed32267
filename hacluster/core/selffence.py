"""A host's self-fencing, without I/O (daemon/watchdog.py feeds the real watchdog).

A peer may feed its watchdog only while a leader acknowledges it. An acknowledgement of
a renewal this host sent at `t` (its own monotonic clock) lets it feed until
`t + self_fence_s`: counted from the *sending*, never from the arrival, so a delayed or
replayed acknowledgement cannot stretch it past what the leader can bound (every such
renewal reached a leader before it was acknowledged: core/manager.py
`watchdog_fenced_at`). Challenges (unsolicited acks) allow nothing.

The same holds over Raft, so that a host the leader hears through its replication is
not left to fence itself when only the lease channel fails: a follower numbers its
answers to the leader's replication and remembers when each left; the leader, once a
read mark taken after it received answer n is confirmed by a majority, grants n in its
next replication, and the follower is allowed from when n left (raft/engine.py). The
leader's own host is allowed from the moment each of its confirmed reads was requested.

When the allowance runs out the peer destroys its VMs and stops feeding; the watchdog
then resets the machine within its timeout. Until the first acknowledgement the
watchdog is not armed at all: a peer that never joined has nothing to protect.
"""

from __future__ import annotations

import enum
from collections import OrderedDict

ROUNDS_REMEMBERED = 256  # send times kept for acknowledgements still to come


class Verdict(enum.Enum):
    WAIT = "wait"  # never acknowledged yet: do not arm
    FEED = "feed"  # acknowledged recently enough
    SELF_FENCE = "self-fence"  # the allowance ran out: destroy VMs, stop feeding


class SelfFence:
    def __init__(self, self_fence_s: float) -> None:
        if not self_fence_s > 0:
            raise ValueError(f"self_fence_s must be > 0 (got {self_fence_s})")
        self.self_fence_s = self_fence_s
        self.allowed_until = float("-inf")  # monotonic
        self._sent: OrderedDict[int, float] = OrderedDict()  # round seq -> sent at
        self.fired_at: float | None = None

    def sent(self, seq: int, now: float) -> None:
        """A renewal round `seq` left at `now` (the first time, if sent on many links)."""
        self._sent.setdefault(seq, now)
        while len(self._sent) > ROUNDS_REMEMBERED:
            self._sent.popitem(last=False)

    def acknowledged(self, seq: int, challenge: bool = False) -> None:
        """A leader acknowledged round `seq` (acks are released only once a majority
        confirmed the leader: core/readindex.py)."""
        sent_at = self._sent.get(seq)
        if challenge or sent_at is None:
            return
        self._allow(sent_at + self.self_fence_s)

    def allow_from(self, anchor: float) -> None:
        """Allowed from `anchor`: when a Raft answer of ours that a leader granted left,
        or (leading) when a read we requested, since confirmed by a majority, was asked."""
        self._allow(anchor + self.self_fence_s)

    def _allow(self, until: float) -> None:
        if self.fired_at is None:  # once fired, the machine is going down: stay down
            self.allowed_until = max(self.allowed_until, until)

    def verdict(self, now: float) -> Verdict:
        if self.fired_at is not None:
            return Verdict.SELF_FENCE
        if self.allowed_until == float("-inf"):
            return Verdict.WAIT
        if now < self.allowed_until:
            return Verdict.FEED
        self.fired_at = now
        return Verdict.SELF_FENCE

    def left_s(self, now: float) -> float | None:
        """Seconds of allowance left (None: never acknowledged)."""
        if self.allowed_until == float("-inf"):
            return None
        return self.allowed_until - now
