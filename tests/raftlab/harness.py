"""Launch and drive raftlab.peer processes on loopback (used by tests and bench/raft.py).

Every wait polls with a deadline; nothing here sleeps to make an assertion true.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class PeerFailed(RuntimeError):
    """A peer process exited or answered with an error; `doc` holds its ready file."""

    def __init__(self, message: str, doc: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.doc = doc or {}


TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child_env() -> dict[str, str]:
    """The peer runs as `python -m raftlab.peer`: tests/ must be on its path."""
    paths = [TESTS_DIR, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(v) for v in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_HANDED_OUT: set[int] = set()  # never the same port twice to this process's tests


def _bindable(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_ports(count: int) -> list[int]:
    """Loopback ports free for TCP and UDP now, chosen outside the kernel's ephemeral
    range. A port the kernel hands out for bind(0) is also what it picks as the source
    port of the next outgoing connection, so a peer started on one a moment later can
    find it taken (seen in CI: BindError on restart of a 3-peer cluster)."""
    low, high = _ephemeral_range()
    pool = range(10000, low) if low > 12000 else range(high + 1, 65536)
    ports: list[int] = []
    while len(ports) < count:
        port = pool[int.from_bytes(os.urandom(4), "big") % len(pool)]
        if port not in _HANDED_OUT and _bindable(port):
            _HANDED_OUT.add(port)
            ports.append(port)
    return ports


def wait_for(
    predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.01
) -> T:
    """Poll until predicate() is truthy; return its value or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, PeerFailed, KeyError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {timeout:.1f}s waiting for {what}"
                + (f" (last error: {last_error!r})" if last_error else "")
            )
        time.sleep(interval)


def committed(answer: dict[str, Any]) -> bool:
    return answer.get("status") == "committed"


def propose_all(peer: Peer, count: int, prefix: str) -> list[dict[str, Any]]:
    """Propose `count` commands one after the other; each must commit."""
    results = []
    for i in range(count):
        answer = peer.propose(f"{prefix}-{i}")
        if not committed(answer):
            raise AssertionError(f"{peer.name}: {prefix}-{i} not committed: {answer}")
        results.append(answer)
    return results


class Peer:
    """One testpeer process: start, call control ops, kill, restart."""

    def __init__(
        self,
        name: str,
        address: str | None,
        partners: list[str],
        secret: str,
        workdir: str,
        settings: dict[str, Any] | None = None,
        fsm: str | None = None,
        raw: bool = False,
    ) -> None:
        self.name, self.address, self.partners = name, address, partners
        self.secret, self.settings, self.fsm, self.raw = secret, settings, fsm, raw
        self.data_dir = os.path.join(workdir, name)
        self.ready_file = os.path.join(workdir, f"{name}.ready")
        self.log_file = os.path.join(workdir, f"{name}.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.control_port: int | None = None

    def command(self, rebuild: bool = False) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "raftlab.peer",
            "--self",
            self.address or "-",
            "--partners",
            ",".join(self.partners),
            "--secret",
            self.secret,
            "--data",
            self.data_dir,
            "--ready-file",
            self.ready_file,
        ]
        if self.settings:
            cmd += ["--settings", json.dumps(self.settings)]
        if self.fsm:
            cmd += ["--fsm", self.fsm]
        if rebuild:
            cmd.append("--rebuild")
        if self.raw:
            cmd.append("--raw")
        return cmd

    def spawn(self, rebuild: bool = False) -> None:
        assert not self.alive, f"{self.name} is already running"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.ready_file)
        self.control_port = None
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(rebuild), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                env=_child_env(),
            )

    def start(self, rebuild: bool = False, timeout: float = 30.0) -> Peer:
        self.spawn(rebuild)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        doc = wait_for(self._ready_doc, timeout, f"{self.name} to be ready")
        if "error" in doc:
            self.reap()  # it exits right after writing the error
            raise PeerFailed(f"{self.name} refused to start: {doc}", doc)
        self.control_port = int(doc["control_port"])
        return doc

    def _ready_doc(self) -> dict[str, Any] | None:
        if os.path.exists(self.ready_file):
            with open(self.ready_file) as f:
                doc: dict[str, Any] = json.load(f)
            return doc
        if self.proc is not None and self.proc.poll() is not None:
            raise PeerFailed(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
        return None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def call(self, op: str, *, call_timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """Run a control op; `params` go to the peer (e.g. timeout=propose deadline)."""
        if self.control_port is None or not self.alive:
            raise PeerFailed(f"{self.name} is not running")
        address = ("127.0.0.1", self.control_port)
        with socket.create_connection(address, timeout=call_timeout) as s:
            s.sendall(json.dumps({"op": op, **params}).encode() + b"\n")
            with s.makefile("rb") as stream:
                line = stream.readline()
        if not line:
            raise PeerFailed(f"{self.name} closed the control connection during {op}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise PeerFailed(f"{self.name} {op} failed: {answer.get('error')}")
        return answer

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def propose(self, data: str, timeout: float = 5.0) -> dict[str, Any]:
        return self.call("propose", data=data, timeout=timeout, call_timeout=timeout + 30)

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.reap()

    def stop(self, timeout: float = 10.0) -> None:
        """Clean shutdown through the control socket (RaftNode.close)."""
        if not self.alive:
            return
        with contextlib.suppress(OSError, PeerFailed):
            self.call("close")
        try:
            assert self.proc is not None
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def reap(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_file, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except FileNotFoundError:
            return ""


class Cluster:
    """N voting peers on 127.0.0.1 sharing a secret, each in its own process."""

    def __init__(
        self,
        workdir: str,
        size: int,
        secret: str = "test-secret",
        settings: dict[str, Any] | None = None,
        fsm: str | None = None,
        raw: bool = False,
    ) -> None:
        self.workdir, self.secret = workdir, secret
        os.makedirs(workdir, exist_ok=True)
        self.settings, self.fsm, self.raw = settings, fsm, raw
        self.addresses = [f"127.0.0.1:{p}" for p in free_ports(size)]
        self.peers = [
            self.make_peer(f"p{i}", a, self.addresses) for i, a in enumerate(self.addresses)
        ]
        self.extra: list[Peer] = []

    def make_peer(
        self, name: str, address: str | None, partners: list[str], secret: str | None = None
    ) -> Peer:
        return Peer(
            name,
            address,
            partners,
            secret or self.secret,
            self.workdir,
            self.settings,
            self.fsm,
            self.raw,
        )

    def add_peer(
        self, name: str, address: str | None, partners: list[str], secret: str | None = None
    ) -> Peer:
        peer = self.make_peer(name, address, partners, secret)
        self.extra.append(peer)
        return peer

    @property
    def all_peers(self) -> list[Peer]:
        return self.peers + self.extra

    def start(self, timeout: float = 30.0) -> Cluster:
        for p in self.peers:
            p.spawn()
        for p in self.peers:
            p.wait_ready(timeout)
        return self

    def running(self) -> list[Peer]:
        return [p for p in self.peers if p.alive]

    def wait_leader(
        self, peers: list[Peer] | None = None, timeout: float = 20.0, newer_than: int = -1
    ) -> tuple[Peer, int]:
        """Wait until every given peer names the same leader, in the same term."""
        group = peers if peers is not None else self.running()

        def agreed() -> tuple[Peer, int] | None:
            views = [p.status() for p in group]
            leaders = {(v["leader"], v["term"]) for v in views}
            if len(leaders) != 1:
                return None
            leader, term = leaders.pop()
            if leader is None or term <= newer_than:
                return None
            owner = [p for p in self.all_peers if p.address == leader]
            return (owner[0], term) if owner and owner[0].alive else None

        return wait_for(agreed, timeout, "an agreed leader")

    def wait_converged(
        self, peers: list[Peer] | None = None, timeout: float = 20.0, min_count: int = 0
    ) -> str:
        """Wait until the given peers have applied the same commands; return the digest."""
        group = peers if peers is not None else self.running()

        def same() -> str | None:
            docs = [p.call("digest") for p in group]
            digests = {d["digest"] for d in docs}
            if len(digests) == 1 and all((d["count"] or 0) >= min_count for d in docs):
                return digests.pop()
            return None

        return wait_for(same, timeout, "identical state on every peer")

    def kill_all(self) -> None:
        for p in self.all_peers:
            if p.proc is not None and p.proc.poll() is None:
                p.proc.send_signal(signal.SIGKILL)
        for p in self.all_peers:
            p.reap()

    def close(self) -> None:
        """Always leaves no process behind."""
        self.kill_all()
