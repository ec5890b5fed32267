"""The wire format on its own: framing, strict envelope checks, params schemas."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from hacluster.rpc.protocol import (
    CONNECTION_ID,
    HEADER,
    EnvelopeError,
    ErrorCode,
    Field,
    Request,
    RpcError,
    check_plain,
    decode_reply,
    decode_request,
    encode_frame,
    encode_request,
    error_reply,
    frame_length,
    optional,
    required,
    result_reply,
    validate_params,
)


def body(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def envelope(**fields: Any) -> dict[str, Any]:
    return {"v": 1, "id": 7, "method": "status", "params": {}, **fields}


def test_error_codes_are_the_documented_set() -> None:
    assert {c.value for c in ErrorCode} == {
        "bad-frame", "too-large", "bad-version", "unknown-method", "bad-params",
        "unauthenticated", "forbidden", "not-leader", "no-quorum", "timeout",
        "maybe-applied", "rejected", "not-found", "conflict", "unavailable", "internal"}


def test_request_round_trip_keeps_the_token_out_of_repr() -> None:
    request = Request(5, "vm.start", {"name": "web1"}, token="hunter2-secret")
    frame = encode_request(request)
    (length,) = HEADER.unpack(frame[:4])
    assert length == len(frame) - 4
    assert decode_request(frame[4:]) == request
    assert "hunter2" not in repr(request)


def test_a_request_without_token_round_trips() -> None:
    assert decode_request(encode_request(Request(1, "m", {}))[4:]).token is None


@pytest.mark.parametrize("doc", [
    [1, 2], "text", 5, None,
    {"v": 1, "method": "m", "params": {}},  # no id
    {"v": 1, "id": True, "method": "m", "params": {}},
    {"v": 1, "id": 0, "method": "m", "params": {}},
    {"v": 1, "id": -3, "method": "m", "params": {}},
    {"v": 1, "id": 2**63, "method": "m", "params": {}},
    {"v": 1, "id": "7", "method": "m", "params": {}},
    {"v": 1, "id": 1.0, "method": "m", "params": {}},
])
def test_requests_without_a_usable_id(doc: Any) -> None:
    with pytest.raises(EnvelopeError) as info:
        decode_request(body(doc))
    assert info.value.code == ErrorCode.BAD_FRAME
    assert info.value.request_id is None


@pytest.mark.parametrize(("doc", "code", "words"), [
    (envelope(v=2), ErrorCode.BAD_VERSION, "version 2"),
    (envelope(v="1"), ErrorCode.BAD_FRAME, "'v'"),
    (envelope(v=True), ErrorCode.BAD_FRAME, "'v'"),
    ({"id": 7, "method": "m", "params": {}}, ErrorCode.BAD_FRAME, "'v'"),
    (envelope(method=3), ErrorCode.BAD_FRAME, "'method'"),
    (envelope(method=""), ErrorCode.BAD_FRAME, "'method'"),
    (envelope(method="x" * 129), ErrorCode.BAD_FRAME, "'method'"),
    (envelope(params=[1]), ErrorCode.BAD_FRAME, "'params'"),
    ({"v": 1, "id": 7, "method": "m"}, ErrorCode.BAD_FRAME, "'params'"),
    (envelope(token=5), ErrorCode.BAD_FRAME, "'token'"),
    (envelope(extra=1), ErrorCode.BAD_FRAME, "extra"),
])
def test_malformed_requests_keep_their_id(doc: Any, code: ErrorCode, words: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        decode_request(body(doc))
    assert (info.value.code, info.value.request_id) == (code, 7)
    assert words in info.value.message


@pytest.mark.parametrize("raw", [
    b"", b"\xc1", b"\x81", b"\x92\x01",  # reserved byte, truncated map and array
    body(envelope()) + b"\x00",  # trailing bytes
    b"\xd6\xff\x00\x00\x00\x01",  # timestamp extension
    b"\xd4\x05\x00",  # application extension
    b"\x81\xc4\x01k\x01",  # bytes map key
    b"\x81\x01\x01",  # int map key
    b"\xa2\xff\xfe",  # invalid UTF-8
    b"\x91" * 5000 + b"\xc0",  # deeper than the unpacker allows
])
def test_undecodable_bodies_are_bad_frames(raw: bytes) -> None:
    with pytest.raises(EnvelopeError) as info:
        decode_request(raw)
    assert info.value.code == ErrorCode.BAD_FRAME and info.value.request_id is None


def test_params_with_nested_plain_values_are_accepted() -> None:
    params = {"a": [1, 2.5, None, True, b"\x00", {"b": ["c"]}]}
    assert decode_request(body(envelope(params=params))).params == params


def test_frame_size_limits() -> None:
    assert frame_length(HEADER.pack(100), 100) == 100
    with pytest.raises(RpcError) as info:
        frame_length(HEADER.pack(101), 100)
    assert info.value.code == ErrorCode.TOO_LARGE
    assert info.value.details == {"size": 101, "limit": 100}
    with pytest.raises(RpcError) as info:
        encode_frame({"x": "y" * 200}, 100)
    assert info.value.code == ErrorCode.TOO_LARGE


def test_unencodable_values_are_internal_errors() -> None:
    with pytest.raises(RpcError) as info:
        encode_frame({"x": object()})
    assert info.value.code == ErrorCode.INTERNAL


def test_check_plain() -> None:
    check_plain({"a": (1, [2, {"b": None}]), "c": b"", "d": 1.5})
    for bad in ({1: 2}, {"a": {1, 2}}, [object()], {"a": [{b"k": 1}]}):
        with pytest.raises(ValueError):
            check_plain(bad)


def test_replies_round_trip() -> None:
    ok = decode_reply(body(result_reply(3, {"x": 1})))
    assert (ok.id, ok.ok, ok.result, ok.more) == (3, True, {"x": 1}, False)
    assert decode_reply(body(result_reply(3, 1, more=True))).more
    err = decode_reply(body(error_reply(4, RpcError(ErrorCode.NOT_LEADER, "ask p2",
                                                    {"leader": "p2"}))))
    assert err.error is not None and not err.ok
    assert (err.error.code, err.error.message, err.error.details) == (
        ErrorCode.NOT_LEADER, "ask p2", {"leader": "p2"})
    conn = decode_reply(body(error_reply(CONNECTION_ID, RpcError(ErrorCode.TOO_LARGE, "x"))))
    assert conn.id == 0


def test_an_unknown_error_code_from_a_newer_peer_is_kept() -> None:
    doc = {"v": 1, "id": 1, "ok": False,
           "error": {"code": "brand-new", "message": "m", "details": {}}}
    error = decode_reply(body(doc)).error
    assert error is not None and error.code == ErrorCode.INTERNAL
    assert error.details["unknown_code"] == "brand-new"


@pytest.mark.parametrize("doc", [
    [], {"v": 1, "id": 1, "ok": True},  # no result
    {"v": 1, "id": -1, "ok": True, "result": 1},
    {"v": 1, "id": 1, "ok": 1, "result": 1},
    {"v": 2, "id": 1, "ok": True, "result": 1},
    {"v": 1, "id": 1, "ok": True, "result": 1, "more": "yes"},
    {"v": 1, "id": 1, "ok": True, "result": 1, "surprise": 1},
    {"v": 1, "id": 1, "ok": False, "error": "no"},
    {"v": 1, "id": 1, "ok": False, "error": {"code": 1, "message": "m", "details": {}}},
    {"v": 1, "id": 1, "ok": False, "result": 1,
     "error": {"code": "internal", "message": "m", "details": {}}},
])
def test_malformed_replies_are_refused(doc: Any) -> None:
    with pytest.raises(RpcError) as info:
        decode_reply(body(doc))
    assert info.value.code in (ErrorCode.BAD_FRAME, ErrorCode.BAD_VERSION)


SCHEMA: dict[str, Field | type] = {
    "name": str, "count": optional(int, default=1), "ratio": required(float),
    "force": optional(bool, default=False)}


def test_validate_params_fills_defaults_and_widens_ints_to_floats() -> None:
    assert validate_params({"name": "web1", "ratio": 2}, SCHEMA) == {
        "name": "web1", "count": 1, "ratio": 2.0, "force": False}


@pytest.mark.parametrize(("params", "field", "words"), [
    ({"ratio": 1.0}, "name", "missing parameter 'name'"),
    ({"name": 5, "ratio": 1.0}, "name", "must be str, got int"),
    ({"name": "a", "ratio": 1.0, "count": True}, "count", "must be int, got bool"),
    ({"name": "a", "ratio": "1"}, "ratio", "must be float"),
    ({"name": "a", "ratio": 1.0, "force": 1}, "force", "must be bool"),
    ({"name": "a", "ratio": 1.0, "colour": "red"}, "colour", "unknown parameter"),
])
def test_validate_params_names_the_field(params: dict[str, Any], field: str,
                                         words: str) -> None:
    with pytest.raises(RpcError) as info:
        validate_params(params, SCHEMA)
    assert info.value.code == ErrorCode.BAD_PARAMS
    assert info.value.details["field"] == field
    assert words in info.value.message


def test_validate_params_can_allow_extra_fields() -> None:
    assert validate_params({"a": 1, "b": 2}, {"a": int}, allow_extra=True) == {"a": 1}


def test_validate_params_defaults_are_not_shared_between_calls() -> None:
    schema = {"tags": optional(list, default=[])}
    first = validate_params({}, schema)
    first["tags"].append("x")
    assert validate_params({}, schema) == {"tags": []}
