"""Lease renewals over real UDP on loopback: every link counts on its own,
forged and replayed datagrams are refused, acks come back on each link."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from hacluster.daemon.leases import (
    CLOCK_WINDOW_S,
    BadDatagram,
    LeaseCodec,
    LeaseService,
    Renewal,
    ReplayGuard,
)

SECRET = "lease-test-secret-0123456789"


def renewal(seq: int, link: str = "main", boot: bytes = b"boot0001", at: float = 0.0) -> Renewal:
    return Renewal("h2", link, boot, seq, at or time.time())


def test_the_same_renewal_counts_once_on_each_link() -> None:
    guard = ReplayGuard()
    now = time.time()
    assert guard.fresh(renewal(1, "main"), now)
    assert guard.fresh(renewal(1, "backend"), now)  # the copy sent on the other link
    assert not guard.fresh(renewal(1, "main"), now)  # a replay
    assert not guard.fresh(renewal(0, "backend"), now)  # older than the last seen
    assert guard.fresh(renewal(2, "backend"), now)


def test_a_restarted_sender_starts_a_new_sequence_and_stale_clocks_are_refused() -> None:
    guard = ReplayGuard()
    now = time.time()
    assert guard.fresh(renewal(50), now)
    assert guard.fresh(renewal(1, boot=b"boot0002"), now)  # new boot id after a restart
    assert not guard.fresh(renewal(2, at=now - CLOCK_WINDOW_S - 1), now)


def test_a_datagram_under_another_secret_is_refused() -> None:
    datagram = LeaseCodec("another-secret-0123456789").pack(renewal(1))
    with pytest.raises(BadDatagram, match="bad MAC"):
        LeaseCodec(SECRET).unpack(datagram)


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
    heard: list[tuple[str, str]] = []

    def on_renewal(host: str, link: str) -> tuple[str, int, int]:
        heard.append((host, link))
        return ("h1", 7, 42)

    leader = LeaseService("h1", LeaseCodec(SECRET), leader_links, port, on_renewal)
    follower = LeaseService("h2", LeaseCodec(SECRET), follower_links, port, lambda h, k: None)
    await leader.start()
    await follower.start()
    try:
        await renew_twice_and_intrude(leader, follower, port, heard)
    finally:
        leader.close()
        follower.close()


async def renew_twice_and_intrude(leader: LeaseService, follower: LeaseService, port: int,
                                  heard: list[tuple[str, str]]) -> None:
    targets = {"h1": [("main", "127.0.0.4"), ("backend", "127.0.0.5")]}
    ack = await follower.barrier(targets, 5.0)
    assert ack is not None and (ack.leader, ack.term, ack.commit_index) == ("h1", 7, 42)
    deadline = time.monotonic() + 5
    while len(heard) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder:
        codec = LeaseCodec(SECRET)
        replay = codec.pack(Renewal("h2", "main", follower.boot, follower.seq, time.time()))
        intruder.sendto(replay, ("127.0.0.4", port))
        intruder.sendto(LeaseCodec("wrong-secret-0123456789").pack(renewal(99)),
                        ("127.0.0.4", port))
        await asyncio.sleep(0.2)
    assert sorted(heard) == [("h2", "backend"), ("h2", "main")]
    assert set(leader.seen["h2"]) == {"main", "backend"}
    report = follower.link_report()
    assert all(report[link]["ack_age_s"] >= 0 for link in ("main", "backend"))
    assert leader.rejected == 2  # the replayed and the forged datagram


def test_renewals_and_acks_cross_every_link_over_udp() -> None:
    asyncio.run(exchange_over_two_links())
