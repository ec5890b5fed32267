"""Who is calling: Unix peer credentials, TLS client certificates, bearer tokens.

Unix socket: the kernel tells us the client's uid (SO_PEERCRED); only root and the
daemon's own uid may call. The socket's 0600 mode already keeps others out; the uid
check still holds if someone loosens the file mode.

TCP is TLS only. A client proves who it is with a certificate signed by
tls_client_ca (user = the certificate's CN) or with a bearer token from tokens_file
(lines "user:token"). A token, when present, must be valid and names the user;
otherwise the certificate does; with neither the request is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import pwd
import socket
import ssl
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hacluster.config import RpcConfig

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class RpcSetupError(Exception):
    """The RPC endpoint cannot start; the message names the file or address."""


@dataclass(frozen=True)
class AuthFailure:
    """One refused caller; deliberately has no field that could hold a secret."""

    transport: str  # "unix" | "tcp"
    peer: str
    reason: str


@dataclass(frozen=True)
class UnixPeer:
    pid: int
    uid: int
    gid: int


def unix_peer(sock: socket.socket) -> UnixPeer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return UnixPeer(*_UCRED.unpack(raw))


def unix_uid_allowed(uid: int, own_uid: int) -> bool:
    return uid in (0, own_uid)


def uid_user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


def certificate_user(peercert: dict[str, Any] | None) -> str | None:
    """The CN of a verified peer certificate (ssl's getpeercert() form), if any."""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and isinstance(value, str) and value:
                return value
    return None


def _digest(token: str) -> bytes:
    # Hashing first makes every comparison the same length, so timing says nothing
    # about how long the right token is, nor how much of it matched.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenTable:
    """Bearer tokens; lookups take the same time whichever entry (if any) matches."""

    def __init__(self, entries: dict[str, str]) -> None:
        self._entries = [(_digest(token), user) for user, token in sorted(entries.items())]

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def load(cls, path: str) -> TokenTable:
        file = Path(path)
        try:
            mode = file.stat().st_mode
            text = file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise RpcSetupError(f"[rpc] tokens_file: cannot read {path}: {reason}") from None
        if mode & 0o077:
            raise RpcSetupError(f"[rpc] tokens_file: {path} is readable by group/others "
                                f"(mode {stat.S_IMODE(mode):o}); chmod 600 it")
        return cls(parse_tokens(text, path))

    def user_for(self, token: str) -> str | None:
        probe = _digest(token)
        found: str | None = None
        for digest, user in self._entries:  # no early exit: constant time
            if hmac.compare_digest(probe, digest):
                found = user
        return found


def parse_tokens(text: str, path: str = "<tokens>") -> dict[str, str]:
    """user -> token from "user:token" lines; blank lines and # comments are skipped."""
    entries: dict[str, str] = {}
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, token = line.partition(":")
        user, token = user.strip(), token.strip()
        where = f"[rpc] tokens_file: {path} line {number}"
        if not sep or not user or not token:
            raise RpcSetupError(f"{where}: expected user:token")  # never echo the line
        if user in entries:
            raise RpcSetupError(f"{where}: user {user!r} appears twice")
        if token in seen:
            raise RpcSetupError(f"{where}: token of {user!r} is already another user's")
        if len(token) < 16:
            raise RpcSetupError(f"{where}: token of {user!r} is shorter than 16 characters")
        entries[user] = token
        seen.add(token)
    return entries


def server_ssl_context(config: RpcConfig) -> ssl.SSLContext:
    """TLS for the TCP listener; asks for a client certificate when a CA is set."""
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(config.tls_cert, config.tls_key)
        if config.tls_client_ca:
            context.load_verify_locations(cafile=config.tls_client_ca)
            # Optional, not required: a client without a certificate may still bring a
            # token, and if it brings neither it gets a readable refusal, not a TLS alert.
            context.verify_mode = ssl.CERT_OPTIONAL
    except (OSError, ssl.SSLError) as exc:
        raise RpcSetupError(f"[rpc] TLS files (tls_cert={config.tls_cert!r}, "
                            f"tls_key={config.tls_key!r}, tls_client_ca="
                            f"{config.tls_client_ca!r}): {exc}") from None
    return context
