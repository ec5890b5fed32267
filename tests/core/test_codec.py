"""Log entry codec: exact round trips, and every malformed entry becomes
`Undecodable` (never an exception), on which apply raises `UnreadableEntry` with
the state untouched: the peer halts rather than skip it."""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacluster.fsm import commands as c
from hacluster.fsm import decode_command, encode_command
from hacluster.fsm.codec import (
    ENTRY_FORMAT,
    MAX_ENTRY_BYTES,
    UnreadableEntry,
    command_summary,
    state_digest,
)
from hacluster.fsm.model import BmcOverride, BmcSettings, FenceFallback, HostRole

from .builders import Cluster

INT64 = st.integers(-(2**63), 2**63 - 1)
FAST = settings(max_examples=40, deadline=None)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """A hypothesis strategy for a resolved type hint of a command field."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return st.none() | strategy_for(inner[0])
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
        return st.tuples(*(strategy_for(a) for a in args))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(tp)
    if dataclasses.is_dataclass(tp):
        return dataclass_strategy(tp)  # type: ignore[arg-type]
    simple: dict[Any, st.SearchStrategy[Any]] = {
        str: st.text(max_size=12),
        int: INT64,
        bool: st.booleans(),
        bytes: st.binary(max_size=12),
        float: st.floats(allow_nan=False),
    }
    return simple[tp]


def dataclass_strategy(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(cls) if f.init}
    return st.builds(cls, **fields)


ENVELOPES = st.builds(
    c.Envelope,
    command=st.one_of(*(dataclass_strategy(cls) for cls in c.ALL_COMMANDS)),
    request_id=st.text(max_size=8),
    origin=st.text(max_size=8),
    stamped_at=st.floats(allow_nan=False, allow_infinity=False),
    log_clock=st.floats(allow_nan=False, allow_infinity=False),
)


def raw_entry(
    ctype: Any = "add-host",
    version: Any = 1,
    fields: Any = None,
    meta: tuple[Any, Any, Any] = ("rid-1", "h0", 5.0),
    head: Any = ENTRY_FORMAT,
) -> bytes:
    fields = {"name": "h9"} if fields is None else fields
    log_clock = [] if head == 1 else [7.0]
    return msgpack.packb([head, ctype, version, *meta, *log_clock, fields], use_bin_type=True)


def problem_of(data: bytes) -> str:
    decoded = decode_command(data)
    assert isinstance(decoded, c.Undecodable), decoded
    return decoded.problem


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("cls", c.ALL_COMMANDS, ids=lambda cls: cls.TYPE)
@FAST
@given(data=st.data())
def test_every_command_round_trips(cls: type[c.Command], data: st.DataObject) -> None:
    command = data.draw(dataclass_strategy(cls))
    envelope = c.Envelope(command, "req-1", "h1", 12.5)
    assert decode_command(encode_command(envelope)) == envelope


@settings(max_examples=100, deadline=None)
@given(ENVELOPES)
def test_any_envelope_round_trips(envelope: c.Envelope) -> None:
    assert decode_command(encode_command(envelope)) == envelope


def test_command_types_are_unique_and_all_registered() -> None:
    assert len(c.COMMANDS_BY_TYPE) == len(c.ALL_COMMANDS)
    assert all(cls.TYPE for cls in c.ALL_COMMANDS)


def test_integer_in_float_field_decodes_as_float() -> None:
    data = raw_entry("host-load", fields={"name": "h1", "load": 3})
    decoded = decode_command(data)
    assert isinstance(decoded, c.Envelope)
    assert isinstance(decoded.command, c.ReportHostLoad)
    assert decoded.command.load == 3.0 and isinstance(decoded.command.load, float)


def test_nested_records_accept_a_field_map() -> None:
    data = raw_entry("add-host", fields={"name": "h1", "bmc": {"address": "10.0.0.1"}})
    decoded = decode_command(data)
    assert isinstance(decoded, c.Envelope)
    assert decoded.command == c.AddHost(name="h1", bmc=BmcOverride(address="10.0.0.1"))


# ---------------------------------------------------------------- malformed entries


def test_unknown_type_is_named() -> None:
    assert problem_of(raw_entry("frobnicate")) == "unknown command type 'frobnicate'"


def test_unknown_version_names_both_versions() -> None:
    problem = problem_of(raw_entry("add-host", version=7))
    assert "add-host version 7 not supported" in problem and "reads 1" in problem


def test_wrong_field_type_names_the_field() -> None:
    problem = problem_of(raw_entry("add-host", fields={"name": "h1", "memory_mib": "lots"}))
    assert problem == "add-host: AddHost.memory_mib: expected an integer, got str"


def test_bool_is_not_an_integer() -> None:
    problem = problem_of(raw_entry("add-host", fields={"name": "h1", "vcpus": True}))
    assert "AddHost.vcpus: expected an integer, got bool" in problem


def test_unknown_enum_value_lists_the_allowed_ones() -> None:
    problem = problem_of(raw_entry("add-host", fields={"name": "h1", "role": "king"}))
    assert "AddHost.role" in problem and "voter|member|witness" in problem


def test_missing_field_is_named() -> None:
    problem = problem_of(raw_entry("add-vm", fields={"name": "v1", "xml": ""}))
    assert problem == "add-vm: AddVm: missing field(s) memory_mib, vcpus"


def test_extra_field_is_named() -> None:
    problem = problem_of(raw_entry("add-host", fields={"name": "h1", "colour": "red"}))
    assert problem == "add-host: AddHost: unknown field(s) colour"


def test_nested_record_with_wrong_arity_is_undecodable() -> None:
    problem = problem_of(raw_entry("add-host", fields={"name": "h1", "bmc": ["10.0.0.1"]}))
    assert "AddHost.bmc" in problem and "fields" in problem


def test_fields_must_be_a_map() -> None:
    assert "expected a map of fields" in problem_of(raw_entry("add-host", fields=["h1"]))


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"\x93\x01", b"\xff" * 10, b"hello"],
    ids=["empty", "reserved-byte", "short-array", "ff", "text"],
)
def test_garbage_bytes_are_undecodable(data: bytes) -> None:
    assert problem_of(data)


def test_truncated_entry_is_not_msgpack() -> None:
    whole = encode_command(c.Envelope(c.AddHost(name="h1", addresses=("10.0.0.1",))))
    for cut in range(1, len(whole)):
        assert problem_of(whole[:cut]), cut


def test_trailing_bytes_are_refused() -> None:
    whole = encode_command(c.Envelope(c.Noop(term=1)))
    assert "not msgpack" in problem_of(whole + b"\x00")


def test_wrong_envelope_shapes() -> None:
    assert "wrong envelope" in problem_of(msgpack.packb({"type": "noop"}))
    assert "wrong envelope" in problem_of(msgpack.packb([1, "noop", 1]))
    assert "wrong envelope" in problem_of(msgpack.packb([2, "noop", 1, "r", "h0", 1.0, {}]))
    assert "wrong envelope" in problem_of(msgpack.packb([1, "noop", 1, "r", "h0", 1.0, 2.0, {}]))


@pytest.mark.parametrize(
    "meta", [(5, "h0", 1.0), ("r", None, 1.0), ("r", "h0", "now"), ("r", "h0", True)]
)
def test_malformed_metadata_is_undecodable(meta: tuple[Any, Any, Any]) -> None:
    assert problem_of(raw_entry("noop", fields={}, meta=meta)) == "malformed envelope metadata"


def test_oversized_entry_is_refused_before_parsing() -> None:
    data = raw_entry(
        "add-vm", fields={"name": "v1", "xml": "x" * MAX_ENTRY_BYTES, "memory_mib": 1, "vcpus": 1}
    )
    assert len(data) > MAX_ENTRY_BYTES
    assert "exceeds" in problem_of(data)


def test_unknown_type_keeps_request_id_and_stamp() -> None:
    decoded = decode_command(raw_entry("frobnicate", meta=("rid-9", "h0", 42.0)))
    assert decoded == c.Undecodable("unknown command type 'frobnicate'", "rid-9", 42.0,
                                    ENTRY_FORMAT, "frobnicate", 1)


def test_what_could_not_be_read_is_kept_apart_from_the_problem() -> None:
    newer = decode_command(raw_entry("host-load", version=2, head=1))
    assert isinstance(newer, c.Undecodable)
    assert (newer.entry_format, newer.command_type, newer.version) == (1, "host-load", 2)
    future = decode_command(raw_entry(head=3))
    assert isinstance(future, c.Undecodable)
    assert (future.entry_format, future.command_type) == (3, "")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_raise(data: bytes) -> None:
    assert isinstance(decode_command(data), c.Envelope | c.Undecodable)


@settings(max_examples=200, deadline=None)
@given(ENVELOPES, st.data())
def test_corrupted_entries_never_raise(envelope: c.Envelope, data: st.DataObject) -> None:
    raw = bytearray(encode_command(envelope))
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] = data.draw(st.integers(0, 255))
    assert isinstance(decode_command(bytes(raw)), c.Envelope | c.Undecodable)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | INT64 | st.text(max_size=5) | st.floats(),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=8,
    ),
    st.sampled_from(sorted(c.COMMANDS_BY_TYPE)),
)
def test_random_field_maps_never_raise(fields: Any, ctype: str) -> None:
    decoded = decode_command(raw_entry(ctype, fields=fields))
    assert isinstance(decoded, c.Envelope | c.Undecodable)


# ---------------------------------------------------------------- apply of bad entries


def _small_cluster() -> Cluster:
    cluster = Cluster()
    cluster.add_hosts("h1", "h2")
    cluster.add_vm("v1")
    return cluster


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",
        raw_entry("frobnicate", meta=("", "h0", 9e9)),
        raw_entry("add-host", version=3, meta=("", "h0", 9e9)),
        raw_entry("add-host", fields={"name": 5}, meta=("", "h0", 9e9)),
    ],
    ids=["garbage", "unknown-type", "unknown-version", "bad-field"],
)
def test_apply_raises_on_an_undecodable_entry_and_changes_nothing(data: bytes) -> None:
    """Never skipped: the state, its applied index and its digest stay those of the
    last applied entry, so the peer halts exactly where it stopped understanding."""
    cluster = _small_cluster()
    applied, before = cluster.state.applied_index, state_digest(cluster.state)
    requests, log_time = dict(cluster.state.recent_requests), cluster.state.log_time
    with pytest.raises(UnreadableEntry) as raised:
        cluster.apply_bytes(data)
    assert raised.value.index == applied + 1
    assert f"cannot apply log index {applied + 1}" in str(raised.value)
    assert cluster.state.applied_index == applied
    assert state_digest(cluster.state) == before
    assert dict(cluster.state.recent_requests) == requests
    assert cluster.state.log_time == log_time


def test_the_halt_names_the_command_version_and_what_this_peer_reads() -> None:
    cluster = _small_cluster()
    with pytest.raises(UnreadableEntry) as raised:
        cluster.apply_bytes(raw_entry("host-load", version=2, head=1))
    message = str(raised.value)
    assert "(host-load v2, entry format 1)" in message
    assert "this peer reads 1" in message and "log entry formats 1, 2" in message
    assert raised.value.entry.command_type == "host-load" and raised.value.entry.version == 2


def test_non_finite_stamp_halts_without_poisoning_log_time() -> None:
    """A proposer stamp of +inf must not freeze log time (and with it the fence
    cap window) forever: the entry is unreadable, and nothing of it is applied."""
    cluster = _small_cluster()
    with pytest.raises(UnreadableEntry, match="malformed envelope metadata"):
        cluster.apply_bytes(raw_entry("noop", fields={}, meta=("", "h0", math.inf)))
    assert math.isfinite(cluster.state.log_time)


# ---------------------------------------------------------------- secrets


def test_command_summary_leaves_out_nested_sealed_passwords() -> None:
    command = c.SetHostBmc(name="h1", bmc=BmcOverride(sealed_password=b"SEALED-XYZ"))
    assert "SEALED-XYZ" not in repr(command_summary(command))


def test_command_summary_keeps_other_fields() -> None:
    summary = command_summary(c.AddHost(name="h1", role=HostRole.MEMBER))
    assert summary["name"] == "h1" and summary["role"] == "member"


def test_sealed_passwords_are_not_in_reprs() -> None:
    commands: list[c.Command] = [
        c.AddHost(name="h1", bmc=BmcOverride(sealed_password=b"SEALED-XYZ")),
        c.SetHostBmc(name="h1", bmc=BmcOverride(sealed_password=b"SEALED-XYZ")),
        c.SetBmcDefaults(bmc=BmcSettings(sealed_password=b"SEALED-XYZ")),
    ]
    for command in commands:
        assert "SEALED-XYZ" not in repr(c.Envelope(command))


def test_format_1_entries_take_their_wall_stamp_as_log_clock() -> None:
    """Entries written before the log clock existed replay exactly as they applied."""
    decoded = decode_command(raw_entry(head=1))
    assert isinstance(decoded, c.Envelope)
    assert decoded.stamped_at == 5.0 and decoded.log_clock == 5.0
    again = decode_command(encode_command(decoded, entry_format=1))
    assert again == decoded


def test_format_2_entries_carry_the_log_clock_apart_from_the_wall_stamp() -> None:
    decoded = decode_command(raw_entry())
    assert isinstance(decoded, c.Envelope)
    assert (decoded.stamped_at, decoded.log_clock) == (5.0, 7.0)


def test_an_unknown_entry_format_is_named() -> None:
    assert "format 3 not supported" in problem_of(raw_entry(head=3))


def test_an_older_version_this_peer_still_reads_decodes() -> None:
    """settings v1 (before probe_after_s) still decodes: the field takes its default."""
    decoded = decode_command(raw_entry("settings", version=1, fields={"fence_cap": 2}))
    assert isinstance(decoded, c.Envelope)
    assert decoded.command == c.SetSettings(fence_cap=2)
    assert "version 5 not supported (this peer reads 1, 2, 3, 4)" in problem_of(
        raw_entry("settings", version=5, fields={"fence_cap": 2}))


def test_a_command_is_written_in_the_oldest_version_that_carries_it() -> None:
    """Peers of the previous release read a settings change that sets nothing new."""
    old = decode_command(encode_command(c.Envelope(c.SetSettings(fence_cap=2))))
    new = decode_command(encode_command(c.Envelope(c.SetSettings(probe_after_s=0.5))))
    assert isinstance(old, c.Envelope) and isinstance(new, c.Envelope)
    assert msgpack.unpackb(encode_command(old))[2] == 1
    assert msgpack.unpackb(encode_command(new))[2] == 2
    assert old.command == c.SetSettings(fence_cap=2)
    assert new.command == c.SetSettings(probe_after_s=0.5)
    newest = c.SetSettings(probe_after_s=0.5, fence_fallback=FenceFallback.OPERATOR)
    assert msgpack.unpackb(encode_command(c.Envelope(newest)))[2] == 3
    failback = c.SetSettings(fence_cap=2, failback_max_concurrent=1)
    assert msgpack.unpackb(encode_command(c.Envelope(failback)))[2] == 4
