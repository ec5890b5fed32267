"""Authentication: Unix socket permissions and peer uid, TLS client certificates,
bearer tokens; failures are logged with the peer and reason, never the token."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import ssl
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hacluster.config import RpcConfig
from hacluster.rpc.auth import (
    AuthFailure,
    RpcSetupError,
    TokenTable,
    parse_tokens,
    unix_uid_allowed,
)
from hacluster.rpc.client import RpcClient
from hacluster.rpc.endpoint import ConnectError
from hacluster.rpc.protocol import HEADER, ErrorCode, RpcError, decode_reply
from hacluster.rpc.server import ServerLimits

from .conftest import TOKEN
from .support import (
    Pki,
    ServerThread,
    read_reply,
    request,
    unix_config,
    unix_socket,
    wait_for,
)

NOBODY = 65534


# -- Unix socket ---------------------------------------------------------------------------

def test_unix_socket_is_root_only(server: ServerThread) -> None:
    sock_info = os.stat(server.socket_path)
    dir_info = os.stat(os.path.dirname(server.socket_path))
    assert stat.S_ISSOCK(sock_info.st_mode) and stat.S_IMODE(sock_info.st_mode) == 0o600
    assert stat.S_IMODE(dir_info.st_mode) == 0o700 and dir_info.st_uid == os.geteuid()


def test_an_existing_socket_directory_is_tightened(
        start_server: Callable[..., ServerThread], tmp_short: Path) -> None:
    (tmp_short / "run").mkdir(mode=0o755)
    server = start_server()
    assert stat.S_IMODE(os.stat(os.path.dirname(server.socket_path)).st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_a_socket_directory_owned_by_someone_else_is_refused(
        start_server: Callable[..., ServerThread], tmp_short: Path) -> None:
    (tmp_short / "run").mkdir()
    os.chown(tmp_short / "run", NOBODY, NOBODY)
    with pytest.raises(RpcSetupError, match="belongs to uid 65534"):
        start_server()


def test_a_stale_socket_is_replaced_and_a_live_one_is_not(
        start_server: Callable[..., ServerThread], tmp_short: Path) -> None:
    config = unix_config(tmp_short)
    Path(config.socket).parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as dead:  # bound, never listening: a dead daemon
        dead.bind(config.socket)
    server = start_server(config)
    assert RpcClient.connect(server.socket_path).call("add", {"a": 1, "b": 1}) == 2
    with pytest.raises(RpcSetupError, match="in use by another process"):
        start_server(config)


def test_a_file_in_the_way_is_refused(start_server: Callable[..., ServerThread],
                                      tmp_short: Path) -> None:
    config = unix_config(tmp_short)
    Path(config.socket).parent.mkdir(mode=0o700)
    Path(config.socket).write_text("not a socket")
    with pytest.raises(RpcSetupError, match="not a socket"):
        start_server(config)


def test_uid_rule() -> None:
    assert unix_uid_allowed(0, 1000) and unix_uid_allowed(1000, 1000)
    assert not unix_uid_allowed(1001, 1000)


def _call_as(uid: int, path: str, frame: bytes) -> bytes:
    """Everything the server sends to a client running as `uid` (a forked child)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: nothing but syscalls, then _exit
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(path)
                with contextlib.suppress(BrokenPipeError):  # refused at once, maybe
                    sock.sendall(frame)
                data = b""
                # A reset after the data: the server closed with our request unread.
                with contextlib.suppress(ConnectionResetError):
                    while chunk := sock.recv(65536):
                        data += chunk
            os.write(write_end, data)
            code = 0
        except BaseException as exc:
            os.write(write_end, repr(exc).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"the child failed: {data!r}"
    return data


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch uid")
def test_other_uids_are_refused_even_through_a_loosened_socket_mode(
        server: ServerThread, tmp_short: Path, caplog: pytest.LogCaptureFixture) -> None:
    os.chmod(tmp_short, 0o711)  # mkdtemp made it 0700
    os.chmod(os.path.dirname(server.socket_path), 0o711)
    os.chmod(server.socket_path, 0o666)
    with caplog.at_level(logging.WARNING, logger="hacluster.rpc"):
        data = _call_as(NOBODY, server.socket_path, request(1, "whoami"))
    (length,) = HEADER.unpack(data[:4])
    assert len(data) == 4 + length, "exactly one frame, then the server hung up"
    reply = decode_reply(data[4:])
    assert reply.id == 0 and reply.error is not None
    assert reply.error.code == ErrorCode.FORBIDDEN
    assert "uid 65534" in caplog.text and "unix:pid=" in caplog.text
    assert refusals(server)["recent"][0] == {"kind": "unix_uid", "source": "unix:uid=65534",
                                             "count": 1, "age_s": pytest.approx(0, abs=5)}


def test_a_token_on_the_unix_socket_is_ignored(server: ServerThread) -> None:
    with unix_socket(server.socket_path) as sock:
        sock.sendall(request(1, "whoami", token="whatever"))
        reply = read_reply(sock)
    assert reply is not None and reply.result["auth"] == "peercred"


# -- TLS -------------------------------------------------------------------------------------

@pytest.fixture
def failures() -> list[AuthFailure]:
    return []


@pytest.fixture
def tls_server(start_server: Callable[..., ServerThread], tls_config: RpcConfig,
               failures: list[AuthFailure]) -> ServerThread:
    return start_server(tls_config, on_auth_failure=failures.append)


def tls_client(server: ServerThread, pki: Pki, *, cert: bool = False,
               token: str | None = None) -> RpcClient:
    return RpcClient.connect(server.endpoint, token=token, cafile=pki.ca_cert,
                             certfile=pki.client_cert if cert else None,
                             keyfile=pki.client_key if cert else None, timeout_s=5)


def test_tls_listener_binds_port_zero(tls_server: ServerThread) -> None:
    assert tls_server.server is not None and tls_server.server.tcp_address is not None
    host, port = tls_server.server.tcp_address
    assert host == "127.0.0.1" and port > 0


def test_client_certificate_is_accepted(tls_server: ServerThread, pki: Pki) -> None:
    with tls_client(tls_server, pki, cert=True) as rpc:
        me = rpc.call("whoami")
        assert (me["user"], me["transport"], me["auth"]) == ("alice", "tcp", "certificate")
        assert rpc.call("add", {"a": 2, "b": 2}) == 4  # every request, same connection


def test_good_token_is_accepted(tls_server: ServerThread, pki: Pki) -> None:
    with tls_client(tls_server, pki, token=TOKEN) as rpc:
        me = rpc.call("whoami")
        assert (me["user"], me["auth"]) == ("ops", "token")
        assert list(rpc.stream("count", {"n": 3})) == [0, 1, 2]


def test_a_token_names_the_user_even_with_a_certificate(tls_server: ServerThread,
                                                        pki: Pki) -> None:
    with tls_client(tls_server, pki, cert=True, token=TOKEN) as rpc:
        assert rpc.call("whoami")["user"] == "ops"


def test_no_certificate_and_no_token_is_refused(
        tls_server: ServerThread, pki: Pki, failures: list[AuthFailure],
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hacluster.rpc"), \
            tls_client(tls_server, pki) as rpc:
        with pytest.raises(RpcError) as info:
            rpc.call("whoami")
        assert info.value.code == ErrorCode.UNAUTHENTICATED
        assert "no client certificate and no token" in info.value.message
        with pytest.raises(RpcError) as again:  # the server hung up after the refusal
            rpc.call("whoami")
        assert again.value.code in (ErrorCode.UNAVAILABLE, ErrorCode.MAYBE_APPLIED)
    assert [f.reason for f in failures] == [
        "no client certificate and no token (method 'whoami')"]
    assert failures[0].transport == "tcp" and failures[0].peer.startswith("127.0.0.1:")
    assert f"refused tcp caller {failures[0].peer}" in caplog.text


def test_wrong_token_is_refused_and_never_logged(
        tls_server: ServerThread, pki: Pki, failures: list[AuthFailure],
        caplog: pytest.LogCaptureFixture) -> None:
    wrong = "wrong-token-" + TOKEN[:8] + "zz-9876543210"
    with caplog.at_level(logging.DEBUG), \
            tls_client(tls_server, pki, cert=True, token=wrong) as rpc, \
            pytest.raises(RpcError) as info:
        rpc.call("whoami")
    assert info.value.code == ErrorCode.UNAUTHENTICATED
    assert info.value.message == "invalid token"
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("hacluster")]
    assert any("invalid token" in line and "127.0.0.1:" in line for line in lines)
    everything = caplog.text + repr(failures) + repr(info.value)
    assert wrong not in everything and TOKEN not in everything
    assert all(wrong not in str(dataclasses.astuple(f)) for f in failures)


def test_certificate_from_another_ca_fails_the_handshake(
        tls_server: ServerThread, pki: Pki, failures: list[AuthFailure],
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hacluster.rpc"), \
            pytest.raises(RpcError) as info, \
            RpcClient.connect(tls_server.endpoint, cafile=pki.ca_cert,
                              certfile=pki.rogue_cert, keyfile=pki.rogue_key,
                              timeout_s=5) as rpc:
        rpc.call("whoami")  # TLS 1.3 tells the client of its rejection on first read
    assert info.value.code == ErrorCode.MAYBE_APPLIED  # the client cannot know better
    assert "was our TLS client certificate refused?" in info.value.message
    # the server's alert reaches the client before its own handler has recorded the refusal
    wait_for(lambda: bool(failures))
    assert [f.reason.split(":")[0] for f in failures] == ["TLS handshake failed"]
    assert "certificate" in failures[0].reason.lower()
    assert "TLS handshake failed" in caplog.text


def test_plain_tcp_is_refused(tls_server: ServerThread,
                              failures: list[AuthFailure]) -> None:
    host, port = tls_server.endpoint.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request(1, "whoami"))
        answer = sock.recv(100)
        assert answer == b"" or answer[0] == 0x15  # nothing, or a TLS alert record
    wait_for(lambda: bool(failures))
    assert failures[0].reason.startswith("TLS handshake failed")


def test_untrusted_server_certificate_is_named(tls_server: ServerThread) -> None:
    with pytest.raises(ConnectError) as info:
        RpcClient.connect(tls_server.endpoint, timeout_s=5)  # system CAs: not ours
    assert info.value.message.startswith(f"cannot connect to {tls_server.endpoint}: TLS")
    assert "not trusted" in info.value.message


def test_tokens_only_server(start_server: Callable[..., ServerThread], tmp_short: Path,
                            pki: Pki, tokens_file: str) -> None:
    config = unix_config(tmp_short, tcp_address="127.0.0.1:0", tls_cert=pki.server_cert,
                         tls_key=pki.server_key, tokens_file=tokens_file)
    server = start_server(config)
    with RpcClient.connect(server.endpoint, token=TOKEN, cafile=pki.ca_cert) as rpc:
        assert rpc.call("whoami")["user"] == "ops"
    with RpcClient.connect(server.endpoint, cafile=pki.ca_cert, certfile=pki.client_cert,
                           keyfile=pki.client_key) as rpc, pytest.raises(RpcError) as info:
        rpc.call("whoami")  # no CA configured: a certificate proves nothing here
    assert info.value.code == ErrorCode.UNAUTHENTICATED


# -- setup checks ------------------------------------------------------------------------

def test_tcp_needs_tls_and_an_authenticator(start_server: Callable[..., ServerThread],
                                            tmp_short: Path, pki: Pki) -> None:
    with pytest.raises(RpcSetupError, match="tls_cert and tls_key"):
        start_server(unix_config(tmp_short, tcp_address="127.0.0.1:0"))
    with pytest.raises(RpcSetupError, match="tls_client_ca or tokens_file"):
        start_server(unix_config(tmp_short, tcp_address="127.0.0.1:0",
                                 tls_cert=pki.server_cert, tls_key=pki.server_key))
    with pytest.raises(RpcSetupError, match="TLS files"):
        start_server(unix_config(tmp_short, tcp_address="127.0.0.1:0",
                                 tls_cert="/nonexistent.crt", tls_key=pki.server_key,
                                 tls_client_ca=pki.ca_cert))


def test_tokens_file_must_be_private(tmp_short: Path) -> None:
    path = tmp_short / "tokens"
    path.write_text(f"ops:{TOKEN}\n")
    path.chmod(0o640)
    with pytest.raises(RpcSetupError, match="chmod 600"):
        TokenTable.load(str(path))
    with pytest.raises(RpcSetupError, match="cannot read"):
        TokenTable.load(str(tmp_short / "missing"))


@pytest.mark.parametrize(("text", "words"), [
    ("ops", "expected user:token"),
    (f":{TOKEN}", "expected user:token"),
    (f"ops:{TOKEN}\nops:other-token-0123456789", "appears twice"),
    (f"ops:{TOKEN}\nbackup:{TOKEN}", "already another user's"),
    ("ops:tiny-1234", "shorter than 16"),
])
def test_bad_tokens_files_are_refused_without_echoing_tokens(text: str, words: str) -> None:
    with pytest.raises(RpcSetupError, match=words) as info:
        parse_tokens(text)
    assert TOKEN not in str(info.value) and "tiny-1234" not in str(info.value)


def test_token_table_lookup() -> None:
    table = TokenTable(parse_tokens(f"# comment\nops:{TOKEN}\nbackup: other-token-0123456789 \n"))
    assert len(table) == 2
    assert table.user_for(TOKEN) == "ops"
    assert table.user_for("other-token-0123456789") == "backup"
    assert table.user_for(TOKEN + "x") is None and table.user_for("") is None


def test_server_ssl_context_asks_for_optional_client_certificates(
        tls_config: RpcConfig) -> None:
    from hacluster.rpc.auth import server_ssl_context

    assert server_ssl_context(tls_config).verify_mode == ssl.CERT_OPTIONAL


def test_oversized_frame_over_tls_still_gets_its_error(tls_server: ServerThread,
                                                      pki: Pki) -> None:
    host, port = tls_server.endpoint.rsplit(":", 1)
    context = ssl.create_default_context(cafile=pki.ca_cert)
    context.load_cert_chain(pki.client_cert, pki.client_key)
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=host) as sock:
        sock.sendall(HEADER.pack(64 << 20) + b"\x00" * 200_000)  # unread by the server
        reply = read_reply(sock)
    assert reply is not None and reply.id == 0 and reply.error is not None
    assert reply.error.code == ErrorCode.TOO_LARGE


def test_anonymous_tcp_connections_get_a_short_idle_allowance(
        start_server: Callable[..., ServerThread], tls_config: RpcConfig, pki: Pki) -> None:
    server = start_server(tls_config, limits=ServerLimits(handshake_timeout_s=1.0,
                                                          idle_timeout_s=30))
    with tls_client(server, pki) as anonymous:  # connects, then says nothing
        time.sleep(2.0)
        with pytest.raises(RpcError):
            anonymous.call("whoami")
    with tls_client(server, pki, cert=True) as known:
        assert known.call("whoami")["user"] == "alice"
        time.sleep(2.0)  # authenticated: the long idle timeout applies now
        assert known.call("add", {"a": 1, "b": 1}) == 2


def test_full_tcp_slots_do_not_lock_out_the_unix_socket(
        start_server: Callable[..., ServerThread], tls_config: RpcConfig, pki: Pki) -> None:
    server = start_server(tls_config, limits=ServerLimits(max_connections=1))
    with tls_client(server, pki, cert=True) as first:
        assert first.call("whoami")["user"] == "alice"
        with pytest.raises(RpcError):  # the second TCP client is turned away
            tls_client(server, pki, cert=True).call("whoami")
        with RpcClient.connect(server.socket_path) as local:
            assert local.call("whoami")["auth"] == "peercred"


# -- intruders: counted, logged with their source, rate-limited ----------------------------

def refusals(server: ServerThread) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        assert server.server is not None
        return server.server.refusal_summary()
    summary: dict[str, Any] = server.run(read())
    return summary


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "rpc: refused" in r.getMessage()]


def client_hello(host: str) -> bytes:
    """The first flight of a real TLS client (a ClientHello), never sent whole here."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=host)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_every_refusal_is_counted_by_kind_and_source(
        tls_server: ServerThread, pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hacluster.rpc"):
        for token, cert in ((None, False), ("wrong-token-0123456789abcdef", True)):
            with tls_client(tls_server, pki, cert=cert, token=token) as rpc, \
                    pytest.raises(RpcError):
                rpc.call("whoami")
        with pytest.raises(RpcError), \
                RpcClient.connect(tls_server.endpoint, cafile=pki.ca_cert,
                                  certfile=pki.rogue_cert, keyfile=pki.rogue_key,
                                  timeout_s=5) as rpc:
            rpc.call("whoami")  # a certificate from another CA
        host, port = tls_server.endpoint.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(request(1, "whoami"))  # plain TCP
            with contextlib.suppress(OSError):
                sock.recv(100)
        wait_for(lambda: refusals(tls_server)["total"] >= 4)
        with unix_socket(tls_server.socket_path) as sock:  # a frame that cannot be read
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_reply(sock) is not None
    summary = refusals(tls_server)
    assert summary["kinds"] == {"bad_frame": 1, "bad_token": 1, "no_credentials": 1,
                                "tls_failed": 2}
    assert summary["recent"][0]["source"] == f"unix:uid={os.geteuid()}"
    assert {r["source"] for r in summary["recent"][1:]} == {"127.0.0.1"}
    assert sum(r["count"] for r in summary["recent"][1:]) == 4
    lines = refusal_lines(caplog)  # the second TLS failure from that host is held back
    assert len(lines) == 4 and all("127.0.0.1:" in line for line in lines[:3])
    assert "unix:pid=" in lines[3] and "unreadable frame" in lines[3]


def test_a_revoked_token_is_refused_at_once_even_on_an_open_connection(
        tls_server: ServerThread, pki: Pki, tokens_file: str) -> None:
    with tls_client(tls_server, pki, token=TOKEN) as rpc:
        assert rpc.call("whoami")["user"] == "ops"
        Path(tokens_file).write_text("backup:another-token-abcdefghijkl\n")  # ops revoked

        async def reload() -> str:
            assert tls_server.server is not None
            return tls_server.server.reload_credentials()
        assert tls_server.run(reload()) == "1 token(s), TLS certificate"
        with pytest.raises(RpcError) as info:
            rpc.call("whoami")
        assert info.value.code == ErrorCode.UNAUTHENTICATED
    with tls_client(tls_server, pki, token=TOKEN) as rpc, pytest.raises(RpcError) as again:
        rpc.call("whoami")
    assert again.value.code == ErrorCode.UNAUTHENTICATED
    assert refusals(tls_server)["kinds"] == {"bad_token": 2}


def test_a_client_stalling_mid_handshake_holds_up_nobody_and_is_dropped(
        start_server: Callable[..., ServerThread], tls_config: RpcConfig, pki: Pki) -> None:
    server = start_server(tls_config, limits=ServerLimits(handshake_timeout_s=1.0))
    host, port = server.endpoint.rsplit(":", 1)
    hello = client_hello(host)
    stalled = [socket.create_connection((host, int(port)), timeout=5) for _ in range(5)]
    try:
        for sock in stalled:
            sock.sendall(hello[: len(hello) // 2])  # half a ClientHello, then nothing
        began = time.monotonic()
        with tls_client(server, pki, cert=True) as rpc:
            assert rpc.call("whoami")["user"] == "alice"
        assert time.monotonic() - began < 1.0  # served while the others still stall
        for sock in stalled:  # dropped once their handshake time is up
            sock.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(100) == b""
    finally:
        for sock in stalled:
            sock.close()
    wait_for(lambda: refusals(server)["kinds"].get("tls_timeout") == 5)


def whoami_from(server: ServerThread, pki: Pki, source: str) -> str:
    """A TLS call with alice's certificate from another local address (all of 127/8 is
    this host): the user it was served as."""
    host, port = server.endpoint.rsplit(":", 1)
    context = ssl.create_default_context(cafile=pki.ca_cert)
    context.load_cert_chain(pki.client_cert, pki.client_key)
    with socket.create_connection((host, int(port)), timeout=5,
                                  source_address=(source, 0)) as raw, \
            context.wrap_socket(raw, server_hostname=host) as sock:
        sock.sendall(request(1, "whoami"))
        reply = read_reply(sock)
    assert reply is not None and reply.error is None, reply
    user: str = reply.result["user"]
    return user


def test_many_connections_at_once(start_server: Callable[..., ServerThread],
                                  tls_config: RpcConfig, pki: Pki,
                                  caplog: pytest.LogCaptureFixture) -> None:
    """A flood of connections from one address that never speak holds a few TCP slots
    for at most the handshake time; the rest are turned away at once. Meanwhile a
    client from another address and the Unix socket are served, the log says a few
    lines naming the source, status counts them all, and once the flood is gone its
    address is served again."""
    server = start_server(tls_config, limits=ServerLimits(max_connections=16,
                                                          handshake_timeout_s=1.0))
    host, port = server.endpoint.rsplit(":", 1)
    with caplog.at_level(logging.WARNING, logger="hacluster.rpc"):
        flood = []
        try:
            for _ in range(500):
                flood.append(socket.create_connection((host, int(port)), timeout=5))
            wait_for(lambda: refusals(server)["kinds"].get("too_many_connections", 0)
                     >= 400)
            assert whoami_from(server, pki, "127.0.0.2") == "alice"
            with RpcClient.connect(server.socket_path) as local:
                assert local.call("whoami")["auth"] == "peercred"
        finally:
            for sock in flood:
                sock.close()
        deadline = time.monotonic() + 10
        while True:  # slots free as the server notices the closes
            try:
                with tls_client(server, pki, cert=True) as rpc:
                    assert rpc.call("add", {"a": 1, "b": 2}) == 3
                break
            except (RpcError, ConnectError):
                assert time.monotonic() < deadline, "TLS clients are not served again"
                time.sleep(0.05)
    summary = refusals(server)
    assert summary["total"] >= 400
    assert {r["source"] for r in summary["recent"]} == {"127.0.0.1"}
    lines = refusal_lines(caplog)
    assert 1 <= len(lines) <= 6, lines  # one per kind and source, however many
    assert all("127.0.0.1:" in line for line in lines)


def test_the_per_source_cap_counts_only_connections_not_yet_authenticated(
        start_server: Callable[..., ServerThread], tls_config: RpcConfig, pki: Pki) -> None:
    server = start_server(tls_config, limits=ServerLimits(max_anonymous_per_source=2))
    with contextlib.ExitStack() as stack:
        for _ in range(6):  # one host, six admins at once: each authenticated at once
            rpc = stack.enter_context(tls_client(server, pki, cert=True))
            assert rpc.call("whoami")["user"] == "alice"
    assert refusals(server)["total"] == 0
