"""What the clients share: targets, TLS settings, readable connection errors.

Client-side failures follow one rule, so a caller knows whether to retry:
  unavailable    the request was never sent (cannot connect, write failed): retry freely;
  maybe-applied  it was sent and no answer came (timeout, connection lost): if it
                 changes state it may have been applied, like a proposal timeout.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from hacluster.rpc.protocol import CONNECTION_ID, ErrorCode, Reply, RpcError

_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


DEFAULT_TIMEOUT_S = 10.0  # per request, both clients

class ConnectError(RpcError):
    """Cannot reach the peer at all; the message names the socket or address."""

    def __init__(self, message: str, target: str) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, message, {"target": target, "sent": False})


@dataclass(frozen=True)
class Target:
    """Where a peer listens: a Unix socket path, or host:port for TLS."""

    path: str = ""
    host: str = ""
    port: int = 0

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    def __str__(self) -> str:
        if self.path:
            return self.path
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_target(target: str) -> Target:
    """"host:port" (or "[v6]:port") is TCP+TLS; anything else is a socket path."""
    match = _HOST_PORT.match(target)
    if "/" in target or match is None:
        if not target:
            raise ValueError("empty RPC target")
        return Target(path=target)
    host, port = match.group(1).strip("[]"), int(match.group(2))
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {target!r}")
    return Target(host=host, port=port)


def client_ssl_context(cafile: str | None = None, certfile: str | None = None,
                       keyfile: str | None = None) -> ssl.SSLContext:
    """Verify the peer's certificate (against cafile, else the system CAs); optionally
    present a client certificate."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if certfile:
            context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectError(f"cannot load TLS files (cafile={cafile!r}, certfile="
                           f"{certfile!r}, keyfile={keyfile!r}): {exc}", "") from None
    return context


def _reason(target: Target, exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"timed out after {timeout_s:g}s"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {target.host!r}: {exc.strerror}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the peer's certificate is not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    code = getattr(exc, "errno", None)
    if code == errno.ENOENT:
        return "no such file (is the peer running?)"
    if code == errno.ECONNREFUSED:
        return "connection refused (is the peer running?)"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied (the socket is for root only)"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def connect_error(target: Target, exc: BaseException, timeout_s: float) -> ConnectError:
    return ConnectError(f"cannot connect to {target}: {_reason(target, exc, timeout_s)}",
                        str(target))


def not_sent(target: Target, method: str, exc: BaseException) -> RpcError:
    return RpcError(ErrorCode.UNAVAILABLE,
                    f"cannot send {method} to {target}: {_reason(target, exc, 0)}",
                    {"target": str(target), "sent": False})


def no_answer(target: Target, method: str, why: str) -> RpcError:
    return RpcError(ErrorCode.MAYBE_APPLIED,
                    f"{why} after {method} was sent to {target}; if it changes state, "
                    "it may or may not have been applied",
                    {"target": str(target), "sent": True})


def unwrap(reply: Reply) -> tuple[Any, bool]:
    """(item, final) from a reply to our request; raises the server's error."""
    if reply.error is not None:
        if reply.id == CONNECTION_ID:
            reply.error.details.setdefault("connection", True)
        raise reply.error
    return reply.result, not reply.more
