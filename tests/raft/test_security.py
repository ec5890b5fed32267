"""A wrong secret, garbage bytes, a forged pickle or a flood of half-open connections
must not join or disturb a cluster; each refusal is counted in status and logged with
its source, a bounded number of lines however many there are."""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import socket
import struct
import zlib
from collections.abc import Iterator
from functools import partial

import pytest

from raftlab.harness import Peer, committed, free_ports, propose_all, wait_for


class Evil:
    """Unpickling this creates a file: proof that forged bytes were never unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def observe_stable(leader: Peer, term: int, rounds: int, prefix: str) -> None:
    """Commit `rounds` commands; leader and term must not change meanwhile."""
    for i in range(rounds):
        assert committed(leader.propose(f"{prefix}-{i}"))
        status = leader.status()
        assert status["role"] == "leader" and status["term"] == term


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except (BlockingIOError, TimeoutError):
        return False


def refusal_lines(peer: Peer) -> list[str]:
    with open(peer.log_file, errors="replace") as f:
        return [line for line in f if "refused" in line and "Raft connection" in line]


def refused(peer: Peer, kind: str) -> int:
    count: int = peer.status()["refused"].get("kinds", {}).get(kind, 0)
    return count


@pytest.mark.parametrize(("intruder_ip", "kind", "words"), [
    ("127.0.0.3", "bad_handshake", "handshake failed"),  # above ours: it connects to us
    ("127.0.0.10", "handshake_dropped", "during the handshake"),  # below: we connect to it
])
def test_wrong_secret_cannot_join_or_disturb(make_cluster, intruder_ip, kind, words):
    c = make_cluster(3)
    good, intruder = c.peers[:2], c.peers[2]
    intruder.secret = "not-the-cluster-secret"
    # Its own address (all of 127/8 is this host). pysyncobj connects from the higher
    # address (as a string) to the lower one. On one IP, a retry to a port nobody listens
    # on yet could connect to itself and keep the intruder from binding it.
    port = (intruder.address or "").rsplit(":", 1)[1]
    intruder.address = c.addresses[2] = f"{intruder_ip}:{port}"  # partners share the list
    for p in good:
        p.start()
    leader, term = c.wait_leader(good)
    intruder.start()
    # Every running peer says so at once, naming the intruder's address.
    for p in good:
        wait_for(lambda p=p: refused(p, kind) >= 1, 3, f"{p.name} to count the handshake")
        line = next(x for x in refusal_lines(p) if words in x)
        assert f"{intruder_ip}:" in line and "secret" in line
        recent = p.status()["refused"]["recent"]
        assert {"kind": kind, "source": intruder_ip}.items() <= recent[0].items()
    # The intruder retries its connections every connection_retry_s meanwhile.
    observe_stable(leader, term, 60, "s")
    status = intruder.status()
    assert status["leader"] is None and status["term"] == 0 and status["applied_index"] <= 1
    assert not any(p["connected"] for p in status["partners"])
    assert not committed(intruder.propose("let-me-in", timeout=0.5))
    for p in good:
        view = {q["address"]: q["connected"] for q in p.status()["partners"]}
        assert view[intruder.address] is False
        assert len(refusal_lines(p)) <= 4  # it retried every 0.2 s: rate-limited lines
    c.wait_converged(good, min_count=60)


def test_garbage_and_forged_pickles_do_not_disturb(make_cluster, tmp_path):
    c = make_cluster(3, settings={"handshake_timeout_s": 0.5}).start()
    leader, term = c.wait_leader()
    follower = next(p for p in c.peers if p is not leader)
    marker = str(tmp_path / "pwned")
    forged = zlib.compress(pickle.dumps(Evil(marker)))

    def connect(peer: Peer) -> socket.socket:
        assert peer.address is not None
        host, port = peer.address.rsplit(":", 1)
        return socket.create_connection((host, int(port)), timeout=2)

    streams = [connect(leader), connect(follower)]  # random bytes
    huge = connect(leader)  # claims a 2 GiB message, then keeps sending
    huge.sendall(struct.pack("i", 2**31 - 1))
    silent = connect(leader)  # a few bytes, then nothing (slowloris)
    silent.sendall(b"\x10\x00")
    evil = connect(leader)  # a well-framed pickle without the secret
    evil.sendall(struct.pack("i", len(forged)) + forged)
    for s in [*streams, huge]:
        s.settimeout(0.05)

    for i in range(40):
        for s in [*streams, huge]:
            with contextlib.suppress(OSError):  # already dropped by the peer
                s.sendall(os.urandom(8192))
        assert committed(leader.propose(f"g-{i}"))
    observe_stable(leader, term, 5, "after")
    for s in [*streams, huge, silent, evil]:
        s.setblocking(False)
        wait_for(partial(closed_by_peer, s), 10, "the peer to drop a bad connection")
        s.close()
    assert not os.path.exists(marker)
    c.wait_converged(min_count=45)
    kinds = leader.status()["refused"]["kinds"]
    assert kinds.get("handshake_timeout", 0) >= 1  # the silent one
    # and the huge one: too many bytes, or (on a slow machine) too slow first
    assert kinds.get("oversized", 0) + kinds["handshake_timeout"] >= 2
    assert kinds.get("bad_handshake", 0) >= 1  # the forged pickle did not decrypt
    lines = refusal_lines(leader)
    assert any("no handshake within 0.5s" in x for x in lines)
    assert all("127.0.0.1" in x for x in lines)


def open_half(address: str, count: int) -> list[socket.socket]:
    """`count` connections that never send a byte (the kernel completes them)."""
    host, port = address.rsplit(":", 1)
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect((host, int(port)))
        socks.append(s)
    return socks


@contextlib.contextmanager
def flood() -> Iterator[list[socket.socket]]:
    """Collects the flood's sockets; all are closed on the way out."""
    socks: list[socket.socket] = []
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def test_a_flood_of_half_open_connections_is_logged_briefly_and_commits_go_on(make_cluster):
    c = make_cluster(3, settings={"handshake_timeout_s": 0.5}).start()
    leader, _ = c.wait_leader()
    follower = next(p for p in c.peers if p is not leader)
    with flood() as socks:
        for round_ in range(6):  # 3,000 connections, 500 at a time, 250 to each
            for peer in (leader, follower):
                assert peer.address is not None
                socks += open_half(peer.address, 250)
            propose_all(c.wait_leader()[0], 5, f"during-{round_}")
        wait_for(lambda: refused(leader, "handshake_timeout") >= 100, 10,
                 "the leader to drop stalled handshakes")
        propose_all(c.wait_leader()[0], 10, "flooded")
    propose_all(c.wait_leader()[0], 10, "after")
    c.wait_converged(min_count=50)
    for peer in (leader, follower):
        wait_for(lambda p=peer: p.status()["refused"]["total"] >= 100, 15,
                 f"{peer.name} to count the flood")
        summary = peer.status()["refused"]
        assert {r["source"] for r in summary["recent"]} == {"127.0.0.1"}
        lines = refusal_lines(peer)
        assert 1 <= len(lines) <= 12, lines  # a few kinds, one line each per 10 s
        assert all("127.0.0.1" in x for x in lines)


def test_a_peer_with_the_secret_that_is_not_a_member_is_named(make_cluster):
    c = make_cluster(3).start()
    leader, term = c.wait_leader()
    # above every member's address: it is the one that connects to each of them
    stranger = c.add_peer("stranger", f"127.0.0.2:{free_ports(1)[0]}", c.addresses)
    stranger.start()
    observe_stable(leader, term, 5, "s")
    for p in c.peers:
        wait_for(lambda p=p: refused(p, "not_member") >= 1, 5, f"{p.name} to refuse it")
        assert p.status()["refused"]["recent"][0]["source"] == "127.0.0.2"
        lines = [x for x in refusal_lines(p) if "not a member" in x]
        assert lines and "from 127.0.0.2:" in lines[0] and repr(stranger.address) in lines[0]


def test_the_listener_comes_back_after_running_out_of_file_descriptors(make_cluster):
    """pysyncobj closes its listening socket for good when accept() fails (EMFILE):
    a flood against a peer with few file descriptors took it off the network."""
    c = make_cluster(3).start()
    leader, term = c.wait_leader()
    victim = next(p for p in c.peers if p is not leader)
    assert victim.proc is not None and victim.address is not None
    # Out of descriptors, the victim could not write its meta file either, and a storage
    # failure halts a peer: nothing is committed during the flood, and the commit index
    # it has is stored before.
    wait_for(lambda: (lambda s: s["commit_index"] == s["persisted_commit_index"] > 1)(
        victim.status()), 10, "the victim to store its commit index")
    fds = f"/proc/{victim.proc.pid}/fd"
    # far below max_pending_handshakes, and reached by the first few connections (the
    # listen backlog is 5: the kernel holds the others back)
    limit = len(os.listdir(fds)) + 4
    normal = resource.prlimit(victim.proc.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(victim.proc.pid, resource.RLIMIT_NOFILE, (limit, normal[1]))
    with flood() as socks:
        socks += open_half(victim.address, 200)
        wait_for(lambda: len(os.listdir(fds)) >= limit - 1, 10,
                 "the victim to run out of file descriptors")
    host, port = victim.address.rsplit(":", 1)

    def accepts() -> bool:
        with socket.create_connection((host, int(port)), timeout=1):
            return True

    wait_for(accepts, 10, "the victim's Raft port to accept connections again")
    with open(victim.log_file) as f:
        assert "listens again" in f.read()
    resource.prlimit(victim.proc.pid, resource.RLIMIT_NOFILE, normal)  # room to work
    # the others can reach it again: restart them all, so that it must be reached
    for p in c.peers:
        if p is not victim:
            p.kill()
    for p in c.peers:
        if p is not victim:
            p.start()
    new_leader, _ = c.wait_leader(newer_than=term)
    propose_all(new_leader, 5, "after")
    c.wait_converged(min_count=5)
