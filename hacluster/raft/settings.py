"""Tuning knobs of the Raft adapter, validated once, frozen afterwards.

The defaults are tuned for a LAN cluster of a handful of peers: a command commits in
about a millisecond, a dead leader is replaced in a few hundred milliseconds, and a
restarted peer is reconnected within `connection_retry_s`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any


class RaftSettingsError(ValueError):
    """A RaftSettings field has an invalid value; `field` names it."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"RaftSettings.{field}: {detail}")
        self.field = field


@dataclass(frozen=True)
class RaftSettings:
    # Election timeout range (seconds). A follower that hears nothing from a leader for a
    # random time in [min, max] starts an election. 0.15/0.35 re-elects in ~0.2-0.4 s on a
    # LAN; raising it trades failover speed for tolerance of pauses and packet loss.
    election_timeout_min_s: float = 0.15
    election_timeout_max_s: float = 0.35
    # Leader heartbeat period; must stay well under the election timeout (x3).
    heartbeat_interval_s: float = 0.03
    # A leader that has no answer from a majority for this long steps down. Until then an
    # isolated leader still *reports* itself leader: never act on is_leader() alone.
    leader_fallback_timeout_s: float = 2.0
    # A connection with no data received for this long is dropped (>= election max).
    connection_timeout_s: float = 1.0
    # How often to retry connecting a peer that is down: bounds the rejoin time.
    connection_retry_s: float = 0.2
    # Longest the event loop sleeps in poll(); elections and retries are checked per tick.
    tick_interval_s: float = 0.02
    # An incoming connection must finish the encrypted handshake within this time and
    # this many buffered bytes, else it is dropped (garbage / slowloris protection).
    handshake_timeout_s: float = 2.0
    max_handshake_bytes: int = 64 * 1024
    # At most this many incoming connections wait for their handshake at once (the
    # oldest is dropped): a flood of half-open connections cannot use up the fds.
    max_pending_handshakes: int = 128
    # Refused connections are logged at most once per source and kind per interval.
    refusal_log_interval_s: float = 10.0
    # Log compaction: snapshot after this many entries or this long since the last one.
    snapshot_min_entries: int = 5000
    snapshot_min_interval_s: float = 300.0
    # Largest append_entries / snapshot chunk sent at once.
    append_batch_bytes: int = 1024 * 1024
    # Largest command propose() accepts. Must stay below append_batch_bytes: pysyncobj
    # sends a bigger single entry through a chunked path that cuts it at the wrong place.
    max_command_bytes: int = 512 * 1024
    # Bounded queue of not-yet-processed proposals (a full queue answers NOT_LEADER).
    commands_queue_size: int = 100_000
    socket_buffer_bytes: int = 256 * 1024
    # Binding the Raft port: attempts and spacing before the node refuses to start.
    bind_attempts: int = 10
    bind_retry_s: float = 0.1
    # TCP keepalive (idle s, interval s, probes) so a silently dead peer is noticed.
    tcp_keepalive: tuple[int, int, int] = (5, 2, 3)
    # fsync log entries, term and vote before acknowledging them. False is ONLY for
    # benchmarks measuring the fsync cost: a power cut may then lose acknowledged data.
    fsync: bool = True
    # How long close() waits for the event loop to flush and stop.
    close_timeout_s: float = 5.0
    # How long the constructor waits for the first tick (snapshot load + log replay).
    start_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        self._check_types()
        self._check_ranges()
        self._check_relations()

    def _check_types(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "fsync":
                if not isinstance(value, bool):
                    raise RaftSettingsError(f.name, f"must be a bool, got {value!r}")
            elif f.name == "tcp_keepalive":
                ok = isinstance(value, tuple) and len(value) == 3
                if not ok or not all(_is_int(v) and v > 0 for v in value):
                    raise RaftSettingsError(f.name, f"must be 3 positive ints, got {value!r}")
            elif f.type in ("int", int):
                if not _is_int(value):
                    raise RaftSettingsError(f.name, f"must be an int, got {value!r}")
            elif not _is_number(value):
                raise RaftSettingsError(f.name, f"must be a finite number, got {value!r}")

    def _check_ranges(self) -> None:
        positive = (
            "election_timeout_min_s",
            "heartbeat_interval_s",
            "leader_fallback_timeout_s",
            "connection_timeout_s",
            "tick_interval_s",
            "handshake_timeout_s",
            "refusal_log_interval_s",
            "snapshot_min_interval_s",
            "bind_retry_s",
            "close_timeout_s",
            "start_timeout_s",
            "max_handshake_bytes",
            "max_pending_handshakes",
            "append_batch_bytes",
            "max_command_bytes",
            "commands_queue_size",
            "socket_buffer_bytes",
            "bind_attempts",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise RaftSettingsError(name, f"must be > 0, got {getattr(self, name)!r}")
        if self.connection_retry_s < 0:
            raise RaftSettingsError("connection_retry_s", "must be >= 0")
        if self.snapshot_min_entries < 2:
            raise RaftSettingsError("snapshot_min_entries", "must be >= 2")

    def _check_relations(self) -> None:
        if self.election_timeout_max_s <= self.election_timeout_min_s:
            raise RaftSettingsError(
                "election_timeout_max_s", "must be greater than election_timeout_min_s"
            )
        if self.election_timeout_min_s <= 3 * self.heartbeat_interval_s:
            raise RaftSettingsError(
                "heartbeat_interval_s", "must be less than a third of election_timeout_min_s"
            )
        if self.leader_fallback_timeout_s <= self.election_timeout_max_s:
            raise RaftSettingsError(
                "leader_fallback_timeout_s", "must be greater than election_timeout_max_s"
            )
        if self.connection_timeout_s < self.election_timeout_max_s:
            raise RaftSettingsError("connection_timeout_s", "must be >= election_timeout_max_s")
        if self.max_command_bytes + 1 >= self.append_batch_bytes:
            raise RaftSettingsError("max_command_bytes", "must be smaller than append_batch_bytes")
        if self.tick_interval_s >= self.election_timeout_min_s / 2:
            raise RaftSettingsError(
                "tick_interval_s", "must be less than half of election_timeout_min_s"
            )

    def syncobj_conf_kwargs(self) -> dict[str, Any]:
        """The pysyncobj SyncObjConf keywords these settings stand for (no paths/secret)."""
        return {
            "raftMinTimeout": self.election_timeout_min_s,
            "raftMaxTimeout": self.election_timeout_max_s,
            "appendEntriesPeriod": self.heartbeat_interval_s,
            "leaderFallbackTimeout": self.leader_fallback_timeout_s,
            "connectionTimeout": self.connection_timeout_s,
            "connectionRetryTime": self.connection_retry_s,
            # One message per command: ~1 ms commits instead of ~100 ms batches.
            "appendEntriesUseBatch": False,
            "appendEntriesBatchSizeBytes": self.append_batch_bytes,
            "logCompactionBatchSize": self.append_batch_bytes,
            "logCompactionMinEntries": self.snapshot_min_entries,
            "logCompactionMinTime": self.snapshot_min_interval_s,
            "commandsQueueSize": self.commands_queue_size,
            # Fail fast with NOT_LEADER rather than queueing commands while leaderless:
            # a queued command could enter the log after the caller gave up on it.
            "commandsWaitLeader": False,
            "sendBufferSize": self.socket_buffer_bytes,
            "recvBufferSize": self.socket_buffer_bytes,
            "bindRetryTime": self.bind_retry_s,
            "maxBindRetries": self.bind_attempts,
            "tcp_keepalive": self.tcp_keepalive,
            "dynamicMembershipChange": True,
            # Never fork to serialize: libvirt and pyghmi threads live in this process.
            "useFork": False,
            # We drive the event loop from our own thread (clean shutdown, flush hooks).
            "autoTick": False,
        }


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)
