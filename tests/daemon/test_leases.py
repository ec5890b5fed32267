"""Lease renewals over real UDP on loopback: every link counts on its own, a renewal
proves life only once it echoes the leader's nonce, forged and replayed datagrams are
refused, acks come back on each link. (The protocol's rules: tests/core/test_renewal.py.)"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from hacluster.core.readindex import ReadMark
from hacluster.core.renewal import NO_NONCE, LeaseCodec, Renewal
from hacluster.daemon.leases import Answer, LeaseService, LeaseTimes

SECRET = "lease-test-secret-0123456789"
TIMES = LeaseTimes(renew_s=0.5, ttl_s=3.0)
ADDRESSES = ["127.0.0.2", "127.0.0.4", "127.0.0.6"]  # the replay: host, leader, tap


def free_udp_port(addresses: list[str]) -> int:
    """A port free for UDP on every address (the lease port is one per cluster)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((addresses[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for address in addresses[1:]:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                    other.bind((address, port))
        except OSError:
            continue
        return port


async def exchange_over_two_links() -> None:
    follower_links = {"main": "127.0.0.2", "backend": "127.0.0.3"}
    leader_links = {"main": "127.0.0.4", "backend": "127.0.0.5"}
    port = free_udp_port([*follower_links.values(), *leader_links.values()])
    heard: list[tuple[str, str, float | None]] = []

    def on_renewal(renewal: Renewal, credit_at: float | None, answer: Answer) -> None:
        heard.append((renewal.host, renewal.link, credit_at))
        answer(ReadMark(term=7, commit_index=42, seq=0))  # a leader whose read is confirmed

    targets = {"h1": [("main", "127.0.0.4"), ("backend", "127.0.0.5")]}
    leader = LeaseService("h1", LeaseCodec(SECRET), leader_links, port, on_renewal,
                          lambda: {}, lambda: TIMES)
    follower = LeaseService("h2", LeaseCodec(SECRET), follower_links, port,
                            lambda *a: None, lambda: targets, lambda: TIMES)
    await leader.start()
    await follower.start()
    try:
        await renew_twice_and_intrude(leader, follower, port, heard)
    finally:
        leader.close()
        follower.close()


async def wait_until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def renew_twice_and_intrude(leader: LeaseService, follower: LeaseService, port: int,
                                  heard: list[tuple[str, str, float | None]]) -> None:
    ack = await follower.barrier(5.0)
    assert ack is not None and (ack.leader, ack.term, ack.commit_index) == ("h1", 7, 42)
    # The first round echoed no nonce: it proves nothing, and its ack brings a follow-up
    # round whose renewals echo the leader's nonce and are credited.
    await wait_until(lambda: sum(1 for h in heard if h[2] is not None) >= 2)
    assert sorted((h, k) for h, k, at in heard if at is None) == [("h2", "backend"),
                                                                   ("h2", "main")]
    assert sorted((h, k) for h, k, at in heard if at is not None) == [("h2", "backend"),
                                                                       ("h2", "main")]
    before = len(heard)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder:
        codec = LeaseCodec(SECRET)
        replay = codec.pack(Renewal("h2", "main", follower.boot, follower.seq,
                                    follower.endpoint.sender.nonce, time.time()))
        intruder.sendto(replay, ("127.0.0.4", port))
        forged = Renewal("h2", "main", b"boot0001", 99, NO_NONCE, time.time())
        intruder.sendto(LeaseCodec("wrong-secret-0123456789").pack(forged),
                        ("127.0.0.4", port))
        await wait_until(lambda: leader.rejected >= 2)
    assert len(heard) == before  # neither reached the manager
    assert set(leader.seen["h2"]) == {"main", "backend"}
    report = follower.link_report()
    assert all(report[link]["ack_age_s"] >= 0 for link in ("main", "backend"))
    assert leader.rejected == 2  # the replayed and the forged datagram


def test_renewals_and_acks_cross_every_link_over_udp() -> None:
    asyncio.run(exchange_over_two_links())


async def replay_two_boots(
        port: int, others: list[LeaseService] | None = None,
) -> tuple[list[tuple[float, float | None]], float, int]:
    """A host renews through a tap that records every datagram, restarts (a new boot),
    renews again, then dies. An attacker replays what the tap recorded, both boots
    alternately, every 0.25 s. Returns the leader's credits, when the host died, and
    how many replays the leader refused. `others` (on `port` too) get every replay."""
    credits: list[tuple[float, float | None]] = []

    def on_renewal(renewal: Renewal, credit_at: float | None, answer: Answer) -> None:
        credits.append((time.monotonic(), credit_at))
        answer(ReadMark(term=7, commit_index=42, seq=0))

    leader = LeaseService("h1", LeaseCodec(SECRET), {"main": "127.0.0.4"}, port, on_renewal,
                          lambda: {}, lambda: TIMES)
    await leader.start()
    recorded: list[bytes] = []
    tap = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _Tap(recorded, ("127.0.0.4", port)), local_addr=("127.0.0.6", port))
    via_tap = {"h1": [("main", "127.0.0.6")]}
    try:
        for _boot in range(2):  # the peer restarts: a new boot id
            host = LeaseService("h2", LeaseCodec(SECRET), {"main": "127.0.0.2"}, port,
                                lambda *a: None, lambda: via_tap, lambda: TIMES)
            await host.start()
            for _ in range(4):
                host.send_round()
                await asyncio.sleep(0.1)
            host.close()
            await asyncio.sleep(0.05)  # the socket closes on the next loop round
        died = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            attacker.bind(("127.0.0.2", 0))
            half = len(recorded) // 2
            for i in range(12):
                boot = recorded[:half] if i % 2 == 0 else recorded[half:]
                for datagram in boot:
                    attacker.sendto(datagram, ("127.0.0.4", port))
                    for other in others or []:
                        attacker.sendto(datagram, (other.links["main"], port))
                await asyncio.sleep(0.25)
        return credits, died, leader.rejected
    finally:
        tap[0].close()
        leader.close()


class _Tap(asyncio.DatagramProtocol):
    """Records what passes and forwards it to the leader (the host sees its acks)."""

    def __init__(self, recorded: list[bytes], leader: tuple[str, int]) -> None:
        self.recorded, self.leader = recorded, leader
        self.transport: asyncio.DatagramTransport | None = None
        self.host: tuple[str, int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if addr == self.leader:  # an ack: back to the host
            if self.host is not None:
                self.transport.sendto(data, self.host)
            return
        self.host = addr
        self.recorded.append(data)
        self.transport.sendto(data, self.leader)


def test_replayed_renewals_of_two_boots_never_extend_a_lease() -> None:
    """Issue 9, item 1: renewals captured from two boots of one host, replayed alternately
    after it died, kept it online for 24 s against a 3 s lease. Now a replay is refused
    outright or proves nothing (no credit later than the host's last genuine renewal)."""
    credits, died, refused = asyncio.run(replay_two_boots(free_udp_port(ADDRESSES)))
    genuine = [at for when, at in credits if when <= died and at is not None]
    assert genuine, "the host's own renewals were credited"
    after = [at for when, at in credits if when > died and at is not None]
    assert all(at <= max(genuine) for at in after)
    assert refused > 0


async def replay_elsewhere() -> tuple[list[float | None], list[float | None], int]:
    """The recording replayed to a follower (which issued no nonce) and to a new leader
    (which issues nonces of a later term): the credits each gave, and both refusals."""
    follower_credits: list[float | None] = []
    new_leader_credits: list[float | None] = []

    def new_leader_renewal(renewal: Renewal, credit_at: float | None, answer: Answer) -> None:
        new_leader_credits.append(credit_at)
        answer(ReadMark(term=8, commit_index=50, seq=0))  # it acks with nonces of term 8

    ports = free_udp_port([*ADDRESSES, "127.0.0.8", "127.0.0.9"])
    follower = LeaseService("h3", LeaseCodec(SECRET), {"main": "127.0.0.8"}, ports,
                            lambda r, at, a: follower_credits.append(at), lambda: {},
                            lambda: TIMES)
    new_leader = LeaseService("h4", LeaseCodec(SECRET), {"main": "127.0.0.9"}, ports,
                              new_leader_renewal, lambda: {}, lambda: TIMES)
    await follower.start()
    await new_leader.start()
    try:
        await replay_two_boots(ports, [follower, new_leader])
        return follower_credits, new_leader_credits, follower.rejected + new_leader.rejected
    finally:
        follower.close()
        new_leader.close()


def test_a_renewal_replayed_to_a_follower_or_after_a_leader_change_proves_nothing() -> None:
    """Issue 9: the captured renewals of a dead host, replayed to a peer that is not the
    leader and to a leader elected later, credit nothing there either."""
    follower, new_leader, refused = asyncio.run(replay_elsewhere())
    assert follower and new_leader, "the replays reached neither peer"
    assert all(at is None for at in follower + new_leader), (follower, new_leader)
    assert refused > 0  # the same datagram a second time is refused outright
