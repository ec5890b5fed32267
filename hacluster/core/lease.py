"""Lease verdicts, judged by the leader's own monotonic clock.

A host renews over every network it has (links); any one renewal keeps the
lease. A newly elected leader gives every host a full lease before judging.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hacluster.fsm.model import Settings


class Verdict(enum.StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class LeaseView:
    host: str
    verdict: Verdict
    age_s: float  # since the last renewal on any link (or since the lease was granted)
    links: tuple[tuple[str, float], ...]  # (link, age of its last renewal)

    def evidence(self, settings: Settings) -> str:
        links = ", ".join(f"{name} {age:.2f}s" for name, age in self.links) or "none"
        return (
            f"last renewal {self.age_s:.2f}s ago (suspect after {settings.lease_suspect_s:g}s,"
            f" expired after {settings.lease_ttl_s:g}s); links: {links}"
        )


GRANT = "granted"  # pseudo-link: the full lease a new leader grants
RAFT = "raft"  # pseudo-link: the host's peer answered the leader's Raft replication
VIA = "via "  # pseudo-links "via h3": another voter receives the host's renewals


class LeaseTable:
    def __init__(self) -> None:
        self._seen: dict[str, dict[str, float]] = {}

    def grant_all(self, hosts: list[str], now: float) -> None:
        """New leader: nobody's silence before now counts."""
        self._seen = {host: {GRANT: now} for host in hosts}

    def renew(self, host: str, link: str, now: float) -> None:
        links = self._seen.setdefault(host, {})
        links[link] = max(now, links.get(link, now))

    def discount(self, blind_s: float, now: float) -> None:
        """The judge heard nothing for blind_s up to now through its own fault (its
        process stood still): that silence is not the hosts', so their leases do not
        age during it."""
        for links in self._seen.values():
            for link in links:
                links[link] = min(now, links[link] + blind_s)

    def forget(self, host: str) -> None:
        self._seen.pop(host, None)

    def view(self, host: str, now: float, settings: Settings) -> LeaseView:
        links = self._seen.get(host)
        if links is None:  # first sight of this host under this leader: full lease
            links = self._seen[host] = {GRANT: now}
        age = now - max(links.values())
        if age >= settings.lease_ttl_s:
            verdict = Verdict.EXPIRED
        elif age >= settings.lease_suspect_s:
            verdict = Verdict.SUSPECT
        else:
            verdict = Verdict.ALIVE
        shown = tuple(sorted((k, now - v) for k, v in links.items() if k != GRANT))
        return LeaseView(host, verdict, age, shown)

    def renewed_within(self, host: str, now: float, window_s: float,
                       lease_only: bool = False) -> bool:
        """Did this leader hear the host directly within the window: a renewal, or
        (unless lease_only) its peer answering Raft? A new leader's grant and what other
        voters relay are no such sign."""
        links = self._seen.get(host, {})
        return any(now - t < window_s for k, t in links.items()
                   if k != GRANT and not k.startswith(VIA) and not (lease_only and k == RAFT))

    def last_life(self, host: str) -> float | None:
        """The latest sign of life of any kind (None: none since this leader's grant)."""
        times = [t for k, t in self._seen.get(host, {}).items() if k != GRANT]
        return max(times) if times else None

    def link_ages(self, host: str, now: float) -> dict[str, float]:
        return {k: now - v for k, v in sorted(self._seen.get(host, {}).items()) if k != GRANT}
