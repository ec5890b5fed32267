"""pysyncobj TCP transport with a durability barrier and handshake limits.

* Outgoing Raft messages are queued and flushed once per event-loop round, after one
  fsync of everything the journal wrote (group commit): no vote, acknowledgement or
  append_entries leaves this node before the state it reflects is on disk.
* An incoming connection that has not completed the encrypted handshake within
  `handshake_timeout_s`, or has buffered more than `max_handshake_bytes`, is dropped:
  garbage or a bogus length prefix cannot pile up memory or linger.
* While a rebuilt peer catches up it drops vote requests (it must not vote with an
  empty log: it may have acknowledged entries it no longer has).
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

    def abstains_from_voting(self) -> bool: ...

    def handshake_limits(self) -> tuple[float, int]: ...


class DurableTransport(TCPTransport):
    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:  # noqa: N803
        self._outbox: list[tuple[Any, Any]] = []
        self._accepted_at: dict[Any, float] = {}
        self._engine: _Engine = syncObj
        super().__init__(syncObj, selfNode, otherNodes)

    # ------------------------------------------------------------ group commit

    def send(self, node: Any, message: Any) -> bool:
        conn = self._connections.get(node)
        if conn is None or conn.state != CONNECTION_STATE.CONNECTED:
            return False
        self._outbox.append((node, message))
        return True

    def flush(self) -> None:
        """Make the journal durable, then send every queued message in order."""
        if not self._outbox:
            return
        self._engine.durability_barrier()
        outbox, self._outbox = self._outbox, []
        for node, message in outbox:
            TCPTransport.send(self, node, message)

    def _onTick(self) -> None:  # noqa: N802 - pysyncobj hook, runs right before poll()
        super()._onTick()
        self._drop_stalled_handshakes()
        self.flush()

    def destroy(self) -> None:
        self.flush()
        super().destroy()

    # ------------------------------------------------------------ inbound guards

    def _onNewIncomingConnection(self, conn: Any) -> None:  # noqa: N802
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
            if conn in self._unknownConnections:
                if len(conn._TcpConnection__readBuffer) > max_bytes:
                    log.warning("dropping unauthenticated connection: %d bytes before handshake",
                                len(conn._TcpConnection__readBuffer))
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

    def _onMessageReceived(self, node: Any, message: Any) -> None:  # noqa: N802
        if (
            isinstance(message, dict)
            and message.get("type") == "request_vote"
            and self._engine.abstains_from_voting()
        ):
            return
        super()._onMessageReceived(node, message)
