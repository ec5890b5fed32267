"""The admin RPC server: a Unix socket for local admins, optionally TCP+TLS.

One task per connection reads frames and serves them strictly in order, so a
client may pipeline requests and reads replies in the order it sent them. A
method is `async def m(ctx, params)` (one reply) or an async generator function
(one reply frame per yielded item with "more": true, then a final null result).

Nothing a client sends can hurt the server or another connection: undecodable,
oversized, truncated or slow frames end in an error reply (when the request id
is known) or in closing that one connection; method exceptions become
`internal` replies and the connection carries on. The server never exits on
bad input; only close() stops it. Refused callers and unreadable frames are
counted for status and logged with their source, rate-limited (rpc/refusals.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hacluster.rpc.auth import (
    AuthFailure,
    RpcSetupError,
    TokenTable,
    certificate_user,
    server_ssl_context,
    uid_user,
    unix_peer,
    unix_uid_allowed,
)
from hacluster.rpc.listen import (
    bind_tcp,
    bind_unix,
    open_streams,
    remove_socket_if_ours,
)
from hacluster.rpc.protocol import (
    CONNECTION_ID,
    HEADER,
    EnvelopeError,
    ErrorCode,
    Request,
    RpcError,
    check_plain,
    decode_request,
    encode_frame,
    error_reply,
    frame_length,
    result_reply,
)
from hacluster.rpc.refusals import RpcRefusals, caller, tcp_peer

if TYPE_CHECKING:
    from hacluster.config import RpcConfig

__all__ = ["AuthFailure", "CallContext", "Method", "RpcServer", "RpcSetupError",
           "ServerLimits"]

LOGGER_NAME = "hacluster.rpc"


@dataclass(frozen=True)
class CallContext:
    """Who called and how; handed to every method."""

    user: str
    transport: str  # "unix" | "tcp"
    peer: str  # "unix:pid=…,uid=…" or "host:port"
    request_id: int
    method: str
    auth: str  # "peercred" | "certificate" | "token": lets methods trust per mechanism


# async def m(ctx, params) -> result, or an async generator function (streamed).
Method = Callable[[CallContext, dict[str, Any]], Any]


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int = 64  # per listener (Unix socket, TCP)
    # TCP connections from one address not yet authenticated, at once: one source
    # flooding the listener cannot take every slot from the others.
    max_anonymous_per_source: int = 8
    frame_timeout_s: float = 10.0  # a started frame must complete within this
    idle_timeout_s: float = 600.0  # a connection with no request for this long is closed
    write_timeout_s: float = 10.0  # a client that does not read its replies is dropped
    handshake_timeout_s: float = 10.0  # also: the first request on TCP must start by then

    @classmethod
    def from_config(cls, config: RpcConfig) -> ServerLimits:
        """Limits from [rpc] keys of the same names, where the config has them."""
        defaults = cls()
        return cls(**{name: getattr(config, name, getattr(defaults, name))
                      for name in cls.__dataclass_fields__})


class _PeerGone(Exception):
    """The client went away or stopped reading; end its connection quietly."""


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    transport: str
    peer: str
    user: str | None  # peer-credential user (unix) or certificate CN (tcp)
    hung_up: asyncio.Future[None]  # the client sent EOF or the connection dropped
    current: int | None = None  # request being served, for a parting message on close
    refused: bool = False  # a connection-level error or refusal was sent: closing
    uid: int | None = None  # Unix peer credentials
    trusted: bool = False  # has sent an authenticated request (or is a Unix caller)


class RpcServer:
    def __init__(self, methods: dict[str, Method], config: RpcConfig, *,
                 on_auth_failure: Callable[[AuthFailure], None] | None = None,
                 limits: ServerLimits | None = None,
                 logger: logging.Logger | None = None) -> None:
        bad = sorted(name for name, fn in methods.items() if not callable(fn))
        if bad:
            raise TypeError(f"RPC methods must be callables: {', '.join(bad)}")
        self._methods = dict(methods)
        self._config = config
        self._limits = limits or ServerLimits.from_config(config)
        self._log = logger or logging.getLogger(LOGGER_NAME)
        self._refusals = RpcRefusals(self._log, on_auth_failure=on_auth_failure)
        self._own_uid = os.geteuid()
        self._tokens: TokenTable | None = None
        self._ssl: ssl.SSLContext | None = None
        self._listeners: list[socket.socket] = []
        self._acceptors: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[None]] = set()
        self._anonymous: dict[asyncio.Task[None], str] = {}  # TCP, not authenticated: host
        self._open_count = {"unix": 0, "tcp": 0}
        self._unix_inode: tuple[int, int] | None = None
        self._tcp_address: tuple[str, int] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        """The bound (host, port) of the TCP listener, None without one."""
        return self._tcp_address

    @property
    def tcp_endpoint(self) -> str | None:
        """The TCP listener as a client target ("host:port"), None without one."""
        if self._tcp_address is None:
            return None
        host, port = self._tcp_address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def socket_path(self) -> str:
        return self._config.socket

    @property
    def connection_count(self) -> int:
        return sum(self._open_count.values())

    def refusal_summary(self) -> dict[str, Any]:
        """Refused callers so far (core/ratelimit.py RefusalLog.summary); call it on
        the server's event loop."""
        return self._refusals.summary()

    def reload_credentials(self) -> str:
        """Re-read the tokens file and the TLS files (rotated without a restart).
        All or nothing: on an error the old ones stay and RpcSetupError names
        the file. New connections use the new ones; open ones keep theirs."""
        config = self._config
        tokens = TokenTable.load(config.tokens_file) if config.tokens_file else None
        context = server_ssl_context(config) if self._ssl is not None else None
        self._tokens, self._ssl = tokens, context
        done = [f"{len(tokens)} token(s)"] if tokens is not None else []
        done += ["TLS certificate"] if context is not None else []
        return ", ".join(done) or "nothing to reload"

    async def start(self) -> None:
        config = self._config
        if config.max_frame_bytes < 1024:
            raise RpcSetupError(f"[rpc] max_frame_bytes: {config.max_frame_bytes} is below "
                                "1024 bytes")
        if config.tcp_address:
            if not (config.tls_cert and config.tls_key):
                raise RpcSetupError("[rpc] tcp_address needs tls_cert and tls_key")
            if not (config.tls_client_ca or config.tokens_file):
                raise RpcSetupError("[rpc] tcp_address needs tls_client_ca or tokens_file")
            self._ssl = server_ssl_context(config)
        if config.tokens_file:
            self._tokens = TokenTable.load(config.tokens_file)
        try:
            if config.socket:
                sock, self._unix_inode = bind_unix(Path(config.socket))
                self._listen(sock, "unix")
            if config.tcp_address:
                sock = bind_tcp(config.tcp_address)
                self._tcp_address = sock.getsockname()[:2]
                self._listen(sock, "tcp")
            # cancelled by close() with the acceptors
            self._acceptors.add(asyncio.create_task(self._refusals.report_overdue()))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop listening, cancel every connection (and its stream), remove the socket."""
        # Acceptors first, and awaited: a listener closed under a pending accept
        # confuses the event loop.
        for task in self._acceptors:
            task.cancel()
        await asyncio.gather(*self._acceptors, return_exceptions=True)
        self._acceptors.clear()
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        if self._unix_inode is not None:
            remove_socket_if_ours(Path(self._config.socket), self._unix_inode)
            self._unix_inode = None
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)

    def _listen(self, listener: socket.socket, transport: str) -> None:
        self._listeners.append(listener)
        task = asyncio.create_task(self._accept(listener, transport))
        self._acceptors.add(task)

    # -- connections ---------------------------------------------------------------------

    async def _accept(self, listener: socket.socket, transport: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listener)
            except OSError as exc:  # e.g. out of file descriptors: wait, do not spin
                self._log.warning("rpc: accept on %s failed: %s", transport, exc)
                await asyncio.sleep(0.1)
                continue
            # Counted per listener: remote clients filling their slots must not lock
            # the local admin out of the Unix socket.
            full = self._full(transport, address)
            if full:
                self._refusals.refuse("too_many_connections", transport,
                                      caller(sock, address, transport), full)
                sock.close()
                continue
            self._open_count[transport] += 1
            task = asyncio.create_task(self._serve(sock, address, transport))
            self._connections.add(task)
            if transport == "tcp":
                self._anonymous[task] = address[0]
            task.add_done_callback(functools.partial(self._forget, transport))

    def _full(self, transport: str, address: Any) -> str:
        """Why a new connection cannot be taken now ("" when it can)."""
        if self._open_count[transport] >= self._limits.max_connections:
            return f"{self._open_count[transport]} connections already open"
        if transport == "tcp":
            host = address[0]
            held = sum(1 for h in self._anonymous.values() if h == host)
            if held >= self._limits.max_anonymous_per_source:
                return f"{held} connections from {host} not authenticated yet"
        return ""

    def _forget(self, transport: str, task: asyncio.Task[None]) -> None:
        self._connections.discard(task)
        self._anonymous.pop(task, None)
        self._open_count[transport] -= 1

    async def _serve(self, sock: socket.socket, address: Any, transport: str) -> None:
        conn: _Conn | None = None
        try:
            conn = await self._open(sock, address, transport)
            if conn is not None and await self._admit(conn):
                await self._session(conn)
        except asyncio.CancelledError:
            if conn is not None and conn.current is not None:
                self._farewell(conn)
            raise
        except _PeerGone:
            pass
        except Exception:  # a bug of ours; this connection ends, the server goes on
            self._log.exception("rpc: connection %s failed", conn.peer if conn else address)
        finally:
            # Never sock.close() once the loop owns the socket (it closes it itself):
            # a second close could hit a descriptor number already reused elsewhere.
            if conn is not None:
                conn.writer.close()

    def _farewell(self, conn: _Conn) -> None:
        """Best effort, no waiting: tell a client mid-request that the peer stops."""
        assert conn.current is not None
        error = RpcError(ErrorCode.UNAVAILABLE, "the peer is shutting down")
        with contextlib.suppress(Exception):
            if not conn.writer.is_closing():
                conn.writer.write(encode_frame(error_reply(conn.current, error)))

    async def _open(self, sock: socket.socket, address: Any, transport: str) -> _Conn | None:
        if transport == "unix":
            return await self._open_unix(sock)
        peer = tcp_peer(address)
        try:
            reader, writer, hung_up = await open_streams(sock, self._ssl,
                                                     self._limits.handshake_timeout_s)
        except Exception as exc:  # ssl errors, resets, handshake timeout: all refusals
            stalled = isinstance(exc, TimeoutError) or "taking longer" in str(exc)
            self._refusals.refuse("tls_timeout" if stalled else "tls_failed", "tcp", peer,
                                  f"TLS handshake failed: {str(exc) or type(exc).__name__}")
            return None
        ssl_object = writer.get_extra_info("ssl_object")
        cert_user = certificate_user(ssl_object.getpeercert() if ssl_object else None)
        return _Conn(reader, writer, "tcp", peer, cert_user, hung_up)

    async def _open_unix(self, sock: socket.socket) -> _Conn | None:
        try:
            cred = unix_peer(sock)
        except OSError as exc:  # the client is already gone
            self._log.debug("rpc: no peer credentials: %s", exc)
            sock.close()
            return None
        peer = f"unix:pid={cred.pid},uid={cred.uid}"
        reader, writer, hung_up = await open_streams(sock, None, self._limits.handshake_timeout_s)
        return _Conn(reader, writer, "unix", peer, uid_user(cred.uid), hung_up, uid=cred.uid)

    async def _admit(self, conn: _Conn) -> bool:
        """Unix callers are judged once, by uid; TCP callers request by request."""
        if conn.uid is None:
            return True
        if unix_uid_allowed(conn.uid, self._own_uid):
            conn.trusted = True
            return True
        reason = f"uid {conn.uid} is neither root nor the daemon's uid {self._own_uid}"
        self._refusals.refuse("unix_uid", "unix", conn.peer, reason)
        with contextlib.suppress(_PeerGone):
            await self._send_error(conn, CONNECTION_ID,
                                   RpcError(ErrorCode.FORBIDDEN, f"refused: {reason}"))
        return False

    async def _session(self, conn: _Conn) -> None:
        while True:
            body = await self._read_frame(conn)
            if body is None or not await self._handle_frame(conn, body):
                break
        if conn.refused and conn.transport == "tcp":
            await self._linger(conn)

    async def _linger(self, conn: _Conn) -> None:
        """Briefly drain what the client already sent before closing: closing a TCP
        socket with unread input resets it, and the reset can destroy the error
        reply we just sent before the client reads it."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(0.5):
                while await conn.reader.read(1 << 16):
                    pass

    async def _read_frame(self, conn: _Conn) -> bytes | None:
        """The next frame body; None when the connection should end."""
        # Until a TCP client has authenticated, it gets no long idle allowance: idle
        # anonymous connections would otherwise hold every slot for idle_timeout_s.
        idle_s = (self._limits.idle_timeout_s if conn.trusted
                  else self._limits.handshake_timeout_s)
        try:
            async with asyncio.timeout(idle_s):
                first = await conn.reader.readexactly(1)
        except TimeoutError:
            if not conn.trusted:
                self._refusals.refuse("idle_unauthenticated", conn.transport, conn.peer,
                                      f"no request within {idle_s:g}s of connecting")
            return None
        except (asyncio.IncompleteReadError, OSError):
            return None  # clean end, or reset between frames
        # Once a frame has started it must complete soon: a trickle of bytes
        # (slow-loris) would otherwise hold the connection slot forever.
        try:
            async with asyncio.timeout(self._limits.frame_timeout_s):
                header = first + await conn.reader.readexactly(HEADER.size - 1)
                length = frame_length(header, self._config.max_frame_bytes)
                return await conn.reader.readexactly(length)
        except RpcError as exc:  # too large: do not even read it
            self._bad_frame(conn, exc.message)
            await self._send_error(conn, CONNECTION_ID, exc)
        except TimeoutError:
            error = RpcError(ErrorCode.TIMEOUT, "frame not completed within "
                             f"{self._limits.frame_timeout_s:g}s; closing")
            self._bad_frame(conn, error.message)
            await self._send_error(conn, CONNECTION_ID, error)
        except (asyncio.IncompleteReadError, OSError):
            self._log.debug("rpc: %s closed mid-frame", conn.peer)
        return None

    async def _handle_frame(self, conn: _Conn, body: bytes) -> bool:
        """Serve one frame; False ends the connection."""
        try:
            request = decode_request(body)
        except EnvelopeError as exc:
            self._bad_frame(conn, exc.message)
            await self._send_error(conn, exc.request_id or CONNECTION_ID, exc)
            return exc.request_id is not None  # without an id the client cannot resync
        try:
            user, how = self._authenticate(conn, request)
        except RpcError as exc:
            conn.refused = True
            await self._send_error(conn, request.id, exc)
            return False  # one guess per TLS handshake slows down token guessing
        method = self._methods.get(request.method)
        if method is None:
            await self._send_error(conn, request.id, RpcError(
                ErrorCode.UNKNOWN_METHOD, f"unknown method {request.method!r}",
                {"method": request.method}))
            return True
        if not conn.trusted:
            conn.trusted = True
            task = asyncio.current_task()
            if task is not None:
                self._anonymous.pop(task, None)
        ctx = CallContext(user, conn.transport, conn.peer, request.id, request.method, how)
        conn.current = request.id
        await self._call(conn, method, ctx, request)
        conn.current = None
        return True

    def _authenticate(self, conn: _Conn, request: Request) -> tuple[str, str]:
        if conn.transport == "unix":
            assert conn.user is not None  # refused by _admit otherwise
            return conn.user, "peercred"
        if request.token is not None:
            user = self._tokens.user_for(request.token) if self._tokens else None
            if user is not None:
                return user, "token"
            kind, reason = "bad_token", "invalid token" if self._tokens else \
                "tokens are not enabled"
        elif conn.user is not None:
            return conn.user, "certificate"
        else:
            kind, reason = "no_credentials", "no client certificate and no token"
        self._refusals.refuse(kind, "tcp", conn.peer,
                              f"{reason} (method {request.method[:64]!r})")
        raise RpcError(ErrorCode.UNAUTHENTICATED, reason)

    def _bad_frame(self, conn: _Conn, what: str) -> None:
        self._refusals.refuse("bad_frame", conn.transport, conn.peer,
                              f"unreadable frame: {what[:200]}")

    # -- calls ---------------------------------------------------------------------------

    async def _call(self, conn: _Conn, method: Method, ctx: CallContext,
                    request: Request) -> None:
        try:
            outcome = method(ctx, request.params)
            if inspect.isasyncgen(outcome):
                await self._stream(conn, ctx, outcome)
                return
            if not inspect.isawaitable(outcome):
                raise TypeError(f"method {ctx.method!r} is not async")
            result = await outcome
            await self._send_result(conn, ctx, result)
        except _PeerGone:
            raise
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # we are being cancelled (close, hang-up)
            await self._send_internal(conn, ctx, exc)  # the method's own affair
        except RpcError as exc:
            await self._send_error(conn, ctx.request_id, exc)
        except Exception as exc:
            await self._send_internal(conn, ctx, exc)

    async def _stream(self, conn: _Conn, ctx: CallContext,
                      items: AsyncIterator[Any]) -> None:
        # Race every step of the generator against the client hanging up, so a quiet
        # stream (a watch) does not outlive its client until its next item. A closed
        # socket and a half-closed one look alike (EOF) until a write fails, so EOF
        # ends a stream: a client that sends nothing more has nothing left to watch.
        lost = conn.hung_up
        step: asyncio.Future[Any] | None = None
        try:
            while True:
                step = asyncio.ensure_future(anext(items))
                await asyncio.wait({step, lost}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    raise _PeerGone
                try:
                    item = step.result()
                except StopAsyncIteration:
                    break
                await self._send_result(conn, ctx, item, more=True)
            await self._send_result(conn, ctx, None)
        finally:
            if step is not None and not step.done():  # hung up, or the server closes
                step.cancel()
                await asyncio.gather(step, return_exceptions=True)
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _send_internal(self, conn: _Conn, ctx: CallContext,
                             exc: BaseException) -> None:
        self._log.error("rpc: method %s (request %d from %s, user %s) failed",
                        ctx.method, ctx.request_id, ctx.peer, ctx.user, exc_info=exc)
        error = RpcError(ErrorCode.INTERNAL,
                         f"{ctx.method} failed: {type(exc).__name__} (see the peer's log)")
        await self._send_error(conn, ctx.request_id, error)

    async def _send_result(self, conn: _Conn, ctx: CallContext, result: Any, *,
                           more: bool = False) -> None:
        try:
            check_plain(result)
        except ValueError as exc:
            raise TypeError(f"returned a value that cannot be sent: {exc}") from None
        try:
            frame = encode_frame(result_reply(ctx.request_id, result, more=more),
                                 self._config.max_frame_bytes)
        except RpcError as exc:
            if exc.code != ErrorCode.TOO_LARGE:  # e.g. an int beyond 64 bits: a bug
                raise TypeError(f"returned a value that cannot be sent: {exc.message}"
                                ) from None
            raise RpcError(exc.code, f"reply to {ctx.method}: {exc.message}",
                           exc.details) from None
        await self._write(conn, frame)

    async def _send_error(self, conn: _Conn, request_id: int, error: RpcError) -> None:
        conn.refused |= request_id == CONNECTION_ID
        try:
            check_plain(error.details)
            frame = encode_frame(error_reply(request_id, error), self._config.max_frame_bytes)
        except (RpcError, ValueError):  # details that cannot be sent, or a huge message
            self._log.error("rpc: error reply %s cannot be encoded; sending a bare one",
                            error.code)
            frame = encode_frame(error_reply(request_id, RpcError(error.code,
                                                                  error.message[:1000])))
        await self._write(conn, frame)

    async def _write(self, conn: _Conn, frame: bytes) -> None:
        if conn.writer.is_closing():
            raise _PeerGone
        try:
            conn.writer.write(frame)
            async with asyncio.timeout(self._limits.write_timeout_s):
                await conn.writer.drain()
        except (OSError, TimeoutError) as exc:
            raise _PeerGone from exc

