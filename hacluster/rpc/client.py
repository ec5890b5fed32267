"""The blocking RPC client, for hactl: one request at a time over one connection.

    with RpcClient.connect("/run/hacluster/hactl.sock") as rpc:
        rpc.call("status", {})
        for event in rpc.stream("watch", {}, timeout_s=math.inf):
            ...

Any failure in the middle of a request (timeout, lost connection, a reply that
cannot be decoded) leaves the connection in an unknown place in the reply
stream, so the client closes it; later calls fail fast with `unavailable`.
"""

from __future__ import annotations

import math
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

from hacluster.rpc.endpoint import (
    DEFAULT_TIMEOUT_S,
    Target,
    client_ssl_context,
    connect_error,
    no_answer,
    not_sent,
    parse_target,
    unwrap,
)
from hacluster.rpc.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    HEADER,
    ErrorCode,
    Reply,
    Request,
    RpcError,
    decode_reply,
    encode_request,
    frame_length,
)


class _Lost(Exception):
    """The connection ended or timed out while a reply was awaited."""


class RpcClient:
    def __init__(self, sock: socket.socket, target: Target, *, token: str | None,
                 timeout_s: float, max_frame_bytes: int) -> None:
        """Use RpcClient.connect()."""
        self._sock: socket.socket | None = sock
        self._target = target
        self._token = token
        self._timeout_s = timeout_s
        self._max_frame_bytes = max_frame_bytes
        self._next_id = 1
        self._answered = False  # any reply yet: tells a refused TLS session from a crash

    @classmethod
    def connect(cls, target: str, *, token: str | None = None, cafile: str | None = None,
                certfile: str | None = None, keyfile: str | None = None,
                timeout_s: float = DEFAULT_TIMEOUT_S, server_hostname: str | None = None,
                max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> RpcClient:
        """Connect to a Unix socket path, or to "host:port" over TLS.

        Raises ConnectError (code unavailable) with a message naming the target.
        """
        where = parse_target(target)
        sock = _open_unix(where, timeout_s) if where.is_unix else _open_tls(
            where, timeout_s, client_ssl_context(cafile, certfile, keyfile),
            server_hostname or where.host)
        return cls(sock, where, token=token, timeout_s=timeout_s,
                   max_frame_bytes=max_frame_bytes)

    @property
    def target(self) -> str:
        return str(self._target)

    @property
    def closed(self) -> bool:
        return self._sock is None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             timeout_s: float | None = None) -> Any:
        """The method's result; for a streamed method, the list of its items."""
        items, streamed = [], False
        for reply in self._exchange(method, params, timeout_s):
            item, final = unwrap(reply)
            if not final:
                items.append(item)
                streamed = True
            elif not streamed:
                return item
        return items

    def stream(self, method: str, params: dict[str, Any] | None = None, *,
               timeout_s: float | None = None) -> Iterator[Any]:
        """Items of a streamed method; timeout_s bounds the wait for each item
        (math.inf: wait forever). Leaving the loop early closes the connection."""
        in_sync = False
        try:
            for reply in self._exchange(method, params, timeout_s):
                in_sync = reply.id == 0 or not reply.more  # the final frame is read
                item, final = unwrap(reply)
                if final:
                    return
                yield item
        finally:
            if not in_sync:  # replies still on the way: the connection is out of step
                self.close()

    # -- internals -------------------------------------------------------------------

    def _exchange(self, method: str, params: dict[str, Any] | None,
                  timeout_s: float | None) -> Iterator[Reply]:
        """Send one request, then yield its replies up to the final one."""
        sock = self._sock
        if sock is None:
            raise RpcError(ErrorCode.UNAVAILABLE,
                           f"the connection to {self._target} is closed",
                           {"target": str(self._target), "sent": False})
        request_id, self._next_id = self._next_id, self._next_id + 1
        frame = encode_request(Request(request_id, method, dict(params or {}), self._token),
                               self._max_frame_bytes)
        wait_s = self._timeout_s if timeout_s is None else timeout_s
        try:
            sock.settimeout(self._timeout_s)
            sock.sendall(frame)
        except OSError as exc:
            self.close()
            raise not_sent(self._target, method, exc) from None
        final = False
        while not final:
            reply = self._receive(sock, method, wait_s)
            if reply.id not in (request_id, 0):
                self.close()
                raise RpcError(ErrorCode.BAD_FRAME,
                               f"{self._target} answered request {reply.id}, "
                               f"expected {request_id}")
            final = reply.id == 0 or not reply.more
            if final and reply.id == 0:
                self.close()  # a connection-level error: the server hangs up
            yield reply

    def _receive(self, sock: socket.socket, method: str, wait_s: float) -> Reply:
        deadline = None if math.isinf(wait_s) else time.monotonic() + wait_s
        try:
            header = _read_exactly(sock, HEADER.size, deadline)
            body = _read_exactly(sock, frame_length(header, self._max_frame_bytes), deadline)
            reply = decode_reply(body)
        except _Lost as exc:
            self.close()
            why = f"no reply within {wait_s:g}s" if exc.args[0] == "timeout" else exc.args[0]
            if not self._answered and not self._target.is_unix:
                # TLS 1.3 reports a refused client certificate only at the first read.
                why += " (before any reply: was our TLS client certificate refused?)"
            raise no_answer(self._target, method, why) from None
        except RpcError:
            self.close()
            raise
        self._answered = True
        return reply


def _read_exactly(sock: socket.socket, size: int, deadline: float | None) -> bytes:
    chunks, missing = [], size
    while missing:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Lost("timeout")
            sock.settimeout(left)
        else:
            sock.settimeout(None)
        try:
            chunk = sock.recv(min(missing, 1 << 20))
        except TimeoutError:
            raise _Lost("timeout") from None
        except OSError as exc:
            raise _Lost(f"connection lost ({exc.strerror or exc})") from None
        if not chunk:
            raise _Lost("connection closed by the peer")
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def _open_unix(target: Target, timeout_s: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(target.path)
    except OSError as exc:
        sock.close()
        raise connect_error(target, exc, timeout_s) from None
    return sock


def _open_tls(target: Target, timeout_s: float, context: ssl.SSLContext,
              server_hostname: str) -> socket.socket:
    try:
        raw = socket.create_connection((target.host, target.port), timeout=timeout_s)
    except OSError as exc:
        raise connect_error(target, exc, timeout_s) from None
    try:
        sock = context.wrap_socket(raw, server_hostname=server_hostname)
    except OSError as exc:  # ssl.SSLError is an OSError
        raw.close()
        raise connect_error(target, exc, timeout_s) from None
    return sock
