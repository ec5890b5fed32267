"""The server over a real Unix socket: calls, order, streams, and bad input."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hacluster.rpc.protocol import HEADER, ErrorCode
from hacluster.rpc.server import ServerLimits

from .support import (
    Probe,
    ServerThread,
    expect_eof,
    frame,
    read_reply,
    request,
    unix_config,
    unix_socket,
)


def call(server: ServerThread, method: str, params: dict | None = None,
         rid: int = 1) -> object:
    with unix_socket(server.socket_path) as sock:
        sock.sendall(request(rid, method, params))
        reply = read_reply(sock)
    assert reply is not None and reply.id == rid
    if reply.error is not None:
        raise reply.error
    return reply.result


def assert_healthy(server: ServerThread) -> None:
    """A fresh connection still gets a normal answer."""
    assert call(server, "add", {"a": 2, "b": 3}) == 5


def test_call_and_response(server: ServerThread) -> None:
    assert call(server, "echo", {"x": [1, "two", None, b"\x03"]}) == {
        "x": [1, "two", None, b"\x03"]}
    me = call(server, "whoami", rid=42)
    assert isinstance(me, dict)
    assert me["transport"] == "unix" and me["auth"] == "peercred"
    assert me["user"] == "root" and me["id"] == 42 and me["method"] == "whoami"
    assert str(me["peer"]).startswith("unix:pid=")


def test_many_calls_on_one_connection(server: ServerThread) -> None:
    with unix_socket(server.socket_path) as sock:
        for rid in range(1, 51):
            sock.sendall(request(rid, "add", {"a": rid, "b": 1}))
            reply = read_reply(sock)
            assert reply is not None and (reply.id, reply.result) == (rid, rid + 1)


def test_pipelined_requests_are_answered_in_order(server: ServerThread) -> None:
    with unix_socket(server.socket_path) as sock:
        # One write: the slow first request must not be overtaken by the quick ones.
        sock.sendall(request(10, "sleep", {"s": 0.05, "tag": "slow"})
                     + request(11, "echo", {"n": 1}) + request(12, "count", {"n": 2})
                     + request(13, "nosuch") + request(14, "sleep", {"tag": "quick"}))
        replies = [read_reply(sock) for _ in range(7)]
    assert [(r.id, r.result, r.more) for r in replies if r and r.ok] == [
        (10, "slow", False), (11, {"n": 1}, False), (12, 0, True), (12, 1, True),
        (12, None, False), (14, "quick", False)]
    assert replies[5] is not None and replies[5].id == 13
    assert replies[5].error is not None and replies[5].error.code == ErrorCode.UNKNOWN_METHOD


def test_streaming(server: ServerThread) -> None:
    with unix_socket(server.socket_path) as sock:
        sock.sendall(request(3, "count", {"n": 5}))
        replies = [read_reply(sock) for _ in range(6)]
        assert [(r.result, r.more) for r in replies if r] == [
            (0, True), (1, True), (2, True), (3, True), (4, True), (None, False)]
        sock.sendall(request(4, "count", {"n": 0}))  # empty stream: only the final frame
        empty = read_reply(sock)
        assert empty is not None and (empty.id, empty.result, empty.more) == (4, None, False)


def test_a_failing_stream_ends_with_an_error(server: ServerThread,
                                             caplog: pytest.LogCaptureFixture) -> None:
    with unix_socket(server.socket_path) as sock:
        sock.sendall(request(5, "stream_then_fail"))
        first, last = read_reply(sock), read_reply(sock)
        assert first is not None and (first.result, first.more) == (1, True)
        assert last is not None and last.error is not None
        assert last.error.code == ErrorCode.INTERNAL
        sock.sendall(request(6, "add", {"a": 1, "b": 1}))  # still usable
        again = read_reply(sock)
        assert again is not None and again.result == 2


def test_method_exception_becomes_internal_and_is_logged(
        server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="hacluster.rpc"), \
            unix_socket(server.socket_path) as sock:
        sock.sendall(request(8, "boom"))
        reply = read_reply(sock)
        assert reply is not None and reply.id == 8 and reply.error is not None
        assert reply.error.code == ErrorCode.INTERNAL
        assert "ValueError" in reply.error.message
        sock.sendall(request(9, "add", {"a": 1, "b": 2}))  # the connection stays usable
        after = read_reply(sock)
        assert after is not None and after.result == 3
    logged = [r for r in caplog.records if "boom" in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback is in the log


def test_rpc_error_is_returned_as_is(server: ServerThread) -> None:
    with pytest.raises(Exception) as info:
        call(server, "reject")
    error = info.value
    assert getattr(error, "code", None) == ErrorCode.CONFLICT
    assert getattr(error, "message", None) == "host h1 is busy"
    assert getattr(error, "details", None) == {"host": "h1"}


def test_a_method_cancelling_itself_is_an_internal_error(server: ServerThread) -> None:
    with unix_socket(server.socket_path) as sock:
        sock.sendall(request(1, "self_cancel") + request(2, "echo", {}))
        first, second = read_reply(sock), read_reply(sock)
    assert first is not None and first.error is not None
    assert first.error.code == ErrorCode.INTERNAL
    assert second is not None and second.result == {}


def test_error_details_that_cannot_be_sent_are_dropped(server: ServerThread) -> None:
    with unix_socket(server.socket_path) as sock:
        sock.sendall(request(1, "odd_details"))
        reply = read_reply(sock)
    assert reply is not None and reply.error is not None
    assert (reply.error.code, reply.error.message, reply.error.details) == (
        ErrorCode.NOT_FOUND, "no such vm", {})


def test_unknown_method(server: ServerThread) -> None:
    with unix_socket(server.socket_path) as sock:
        sock.sendall(request(2, "no.such.method"))
        reply = read_reply(sock)
        assert reply is not None and reply.error is not None
        assert reply.error.code == ErrorCode.UNKNOWN_METHOD
        assert reply.error.details == {"method": "no.such.method"}


def test_bad_params_name_the_field(server: ServerThread) -> None:
    for params, field in (({"a": 1}, "b"), ({"a": "1", "b": 2}, "a"),
                          ({"a": 1, "b": 2, "c": 3}, "c")):
        with pytest.raises(Exception) as info:
            call(server, "add", params)
        assert getattr(info.value, "code", None) == ErrorCode.BAD_PARAMS
        assert getattr(info.value, "details", {})["field"] == field
        assert repr(field) in str(info.value)


def test_results_that_cannot_be_sent(server: ServerThread,
                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="hacluster.rpc"), \
            unix_socket(server.socket_path) as sock:
        sock.sendall(request(1, "unsendable") + request(2, "big", {"n": 5 * 1024 * 1024})
                     + request(3, "add", {"a": 2**64 - 1, "b": 1}))
        replies = [read_reply(sock) for _ in range(3)]
    codes = [r.error.code if r and r.error else None for r in replies]
    assert codes == [ErrorCode.INTERNAL, ErrorCode.TOO_LARGE, ErrorCode.INTERNAL]
    assert "method unsendable" in caplog.text and "method add" in caplog.text


@pytest.mark.parametrize(("doc", "code"), [
    ({"v": 2, "id": 5, "method": "echo", "params": {}}, ErrorCode.BAD_VERSION),
    ({"v": 1, "id": 5, "method": 7, "params": {}}, ErrorCode.BAD_FRAME),
    ({"v": 1, "id": 5, "method": "echo", "params": [1]}, ErrorCode.BAD_FRAME),
    ({"v": 1, "id": 5, "method": "echo", "params": {}, "token": 1}, ErrorCode.BAD_FRAME),
])
def test_wrong_types_with_a_known_id_get_an_error_and_keep_the_connection(
        server: ServerThread, doc: dict, code: ErrorCode) -> None:
    with unix_socket(server.socket_path) as sock:
        sock.sendall(frame(doc))
        reply = read_reply(sock)
        assert reply is not None and reply.id == 5 and reply.error is not None
        assert reply.error.code == code
        sock.sendall(request(6, "echo", {"ok": 1}))
        after = read_reply(sock)
        assert after is not None and after.result == {"ok": 1}


@pytest.mark.parametrize("payload", [
    frame([1, 2, 3]),  # not a map
    frame({"v": 1, "id": "x", "method": "echo", "params": {}}),  # no usable id
    HEADER.pack(3) + b"\xc1\xc1\xc1",  # not msgpack
    HEADER.pack(0),  # empty body
])
def test_frames_without_a_usable_id_close_the_connection(
        server: ServerThread, payload: bytes) -> None:
    with unix_socket(server.socket_path) as sock:
        sock.sendall(payload)
        reply = read_reply(sock)
        assert reply is not None and reply.id == 0 and reply.error is not None
        assert reply.error.code == ErrorCode.BAD_FRAME
        expect_eof(sock)
    assert_healthy(server)


def test_oversized_frame_is_refused_without_reading_it(
        start_server: Callable[..., ServerThread], tmp_short: Path) -> None:
    server = start_server(unix_config(tmp_short, max_frame_bytes=1024))
    with unix_socket(server.socket_path) as sock:
        sock.sendall(HEADER.pack(1025) + b"\x80" * 100)
        reply = read_reply(sock)
        assert reply is not None and reply.id == 0 and reply.error is not None
        assert reply.error.code == ErrorCode.TOO_LARGE
        assert reply.error.details == {"size": 1025, "limit": 1024}
        expect_eof(sock)
    assert_healthy(server)


def test_garbage_bytes(server: ServerThread) -> None:
    with unix_socket(server.socket_path) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # reads as a ~1 GB length
        reply = read_reply(sock)
        assert reply is not None and reply.error is not None
        assert reply.error.code == ErrorCode.TOO_LARGE
        expect_eof(sock)
    assert_healthy(server)


def test_truncated_frame_then_close(server: ServerThread) -> None:
    with unix_socket(server.socket_path) as sock:
        sock.sendall(HEADER.pack(100) + b"\x85" + b"\x00" * 9)
        sock.shutdown(socket.SHUT_WR)
        expect_eof(sock)
    with unix_socket(server.socket_path) as sock:
        sock.sendall(b"\x00\x00")  # half a header
        sock.shutdown(socket.SHUT_WR)
        expect_eof(sock)
    assert_healthy(server)


def test_answers_still_arrive_after_the_client_half_closes(server: ServerThread) -> None:
    with unix_socket(server.socket_path) as sock:
        sock.sendall(request(1, "sleep", {"s": 0.05, "tag": "a"}) + request(2, "echo", {}))
        sock.shutdown(socket.SHUT_WR)
        assert [r.result for r in iter(lambda: read_reply(sock), None)] == ["a", {}]


def test_slow_loris_frames_time_out(start_server: Callable[..., ServerThread]) -> None:
    server = start_server(limits=ServerLimits(frame_timeout_s=0.3))
    with unix_socket(server.socket_path) as sock, unix_socket(server.socket_path) as other:
        began = time.monotonic()
        data = request(1, "echo", {"x": "y" * 20})
        for byte in data[:12]:  # one byte every 50 ms: never completes in 0.3 s
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            other.sendall(request(1, "echo", {"n": byte}))  # others are not held up
            reply = read_reply(other)
            assert reply is not None and reply.result == {"n": byte}
            time.sleep(0.05)
        reply = read_reply(sock)
        assert reply is not None and reply.id == 0 and reply.error is not None
        assert reply.error.code == ErrorCode.TIMEOUT
        expect_eof(sock)
        assert time.monotonic() - began < 2
    assert_healthy(server)


def test_idle_connections_are_closed(start_server: Callable[..., ServerThread]) -> None:
    server = start_server(limits=ServerLimits(idle_timeout_s=0.2))
    with unix_socket(server.socket_path) as sock:
        began = time.monotonic()  # before the reply, which starts the server's idle clock
        sock.sendall(request(1, "echo"))
        assert read_reply(sock) is not None
        expect_eof(sock)
        assert 0.19 < time.monotonic() - began < 2


def test_connection_limit(start_server: Callable[..., ServerThread]) -> None:
    """max_connections applies per listener; this is the Unix one."""
    server = start_server(limits=ServerLimits(max_connections=2))
    first, second = unix_socket(server.socket_path), unix_socket(server.socket_path)
    for sock in (first, second):
        sock.sendall(request(1, "echo"))
        assert read_reply(sock) is not None
    with unix_socket(server.socket_path) as third:
        expect_eof(third)
    first.close()
    deadline = time.monotonic() + 5
    while True:  # the slot frees once the server has noticed the close
        try:
            assert_healthy(server)
            break
        except (OSError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    second.close()


def test_a_stream_ends_when_its_client_hangs_up(server: ServerThread, probe: Probe) -> None:
    with unix_socket(server.socket_path) as sock:
        sock.sendall(request(1, "forever"))
        reply = read_reply(sock)
        assert reply is not None and reply.result == "started"
        assert probe.started.wait(5)
    assert probe.cancelled.wait(5), "the generator outlived its client"
    assert_healthy(server)


def test_close_cancels_streams_and_removes_the_socket(
        start_server: Callable[..., ServerThread], probe: Probe) -> None:
    server = start_server()
    with unix_socket(server.socket_path) as sock:
        sock.sendall(request(7, "forever"))
        assert read_reply(sock) is not None
        assert probe.started.wait(5)
        server.stop()
        assert probe.cancelled.is_set()
        parting = read_reply(sock)  # a last word for the request in progress
        assert parting is not None and parting.id == 7 and parting.error is not None
        assert parting.error.code == ErrorCode.UNAVAILABLE
        expect_eof(sock)
    with pytest.raises(FileNotFoundError):
        unix_socket(server.socket_path)
