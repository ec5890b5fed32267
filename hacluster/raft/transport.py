"""pysyncobj TCP transport with a durability barrier and handshake limits.

* Outgoing Raft messages are queued and flushed once per event-loop round, after one
  fsync of everything the journal wrote (group commit): no vote or acknowledgement
  leaves this node before the state it reflects is on disk. A leader's replication
  messages overlap its own fsync instead (see `flush`).
* An incoming connection that has not completed the encrypted handshake within
  `handshake_timeout_s`, or has buffered more than `max_handshake_bytes`, is dropped:
  garbage or a bogus length prefix cannot pile up memory or linger. At most
  `max_pending_handshakes` may wait for theirs (the oldest goes first: a real peer
  completes it in milliseconds), so a flood cannot use up the file descriptors.
* Every refusal (a handshake that fails to decrypt, i.e. a wrong secret or not a
  peer; no handshake in time; too many bytes; a peer with the secret that is not a
  member; an undecodable message; a connection closed before its handshake) is counted
  per kind with its source for status, and logged with the source, rate-limited
  (core/ratelimit.py): a flood of thousands writes a few lines. pysyncobj drops these
  connections silently; we see them through its parse step and disconnect callback.
* If accept() fails (out of file descriptors), pysyncobj closes its listening socket
  for good: we bind it again.
* While a rebuilt peer catches up it drops vote requests (it must not vote with an
  empty log: it may have acknowledged entries it no longer has).
* A peer whose term is above the leader's (it stood for an election whose vote requests
  a cut dropped, or a rebuilt peer whose meta file survived) would see pysyncobj ignore
  that leader's append_entries for ever, and with pre-vote it cannot win an election to
  move on: it tells the leader its term (a vote request it cannot win), so the leader
  steps down and the others elect a leader above it, whom it follows.
* A leader keeps each follower's nextIndex monotonic on successful acknowledgements
  (pipelining), see `_onMessageReceived`.
* Read index: a leader's append_entries get a sequence number, a follower's answer
  echoes the one it answers (engine.py, core/readindex.py).
* Outgoing connections leave from this node's own address (pysyncobj binds only the
  listening socket): on a host with several addresses a firewall rule or a cut of
  that address covers all of this node's Raft traffic, both ways.
* An outgoing connection still connecting after `connectionTimeout` is dropped, so it
  is tried again every `connectionRetryTime`. pysyncobj checks a connection's timeout
  only when it has an event or something to send, and a connect whose SYN was lost
  (a cut that healed since) has neither: it waited for the kernel's SYN retries, up
  to two minutes. A follower sends nothing, so two followers stayed unconnected after
  a partition healed; when their leader died, they could not elect one (`connected
  to anyone` was false) and, with watchdogs, both reset themselves (soak seed 5).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pysyncobj.monotonic import monotonic
from pysyncobj.tcp_connection import CONNECTION_STATE
from pysyncobj.transport import TCPTransport

from hacluster.core.ratelimit import RateLimiter, RefusalLog, held_back
from hacluster.raft.allowances import CARRY as ANSWER_CARRY
from hacluster.raft.allowances import RELAY as ALLOW_RELAY
from hacluster.raft.prevote import ASK as PRE_VOTE_ASK
from hacluster.raft.prevote import YES as PRE_VOTE_YES

log = logging.getLogger(__name__)

# What each kind of refused Raft connection means, for the log.
REFUSALS = {
    "bad_handshake": "handshake failed (wrong cluster secret, or not a hacluster peer)",
    "handshake_timeout": "no handshake within {timeout:g}s",
    "oversized": "more than {max_bytes} bytes before the handshake",
    "too_many_pending": "the oldest of over {max_pending} connections awaiting a handshake",
    "no_handshake": "closed by the other side before completing the handshake",
    "not_member": "has the secret but is not a member (says it is {detail})",
    "bad_message": "undecodable message on an established connection",
    "handshake_dropped": "it closed our connection during the handshake (another cluster "
                         "secret, not a hacluster peer, or too busy to answer within its "
                         "handshake timeout: its own log says which)",
}


@dataclass(frozen=True)
class InboundLimits:
    handshake_timeout_s: float
    max_handshake_bytes: int
    max_pending: int  # connections waiting for their handshake at once
    log_interval_s: float  # refusals: one log line per kind and source per interval


class _Engine(Protocol):
    """What the transport needs from the SyncObj it serves."""

    def durability_barrier(self) -> None: ...

    def term_barrier(self) -> None: ...

    def abstains_from_voting(self) -> bool: ...

    def handshake_limits(self) -> InboundLimits: ...

    def ha_next_index(self, node: Any) -> int | None: ...

    def ha_keep_next_index(self, node: Any, before: int | None) -> None: ...

    def ha_stamp_append(self, message: dict[str, Any]) -> dict[str, Any]: ...

    def ha_note_append(self, node: Any, message: dict[str, Any]) -> None: ...

    def ha_echo_for(self, node: Any) -> tuple[int, int] | None: ...

    def ha_note_answer(self, node: Any, message: dict[str, Any]) -> None: ...

    def ha_current_term(self) -> int: ...

    def ha_hears_now(self) -> dict[str, float]: ...

    def ha_answer_stamp(self) -> list[int]: ...

    def ha_allow_for(self, node: Any) -> list[int] | None: ...

    def ha_pre_vote(self, node: Any, message: dict[str, Any]) -> None: ...

    def ha_relay_for(self, node: Any) -> dict[str, list[int]] | None: ...

    def ha_relayed(self, message: dict[str, Any]) -> None: ...

    def ha_carry(self, node: Any, message: dict[str, Any]) -> None: ...

    def ha_carried(self) -> dict[str, list[int]]: ...


class DurableTransport(TCPTransport):
    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        self._outbox: list[tuple[Any, Any]] = []
        # Incoming connections still in their handshake, oldest first.
        self._accepted_at: dict[Any, float] = {}
        self._term_told: dict[Any, float] = {}  # node -> when we last told it our term
        self._engine: _Engine = syncObj
        self._limits = syncObj.handshake_limits()
        self._refusals = RefusalLog(self._limits.log_interval_s)
        self._next_overdue = 0.0
        self._listener_log = RateLimiter(self._limits.log_interval_s)
        self._next_bind = 0.0
        self._closing = False
        super().__init__(syncObj, selfNode, otherNodes)

    def _tell_term_if_stale(self, node: Any, message: dict[str, Any]) -> None:
        ours = self._engine.ha_current_term()
        term = message.get("term")
        now = monotonic()
        if isinstance(term, int) and term < ours and now - self._term_told.get(node, 0) > 1.0:
            self._term_told[node] = now
            log.warning("leader %s is in term %d, below ours (%d): telling it, so that it "
                        "steps down and the next election takes us back", getattr(node, "id",
                                                                                   node),
                        term, ours)
            self.send(node, {"type": "request_vote", "term": ours, "last_log_index": 0,
                             "last_log_term": 0})

    # ------------------------------------------------------------ outgoing connections

    def addNode(self, node: Any) -> None:
        super().addNode(node)
        conn = self._connections.get(node)
        if conn is None:
            return
        self._judge_frames(conn)
        source = getattr(self._selfNode, "ip", None)
        if source:
            _bind_before_connect(conn, source)

    # ------------------------------------------------------------ group commit

    def send(self, node: Any, message: Any) -> bool:
        conn = self._connections.get(node)
        if conn is None or conn.state != CONNECTION_STATE.CONNECTED:
            return False
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "append_entries":
            message = self._engine.ha_stamp_append(message)
            allow = self._engine.ha_allow_for(node)
            if allow is not None:
                message["ha_allow"] = allow
            relay = self._engine.ha_relay_for(node)
            if relay:
                message["ha_relay"] = relay
        elif kind == "next_node_idx":
            echo = self._engine.ha_echo_for(node)
            message = {**message, "ha_hears": self._engine.ha_hears_now(),
                       "ha_ans": self._engine.ha_answer_stamp()}
            carried = self._engine.ha_carried()
            if carried:
                message["ha_carried"] = carried
            if echo is not None:
                message["ha_echo"] = echo
        self._outbox.append((node, message))
        return True

    def flush(self) -> None:
        """Send every queued message in order, with the journal durable first.

        A leader's append_entries are the exception: they go out first and the leader
        fsyncs while the followers do (Raft paper 10.2.1). That is safe because the
        leader counts its own copy towards a commit only once it is durable (the
        engine syncs before advancing its commit index), and every other message
        (acknowledgements, votes, answers) still waits for the barrier.
        """
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, []
        replication_only = all(
            isinstance(m, dict) and m.get("type") == "append_entries" for _, m in outbox
        )
        if replication_only:
            self._engine.term_barrier()  # the term they carry is durable (normally no-op)
        else:
            self._engine.durability_barrier()
        for node, message in outbox:
            TCPTransport.send(self, node, message)
        if replication_only:
            self._engine.durability_barrier()

    def _onTick(self) -> None:
        super()._onTick()
        self._drop_stalled_connects()
        self._drop_stalled_handshakes()
        self._log_overdue_refusals()
        self._listen_again()
        self.flush()

    def destroy(self) -> None:
        self._closing = True
        try:
            self.flush()
        finally:
            super().destroy()

    def discard_outbox(self) -> None:
        """Forget queued messages (a halted node must not send what it cannot persist)."""
        self._outbox.clear()

    # ------------------------------------------------------------ inbound guards

    def _onNewIncomingConnection(self, conn: Any) -> None:
        super()._onNewIncomingConnection(conn)
        conn.ha_source = _peer_address(conn)
        conn.ha_refusal = None
        self._accepted_at[conn] = monotonic()
        read_chunk = conn._TcpConnection__processRead
        conn._TcpConnection__processRead = self._bounded_reader(conn, read_chunk)
        self._judge_frames(conn)
        while len(self._accepted_at) > self._limits.max_pending:
            oldest = next(iter(self._accepted_at))
            if oldest in self._unknownConnections:
                self._drop(oldest, "too_many_pending")
            else:  # authenticated since the last tick
                del self._accepted_at[oldest]

    def _bounded_reader(self, conn: Any, read_chunk: Callable[[], bool]) -> Callable[[], bool]:
        """Wrap one connection's socket read so an unauthenticated peer cannot make
        us buffer more than the handshake limit (pysyncobj waits for any length)."""

        def read() -> bool:
            more = bool(read_chunk())
            buffered = len(conn._TcpConnection__readBuffer)
            if buffered > self._limits.max_handshake_bytes and conn in self._unknownConnections:
                self._drop(conn, "oversized")
                return False
            return more

        return read

    def _judge_frames(self, conn: Any) -> None:
        """pysyncobj drops a connection whose frame does not decrypt or decode, without
        a word: note why before it parses a complete frame, so that its disconnect
        callback (`_onDisconnected`) can say so."""
        parse = conn._TcpConnection__processParseMessage

        def parse_noting_failure() -> Any:
            if not _frame_buffered(conn):
                return parse()
            handshaking = conn in self._unknownConnections or not conn.sendRandKey
            conn.ha_refusal = ("bad_handshake" if handshaking else "bad_message", "")
            message = parse()
            if conn.state != CONNECTION_STATE.DISCONNECTED:
                conn.ha_refusal = None
            return message

        conn.ha_refusal = None
        conn._TcpConnection__processParseMessage = parse_noting_failure

    def _onIncomingMessageReceived(self, conn: Any, message: Any) -> None:
        keyed = not self._syncObj.encryptor or conn.sendRandKey
        known = isinstance(message, str) and message in self._nodeAddrToNode
        if keyed and not known and message != "readonly" and not isinstance(message, list):
            conn.ha_refusal = ("not_member", repr(message)[:80])  # pysyncobj drops it
        super()._onIncomingMessageReceived(conn, message)

    def _onOutgoingConnected(self, conn: Any) -> None:
        conn.ha_keyed = False  # until the other side answers our handshake
        super()._onOutgoingConnected(conn)

    def _onOutgoingMessageReceived(self, conn: Any, message: Any) -> None:
        conn.ha_keyed = True
        super()._onOutgoingMessageReceived(conn, message)

    def _onDisconnected(self, conn: Any) -> None:
        pending = self._accepted_at.pop(conn, None) is not None \
            and conn in self._unknownConnections
        node = None if pending else self._connToNode(conn)
        refusal = getattr(conn, "ha_refusal", None)
        conn.ha_refusal = None
        if refusal is None and getattr(conn, "ha_keyed", None) is False and not self._closing:
            refusal = ("handshake_dropped", "")
        conn.ha_keyed = None
        super()._onDisconnected(conn)
        if refusal is None and pending and not self._closing:
            refusal = ("no_handshake", "")
        if refusal is not None:
            source = str(getattr(conn, "ha_source", None) or getattr(node, "address", "?"))
            self._refused(refusal[0], source, refusal[1])

    def _drop(self, conn: Any, kind: str) -> None:
        conn.ha_refusal = (kind, "")
        conn.disconnect()  # calls _onDisconnected, which logs and counts
        self._accepted_at.pop(conn, None)

    def _drop_stalled_connects(self) -> None:
        """Outgoing connects older than the connection timeout: drop, to be retried."""
        timeout = self._syncObj.conf.connectionTimeout
        now = monotonic()
        for node, conn in list(self._connections.items()):
            started = self._lastConnectAttempt.get(node)
            if conn.state == CONNECTION_STATE.CONNECTING and started is not None \
                    and now - started > timeout:
                conn.disconnect()

    def _drop_stalled_handshakes(self) -> None:
        if not self._accepted_at:
            return
        deadline = monotonic() - self._limits.handshake_timeout_s
        for conn, accepted_at in list(self._accepted_at.items()):
            if conn not in self._unknownConnections:
                del self._accepted_at[conn]
            elif accepted_at < deadline:
                self._drop(conn, "handshake_timeout")

    # ------------------------------------------------------------ refusals

    def _refused(self, kind: str, source: str, detail: str) -> None:
        host = _host_of(source)
        line = self._refusals.refuse(kind, host, monotonic())
        if line is not None:
            what = "connection to" if kind == "handshake_dropped" else "connection from"
            log.warning("refused Raft %s %s: %s%s", what, source, self._explain(kind, detail),
                        held_back(line, self._refusals.interval_s))

    def _explain(self, kind: str, detail: str) -> str:
        limits = self._limits
        return REFUSALS.get(kind, kind).format(
            timeout=limits.handshake_timeout_s, max_bytes=limits.max_handshake_bytes,
            max_pending=limits.max_pending, detail=detail or "?")

    def _log_overdue_refusals(self) -> None:
        now = monotonic()
        if now < self._next_overdue:
            return
        self._next_overdue = now + 1.0
        for line in self._refusals.overdue(now):
            log.warning("refused %d more Raft connection(s) with %s in the last %gs: %s",
                        line.suppressed, line.source, self._refusals.interval_s,
                        self._explain(line.kind, ""))

    def refusal_summary(self) -> dict[str, Any]:
        """Refused connections so far, for status (call on the event-loop thread)."""
        return self._refusals.summary(monotonic())

    def _listen_again(self) -> None:
        """pysyncobj's server closes its listening socket for good when accept() fails
        (e.g. EMFILE: out of file descriptors); bind it again, every bind_retry_s."""
        server = self._server
        if not self._ready or self._closing or server is None \
                or server._TcpServer__fileno is not None:
            return
        now = monotonic()
        if now < self._next_bind:
            return
        self._next_bind = now + self._syncObj.conf.bindRetryTime
        try:
            server.bind()
        except OSError as exc:
            server.unbind()
            if self._listener_log.hit("bind", now) is not None:
                log.error("the Raft listener stopped (accept failed) and cannot listen "
                          "again yet: %s", exc)
            return
        if self._listener_log.hit("bound", now) is not None:
            log.error("the Raft listener stopped (accept failed, out of file descriptors?) "
                      "and listens again")

    def _onMessageReceived(self, node: Any, message: Any) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind in (PRE_VOTE_ASK, PRE_VOTE_YES):
            self._engine.ha_pre_vote(node, message)  # ours: pysyncobj never sees them
            return
        if kind == ALLOW_RELAY:
            self._engine.ha_relayed(message)
            return
        if kind == ANSWER_CARRY:
            self._engine.ha_carry(node, message)
            return
        if kind == "request_vote" and self._engine.abstains_from_voting():
            return
        if kind == "append_entries":
            self._engine.ha_note_append(node, message)
            # pysyncobj ignores a leader of a lower term without a word. A peer that stood
            # for election while cut off (or was rebuilt) keeps that higher term; with
            # pre-vote it cannot win another election, so unless the leader learns our
            # term nobody ever moves past it and this peer never catches up (soak seed 21).
            self._tell_term_if_stale(node, message)
        elif kind == "next_node_idx":
            self._engine.ha_note_answer(node, message)
        if kind == "next_node_idx" and message.get("success") and not message.get("reset"):
            # pysyncobj sets nextIndex from every successful ack, so an ack for an older
            # in-flight message rewinds it and the follower receives (and truncates and
            # rewrites) entries it already has. Keep nextIndex monotonic instead.
            before = self._engine.ha_next_index(node)
            super()._onMessageReceived(node, message)
            self._engine.ha_keep_next_index(node, before)
            return
        super()._onMessageReceived(node, message)


def _frame_buffered(conn: Any) -> bool:
    """Whether a whole frame (or a negative length, which pysyncobj also parses) is
    buffered: pysyncobj's parse then either returns a message or drops the connection."""
    buffered = conn._TcpConnection__readBuffer
    if len(buffered) < 4:
        return False
    (length,) = struct.unpack("i", buffered[:4])
    return len(buffered) - 4 >= length


def _peer_address(conn: Any) -> str:
    try:
        host, port = conn._TcpConnection__socket.getpeername()[:2]
    except (OSError, AttributeError, ValueError):
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _host_of(address: str) -> str:
    """The host part of host:port (the rate limit counts per host, not per port)."""
    host, sep, _ = address.rpartition(":")
    return host.strip("[]") if sep else address


def _bind_before_connect(conn: Any, source: str) -> None:
    """Make `conn` bind its socket to `source` each time it connects. pysyncobj creates
    the socket inside connect() and sets keepalive just before connecting: bind there."""
    set_keepalive = conn.setSockoptKeepalive

    def keepalive_then_bind() -> None:
        set_keepalive()
        sock = conn._TcpConnection__socket
        if sock is None:
            return
        try:
            sock.bind((source, 0))
        except OSError as exc:  # not an address of this host: connect from any
            log.warning("cannot send Raft traffic from %s: %s", source, exc)

    conn.setSockoptKeepalive = keepalive_then_bind
