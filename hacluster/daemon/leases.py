"""Lease renewals over UDP, on every link a host has.

Every peer sends a renewal on each of its links to each voter, every
`lease_renew_s`; the leader records it (its manager judges leases by its own
clock) and answers with an ack carrying its term and commit index. The ack is
also the agent's read barrier: an agent that saw an ack sent after it read
libvirt, and has applied up to that commit index, acts on fresh state.

Datagrams are authenticated with an HMAC keyed from the cluster secret;
replays are refused by a per-sender boot id + sequence number and a 30 s
timestamp window (peers keep their clocks in sync with NTP).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack

VERSION = 1
MAC_BYTES = 16
MAX_DATAGRAM = 1024
CLOCK_WINDOW_S = 30.0


class BadDatagram(ValueError):
    """A datagram was refused; the message says why (never the secret)."""


@dataclass(frozen=True)
class Renewal:
    host: str
    link: str
    boot: bytes
    seq: int
    sent_at: float  # sender wall clock


@dataclass(frozen=True)
class Ack:
    leader: str
    term: int
    commit_index: int
    host: str  # echo of the renewal
    link: str
    seq: int


class LeaseCodec:
    def __init__(self, cluster_secret: str) -> None:
        self._key = hashlib.sha256(b"hacluster lease v1\0" + cluster_secret.encode()).digest()

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:MAC_BYTES]

    def pack(self, message: Renewal | Ack) -> bytes:
        if isinstance(message, Renewal):
            fields = ["renew", message.host, message.link, message.boot, message.seq,
                      message.sent_at]
        else:
            fields = ["ack", message.leader, message.term, message.commit_index, message.host,
                      message.link, message.seq]
        body = msgpack.packb([VERSION, *fields], use_bin_type=True)
        return body + self._mac(body)

    def unpack(self, datagram: bytes) -> Renewal | Ack:
        if len(datagram) > MAX_DATAGRAM or len(datagram) <= MAC_BYTES:
            raise BadDatagram(f"datagram of {len(datagram)} bytes")
        body, mac = datagram[:-MAC_BYTES], datagram[-MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise BadDatagram("bad MAC (wrong cluster secret or damaged datagram)")
        try:
            raw = msgpack.unpackb(body, raw=False)
            if raw[0] != VERSION:
                raise BadDatagram(f"lease protocol version {raw[0]!r}")
            if raw[1] == "renew":
                _, _, host, link, boot, seq, sent_at = raw
                return Renewal(str(host), str(link), bytes(boot), int(seq), float(sent_at))
            if raw[1] == "ack":
                _, _, leader, term, commit, host, link, seq = raw
                return Ack(str(leader), int(term), int(commit), str(host), str(link), int(seq))
        except (ValueError, TypeError, IndexError, msgpack.UnpackException) as exc:
            raise BadDatagram(f"malformed datagram ({type(exc).__name__})") from None
        raise BadDatagram("unknown datagram kind")


@dataclass
class ReplayGuard:
    """Accept each sender's sequence numbers once and in order, per boot and per
    link: one renewal goes out on every link with the same sequence number, and
    each copy is that link's proof of life."""

    seen: dict[tuple[str, str], tuple[bytes, int]] = field(default_factory=dict)

    def fresh(self, r: Renewal, wall_now: float) -> bool:
        if abs(wall_now - r.sent_at) > CLOCK_WINDOW_S:
            return False
        key = (r.host, r.link)
        last = self.seen.get(key)
        if last is not None and last[0] == r.boot and r.seq <= last[1]:
            return False
        self.seen[key] = (r.boot, r.seq)
        return True


# on_renewal(host, link) -> (leader name, term, commit index) if we lead, else None
RenewalHandler = Callable[[str, str], tuple[str, int, int] | None]


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
                 on_renewal: RenewalHandler) -> None:
        self.me = me
        self.codec = codec
        self.links = links  # link name -> local address
        self.port = port
        self.on_renewal = on_renewal
        self.boot = os.urandom(8)
        self.seq = 0
        self.guard = ReplayGuard()
        self.health: dict[str, LinkHealth] = {name: LinkHealth() for name in links}
        self.rejected = 0
        self.errors = 0
        self.seen: dict[str, dict[str, float]] = {}  # host -> link -> monotonic time
        self.last_ack: Ack | None = None
        self.last_ack_at = 0.0
        self._endpoints: dict[str, _Endpoint] = {}
        self._ack_waiters: list[tuple[float, asyncio.Future[Ack]]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for link, address in sorted(self.links.items()):
            endpoint = _Endpoint(self, link)
            await loop.create_datagram_endpoint(lambda e=endpoint: e,  # type: ignore[misc]
                                                local_addr=(address, self.port))
            self._endpoints[link] = endpoint

    def close(self) -> None:
        for endpoint in self._endpoints.values():
            if endpoint.transport is not None:
                endpoint.transport.close()
        for _, waiter in self._ack_waiters:
            waiter.cancel()

    def received(self, endpoint: _Endpoint, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = self.codec.unpack(data)
        except BadDatagram:
            self.rejected += 1
            return
        if isinstance(message, Renewal):
            self._renewal(endpoint, message, addr)
        elif message.host == self.me:
            self._ack(message)

    def _renewal(self, endpoint: _Endpoint, r: Renewal, addr: tuple[str, int]) -> None:
        if not self.guard.fresh(r, time.time()):
            self.rejected += 1
            return
        self.seen.setdefault(r.host, {})[r.link] = time.monotonic()
        leading = self.on_renewal(r.host, r.link)
        if leading is None or endpoint.transport is None:
            return
        leader, term, commit = leading
        ack = Ack(leader, term, commit, r.host, r.link, r.seq)
        endpoint.transport.sendto(self.codec.pack(ack), addr)

    def _ack(self, ack: Ack) -> None:
        now = time.monotonic()
        health = self.health.get(ack.link)
        if health is not None:
            health.last_ack = now
        self.last_ack, self.last_ack_at = ack, now
        still = []
        for sent_seq, waiter in self._ack_waiters:
            if ack.seq >= sent_seq and not waiter.done():
                waiter.set_result(ack)
            elif not waiter.done():
                still.append((sent_seq, waiter))
        self._ack_waiters = still

    def send_renewals(self, targets: dict[str, list[tuple[str, str]]]) -> int:
        """targets: host -> [(link, address)] to reach it. Returns the sequence used."""
        self.seq += 1
        now = time.monotonic()
        for host, routes in sorted(targets.items()):
            if host == self.me:
                continue
            for link, address in routes:
                endpoint = self._endpoints.get(link)
                if endpoint is None or endpoint.transport is None:
                    continue
                datagram = self.codec.pack(Renewal(self.me, link, self.boot, self.seq,
                                                   time.time()))
                try:
                    endpoint.transport.sendto(datagram, (address, self.port))
                    self.health[link].last_sent = now
                except OSError:
                    self.health[link].send_errors += 1
        return self.seq

    async def barrier(self, targets: dict[str, list[tuple[str, str]]],
                      timeout_s: float) -> Ack | None:
        """Renew now and wait for the leader's ack to this very renewal."""
        waiter: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        seq = self.send_renewals(targets)
        self._ack_waiters.append((seq, waiter))
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        except TimeoutError:
            return None

    def link_report(self) -> dict[str, dict[str, float | int]]:
        now = time.monotonic()
        return {
            link: {"ack_age_s": round(now - h.last_ack, 3) if h.last_ack else -1.0,
                   "send_errors": h.send_errors}
            for link, h in sorted(self.health.items())
        }
