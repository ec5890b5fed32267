"""Lease renewals over UDP, on every link a host has: the sockets around the pure
protocol of core/renewal.py (read that first).

Every peer sends a renewal round (one datagram per link to each voter) every
`lease_renew_s`, and a follow-up round at once when an ack shows its nonce was stale.
Every peer judges what it receives (replays are refused); the leader credits renewals
to its manager and answers each with an ack, released only once its read index is
confirmed (core/readindex.py). An ack to a round sent after the agent read libvirt is
the agent's read barrier.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from hacluster.core.ratelimit import RefusalLine, RefusalLog, held_back
from hacluster.core.readindex import ReadMark
from hacluster.core.renewal import (
    REFUSAL_LOG_INTERVAL_S,
    Ack,
    LeaseCodec,
    LeaseEndpoint,
    Renewal,
    Targets,
)

# An admitted renewal: (the renewal, credit_at or None, answer); the leader calls answer
# with its confirmed read mark (any other peer never does).
Answer = Callable[[ReadMark], None]
RenewalHandler = Callable[[Renewal, float | None, Answer], None]


@dataclass(frozen=True)
class LeaseTimes:
    renew_s: float  # how often a round goes out
    ttl_s: float  # a nonce older than this credits nothing


log = logging.getLogger("hacluster.leases")


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, owner: LeaseService, link: str) -> None:
        self.owner = owner
        self.link = link
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.owner.received(self, data, addr)

    def error_received(self, exc: Exception) -> None:
        self.owner.errors += 1


@dataclass
class LinkHealth:
    last_sent: float = 0.0
    last_ack: float = 0.0  # monotonic time of the last ack received on this link
    send_errors: int = 0


class LeaseService:
    """Both sides: a listener on every local link, and the renewal sender."""

    def __init__(self, me: str, codec: LeaseCodec, links: dict[str, str], port: int,
                 on_renewal: RenewalHandler, targets: Callable[[], Targets],
                 times: Callable[[], LeaseTimes],
                 known_sources: Callable[[], set[str]] = set) -> None:
        self.me = me
        self.codec = codec
        self.links = links  # link name -> local address
        self.port = port
        self.on_renewal = on_renewal
        self.targets = targets
        self.times = times
        self.known_sources = known_sources  # addresses of the cluster's hosts
        self._known: tuple[float, set[str]] = (-1.0, set())
        self.endpoint = LeaseEndpoint(me, codec, os.urandom(8))
        self.health: dict[str, LinkHealth] = {name: LinkHealth() for name in links}
        self.errors = 0
        self.last_ack: Ack | None = None
        self.last_ack_at = 0.0
        # self-fencing (daemon/selffencing.py): told every round sent and every ack
        self.round_sent: Callable[[int, float], None] | None = None
        self.ack_received: Callable[[Ack], None] | None = None
        self._endpoints: dict[str, _Endpoint] = {}
        self._ack_waiters: list[tuple[int, asyncio.Future[Ack]]] = []

    @property
    def boot(self) -> bytes:
        return self.endpoint.sender.boot

    @property
    def seq(self) -> int:
        return self.endpoint.sender.seq

    @property
    def rejected(self) -> int:
        """Unreadable, forged or replayed datagrams."""
        return self.endpoint.rejected

    @property
    def refusals(self) -> RefusalLog:
        return self.endpoint.refusals

    @property
    def seen(self) -> dict[str, dict[str, float]]:
        """host -> link -> monotonic time of its last renewal that was no replay."""
        return self.endpoint.seen

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for link, address in sorted(self.links.items()):
            endpoint = _Endpoint(self, link)
            transport, _ = await loop.create_datagram_endpoint(
                lambda e=endpoint: e, local_addr=(address, self.port))  # type: ignore[misc]
            _enlarge_receive_buffer(transport)
            self._endpoints[link] = endpoint

    def close(self) -> None:
        for endpoint in self._endpoints.values():
            if endpoint.transport is not None:
                endpoint.transport.close()
        for _, waiter in self._ack_waiters:
            waiter.cancel()

    def log_overdue_refusals(self) -> None:
        """Say what the rate limit held back from sources that went quiet."""
        for line in self.endpoint.refusals.overdue(time.monotonic()):
            log.warning("lease: refused %d more datagram(s) from %s in the last %gs (%s)",
                        line.suppressed, line.source, REFUSAL_LOG_INTERVAL_S,
                        _reason(line.kind))

    # ------------------------------------------------------------ receiving

    def _is_known(self, address: str, now: float) -> bool:
        at, known = self._known
        if now - at > 1.0:  # looked up once a second: a flood must stay cheap
            known = self.known_sources()
            self._known = (now, known)
        return address in known

    def received(self, endpoint: _Endpoint, data: bytes, addr: tuple[str, int]) -> None:
        now = time.monotonic()
        ttl = self.times().ttl_s
        got = self.endpoint.receive(data, now, ttl, addr[0], self._is_known(addr[0], now))
        if got.refusal is not None:
            log_refusal(got.refusal)
        if got.ack is not None:
            self._ack(got.ack, now)
            if got.follow_up:  # the round it answers echoed a stale nonce
                self.send_round()
        elif got.renewal is not None:
            renewal = got.renewal

            def answer(mark: ReadMark) -> None:
                if endpoint.transport is not None:
                    endpoint.transport.sendto(self.endpoint.answer(
                        renewal, mark.term, mark.commit_index, time.monotonic(), ttl), addr)

            self.on_renewal(renewal, got.credit_at, answer)

    def _ack(self, ack: Ack, now: float) -> None:
        health = self.health.get(ack.link)
        if health is not None:
            health.last_ack = now
        self.last_ack, self.last_ack_at = ack, now
        if self.ack_received is not None:
            self.ack_received(ack)
        still = []
        for sent_seq, waiter in self._ack_waiters:
            if ack.seq >= sent_seq and not waiter.done():
                waiter.set_result(ack)
            elif not waiter.done():
                still.append((sent_seq, waiter))
        self._ack_waiters = still

    # ------------------------------------------------------------ sending

    def send_round(self) -> int:
        """One renewal per link to every voter. Returns the sequence number used."""
        now = time.monotonic()
        seq, datagrams = self.endpoint.round(self.targets(), now, time.time(),
                                             self.times().renew_s)
        if self.round_sent is not None:
            self.round_sent(seq, now)
        for out in datagrams:
            endpoint = self._endpoints.get(out.link)
            if endpoint is None or endpoint.transport is None:
                continue
            try:
                endpoint.transport.sendto(out.datagram, (out.address, self.port))
                self.health[out.link].last_sent = now
            except OSError:
                self.health[out.link].send_errors += 1
        return seq

    def challenge(self, host: str, routes: list[tuple[str, str]], term: int) -> None:
        """Ask a silent host, on every route, to renew now (its last chance)."""
        now = time.monotonic()
        for out in self.endpoint.challenge(host, routes, term, now, self.times().ttl_s):
            endpoint = self._endpoints.get(out.link)
            if endpoint is not None and endpoint.transport is not None:
                with contextlib.suppress(OSError):
                    endpoint.transport.sendto(out.datagram, (out.address, self.port))

    async def barrier(self, timeout_s: float) -> Ack | None:
        """Renew now and wait for the leader's ack to this very round."""
        waiter: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        seq = self.send_round()
        self._ack_waiters.append((seq, waiter))
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            return None

    def heard(self) -> dict[str, float]:
        """Hosts whose renewals this peer received within a lease: host -> when
        (time.monotonic())."""
        return self.endpoint.heard(time.monotonic(), self.times().ttl_s)

    def link_report(self) -> dict[str, dict[str, float | int]]:
        now = time.monotonic()
        return {
            link: {"ack_age_s": round(now - h.last_ack, 3) if h.last_ack else -1.0,
                   "send_errors": h.send_errors}
            for link, h in sorted(self.health.items())
        }


RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024


def _enlarge_receive_buffer(transport: asyncio.BaseTransport) -> None:
    """Room for a burst: a flood on the port must not crowd the renewals out of a small
    default buffer. As root the system limit (rmem_max) does not apply."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    if force is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, force, RECEIVE_BUFFER_BYTES)


REFUSAL_REASONS = {  # BadDatagram reasons and the endpoint's own
    "rate": "over its rate budget",
    "replay": "a replayed or stale renewal",
    "mac": "bad MAC (wrong cluster secret or damaged)",
    "size": "bad size",
    "version": "another lease protocol version",
    "malformed": "malformed",
}


def _reason(kind: str) -> str:
    return REFUSAL_REASONS.get(kind, kind)


def log_refusal(line: RefusalLine) -> None:
    """One rate-limited line for lease datagrams refused from a source."""
    log.warning("lease: refused a datagram from %s: %s%s", line.source, _reason(line.kind),
                held_back(line, REFUSAL_LOG_INTERVAL_S))
