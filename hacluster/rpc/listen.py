"""Listening sockets and per-connection streams for the RPC server.

The server runs its own accept loops (not asyncio.start_server) so that a TLS
handshake happens inside our code: a refused client certificate then raises
where it can be logged with the peer's address as an authentication failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import stat
from pathlib import Path

from hacluster.rpc.auth import RpcSetupError

BACKLOG = 128


def split_host_port(address: str) -> tuple[str, int]:
    """"host:port" or "[v6]:port" -> (host, port); port 0 asks the kernel for one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port, got {address!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def prepare_socket_dir(path: Path) -> None:
    """Make the socket's directory 0700 and ours (created if missing)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        raise RpcSetupError(f"[rpc] socket: cannot create {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise RpcSetupError(f"[rpc] socket: {path} is not a directory")
    if info.st_uid != os.geteuid():
        raise RpcSetupError(f"[rpc] socket: directory {path} belongs to uid {info.st_uid}, "
                            f"not to this daemon (uid {os.geteuid()})")
    os.chmod(path, 0o700)


def remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a dead daemon; refuse if a live one still answers."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise RpcSetupError(f"[rpc] socket: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise RpcSetupError(f"[rpc] socket: {path} is in use by another process "
                        "(is a peer already running?)")


def bind_unix(path: Path) -> tuple[socket.socket, tuple[int, int]]:
    """A listening socket at path (mode 0600, in a 0700 directory), and its inode."""
    prepare_socket_dir(path.parent)
    remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # The directory is 0700, so the moment between bind and chmod exposes nothing.
        sock.bind(str(path))
        os.chmod(path, 0o600)
        info = path.stat()
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise RpcSetupError(f"[rpc] socket: cannot listen on {path}: "
                            f"{exc.strerror or exc}") from None
    return sock, (info.st_dev, info.st_ino)


def remove_socket_if_ours(path: Path, inode: tuple[int, int]) -> None:
    # Only our own socket file: a successor may already have bound the same path.
    with contextlib.suppress(OSError):
        info = path.lstat()
        if (info.st_dev, info.st_ino) == inode:
            path.unlink()


def bind_tcp(address: str) -> socket.socket:
    try:
        host, port = split_host_port(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    except (ValueError, OSError) as exc:
        raise RpcSetupError(f"[rpc] tcp_address: cannot listen on {address}: "
                            f"{getattr(exc, 'strerror', None) or exc}") from None
    sock.setblocking(False)
    return sock


class _Protocol(asyncio.StreamReaderProtocol):
    """Stream protocol that also tells when the client sent EOF or went away."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self.hung_up: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def eof_received(self) -> bool:
        self._hang_up()
        return bool(super().eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        self._hang_up()
        super().connection_lost(exc)

    def _hang_up(self) -> None:
        if not self.hung_up.done():
            self.hung_up.set_result(None)


async def open_streams(sock: socket.socket, context: ssl.SSLContext | None,
                       handshake_timeout_s: float,
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                  asyncio.Future[None]]:
    """Wrap an accepted socket in streams (with TLS, the handshake happens here);
    the future resolves when the client sends EOF or the connection drops."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = _Protocol(reader)
    transport, _ = await loop.connect_accepted_socket(
        lambda: protocol, sock, ssl=context,
        ssl_handshake_timeout=handshake_timeout_s if context else None)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop), protocol.hung_up
