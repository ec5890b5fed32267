"""Refused admin RPC callers: counted per kind and source for status, logged with the
source and reason, rate-limited (one line per kind and source per interval, with the
number held back), so a flood of thousands writes a handful of lines.

Kinds: tls_failed (handshake refused: a certificate from another CA, plain TCP, a reset),
tls_timeout (the handshake stalled), no_credentials (neither a certificate nor a token),
bad_token (wrong or revoked, or tokens not enabled), unix_uid (a Unix caller that is
neither root nor the daemon's uid), too_many_connections (the listener was full, or the
address already had max_anonymous_per_source connections not yet authenticated),
idle_unauthenticated (a TCP client that sent no request in time), bad_frame (a frame
that cannot be read: undecodable, too large, or not completed in time).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from hacluster.core.ratelimit import RefusalLog, held_back
from hacluster.rpc.auth import AuthFailure, unix_peer


def source_key(transport: str, peer: str) -> str:
    """What the rate limit and status count by: the TCP host (not its port, which
    changes with every connection), or the Unix caller's uid (not its pid)."""
    if transport == "unix":
        return "unix:" + next((p for p in peer.split(",") if p.startswith("uid=")), peer)
    host, sep, _ = peer.rpartition(":")
    return host.strip("[]") if sep else peer


class RpcRefusals:
    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 on_auth_failure: Callable[[AuthFailure], None] | None = None) -> None:
        self._log = logger
        self._counter = RefusalLog(interval_s)
        self._on_auth_failure = on_auth_failure

    def refuse(self, kind: str, transport: str, peer: str, reason: str) -> None:
        """Count one refusal and log it unless this source is over its rate."""
        line = self._counter.refuse(kind, source_key(transport, peer), time.monotonic())
        if line is not None:
            self._log.warning("rpc: refused %s caller %s: %s%s", transport, peer, reason,
                              held_back(line, self._counter.interval_s))
        if self._on_auth_failure is not None and kind != "bad_frame":
            try:
                self._on_auth_failure(AuthFailure(transport, peer, reason))
            except Exception:
                self._log.exception("rpc: on_auth_failure hook failed")

    def summary(self) -> dict[str, Any]:
        return self._counter.summary(time.monotonic())

    async def report_overdue(self) -> None:
        """Forever: say how many refusals of a source that went quiet were not logged."""
        interval = self._counter.interval_s
        while True:
            await asyncio.sleep(min(interval, 1.0))
            for line in self._counter.overdue(time.monotonic()):
                self._log.warning("rpc: refused %d more caller(s) from %s in the last %gs (%s)",
                                  line.suppressed, line.source, interval, line.kind)


def tcp_peer(address: Any) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def caller(sock: socket.socket, address: Any, transport: str) -> str:
    """Who is connecting, before we serve it (for the log and status)."""
    if transport == "tcp":
        return tcp_peer(address)
    try:
        cred = unix_peer(sock)
    except OSError:
        return "unix:?"
    return f"unix:pid={cred.pid},uid={cred.uid}"
