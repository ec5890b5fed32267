"""The real state machine for bench/raft.py (`--fsm raftlab.bench_replica:bench`)."""

from __future__ import annotations

import threading
import time
import uuid

from hacluster.daemon.replica import Replica
from hacluster.fsm import commands as c
from hacluster.fsm.codec import encode_command


class BenchReplica(Replica):
    """The real state machine behind a Raft peer of the benchmark:
    proposes realistic encoded commands (a host, then its load reports)."""

    def __init__(self) -> None:
        super().__init__()
        self._made = 0
        self._made_lock = threading.Lock()

    def bench_payload(self) -> bytes:
        with self._made_lock:
            self._made += 1
            n = self._made
        command: c.Command = (c.AddHost(name="bench", memory_mib=65536, vcpus=32) if n == 1
                              else c.ReportHostLoad(name="bench", load=float(n % 97)))
        return encode_command(c.Envelope(command, uuid.uuid4().hex, "bench", time.time()))


def bench() -> BenchReplica:
    return BenchReplica()
