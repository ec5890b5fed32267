"""Dataclass <-> msgpack-ready values, driven by the type hints.

Decoding validates every field (commands arrive from the network and from
old logs) and raises `WireError` naming the field; it never evaluates data.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any

Decoder = Callable[[Any], Any]
Encoder = Callable[[Any], Any]


class WireError(ValueError):
    """A value does not have the shape its field requires."""


def _expect(kind: type | tuple[type, ...], what: str) -> Decoder:
    def check(value: Any) -> Any:
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise WireError(f"expected {what}, got bool")
        if not isinstance(value, kind):
            raise WireError(f"expected {what}, got {type(value).__name__}")
        return value

    return check


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _enum(cls: type[enum.Enum]) -> Decoder:
    def decode(value: Any) -> Any:
        try:
            return cls(value)
        except ValueError:
            allowed = "|".join(str(m.value) for m in cls)
            raise WireError(f"{value!r} is not one of {allowed}") from None

    return decode


def _sequence(item: Decoder) -> Decoder:
    def decode(value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise WireError(f"expected a list, got {type(value).__name__}")
        return tuple(item(v) for v in value)

    return decode


def _fixed(items: tuple[Decoder, ...]) -> Decoder:
    def decode(value: Any) -> Any:
        if not isinstance(value, list | tuple) or len(value) != len(items):
            raise WireError(f"expected a list of {len(items)} items")
        return tuple(d(v) for d, v in zip(items, value, strict=True))

    return decode


def _optional(inner: Decoder) -> Decoder:
    def decode(value: Any) -> Any:
        return None if value is None else inner(value)

    return decode


def decoder_for(tp: Any) -> Decoder:
    """Build a validating decoder for a (resolved) type hint."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported union {tp}")
        return _optional(decoder_for(inner[0]))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _sequence(decoder_for(args[0]))
        return _fixed(tuple(decoder_for(a) for a in args))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum(tp)
    if dataclasses.is_dataclass(tp):
        return lambda v: decode_dataclass(tp, v)  # type: ignore[arg-type]
    simple: dict[Any, Decoder] = {
        str: _expect(str, "a string"),
        int: _expect(int, "an integer"),
        bool: _expect(bool, "a boolean"),
        bytes: _expect(bytes, "bytes"),
        float: _float,
    }
    if tp in simple:
        return simple[tp]
    raise TypeError(f"unsupported field type {tp}")


def _encoder_for(tp: Any) -> Encoder | None:
    """None when msgpack can pack the value as it is (enums are str subclasses)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        enc = _encoder_for(inner[0])
        return None if enc is None else (lambda v: None if v is None else enc(v))
    if dataclasses.is_dataclass(tp):
        return encode_dataclass
    args = typing.get_args(tp)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _encoder_for(args[0])  # e.g. a tuple of records (fencing levels)
        return None if item is None else (lambda v: [item(x) for x in v])
    return None


@dataclasses.dataclass(frozen=True)
class _Spec:
    names: tuple[str, ...]
    decoders: tuple[Decoder, ...]
    encoders: tuple[Encoder | None, ...]
    required: frozenset[str]


@cache
def spec_of(cls: type) -> _Spec:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    required = frozenset(
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    return _Spec(
        names=tuple(f.name for f in fields),
        decoders=tuple(decoder_for(hints[f.name]) for f in fields),
        encoders=tuple(_encoder_for(hints[f.name]) for f in fields),
        required=required,
    )


def encode_dataclass(obj: Any) -> list[Any]:
    """Positional list of field values (compact; used for state records)."""
    spec = spec_of(type(obj))  # type: ignore[arg-type]
    return [
        getattr(obj, n) if enc is None else enc(getattr(obj, n))
        for n, enc in zip(spec.names, spec.encoders, strict=True)
    ]


def decode_dataclass(cls: type, value: Any) -> Any:
    """Inverse of encode_dataclass; also accepts a {field: value} map."""
    spec = spec_of(cls)
    if isinstance(value, dict):
        return decode_fields(cls, value)
    if not isinstance(value, list | tuple) or len(value) != len(spec.names):
        raise WireError(f"{cls.__name__}: expected {len(spec.names)} fields")
    args = {}
    for name, dec, raw in zip(spec.names, spec.decoders, value, strict=True):
        try:
            args[name] = dec(raw)
        except WireError as exc:
            raise WireError(f"{cls.__name__}.{name}: {exc}") from None
    return cls(**args)


def encode_fields(obj: Any) -> dict[str, Any]:
    """{field: value} map (self-describing; used for commands on the wire)."""
    spec = spec_of(type(obj))  # type: ignore[arg-type]
    return {
        n: getattr(obj, n) if enc is None else enc(getattr(obj, n))
        for n, enc in zip(spec.names, spec.encoders, strict=True)
    }


def decode_fields(cls: type, value: Any) -> Any:
    spec = spec_of(cls)
    if not isinstance(value, dict):
        raise WireError(f"{cls.__name__}: expected a map of fields")
    unknown = sorted(str(k) for k in value if k not in spec.names)
    if unknown:
        raise WireError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    missing = sorted(spec.required - value.keys())
    if missing:
        raise WireError(f"{cls.__name__}: missing field(s) {', '.join(missing)}")
    args = {}
    for name, dec in zip(spec.names, spec.decoders, strict=True):
        if name in value:
            try:
                args[name] = dec(value[name])
            except WireError as exc:
                raise WireError(f"{cls.__name__}.{name}: {exc}") from None
    return cls(**args)
