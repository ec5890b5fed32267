"""The asyncio RPC client: many concurrent requests pipelined on one connection.

It is what a peer uses to forward a write to the leader: every peer that listens
on TCP+TLS is reachable as "host:port"; a follower holds one connection to the
current leader (LeaderLink), authenticated by its own client certificate (CN =
peer name, signed by the cluster's tls_client_ca), so the leader's method sees
ctx.auth == "certificate" and ctx.user == the forwarding peer, and may then trust
an on-behalf-of field naming the admin who asked. A request is retried on another
connection only when it was provably never sent (code unavailable with
details["sent"] false); maybe-applied goes back to the caller, never retried.

The server answers a connection's requests in order, so a long stream holds up
the requests behind it: open a separate client for streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
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
    CONNECTION_ID,
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

_Waiter = tuple[str, "asyncio.Queue[Reply | RpcError]"]  # method, replies for one request


class AsyncRpcClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 target: Target, *, token: str | None, timeout_s: float,
                 max_frame_bytes: int) -> None:
        """Use AsyncRpcClient.connect()."""
        self._reader = reader
        self._writer = writer
        self._target = target
        self._token = token
        self._timeout_s = timeout_s
        self._max_frame_bytes = max_frame_bytes
        self._next_id = 1
        self._waiting: dict[int, _Waiter] = {}
        self._closed: RpcError | None = None  # why new requests are refused
        self._receiver = asyncio.create_task(self._receive_loop())

    @classmethod
    async def connect(cls, target: str, *, token: str | None = None,
                      cafile: str | None = None, certfile: str | None = None,
                      keyfile: str | None = None, ssl_context: ssl.SSLContext | None = None,
                      timeout_s: float = DEFAULT_TIMEOUT_S, server_hostname: str | None = None,
                      max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> AsyncRpcClient:
        """Connect to a Unix socket path or to "host:port" over TLS; raises ConnectError."""
        where = parse_target(target)
        try:
            async with asyncio.timeout(timeout_s):
                if where.is_unix:
                    reader, writer = await asyncio.open_unix_connection(where.path)
                else:
                    context = ssl_context or client_ssl_context(cafile, certfile, keyfile)
                    reader, writer = await asyncio.open_connection(
                        where.host, where.port, ssl=context,
                        server_hostname=server_hostname or where.host)
        except (OSError, TimeoutError) as exc:
            raise connect_error(where, exc, timeout_s) from None
        return cls(reader, writer, where, token=token, timeout_s=timeout_s,
                   max_frame_bytes=max_frame_bytes)

    @property
    def target(self) -> str:
        return str(self._target)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def close(self) -> None:
        self._shut(None, "the client closed the connection")
        self._receiver.cancel()
        await asyncio.gather(self._receiver, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def __aenter__(self) -> AsyncRpcClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def call(self, method: str, params: dict[str, Any] | None = None, *,
                   timeout_s: float | None = None) -> Any:
        """The method's result; for a streamed method, the list of its items."""
        request_id, replies = await self._send(method, params)
        items: list[Any] = []
        try:
            while True:
                item, final = unwrap(await self._next(request_id, method, replies, timeout_s))
                if final:
                    return items if items else item
                items.append(item)
        finally:
            self._waiting.pop(request_id, None)

    async def stream(self, method: str, params: dict[str, Any] | None = None, *,
                     timeout_s: float | None = None) -> AsyncIterator[Any]:
        """Items of a streamed method; timeout_s bounds the wait for each (math.inf:
        forever). Leaving early closes the connection: the server would otherwise
        keep streaming ahead of every later request."""
        request_id, replies = await self._send(method, params)
        finished = False
        try:
            while True:
                reply = await self._next(request_id, method, replies, timeout_s)
                finished = not reply.more
                item, final = unwrap(reply)
                if final:
                    return
                yield item
        finally:
            self._waiting.pop(request_id, None)
            if not finished:
                await self.close()

    # -- internals -------------------------------------------------------------------

    async def _send(self, method: str, params: dict[str, Any] | None,
                    ) -> tuple[int, asyncio.Queue[Reply | RpcError]]:
        if self._closed is not None or self._writer.is_closing():
            raise RpcError(ErrorCode.UNAVAILABLE, f"cannot send {method}: "
                           f"{self._closed.message if self._closed else 'connection closed'}",
                           {"target": str(self._target), "sent": False})
        request_id, self._next_id = self._next_id, self._next_id + 1
        frame = encode_request(Request(request_id, method, dict(params or {}), self._token),
                               self._max_frame_bytes)
        replies: asyncio.Queue[Reply | RpcError] = asyncio.Queue()
        self._waiting[request_id] = (method, replies)
        try:
            self._writer.write(frame)
        except OSError as exc:
            self._waiting.pop(request_id, None)
            raise not_sent(self._target, method, exc) from None
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._writer.drain()
        except (OSError, TimeoutError):
            self._waiting.pop(request_id, None)
            raise no_answer(self._target, method, "the connection failed") from None
        return request_id, replies

    async def _next(self, request_id: int, method: str,
                    replies: asyncio.Queue[Reply | RpcError],
                    timeout_s: float | None) -> Reply:
        wait_s = self._timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(None if math.isinf(wait_s) else wait_s):
                reply = await replies.get()
        except TimeoutError:
            self._waiting.pop(request_id, None)  # a late reply is dropped on arrival
            raise no_answer(self._target, method, f"no reply within {wait_s:g}s") from None
        if isinstance(reply, RpcError):
            raise reply
        return reply

    async def _receive_loop(self) -> None:
        why = "connection closed by the peer"
        try:
            while True:
                header = await self._reader.readexactly(HEADER.size)
                body = await self._reader.readexactly(
                    frame_length(header, self._max_frame_bytes))
                reply = decode_reply(body)
                if reply.id == CONNECTION_ID:
                    # The server hangs up after this; every waiter gets its reason.
                    self._shut(reply.error or RpcError(ErrorCode.BAD_FRAME, "bad reply"))
                    return
                waiter = self._waiting.get(reply.id)
                if waiter is not None:
                    waiter[1].put_nowait(reply)
        except (asyncio.IncompleteReadError, OSError) as exc:
            if isinstance(exc, OSError):
                why = f"connection lost ({exc.strerror or exc})"
        except RpcError as exc:  # an undecodable reply: nothing after it can be trusted
            why = f"bad reply ({exc.message})"
        finally:
            self._shut(None, why)

    def _shut(self, error: RpcError | None, why: str = "") -> None:
        """Refuse new requests; fail every waiting one with the server's connection
        error if there is one (it answers in order, so those were not served), else
        with maybe-applied."""
        if self._closed is None:
            self._closed = error or RpcError(ErrorCode.UNAVAILABLE, why,
                                             {"target": str(self._target), "sent": False})
        for method, replies in self._waiting.values():
            replies.put_nowait(error or no_answer(self._target, method, why))
        self._waiting.clear()
        self._writer.close()


class LeaderLink:
    """A connection to whichever peer leads now, re-dialled when the target changes
    or the connection drops; `connect` is e.g. functools.partial(AsyncRpcClient.connect,
    certfile=..., keyfile=..., cafile=...)."""

    def __init__(self, connect: Callable[[str], Awaitable[AsyncRpcClient]]) -> None:
        self._connect = connect
        self._client: AsyncRpcClient | None = None
        self._lock = asyncio.Lock()

    async def call(self, target: str, method: str, params: dict[str, Any], *,
                   timeout_s: float | None = None) -> Any:
        client = await self._client_for(target)
        try:
            return await client.call(method, params, timeout_s=timeout_s)
        except RpcError as exc:
            if exc.code != ErrorCode.UNAVAILABLE or exc.details.get("sent", True):
                raise
        # Provably never sent (a stale connection): one retry on a fresh one is safe.
        client = await self._client_for(target)
        return await client.call(method, params, timeout_s=timeout_s)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _client_for(self, target: str) -> AsyncRpcClient:
        async with self._lock:  # concurrent forwards share one dial
            client = self._client
            wanted = str(parse_target(target))
            if client is not None and (client.closed or client.target != wanted):
                await client.close()
                client = None
            if client is None:
                client = self._client = await self._connect(target)
            return client
