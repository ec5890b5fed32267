"""The admin RPC wire format: length-prefixed msgpack frames, strictly validated.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack.

    request  {"v": 1, "id": int, "method": str, "params": map, "token"?: str}
    reply    {"v": 1, "id": int, "ok": true, "result": any, "more"?: true}
             {"v": 1, "id": int, "ok": false,
              "error": {"code": str, "message": str, "details": map}}

Request ids are positive 64-bit integers chosen by the client. A reply with id 0
is about the connection, not one request (frame too large, undecodable frame,
refused credentials); the server closes the connection after sending it, so a
client fails every request still outstanding on it.

Decoding never trusts the peer: only plain msgpack types (nil, bool, int, float,
str, bin, array, map with str keys) are accepted, ext types (including the
timestamp extension) are refused, and every envelope field has its type checked,
because method code downstream assumes the types the envelope promises.
"""

from __future__ import annotations

import copy
import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import msgpack

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024
HEADER = struct.Struct(">I")
CONNECTION_ID = 0  # reply id for errors about the whole connection
MAX_REQUEST_ID = 2**63 - 1
MAX_METHOD_LEN = 128

_REQUEST_KEYS = frozenset({"v", "id", "method", "params", "token"})
_REPLY_KEYS = frozenset({"v", "id", "ok", "result", "more", "error"})
_PLAIN_SCALARS = (type(None), bool, int, float, str, bytes)


class ErrorCode(enum.StrEnum):
    BAD_FRAME = "bad-frame"
    TOO_LARGE = "too-large"
    BAD_VERSION = "bad-version"
    UNKNOWN_METHOD = "unknown-method"
    BAD_PARAMS = "bad-params"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_LEADER = "not-leader"
    NO_QUORUM = "no-quorum"
    TIMEOUT = "timeout"
    MAYBE_APPLIED = "maybe-applied"
    REJECTED = "rejected"
    NOT_FOUND = "not-found"
    CONFLICT = "conflict"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class RpcError(Exception):
    """A structured failure; crosses the wire unchanged (code, message, details)."""

    def __init__(self, code: ErrorCode | str, message: str,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"RpcError({self.code.value!r}, {self.message!r}, {self.details!r})"

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code.value, "message": self.message, "details": self.details}


class EnvelopeError(RpcError):
    """A request that cannot be served; request_id is None when no id could be read."""

    def __init__(self, code: ErrorCode, message: str, request_id: int | None,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(code, message, details)
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    id: int
    method: str
    params: dict[str, Any]
    token: str | None = field(default=None, repr=False)  # never in reprs or logs


@dataclass(frozen=True)
class Reply:
    id: int
    ok: bool
    result: Any = None
    more: bool = False
    error: RpcError | None = None


# -- framing ---------------------------------------------------------------------------

def pack_body(obj: Any) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        # Raised by the server for results a method cannot legally return.
        raise RpcError(ErrorCode.INTERNAL, f"value cannot be encoded: {exc}") from None


def encode_frame(obj: Any, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    body = pack_body(obj)
    if len(body) > max_frame_bytes:
        raise RpcError(ErrorCode.TOO_LARGE,
                       f"frame of {len(body)} bytes exceeds the limit of {max_frame_bytes}",
                       {"size": len(body), "limit": max_frame_bytes})
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes, max_frame_bytes: int) -> int:
    """The body length announced by a header; refuses oversized frames before reading."""
    (length,) = HEADER.unpack(header)
    if length > max_frame_bytes:
        raise RpcError(ErrorCode.TOO_LARGE,
                       f"frame of {length} bytes exceeds the limit of {max_frame_bytes}",
                       {"size": length, "limit": max_frame_bytes})
    return int(length)


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code} is not allowed")


def check_plain(root: Any) -> None:
    """Raise ValueError unless root holds only plain msgpack values with str map keys."""
    # Iterative on purpose: msgpack nests deeper than Python's recursion limit.
    stack = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, dict):
            if not all(isinstance(key, str) for key in item):
                raise ValueError("map keys must be strings")
            stack.extend(item.values())
        elif not isinstance(item, _PLAIN_SCALARS):
            raise ValueError(f"{type(item).__name__} values are not allowed")


def unpack_body(body: bytes) -> Any:
    """Decode one frame body into plain Python values, or raise RpcError(bad-frame)."""
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True,
                              ext_hook=_refuse_ext, timestamp=0)
        check_plain(obj)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RpcError(ErrorCode.BAD_FRAME, f"undecodable frame: {exc}") from None
    return obj


# -- requests --------------------------------------------------------------------------

def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _request_id(doc: dict[str, Any]) -> int | None:
    value = doc.get("id")
    return value if _is_int(value) and 0 < value <= MAX_REQUEST_ID else None


def encode_request(request: Request, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    doc: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": request.id, "method": request.method,
                           "params": request.params}
    if request.token is not None:
        doc["token"] = request.token
    return encode_frame(doc, max_frame_bytes)


def decode_request(body: bytes) -> Request:
    """Validate a request body; EnvelopeError.request_id says whether the id was readable."""
    try:
        doc = unpack_body(body)
    except RpcError as exc:
        raise EnvelopeError(exc.code, exc.message, None) from None
    if not isinstance(doc, dict):
        raise EnvelopeError(ErrorCode.BAD_FRAME,
                            f"request must be a map, got {type(doc).__name__}", None)
    rid = _request_id(doc)
    if rid is None:
        raise EnvelopeError(ErrorCode.BAD_FRAME,
                            "request id must be an integer in 1..2**63-1", None)

    def bad(code: ErrorCode, message: str) -> EnvelopeError:
        return EnvelopeError(code, message, rid)

    version = doc.get("v")
    if not _is_int(version):
        raise bad(ErrorCode.BAD_FRAME, "field 'v' must be an integer")
    if version != PROTOCOL_VERSION:
        raise bad(ErrorCode.BAD_VERSION,
                  f"protocol version {version} is not supported (this peer speaks "
                  f"{PROTOCOL_VERSION})")
    unknown = sorted(str(k) for k in doc if k not in _REQUEST_KEYS)
    if unknown:
        raise bad(ErrorCode.BAD_FRAME, f"unknown request field(s): {', '.join(unknown)}")
    method = doc.get("method")
    if not isinstance(method, str) or not 0 < len(method) <= MAX_METHOD_LEN:
        raise bad(ErrorCode.BAD_FRAME,
                  f"field 'method' must be a string of 1..{MAX_METHOD_LEN} characters")
    params = doc.get("params")
    if not isinstance(params, dict):
        raise bad(ErrorCode.BAD_FRAME, "field 'params' must be a map")
    token = doc.get("token")
    if token is not None and not isinstance(token, str):
        raise bad(ErrorCode.BAD_FRAME, "field 'token' must be a string")
    return Request(rid, method, params, token)


# -- replies ---------------------------------------------------------------------------

def result_reply(request_id: int, result: Any, *, more: bool = False) -> dict[str, Any]:
    doc = {"v": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result}
    if more:
        doc["more"] = True
    return doc


def error_reply(request_id: int, error: RpcError) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "ok": False, "error": error.to_wire()}


def _decode_error(value: Any) -> RpcError:
    if not isinstance(value, dict):
        raise RpcError(ErrorCode.BAD_FRAME, "reply field 'error' must be a map")
    code, message = value.get("code"), value.get("message")
    details = value.get("details", {})
    if not isinstance(code, str) or not isinstance(message, str) \
            or not isinstance(details, dict):
        raise RpcError(ErrorCode.BAD_FRAME,
                       "reply error needs code: str, message: str, details: map")
    try:
        return RpcError(ErrorCode(code), message, details)
    except ValueError:
        # A newer peer may know codes this one does not; keep its word for it.
        return RpcError(ErrorCode.INTERNAL, message, {**details, "unknown_code": code})


def decode_reply(body: bytes) -> Reply:
    """Validate a reply body (client side); raises RpcError(bad-frame) when malformed."""
    doc = unpack_body(body)
    if not isinstance(doc, dict):
        raise RpcError(ErrorCode.BAD_FRAME, "reply must be a map")
    rid, ok, more = doc.get("id"), doc.get("ok"), doc.get("more", False)
    if not _is_int(rid) or not 0 <= rid <= MAX_REQUEST_ID:
        raise RpcError(ErrorCode.BAD_FRAME, "reply id must be a non-negative integer")
    if doc.get("v") != PROTOCOL_VERSION or isinstance(doc.get("v"), bool):
        raise RpcError(ErrorCode.BAD_VERSION, f"reply has protocol version {doc.get('v')!r}")
    if not isinstance(ok, bool) or not isinstance(more, bool):
        raise RpcError(ErrorCode.BAD_FRAME, "reply fields 'ok' and 'more' must be booleans")
    if set(doc) - _REPLY_KEYS:
        raise RpcError(ErrorCode.BAD_FRAME, "reply has unknown fields")
    if ok:
        if "result" not in doc or "error" in doc:
            raise RpcError(ErrorCode.BAD_FRAME, "a successful reply carries 'result' only")
        return Reply(rid, True, doc["result"], more)
    if more or "result" in doc:
        raise RpcError(ErrorCode.BAD_FRAME, "an error reply carries 'error' only")
    return Reply(rid, False, error=_decode_error(doc.get("error")))


# -- params ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One parameter: accepted types, and whether it must be present."""

    types: tuple[type, ...]
    required: bool = True
    default: Any = None


def required(*types: type) -> Field:
    return Field(types, True)


def optional(*types: type, default: Any = None) -> Field:
    return Field(types, False, default)


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in types)


def _accepts(types: tuple[type, ...], value: Any) -> bool:
    if isinstance(value, bool):  # bool is an int to Python, not to callers
        return bool in types
    if _is_int(value) and float in types:
        return True
    return isinstance(value, types)


def validate_params(params: Mapping[str, Any], schema: Mapping[str, Field | type], *,
                    allow_extra: bool = False) -> dict[str, Any]:
    """Check params against schema (a bare type means required); fill in defaults.

    Raises RpcError(bad-params) whose details name the offending field.
    """
    out: dict[str, Any] = {}
    for name, spec in schema.items():
        spec = spec if isinstance(spec, Field) else Field((spec,))
        if name not in params:
            if spec.required:
                raise RpcError(ErrorCode.BAD_PARAMS, f"missing parameter {name!r}",
                               {"field": name, "expected": _type_names(spec.types)})
            # A copy: optional(list, default=[]) must not share one list across calls.
            out[name] = copy.deepcopy(spec.default)
            continue
        value = params[name]
        if not _accepts(spec.types, value):
            raise RpcError(ErrorCode.BAD_PARAMS,
                           f"parameter {name!r} must be {_type_names(spec.types)}, "
                           f"got {type(value).__name__}",
                           {"field": name, "expected": _type_names(spec.types),
                            "got": type(value).__name__})
        out[name] = float(value) if float in spec.types and _is_int(value) \
            and int not in spec.types else value
    extra = sorted(set(params) - set(schema))
    if extra and not allow_extra:
        raise RpcError(ErrorCode.BAD_PARAMS, f"unknown parameter {extra[0]!r}",
                       {"field": extra[0], "known": sorted(schema)})
    return out
