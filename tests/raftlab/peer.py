"""A Raft peer in its own process, for tests and benchmarks.

    python -m raftlab.peer --self 127.0.0.1:7001 --partners A,B,C \\
        --secret S --data DIR --ready-file FILE [--rebuild] [--fsm mod:factory] [--raw]

It hosts a RaftNode over a state machine (default: the ByteLog counter) and serves a
loopback control socket: one JSON request per line, one JSON answer per line. When
ready it writes {"control_port": N, "pid": P} to the ready file; when the storage is
corrupt it writes {"error": "corrupt", "path": ..., "detail": ...} and exits with 3.

--raw runs a bare pysyncobj replicated counter with the same settings instead (the
benchmark's baseline): only status, bench_* and close are served then.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import hashlib
import importlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from hacluster.core.readindex import ReadIndex
from hacluster.raft.errors import CorruptStorage
from hacluster.raft.node import RaftNode
from hacluster.raft.settings import RaftSettings

CORRUPT_EXIT = 3
Handler = Callable[[dict[str, Any]], dict[str, Any]]


def load_factory(path: str) -> Callable[[], Any]:
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"--fsm must be module:factory, got {path!r}")
    factory: Callable[[], Any] = getattr(importlib.import_module(module), name)
    return factory


def write_ready(path: str, doc: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def settings_from_json(text: str | None) -> RaftSettings:
    doc = json.loads(text) if text else {}
    if "tcp_keepalive" in doc:
        doc["tcp_keepalive"] = tuple(doc["tcp_keepalive"])
    return RaftSettings(**doc)


# ---------------------------------------------------------------- load generators


def run_sync(propose: Callable[[bytes], bool], n: int, size: int) -> dict[str, Any]:
    """n proposals one after the other; latency of each in ms."""
    payload = b"p" * size
    latencies, failures = [], 0
    for _ in range(n):
        start = time.perf_counter()
        ok = propose(payload)
        latencies.append((time.perf_counter() - start) * 1000)
        failures += not ok
    return {"latencies_ms": latencies, "failures": failures}


def run_concurrent(
    propose: Callable[[bytes], bool], n: int, threads: int, size: int
) -> dict[str, Any]:
    """n proposals from `threads` threads each waiting for its own result."""
    payload = b"c" * size
    per_thread = max(n // threads, 1)
    failures = [0] * threads

    def worker(slot: int) -> None:
        for _ in range(per_thread):
            if not propose(payload):
                failures[slot] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - start
    return {
        "ops": per_thread * threads - sum(failures),
        "seconds": seconds,
        "failures": sum(failures),
    }


# ---------------------------------------------------------------- our node


class NodePeer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.machine = load_factory(args.fsm)()
        partners = [p for p in args.partners.split(",") if p]
        self.node = RaftNode(
            None if args.self == "-" else args.self,
            partners,
            args.secret,
            args.data,
            self.machine.apply,
            self.machine.snapshot,
            self.machine.restore,
            settings_from_json(args.settings),
            rebuild=args.rebuild,
        )

    def handlers(self) -> dict[str, Handler]:
        return {
            "status": self.status,
            "propose": self.propose,
            "digest": self.digest,
            "add_member": lambda r: self._result(
                self.node.add_member(r["address"], r.get("timeout", 5.0))
            ),
            "remove_member": lambda r: self._result(
                self.node.remove_member(r["address"], r.get("timeout", 5.0))
            ),
            "compact": self.compact,
            "read_index": self.read_index,
            "grant": self.grant,
            "allowed": lambda r: {"age": None if (at := self.node.allowed_since()) is None
                                  else time.monotonic() - at},
            "bench_sync": lambda r: run_sync(self._ok, r["n"], r.get("size", 64)),
            "bench_concurrent": lambda r: run_concurrent(
                self._ok, r["n"], r.get("threads", 16), r.get("size", 64)
            ),
        }

    def status(self, request: dict[str, Any]) -> dict[str, Any]:
        return dataclasses.asdict(self.node.status())

    def propose(self, request: dict[str, Any]) -> dict[str, Any]:
        data = bytes.fromhex(request["hex"]) if "hex" in request else request["data"].encode()
        return self._result(self.node.propose(data, request.get("timeout", 5.0)))

    def digest(self, request: dict[str, Any]) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            digest = getattr(self.machine, "digest", None)
            value = digest() if digest else hashlib.sha256(self.machine.snapshot()).hexdigest()
            return {
                "digest": value,
                "count": getattr(self.machine, "count", None),
                "applied_index": self.node.applied_index(),
            }

        return self.node.run_on_loop(read)

    def read_index(self, request: dict[str, Any]) -> dict[str, Any]:
        """A read request arriving now, answered the ReadIndex way (core/readindex.py):
        {"mark": null} when this node cannot take one, else the mark and whether a
        majority confirmed it within the timeout."""
        mark = self.node.read_mark()
        if mark is None:
            return {"mark": None, "leader_term": self.node.leader_term()}
        reads: ReadIndex[str] = ReadIndex()
        reads.request("r", mark)
        give_up = time.monotonic() + request.get("timeout", 2.0)
        released: list[Any] = []
        while not released and time.monotonic() < give_up:
            released = reads.release(*self.node.read_echoes())
            time.sleep(0.002)
        return {"mark": dataclasses.asdict(mark), "confirmed": bool(released),
                "leader_term": self.node.leader_term()}

    def grant(self, request: dict[str, Any]) -> dict[str, Any]:
        """Leader: grant every partner's latest answer once a mark taken after it is
        confirmed (core/selffence.py); returns the answers granted, by address."""
        answers = self.node.answers()
        confirmed = self.read_index(request)
        if not confirmed.get("confirmed"):
            return {"granted": {}}
        self.node.grant(answers, confirmed["mark"]["term"])
        return {"granted": {k: list(v) for k, v in answers.items()}}

    def compact(self, request: dict[str, Any]) -> dict[str, Any]:
        before = self.node.status().log_first_index
        self.node.compact()
        return {"log_first_index_before": before}

    def _ok(self, payload: bytes) -> bool:
        # A real state machine makes its own realistic commands (bench_payload).
        make = getattr(self.machine, "bench_payload", None)
        data = make() if make is not None else payload
        return self.node.propose(data, 5.0).status.value == "committed"

    @staticmethod
    def _result(res: Any) -> dict[str, Any]:
        doc = dataclasses.asdict(res)
        doc["status"] = res.status.value
        doc["result"] = res.result if isinstance(res.result, int | str | None) else repr(res.result)
        return doc

    def close(self) -> None:
        self.node.close()


# ---------------------------------------------------------------- bare pysyncobj


class RawPeer:
    """A bare pysyncobj counter (pickled @replicated calls, its own mmap journal)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from pysyncobj import SyncObj, SyncObjConf, replicated

        class Counter(SyncObj):
            def __init__(self, *a: Any, **kw: Any) -> None:
                self.value = 0
                super().__init__(*a, **kw)

            @replicated
            def incr(self, payload: bytes) -> int:
                self.value += 1
                return self.value

        os.makedirs(args.data, exist_ok=True)
        conf = settings_from_json(args.settings).syncobj_conf_kwargs()
        conf.update(
            autoTick=True,
            password=args.secret,
            bindAddress=args.self,
            journalFile=os.path.join(args.data, "raw.journal"),
            fullDumpFile=os.path.join(args.data, "raw.dump"),
        )
        partners = [p for p in args.partners.split(",") if p and p != args.self]
        self.counter = Counter(args.self, partners, SyncObjConf(**conf))

    def handlers(self) -> dict[str, Handler]:
        return {
            "status": self.status,
            "bench_sync": lambda r: run_sync(self._ok, r["n"], r.get("size", 64)),
            "bench_concurrent": lambda r: run_concurrent(
                self._ok, r["n"], r.get("threads", 16), r.get("size", 64)
            ),
        }

    def status(self, request: dict[str, Any]) -> dict[str, Any]:
        leader = self.counter._getLeader()
        return {
            "role": "leader" if self.counter._isLeader() else "follower",
            "leader": None if leader is None else str(leader.id),
            "term": self.counter.raftCurrentTerm,
            "applied_index": self.counter.raftLastApplied,
        }

    def _ok(self, payload: bytes) -> bool:
        try:
            self.counter.incr(payload, sync=True, timeout=5.0)
            return True
        except Exception:
            return False

    def close(self) -> None:
        self.counter.destroy_synchronous()


# ---------------------------------------------------------------- control server


class ControlServer:
    def __init__(self, peer: NodePeer | RawPeer) -> None:
        self.peer = peer
        self.handlers = peer.handlers()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.done = threading.Event()

    def serve(self) -> None:
        threading.Thread(target=self._accept_loop, daemon=True).start()
        self.done.wait()
        self.peer.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # e.g. out of file descriptors (a test floods the Raft port)
                time.sleep(0.05)
                continue
            threading.Thread(target=self._serve_conn, args=(conn,), daemon=True).start()

    def _serve_conn(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                answer, stop = self._handle(json.loads(line))
                stream.write(json.dumps(answer).encode() + b"\n")
                stream.flush()
                if stop:
                    self.done.set()
                    return

    def _handle(self, request: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        op = request.get("op")
        if op == "close":
            return {"ok": True}, True
        handler = self.handlers.get(str(op))
        if handler is None:
            return {"ok": False, "error": f"unknown op {op!r}"}, False
        try:
            return {"ok": True, **handler(request)}, False
        except Exception as exc:
            logging.exception("control op %s failed", op)
            return {"ok": False, "error": repr(exc)}, False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--self", required=True, help="host:port, or - for a read-only member")
    p.add_argument("--partners", required=True, help="comma-separated host:port list")
    p.add_argument("--secret", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--ready-file", required=True)
    p.add_argument("--fsm", default="raftlab.bytelog:factory")
    p.add_argument("--settings", help="JSON object of RaftSettings overrides")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--raw", action="store_true", help="bare pysyncobj counter (baseline)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` dumps every thread's stack
    try:
        peer: NodePeer | RawPeer = RawPeer(args) if args.raw else NodePeer(args)
    except CorruptStorage as exc:
        logging.error("refusing to start: %s", exc)
        write_ready(args.ready_file, {"error": "corrupt", "path": exc.path, "detail": exc.detail})
        return CORRUPT_EXIT
    server = ControlServer(peer)
    signal.signal(signal.SIGTERM, lambda *_: server.done.set())
    write_ready(args.ready_file, {"control_port": server.port, "pid": os.getpid()})
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
