"""The lease renewal protocol, both sides, without I/O (daemon/leases.py moves the bytes).

Every host sends a renewal on each of its links to each voter, every `lease_renew_s`;
the leader answers with an ack carrying its term, its commit index (the read index of
core/readindex.py: acks are released only once a majority confirmed the leader) and a
fresh *nonce*. Datagrams are authenticated with an HMAC keyed from the cluster secret.

What a renewal proves, and since when: nothing about the sender's clock is trusted. A
renewal echoes the freshest nonce its host received; the leader credits it as proof of
life at the moment *it issued that nonce* (its own monotonic clock), never later. So a
datagram that is replayed, delayed, duplicated or reordered can never make a host look
alive later than it provably was: at worst it credits an old moment again. A host
answers an ack at once with a follow-up renewal when the renewal it acknowledges echoed
an old nonce, so a live host is credited within a round trip of every period.

Replays are refused outright (no ack, counted) when their sequence number is not above
the last one seen from that host, boot and link, and when they come from a boot that a
later boot replaced (boot order is learnt only from credited renewals, so a replay of an
old boot cannot reorder them). The nonce carries the leader's term: a new leader knows
no nonce of its predecessor, credits nothing until a host echoes one of its own, and
grants every host a full lease meanwhile (core/lease.py).
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from dataclasses import dataclass, field

import msgpack

from hacluster.core.ratelimit import RefusalLine, RefusalLog

VERSION = 2  # 1: sender wall clock in a 30 s window (replayable across boots)
MAC_BYTES = 16
MAX_DATAGRAM = 1024
NO_NONCE = (0, 0)
BOOTS_REMEMBERED = 8  # superseded boots kept per host

Nonce = tuple[int, int]  # (leader term, counter)


class BadDatagram(ValueError):
    """A datagram was refused; the message says why (never the secret), `reason` is a
    short word for counting: size, mac, version, malformed."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Renewal:
    host: str
    link: str
    boot: bytes  # random per peer process start
    seq: int  # per boot, the same on every link of one round
    nonce: Nonce  # the freshest nonce its host got from a leader's ack
    sent_at: float  # sender wall clock: shown to people, never trusted


@dataclass(frozen=True, slots=True)
class Ack:
    leader: str
    term: int
    commit_index: int  # read index (core/readindex.py)
    host: str  # echo of the renewal
    link: str
    seq: int
    nonce: Nonce  # to echo in the host's next renewals
    challenge: bool = False  # unsolicited (seq 0): renew now, this is your last chance


class LeaseCodec:
    def __init__(self, cluster_secret: str) -> None:
        self._key = hashlib.sha256(b"hacluster lease v1\0" + cluster_secret.encode()).digest()

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:MAC_BYTES]

    def pack(self, message: Renewal | Ack) -> bytes:
        if isinstance(message, Renewal):
            fields = ["renew", message.host, message.link, message.boot, message.seq,
                      list(message.nonce), message.sent_at]
        else:
            fields = ["ack", message.leader, message.term, message.commit_index, message.host,
                      message.link, message.seq, list(message.nonce), message.challenge]
        body = msgpack.packb([VERSION, *fields], use_bin_type=True)
        return body + self._mac(body)

    def unpack(self, datagram: bytes) -> Renewal | Ack:
        if len(datagram) > MAX_DATAGRAM or len(datagram) <= MAC_BYTES:
            raise BadDatagram(f"datagram of {len(datagram)} bytes", "size")
        body, mac = datagram[:-MAC_BYTES], datagram[-MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise BadDatagram("bad MAC (wrong cluster secret or damaged datagram)", "mac")
        try:
            raw = msgpack.unpackb(body, raw=False)
            if raw[0] != VERSION:
                raise BadDatagram(f"lease protocol version {raw[0]!r} (this peer speaks "
                                  f"{VERSION})", "version")
            if raw[1] == "renew":
                _, _, host, link, boot, seq, nonce, sent_at = raw
                return Renewal(str(host), str(link), bytes(boot), int(seq), _nonce(nonce),
                               float(sent_at))
            if raw[1] == "ack":
                _, _, leader, term, commit, host, link, seq, nonce, challenge = raw
                return Ack(str(leader), int(term), int(commit), str(host), str(link), int(seq),
                           _nonce(nonce), bool(challenge))
        except (ValueError, TypeError, IndexError, msgpack.UnpackException) as exc:
            raise BadDatagram(f"malformed datagram ({type(exc).__name__})",
                              "malformed") from None
        raise BadDatagram("unknown datagram kind", "malformed")


def _nonce(value: object) -> Nonce:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError("nonce")
    return int(value[0]), int(value[1])


# ---------------------------------------------------------------- the leader's side


@dataclass(frozen=True, slots=True)
class Admitted:
    """A renewal that is no replay. `credit_at`: the leader's monotonic time it proves
    its host alive at (None: its nonce is not one of this leader's recent ones: it is
    answered, so the host learns a nonce, but proves nothing)."""

    credit_at: float | None


class RenewalJudge:
    """The leader's view of renewals: which are replays, and what the others prove."""

    def __init__(self) -> None:
        self._term = 0
        self._counter = 0
        self._issued: deque[tuple[int, float]] = deque()  # (counter, monotonic), ascending
        self._last_seq: dict[tuple[str, str, bytes], int] = {}  # (host, link, boot) -> seq
        self._boot: dict[str, bytes] = {}  # host -> boot of its latest credited renewal
        self._superseded: dict[str, deque[bytes]] = {}
        self.refused = 0

    def issue(self, term: int, now: float, window_s: float) -> Nonce:
        """A fresh nonce for an ack this leader sends in `term`."""
        if term != self._term:
            self._term, self._counter = term, 0
            self._issued.clear()
        self._counter += 1
        self._issued.append((self._counter, now))
        while self._issued and self._issued[0][1] < now - window_s:
            self._issued.popleft()
        return term, self._counter

    def admit(self, r: Renewal, now: float, window_s: float) -> Admitted | None:
        """None: a replay (old sequence number or superseded boot), refused outright."""
        if r.boot in self._superseded.get(r.host, ()):
            self.refused += 1
            return None
        key = (r.host, r.link, r.boot)
        if r.seq <= self._last_seq.get(key, 0):
            self.refused += 1
            return None
        self._last_seq[key] = r.seq
        credit = self._issued_at(r.nonce, now, window_s)
        if credit is not None:
            self._credit_boot(r.host, r.boot)
        return Admitted(credit)

    def _issued_at(self, nonce: Nonce, now: float, window_s: float) -> float | None:
        term, counter = nonce
        if term != self._term or not self._issued:
            return None
        first = self._issued[0][0]
        pos = counter - first  # counters are consecutive in the deque
        if not 0 <= pos < len(self._issued):
            return None
        issued_at = self._issued[pos][1]
        return issued_at if issued_at >= now - window_s else None

    def _credit_boot(self, host: str, boot: bytes) -> None:
        previous = self._boot.get(host)
        if previous == boot:
            return
        self._boot[host] = boot
        if previous is not None:
            old = self._superseded.setdefault(host, deque(maxlen=BOOTS_REMEMBERED))
            old.append(previous)
            for k in [k for k in self._last_seq if k[0] == host and k[2] == previous]:
                del self._last_seq[k]


# ---------------------------------------------------------------- the host's side


@dataclass
class RenewalSender:
    """A host's renewal rounds: sequence numbers, the nonce to echo, follow-ups."""

    me: str
    boot: bytes
    seq: int = 0
    nonce: Nonce = NO_NONCE
    nonce_at: float = float("-inf")  # monotonic time the nonce arrived
    _stale_rounds: set[int] = field(default_factory=set)
    _followed: int = 0  # highest round a follow-up was sent for

    def next_round(self, now: float, stale_after_s: float) -> int:
        """Start a round (one renewal per link, same sequence number). Its nonce is
        stale when older than `stale_after_s`: its ack then calls for a follow-up."""
        self.seq += 1
        if now - self.nonce_at > stale_after_s:
            self._stale_rounds.add(self.seq)
        return self.seq

    def renewal(self, link: str, wall: float) -> Renewal:
        return Renewal(self.me, link, self.boot, self.seq, self.nonce, wall)

    def on_ack(self, ack: Ack, now: float) -> bool:
        """Take the ack's nonce; True when a follow-up round is due right now: the round
        it answers echoed a stale nonce, and no later round went out since."""
        if ack.host != self.me:
            return False
        if ack.nonce > self.nonce:  # (term, counter): the newest leader's latest nonce
            self.nonce, self.nonce_at = ack.nonce, now
        if ack.challenge:  # the leader is about to fence us: renew at once
            return True
        due = ack.seq in self._stale_rounds and ack.seq == self.seq and \
            self._followed < ack.seq
        self._stale_rounds = {s for s in self._stale_rounds if s > ack.seq}
        if due:
            self._followed = ack.seq
        return due


# ---------------------------------------------------------------- flood protection


class SourceBudget:
    """Token buckets: how many datagrams each source may make this peer check per
    second, taken before the HMAC (the costly part), so that a flood from one address,
    or from addresses that are no host of the cluster (all of which share one bucket),
    costs little and leaves the hosts' own renewals their share. Pure: time is an
    argument."""

    def __init__(self, rate_per_s: float, burst: float, strangers_per_s: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.strangers_per_s = strangers_per_s
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def allow(self, source: str, known: bool, now: float) -> bool:
        key = source if known else "strangers"
        rate = self.rate_per_s if known else self.strangers_per_s
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True


# ---------------------------------------------------------------- one peer's endpoint

REFUSAL_LOG_INTERVAL_S = 10.0  # at most one log line per reason and source this often

# host -> [(link, address)] to reach it
Targets = dict[str, list[tuple[str, str]]]


@dataclass(frozen=True, slots=True)
class Outgoing:
    link: str  # the local link to send on
    address: str  # where to (the daemon: an IP address; the simulator: a host name)
    datagram: bytes


@dataclass(frozen=True, slots=True)
class Received:
    """What one datagram meant. At most one of renewal / ack is set."""

    renewal: Renewal | None = None
    credit_at: float | None = None  # for a renewal: what it proves (RenewalJudge.admit)
    ack: Ack | None = None  # an ack to this peer
    follow_up: bool = False  # send a round now (RenewalSender.on_ack)
    refusal: RefusalLine | None = None  # refused, and this line may be logged now


class LeaseEndpoint:
    """Everything one peer does with lease datagrams, without sockets or clocks: the
    daemon (daemon/leases.py) and the simulator (sim/peer.py) move the bytes."""

    def __init__(self, me: str, codec: LeaseCodec, boot: bytes) -> None:
        self.me = me
        self.codec = codec
        self.sender = RenewalSender(me, boot)
        self.judge = RenewalJudge()
        self.budget = SourceBudget(rate_per_s=200.0, burst=400.0, strangers_per_s=200.0)
        self.refusals = RefusalLog(REFUSAL_LOG_INTERVAL_S)
        self.seen: dict[str, dict[str, float]] = {}  # host -> link -> when (monotonic)

    @property
    def rejected(self) -> int:
        """Unreadable, forged, replayed or over-budget datagrams."""
        return self.refusals.total

    def round(self, targets: Targets, now: float, wall: float,
              renew_s: float) -> tuple[int, list[Outgoing]]:
        """A renewal round to every other voter on every route; (its seq, datagrams)."""
        seq = self.sender.next_round(now, renew_s / 2)
        out = []
        for host, routes in sorted(targets.items()):
            if host == self.me:
                continue
            for link, address in routes:
                renewal = self.sender.renewal(link, wall)
                out.append(Outgoing(link, address, self.codec.pack(renewal)))
        return seq, out

    def heard(self, now: float, ttl_s: float) -> dict[str, float]:
        """Hosts whose renewals reached this peer within `ttl_s`, and when the latest did
        (its monotonic clock): what it tells the leader in its Raft answers, as ages
        computed when each answer leaves (Manager.hears)."""
        out = {}
        for host, links in self.seen.items():
            last = max(links.values())
            if host != self.me and now - last < ttl_s:
                out[host] = last
        return out

    def receive(self, data: bytes, now: float, ttl_s: float, source: str = "",
                known: bool = True) -> Received:
        """One datagram from `source` (`known`: an address of a host of the cluster)."""
        if not self.budget.allow(source, known, now):
            return self._refuse("rate", source, now)
        try:
            message = self.codec.unpack(data)
        except BadDatagram as exc:
            return self._refuse(exc.reason, source, now)
        if isinstance(message, Ack):
            if message.host != self.me:
                return Received()
            return Received(ack=message, follow_up=self.sender.on_ack(message, now))
        admitted = self.judge.admit(message, now, ttl_s)
        if admitted is None:
            return self._refuse("replay", source, now)
        self.seen.setdefault(message.host, {})[message.link] = now
        return Received(renewal=message, credit_at=admitted.credit_at)

    def _refuse(self, reason: str, source: str, now: float) -> Received:
        return Received(refusal=self.refusals.refuse(reason, source or "?", now))

    def challenge(self, host: str, routes: list[tuple[str, str]], term: int, now: float,
                  ttl_s: float) -> list[Outgoing]:
        """The leader's last call to a silent host, on every route: renew now."""
        out = []
        for link, address in routes:
            nonce = self.judge.issue(term, now, ttl_s)
            ack = Ack(self.me, term, 0, host, link, 0, nonce, challenge=True)
            out.append(Outgoing(link, address, self.codec.pack(ack)))
        return out

    def answer(self, renewal: Renewal, term: int, commit_index: int, now: float,
               ttl_s: float) -> bytes:
        """The leader's ack to a renewal, once its read index is confirmed."""
        nonce = self.judge.issue(term, now, ttl_s)
        return self.codec.pack(Ack(self.me, term, commit_index, renewal.host, renewal.link,
                                   renewal.seq, nonce))


def renewal_targets(state_hosts: dict[str, tuple[str, tuple[str, ...]]], me: str,
                    my_links: set[str], fallback: dict[str, str]) -> Targets:
    """Where this peer sends its renewals: every voter the state knows ("link=address"
    entries, on the links this host has too). `state_hosts`: voter -> (its name, its
    addresses). Until the state lists any other voter (a fresh or rebuilt peer that has
    not caught up) it renews to `fallback` (voter -> address, the configured Raft
    peers) on its first link: its lease must not lapse because its log is behind."""
    out: Targets = {}
    for name, (_, addresses) in sorted(state_hosts.items()):
        routes = []
        for entry in addresses:
            link, _, address = entry.partition("=")
            if link in my_links:
                routes.append((link, address))
        out[name] = routes
    if any(routes for name, routes in out.items() if name != me) or not my_links:
        return out
    first = sorted(my_links)[0]
    return {name: [(first, address)] for name, address in sorted(fallback.items())
            if name != me}
