"""Refusals (connections or messages turned away) counted for status and rate-limited
for the log, so that a flood of thousands writes a handful of lines.

Pure: time comes in as an argument (any clock that only moves forward), the caller logs.

    refusals = RefusalLog(interval_s=10.0)
    line = refusals.refuse("bad_handshake", "10.0.0.9", now)   # on every refusal
    if line is not None:                                        # log it, with
        log.warning("... from %s%s", detail, held_back(line.suppressed))
    for line in refusals.overdue(now):   # now and then: what a source that went quiet
        log.warning(...)                 # left unsaid (line.suppressed > 0)
    refusals.summary(now)                # for status: totals per kind, recent sources

`RateLimiter` alone is the part that decides: at most one line per key per interval,
counting what it holds back. Keys are strings (a source address); past `max_keys`
active keys, new ones share the key `OTHERS`, so memory and lines stay bounded even
when the flood comes from many addresses.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

OTHERS = "other sources"


@dataclass(frozen=True)
class Burst:
    """A line to log now for `key`: `suppressed` events were held back before it."""

    key: str
    suppressed: int


class RateLimiter:
    """At most one line per key per `interval_s`; counts the events it holds back."""

    def __init__(self, interval_s: float, max_keys: int = 256) -> None:
        if interval_s <= 0 or max_keys < 1:
            raise ValueError("interval_s must be > 0 and max_keys >= 1")
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._last: dict[str, float] = {}  # key -> when its last line was allowed
        self._held: dict[str, int] = {}  # key -> events held back since then

    def hit(self, key: str, now: float) -> Burst | None:
        """One event of `key`: a Burst when it may be logged now, else None (counted)."""
        key = self._admit_key(key, now)
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return Burst(key, self._held.pop(key, 0))

    def overdue(self, now: float) -> list[Burst]:
        """Keys whose interval ended with events held back: one summary Burst each
        (the key then starts a new interval). Keys quiet for a whole interval are
        forgotten."""
        out = []
        for key, last in list(self._last.items()):
            if now - last < self.interval_s:
                continue
            held = self._held.pop(key, 0)
            if held:
                out.append(Burst(key, held))
                self._last[key] = now
            else:
                del self._last[key]
        return out

    @property
    def tracked(self) -> int:
        return len(self._last)

    def _admit_key(self, key: str, now: float) -> str:
        if key in self._last or len(self._last) < self.max_keys:
            return key
        for old, last in list(self._last.items()):  # forget quiet keys first
            if now - last >= self.interval_s and not self._held.get(old):
                del self._last[old]
        return key if len(self._last) < self.max_keys else OTHERS


@dataclass(frozen=True)
class RefusalLine:
    """What to log for a refusal (or, from `overdue`, for refusals held back)."""

    kind: str
    source: str  # OTHERS when too many sources were active at once
    suppressed: int  # refusals of this kind from this source held back before this line


class RefusalLog:
    """Counts refusals per kind, remembers the last few (kind, source) pairs with their
    count and time, and rate-limits the log lines per kind and source."""

    def __init__(self, interval_s: float = 10.0, recent: int = 5, max_sources: int = 256) -> None:
        self.interval_s = interval_s
        self._max_sources = max_sources
        self._recent_size = recent
        self._limiters: dict[str, RateLimiter] = {}
        self._kinds: dict[str, int] = {}
        self._recent: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()

    @property
    def total(self) -> int:
        return sum(self._kinds.values())

    def refuse(self, kind: str, source: str, now: float) -> RefusalLine | None:
        """Count one refusal; a line to log now, or None when it is held back."""
        self._kinds[kind] = self._kinds.get(kind, 0) + 1
        count, _ = self._recent.pop((kind, source), (0, now))
        self._recent[(kind, source)] = (count + 1, now)
        while len(self._recent) > self._recent_size:
            self._recent.popitem(last=False)
        limiter = self._limiters.get(kind)
        if limiter is None:
            limiter = self._limiters[kind] = RateLimiter(self.interval_s, self._max_sources)
        burst = limiter.hit(source, now)
        return None if burst is None else RefusalLine(kind, burst.key, burst.suppressed)

    def overdue(self, now: float) -> list[RefusalLine]:
        """Summary lines for sources whose held-back refusals were never logged."""
        return [RefusalLine(kind, b.key, b.suppressed)
                for kind, limiter in sorted(self._limiters.items())
                for b in limiter.overdue(now)]

    def summary(self, now: float) -> dict[str, Any]:
        """Plain data for status: {"total", "kinds": {kind: n}, "recent": [{"kind",
        "source", "count", "age_s"}, newest first]}."""
        recent = [{"kind": kind, "source": source, "count": count,
                   "age_s": round(max(0.0, now - at), 1)}
                  for (kind, source), (count, at) in reversed(list(self._recent.items()))]
        return {"total": self.total, "kinds": dict(sorted(self._kinds.items())),
                "recent": recent}


def held_back(line: RefusalLine, interval_s: float) -> str:
    """The suffix of a log line that says how many refusals it stands for."""
    if not line.suppressed:
        return ""
    return f" ({line.suppressed} more like it not logged in the last {interval_s:g}s)"
