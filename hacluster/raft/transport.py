"""pysyncobj TCP transport with a durability barrier and handshake limits.

* Outgoing Raft messages are queued and flushed once per event-loop round, after one
  fsync of everything the journal wrote (group commit): no vote or acknowledgement
  leaves this node before the state it reflects is on disk. A leader's replication
  messages overlap its own fsync instead (see `flush`).
* An incoming connection that has not completed the encrypted handshake within
  `handshake_timeout_s`, or has buffered more than `max_handshake_bytes`, is dropped:
  garbage or a bogus length prefix cannot pile up memory or linger.
* While a rebuilt peer catches up it drops vote requests (it must not vote with an
  empty log: it may have acknowledged entries it no longer has). If it kept a term
  above the leader's (its meta file survived), pysyncobj would ignore that leader's
  append_entries for ever: it tells the leader its term instead (a vote request it
  cannot win), so the others elect a leader above it, whom it follows.
* A leader keeps each follower's nextIndex monotonic on successful acknowledgements
  (pipelining), see `_onMessageReceived`.
* Read index: a leader's append_entries get a sequence number, a follower's answer
  echoes the one it answers (engine.py, core/readindex.py).
* Outgoing connections leave from this node's own address (pysyncobj binds only the
  listening socket): on a host with several addresses a firewall rule or a cut of
  that address covers all of this node's Raft traffic, both ways.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from pysyncobj.monotonic import monotonic
from pysyncobj.tcp_connection import CONNECTION_STATE
from pysyncobj.transport import TCPTransport

log = logging.getLogger(__name__)


class _Engine(Protocol):
    """What the transport needs from the SyncObj it serves."""

    def durability_barrier(self) -> None: ...

    def term_barrier(self) -> None: ...

    def abstains_from_voting(self) -> bool: ...

    def handshake_limits(self) -> tuple[float, int]: ...

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


class DurableTransport(TCPTransport):
    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        self._outbox: list[tuple[Any, Any]] = []
        self._accepted_at: dict[Any, float] = {}
        self._term_told: dict[Any, float] = {}  # node -> when we last told it our term
        self._engine: _Engine = syncObj
        super().__init__(syncObj, selfNode, otherNodes)

    def _tell_term_if_stale(self, node: Any, message: dict[str, Any]) -> None:
        ours = self._engine.ha_current_term()
        term = message.get("term")
        now = monotonic()
        if isinstance(term, int) and term < ours and now - self._term_told.get(node, 0) > 1.0:
            self._term_told[node] = now
            log.warning("rebuilt peer: leader %s is in term %d, below ours (%d): telling it",
                        getattr(node, "id", node), term, ours)
            self.send(node, {"type": "request_vote", "term": ours, "last_log_index": 0,
                             "last_log_term": 0})

    # ------------------------------------------------------------ outgoing connections

    def addNode(self, node: Any) -> None:
        super().addNode(node)
        conn = self._connections.get(node)
        source = getattr(self._selfNode, "ip", None)
        if conn is not None and source:
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
        elif kind == "next_node_idx":
            echo = self._engine.ha_echo_for(node)
            message = {**message, "ha_hears": self._engine.ha_hears_now(),
                       "ha_ans": self._engine.ha_answer_stamp()}
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
        self._drop_stalled_handshakes()
        self.flush()

    def destroy(self) -> None:
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
        self._accepted_at[conn] = monotonic()
        read_chunk = conn._TcpConnection__processRead
        conn._TcpConnection__processRead = self._bounded_reader(conn, read_chunk)

    def _bounded_reader(self, conn: Any, read_chunk: Callable[[], bool]) -> Callable[[], bool]:
        """Wrap one connection's socket read so an unauthenticated peer cannot make
        us buffer more than the handshake limit (pysyncobj waits for any length)."""
        _, max_bytes = self._engine.handshake_limits()

        def read() -> bool:
            more = bool(read_chunk())
            buffered = len(conn._TcpConnection__readBuffer)
            if buffered > max_bytes and conn in self._unknownConnections:
                log.warning(
                    "dropping unauthenticated connection: %d bytes before handshake", buffered
                )
                conn.disconnect()
                return False
            return more

        return read

    def _drop_stalled_handshakes(self) -> None:
        if not self._accepted_at:
            return
        timeout, _ = self._engine.handshake_limits()
        now = monotonic()
        for conn in list(self._accepted_at):
            if conn not in self._unknownConnections:
                del self._accepted_at[conn]
            elif now - self._accepted_at[conn] > timeout:
                log.warning("dropping connection that did not complete the handshake")
                del self._accepted_at[conn]
                conn.disconnect()

    def _onMessageReceived(self, node: Any, message: Any) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "request_vote" and self._engine.abstains_from_voting():
            return
        if kind == "append_entries":
            self._engine.ha_note_append(node, message)
            if self._engine.abstains_from_voting():
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
