"""What the leader does about a host that fell silent, before and when its lease runs out.

- **Read its power** (issue 11). A host that lost power stops renewing at once, and its
  BMC then says so: the same evidence a fence's read-back accepts. So after
  `probe_after_s` of silence (and at once for hosts a new leader has not heard from) the
  leader reads the host's power through its BMC, commanding nothing. Read off: the host
  is fenced now (its fence reads back off again, and counts against the cap like any
  other); read on, or no answer: nothing changes, the lease runs its course. One read per
  silence: a host that shows life starts a new one.
- **Challenge it** before a fence on lease expiry alone: the leader sends it a challenge
  on every link and waits `CHALLENGE_WAIT_S`; a live host answers with a renewal at once,
  so a lossy network alone does not fence it.

Pure: time comes in as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_PROBES = 4  # power reads in flight at once
PROBE_TIMEOUT_S = 2.0  # a power read that takes longer changes nothing
SAME_LIFE_S = 0.2  # relayed news of one renewal differs by transit times: the same life
NEW_LEADER_GRACE_S = 0.3  # a new leader hears most hosts (Raft answers) within this
CHALLENGE_WAIT_S = 0.3  # how long a challenged host has to answer


@dataclass(frozen=True, slots=True)
class ProbePower:
    """Read the host's power through its BMC; command nothing."""

    host: str
    reason: str


@dataclass(frozen=True, slots=True)
class Challenge:
    """Ask the host over every link to renew now (its last chance before a fence)."""

    host: str
    reason: str


@dataclass
class SilenceWatch:
    _probing: set[str] = field(default_factory=set)
    _probed: dict[str, float | None] = field(default_factory=dict)  # host -> life it followed
    _read_off: dict[str, tuple[str, float]] = field(default_factory=dict)  # evidence, when
    _challenged: dict[str, float] = field(default_factory=dict)

    def reset(self) -> None:
        """A new leadership: nothing carries over (reads of another leader's episode)."""
        self._probing.clear()
        self._probed.clear()
        self._read_off.clear()
        self._challenged.clear()

    # ------------------------------------------------------------ power reads

    def probe_due(self, host: str, last_life: float | None, now: float, led_since: float,
                  probe_after_s: float) -> ProbePower | None:
        """A read of this host's power, if one is due (`last_life`: the latest sign of life
        this leader has, None: none since it took over)."""
        if probe_after_s <= 0 or host in self._probing or len(self._probing) >= MAX_PROBES:
            return None
        if host in self._probed and _same_silence(self._probed[host], last_life):
            return None  # read once in this silence already
        if last_life is None:
            if now - led_since < NEW_LEADER_GRACE_S:
                return None
            why = f"not heard since this leader took over {now - led_since:.2f}s ago"
        elif now - last_life >= probe_after_s:
            why = f"silent for {now - last_life:.2f}s"
        else:
            return None
        self._probing.add(host)
        self._probed[host] = last_life
        return ProbePower(host, why)

    def probe_result(self, host: str, off: bool, detail: str, now: float) -> None:
        self._probing.discard(host)
        if off:
            self._read_off[host] = (detail, now)

    def read_off(self, host: str, last_life: float | None) -> str | None:
        """The evidence that the host's power read off, if no sign of life came since."""
        reading = self._read_off.get(host)
        if reading is None:
            return None
        detail, at = reading
        if last_life is not None and last_life > at:
            del self._read_off[host]  # it lives after all (powered on again)
            return None
        return f"power read off by its BMC: {detail}"

    # ------------------------------------------------------------ challenges

    def challenge(self, host: str, last_life: float | None, now: float,
                  why: str) -> tuple[bool, Challenge | None]:
        """Before a fence on lease expiry alone: (may it be fenced now, a challenge to
        send now). The first call challenges; the fence waits until the host had
        CHALLENGE_WAIT_S to answer, and a sign of life since the challenge clears it."""
        at = self._challenged.get(host)
        if at is not None and last_life is not None and last_life > at:
            del self._challenged[host]
            at = None
        if at is None:
            self._challenged[host] = now
            return False, Challenge(host, why)
        return now - at >= CHALLENGE_WAIT_S - 1e-9, None

    def alive(self, host: str) -> None:
        """The host showed life: forget its reads and challenges."""
        self._read_off.pop(host, None)
        self._challenged.pop(host, None)


def _same_silence(before: float | None, now_last: float | None) -> bool:
    """No new sign of life since `before` (relayed news of an old renewal may arrive with a
    slightly different time: within SAME_LIFE_S it is the same life)."""
    if before is None or now_last is None:
        return before is now_last
    return now_last - before < SAME_LIFE_S
