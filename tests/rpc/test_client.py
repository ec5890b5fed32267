"""The clients: blocking (hactl) and asyncio (peer-to-leader forwarding)."""

from __future__ import annotations

import asyncio
import functools
import math
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from hacluster.config import RpcConfig
from hacluster.rpc.aclient import AsyncRpcClient, LeaderLink
from hacluster.rpc.client import RpcClient
from hacluster.rpc.endpoint import ConnectError, Target, parse_target
from hacluster.rpc.protocol import ErrorCode, RpcError
from hacluster.rpc.server import ServerLimits
from raftlab.harness import free_ports

from .conftest import TOKEN
from .support import Pki, Probe, ServerThread, unix_config, wait_for

# -- targets and connection errors ---------------------------------------------------


@pytest.mark.parametrize(("text", "target"), [
    ("/run/hacluster/hactl.sock", Target(path="/run/hacluster/hactl.sock")),
    ("hactl.sock", Target(path="hactl.sock")),
    ("./x:1", Target(path="./x:1")),
    ("peer1:7443", Target(host="peer1", port=7443)),
    ("10.0.0.1:7443", Target(host="10.0.0.1", port=7443)),
    ("[::1]:7443", Target(host="::1", port=7443)),
])
def test_targets(text: str, target: Target) -> None:
    assert parse_target(text) == target
    assert str(parse_target(text)) == text


def test_missing_socket_is_named_with_a_hint(tmp_short: Path) -> None:
    path = str(tmp_short / "hactl.sock")
    with pytest.raises(ConnectError) as info:
        RpcClient.connect(path)
    assert info.value.message == (f"cannot connect to {path}: no such file "
                                  "(is the peer running?)")
    assert info.value.code == ErrorCode.UNAVAILABLE and info.value.details["sent"] is False


def test_dead_socket_is_refused(tmp_short: Path) -> None:
    path = str(tmp_short / "dead.sock")
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(path)
        with pytest.raises(ConnectError, match="connection refused"):
            RpcClient.connect(path)


def test_closed_tcp_port_is_named() -> None:
    (port,) = free_ports(1)  # a port that was free a moment ago
    with pytest.raises(ConnectError) as info:
        RpcClient.connect(f"127.0.0.1:{port}", timeout_s=2)
    assert info.value.message == (f"cannot connect to 127.0.0.1:{port}: "
                                  "connection refused (is the peer running?)")


def test_missing_tls_files_are_named() -> None:
    with pytest.raises(ConnectError, match="cannot load TLS files"):
        RpcClient.connect("127.0.0.1:1", certfile="/nonexistent.pem")


# -- blocking client -----------------------------------------------------------------


def test_call_stream_and_errors(server: ServerThread) -> None:
    with RpcClient.connect(server.socket_path) as rpc:
        assert rpc.call("add", {"a": 40, "b": 2}) == 42
        assert list(rpc.stream("count", {"n": 4})) == [0, 1, 2, 3]
        assert rpc.call("count", {"n": 3}) == [0, 1, 2]  # a stream collected
        with pytest.raises(RpcError) as info:
            rpc.call("reject")
        assert (info.value.code, info.value.details) == (ErrorCode.CONFLICT, {"host": "h1"})
        with pytest.raises(RpcError) as info:
            list(rpc.stream("stream_then_fail"))
        assert info.value.code == ErrorCode.INTERNAL
        assert rpc.call("echo", {"still": "usable"}) == {"still": "usable"}
    assert rpc.closed


def test_leaving_a_stream_early_closes_the_client(server: ServerThread, probe: Probe) -> None:
    rpc = RpcClient.connect(server.socket_path)
    for item in rpc.stream("forever", timeout_s=math.inf):
        assert item == "started"
        break
    assert rpc.closed
    assert probe.cancelled.wait(5)
    with pytest.raises(RpcError) as info:
        rpc.call("echo")
    assert info.value.code == ErrorCode.UNAVAILABLE and info.value.details["sent"] is False


def test_timeout_is_maybe_applied(server: ServerThread) -> None:
    with RpcClient.connect(server.socket_path, timeout_s=5) as rpc:
        with pytest.raises(RpcError) as info:
            rpc.call("sleep", {"s": 1}, timeout_s=0.1)
        assert info.value.code == ErrorCode.MAYBE_APPLIED
        assert "no reply within 0.1s after sleep was sent" in info.value.message
        assert rpc.closed


def test_server_going_away_mid_call(start_server: Callable[..., ServerThread]) -> None:
    server = start_server()
    with RpcClient.connect(server.socket_path) as rpc:
        stream = rpc.stream("forever", timeout_s=5)
        assert next(stream) == "started"
        server.stop()
        with pytest.raises(RpcError) as info:
            next(stream)
        assert info.value.code == ErrorCode.UNAVAILABLE
        assert info.value.message == "the peer is shutting down"


def test_connection_level_errors_close_the_client(start_server: Callable[..., ServerThread],
                                                  tmp_short: Path) -> None:
    server = start_server(unix_config(tmp_short, max_frame_bytes=1024))
    with RpcClient.connect(server.socket_path) as rpc:
        with pytest.raises(RpcError) as info:
            rpc.call("echo", {"x": "y" * 2000})  # the client's own limit is larger
        assert info.value.code == ErrorCode.TOO_LARGE
        assert info.value.details.get("connection") is True
        assert rpc.closed


def test_tls_client(start_server: Callable[..., ServerThread], tls_config: RpcConfig,
                    pki: Pki) -> None:
    server = start_server(tls_config)
    with RpcClient.connect(server.endpoint, cafile=pki.ca_cert, certfile=pki.client_cert,
                           keyfile=pki.client_key) as rpc:
        assert rpc.target == server.endpoint
        assert rpc.call("whoami")["user"] == "alice"
        assert list(rpc.stream("count", {"n": 2})) == [0, 1]


# -- asyncio client ------------------------------------------------------------------


def run(coro: Any) -> Any:
    return uvloop.run(coro)


def test_async_client_pipelines_concurrent_calls(server: ServerThread) -> None:
    async def main() -> None:
        async with await AsyncRpcClient.connect(server.socket_path) as rpc:
            tags = [f"t{i}" for i in range(30)]
            results = await asyncio.gather(
                *(rpc.call("sleep", {"s": 0.001, "tag": tag}) for tag in tags),
                rpc.call("count", {"n": 3}))
            assert results == [*tags, [0, 1, 2]]
            assert [i async for i in rpc.stream("count", {"n": 3})] == [0, 1, 2]
            with pytest.raises(RpcError) as info:
                await rpc.call("add", {"a": 1})
            assert info.value.code == ErrorCode.BAD_PARAMS
            assert info.value.details["field"] == "b"
    run(main())


def test_async_client_timeout_then_late_reply_is_dropped(server: ServerThread) -> None:
    async def main() -> None:
        async with await AsyncRpcClient.connect(server.socket_path) as rpc:
            with pytest.raises(RpcError) as info:
                await rpc.call("sleep", {"s": 0.2, "tag": "late"}, timeout_s=0.05)
            assert info.value.code == ErrorCode.MAYBE_APPLIED
            assert await rpc.call("echo", {"after": 1}) == {"after": 1}  # same connection
            assert not rpc.closed
    run(main())


def test_async_client_waiters_learn_of_a_lost_connection(
        start_server: Callable[..., ServerThread], probe: Probe) -> None:
    server = start_server()

    async def main() -> None:
        rpc = await AsyncRpcClient.connect(server.socket_path)
        pending = asyncio.ensure_future(rpc.call("hold"))
        # the parting word names the request the server was working on: it must have one
        assert await asyncio.to_thread(probe.started.wait, 10)
        await asyncio.to_thread(server.stop)
        with pytest.raises(RpcError) as info:
            await pending
        assert info.value.code == ErrorCode.UNAVAILABLE  # the server's parting word
        with pytest.raises(RpcError) as info:
            await rpc.call("echo")
        assert info.value.code == ErrorCode.UNAVAILABLE and not info.value.details["sent"]
        await rpc.close()
    run(main())


def test_async_client_over_tls(start_server: Callable[..., ServerThread],
                               tls_config: RpcConfig, pki: Pki) -> None:
    server = start_server(tls_config)

    async def main() -> None:
        async with await AsyncRpcClient.connect(server.endpoint, token=TOKEN,
                                                cafile=pki.ca_cert) as rpc:
            me, total = await asyncio.gather(rpc.call("whoami"),
                                             rpc.call("add", {"a": 1, "b": 2}))
            assert (me["user"], me["auth"], total) == ("ops", "token", 3)
    run(main())


def test_async_connect_error_names_the_target(tmp_short: Path) -> None:
    path = str(tmp_short / "nope.sock")

    async def main() -> None:
        with pytest.raises(ConnectError) as info:
            await AsyncRpcClient.connect(path)
        assert info.value.message == (f"cannot connect to {path}: no such file "
                                      "(is the peer running?)")
    run(main())


def test_leader_link_redials_when_the_connection_drops_or_the_leader_moves(
        start_server: Callable[..., ServerThread], tls_config: RpcConfig,
        pki: Pki) -> None:
    import dataclasses

    first = start_server(tls_config, limits=ServerLimits(idle_timeout_s=0.2))
    second_config = dataclasses.replace(tls_config, socket="")  # TCP only
    second = start_server(second_config)
    dial = functools.partial(AsyncRpcClient.connect, cafile=pki.ca_cert,
                             certfile=pki.client_cert, keyfile=pki.client_key)

    async def main() -> None:
        link = LeaderLink(dial)
        assert (await link.call(first.endpoint, "whoami", {}))["auth"] == "certificate"
        # The leader closes the idle connection; the next forward is not sent on it,
        # so one retry on a fresh connection is safe.
        stale = link._client  # private: the test waits until the link has seen the close
        deadline = time.monotonic() + 10
        while stale is None or not stale.closed:
            assert time.monotonic() < deadline, "the idle connection was never closed"
            await asyncio.sleep(0.01)
        assert await link.call(first.endpoint, "add", {"a": 1, "b": 1}) == 2
        assert await link.call(second.endpoint, "add", {"a": 2, "b": 2}) == 4
        with pytest.raises(RpcError) as info:  # errors of the method are not retried
            await link.call(second.endpoint, "reject", {})
        assert info.value.code == ErrorCode.CONFLICT
        await link.close()
    run(main())
    wait_for(lambda: first.server is not None and first.server.connection_count == 0)
