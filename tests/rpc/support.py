"""Test helpers: a throwaway PKI, a server on a uvloop thread, raw frame I/O."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hacluster.config import RpcConfig
from hacluster.rpc.protocol import (
    HEADER,
    ErrorCode,
    Reply,
    RpcError,
    decode_reply,
    validate_params,
)
from hacluster.rpc.server import CallContext, Method, RpcServer, ServerLimits

# -- PKI ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_cert: str
    server_cert: str
    server_key: str
    client_cert: str  # CN=alice, signed by the CA
    client_key: str
    rogue_cert: str  # CN=mallory, signed by another CA
    rogue_key: str


def _issue(cn: str, issuer: tuple[ec.EllipticCurvePrivateKey, x509.Name] | None = None,
           *, ca: bool = False, server: bool = False,
           ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())  # EC: key generation in microseconds
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer_key, signer_name = issuer or (key, name)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(signer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return key, builder.sign(signer_key, hashes.SHA256())


def _write(directory: Path, stem: str, key: ec.EllipticCurvePrivateKey,
           cert: x509.Certificate) -> tuple[str, str]:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


def make_pki(directory: Path) -> Pki:
    ca_key, ca = _issue("test-ca", ca=True)
    rogue_ca_key, rogue_ca = _issue("rogue-ca", ca=True)
    ca_cert, _ = _write(directory, "ca", ca_key, ca)
    server = _write(directory, "server", *_issue("peer1", (ca_key, ca.subject), server=True))
    client = _write(directory, "alice", *_issue("alice", (ca_key, ca.subject)))
    rogue = _write(directory, "mallory",
                   *_issue("mallory", (rogue_ca_key, rogue_ca.subject)))
    return Pki(ca_cert, *server, *client, *rogue)


# -- methods -----------------------------------------------------------------------------


@dataclass
class Probe:
    """What the methods saw, for the test thread to check."""

    started: threading.Event
    cancelled: threading.Event


async def echo(ctx: CallContext, params: dict[str, Any]) -> Any:
    return params


async def whoami(ctx: CallContext, params: dict[str, Any]) -> Any:
    return {"user": ctx.user, "transport": ctx.transport, "auth": ctx.auth,
            "peer": ctx.peer, "id": ctx.request_id, "method": ctx.method}


async def add(ctx: CallContext, params: dict[str, Any]) -> Any:
    p = validate_params(params, {"a": int, "b": int})
    return p["a"] + p["b"]


async def sleep(ctx: CallContext, params: dict[str, Any]) -> Any:
    await asyncio.sleep(float(params.get("s", 0)))
    return params.get("tag")


async def count(ctx: CallContext, params: dict[str, Any]) -> AsyncIterator[int]:
    n = validate_params(params, {"n": int})["n"]
    if not 0 <= n <= 100:
        raise RpcError(ErrorCode.BAD_PARAMS, "n must be 0..100", {"field": "n"})
    for i in range(n):
        yield i


async def boom(ctx: CallContext, params: dict[str, Any]) -> Any:
    raise ValueError("kaboom")


async def reject(ctx: CallContext, params: dict[str, Any]) -> Any:
    raise RpcError(ErrorCode.CONFLICT, "host h1 is busy", {"host": "h1"})


async def stream_then_fail(ctx: CallContext, params: dict[str, Any]) -> AsyncIterator[int]:
    yield 1
    raise RuntimeError("half way")


async def unsendable(ctx: CallContext, params: dict[str, Any]) -> Any:
    return {1: {2, 3}}


async def self_cancel(ctx: CallContext, params: dict[str, Any]) -> Any:
    raise asyncio.CancelledError  # e.g. from a task the method awaited


async def odd_details(ctx: CallContext, params: dict[str, Any]) -> Any:
    raise RpcError(ErrorCode.NOT_FOUND, "no such vm", {"ids": {1, 2}})


async def big(ctx: CallContext, params: dict[str, Any]) -> Any:
    return b"x" * int(params["n"])


def make_methods(probe: Probe | None = None) -> dict[str, Method]:
    methods: dict[str, Method] = {
        "echo": echo, "whoami": whoami, "add": add, "sleep": sleep, "count": count,
        "boom": boom, "reject": reject, "stream_then_fail": stream_then_fail,
        "unsendable": unsendable, "big": big, "self_cancel": self_cancel,
        "odd_details": odd_details,
    }
    if probe is not None:
        async def forever(ctx: CallContext, params: dict[str, Any]) -> AsyncIterator[str]:
            try:
                yield "started"
                probe.started.set()
                await asyncio.sleep(3600)
                yield "never"
            finally:
                probe.cancelled.set()

        async def hold(ctx: CallContext, params: dict[str, Any]) -> Any:
            probe.started.set()  # the server has read the request and is working on it
            await asyncio.sleep(3600)
        methods["forever"] = forever
        methods["hold"] = hold
    return methods


# -- a server on its own uvloop thread ---------------------------------------------------


class ServerThread:
    """An RpcServer running under uvloop.run() on a daemon thread."""

    def __init__(self, methods: dict[str, Method], config: RpcConfig,
                 limits: ServerLimits | None = None, **kwargs: Any) -> None:
        self._args = (methods, config, limits, kwargs)
        self.config = config
        self.server: RpcServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_errors: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="rpc-server", daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("server did not start")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and self._error is None:
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive(), "server thread did not stop"

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def socket_path(self) -> str:
        return self.config.socket

    @property
    def endpoint(self) -> str:
        assert self.server is not None and self.server.tcp_endpoint is not None
        return self.server.tcp_endpoint

    def _run(self) -> None:
        uvloop.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(ctx))
        methods, config, limits, kwargs = self._args
        self._stop = asyncio.Event()
        self.server = RpcServer(methods, config, limits=limits, **kwargs)
        try:
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self.server.close()


# -- raw frames --------------------------------------------------------------------------


def frame(obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def request(rid: int, method: str, params: dict[str, Any] | None = None,
            **extra: Any) -> bytes:
    return frame({"v": 1, "id": rid, "method": method, "params": params or {}, **extra})


def unix_socket(path: str, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    """size bytes, or None on EOF before any byte; a partial read is an error."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            assert not data, f"connection closed mid-frame after {len(data)} bytes"
            return None
        data += chunk
    return data


def read_reply(sock: socket.socket) -> Reply | None:
    """The next reply frame, strictly decoded; None on a clean EOF."""
    header = recv_exactly(sock, HEADER.size)
    if header is None:
        return None
    (length,) = HEADER.unpack(header)
    body = recv_exactly(sock, length)
    assert body is not None, "connection closed after a frame header"
    return decode_reply(body)


def expect_eof(sock: socket.socket) -> None:
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b"", "expected the server to close the connection"


def short_tmp_dir() -> Path:
    """Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer."""
    return Path(tempfile.mkdtemp(prefix="hrpc-", dir="/tmp"))


def unix_config(base: Path, **overrides: Any) -> RpcConfig:
    return RpcConfig(socket=os.path.join(base, "run", "hactl.sock"), **overrides)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
