"""A wrong secret, garbage bytes or a forged pickle must not join or disturb a cluster."""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import struct
import zlib
from functools import partial

from raftlab.harness import Peer, committed, wait_for


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


def test_wrong_secret_cannot_join_or_disturb(make_cluster):
    c = make_cluster(3)
    good, intruder = c.peers[:2], c.peers[2]
    intruder.secret = "not-the-cluster-secret"
    for p in c.peers:
        p.spawn()
    for p in c.peers:
        p.wait_ready()
    leader, term = c.wait_leader(good)
    # The intruder retries its connections every connection_retry_s meanwhile.
    observe_stable(leader, term, 60, "s")
    status = intruder.status()
    assert status["leader"] is None and status["term"] == 0 and status["applied_index"] <= 1
    assert not any(p["connected"] for p in status["partners"])
    assert not committed(intruder.propose("let-me-in", timeout=0.5))
    for p in good:
        view = {q["address"]: q["connected"] for q in p.status()["partners"]}
        assert view[intruder.address] is False
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
