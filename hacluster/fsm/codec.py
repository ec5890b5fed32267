"""Byte formats: log entries (commands) and snapshots (whole state).

Log entry: msgpack [2, type, version, request_id, origin, stamped_at, log_clock, {fields}]
(format 1, written before the log clock existed, has no log_clock: its stamped_at served).
Snapshot:  msgpack {"format": SNAPSHOT_FORMAT, ...} with records as positional lists,
hosts and VMs sorted by name, so equal states give equal bytes (and digests).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import OrderedDict
from typing import Any

import msgpack

from hacluster.fsm.commands import COMMANDS_BY_TYPE, Command, Envelope, Undecodable
from hacluster.fsm.model import ClusterState, FenceRecord, Host, Settings, Vm
from hacluster.fsm.wire import (
    WireError,
    decode_dataclass,
    decode_fields,
    encode_dataclass,
    encode_fields,
)

ENTRY_FORMAT = 2
ENTRY_FORMATS = (1, 2)  # formats this peer reads
SNAPSHOT_FORMAT = 1
MAX_ENTRY_BYTES = 4 * 1024 * 1024


class SnapshotError(ValueError):
    """A snapshot cannot be decoded; the message says which part is wrong."""


def encode_command(envelope: Envelope, entry_format: int = ENTRY_FORMAT) -> bytes:
    cmd = envelope.command
    head = [ENTRY_FORMAT, cmd.TYPE, cmd.VERSION, envelope.request_id, envelope.origin,
            float(envelope.stamped_at)]
    if entry_format == 1:  # for peers that read format 1 only
        head[0] = 1
        return msgpack.packb([*head, encode_fields(cmd)], use_bin_type=True)
    return msgpack.packb([*head, float(envelope.log_clock), encode_fields(cmd)],
                         use_bin_type=True)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


def decode_command(data: bytes) -> Envelope | Undecodable:
    """Never raises: anything this peer cannot understand becomes Undecodable."""
    if len(data) > MAX_ENTRY_BYTES:
        return Undecodable(f"entry of {len(data)} bytes exceeds {MAX_ENTRY_BYTES}")
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        return Undecodable(f"not msgpack: {type(exc).__name__}")
    if not isinstance(raw, list) or not raw or type(raw[0]) is not int:
        return Undecodable("not a hacluster log entry (wrong envelope)")
    if raw[0] not in ENTRY_FORMATS:
        return Undecodable(f"log entry format {raw[0]} not supported (this peer reads "
                           f"{', '.join(map(str, ENTRY_FORMATS))})")
    if len(raw) != 6 + raw[0]:
        return Undecodable("not a hacluster log entry (wrong envelope)")
    if raw[0] == 1:  # the proposer's wall clock was the log time then
        _, ctype, version, request_id, origin, stamped_at, fields = raw
        log_clock = stamped_at
    else:
        _, ctype, version, request_id, origin, stamped_at, log_clock, fields = raw
    meta_ok = (
        isinstance(request_id, str)
        and isinstance(origin, str)
        and _number(stamped_at)
        and _number(log_clock)
    )
    if not meta_ok:
        return Undecodable("malformed envelope metadata")
    cls = COMMANDS_BY_TYPE.get(ctype) if isinstance(ctype, str) else None
    if cls is None:
        return Undecodable(f"unknown command type {ctype!r}", request_id, float(stamped_at))
    if type(version) is not int or version != cls.VERSION:
        return Undecodable(
            f"{ctype} version {version!r} not supported (this peer knows {cls.VERSION})",
            request_id,
            float(stamped_at),
        )
    try:
        command = decode_fields(cls, fields)
    except WireError as exc:
        return Undecodable(f"{ctype}: {exc}", request_id, float(stamped_at))
    return Envelope(command, request_id, origin, float(stamped_at), float(log_clock))


def command_summary(command: Command) -> dict[str, Any]:
    """Fields of a command for logs/events, with sealed secrets left out at any depth."""
    return _without_secrets(command)


def _without_secrets(record: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        if "password" in f.name:
            continue
        value = getattr(record, f.name)
        out[f.name] = _without_secrets(value) if dataclasses.is_dataclass(value) else value
    return out


def encode_snapshot(state: ClusterState) -> bytes:
    doc = {
        "format": SNAPSHOT_FORMAT,
        "applied_index": state.applied_index,
        "log_time": state.log_time,
        "settings": encode_dataclass(state.settings),
        "hosts": [encode_dataclass(state.hosts[n]) for n in sorted(state.hosts)],
        "vms": [encode_dataclass(state.vms[n]) for n in sorted(state.vms)],
        "fences": [encode_dataclass(r) for r in state.fences],
        "recent": [[rid, idx] for rid, idx in state.recent_requests.items()],
    }
    return msgpack.packb(doc, use_bin_type=True)


def decode_snapshot(data: bytes) -> ClusterState:
    try:
        doc = msgpack.unpackb(data, raw=False, use_list=True)
    except Exception as exc:
        raise SnapshotError(f"snapshot is not msgpack ({type(exc).__name__})") from None
    found = doc.get("format") if isinstance(doc, dict) else None
    if found != SNAPSHOT_FORMAT:
        raise SnapshotError(
            f"unknown snapshot format {found!r} (this peer reads {SNAPSHOT_FORMAT})"
        )
    try:
        hosts = [decode_dataclass(Host, h) for h in doc["hosts"]]
        vms = [decode_dataclass(Vm, v) for v in doc["vms"]]
        state = ClusterState(
            hosts={h.name: h for h in hosts},
            vms={v.name: v for v in vms},
            fences=[decode_dataclass(FenceRecord, r) for r in doc["fences"]],
            settings=decode_dataclass(Settings, doc["settings"]),
            log_time=float(doc["log_time"]),
            applied_index=int(doc["applied_index"]),
            recent_requests=OrderedDict((str(rid), int(idx)) for rid, idx in doc["recent"]),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise SnapshotError(f"snapshot content is invalid: {exc}") from None
    return state


def state_digest(state: ClusterState) -> str:
    """Short hex digest of the replicated state (equal on every peer at equal index)."""
    return hashlib.sha256(encode_snapshot(state)).hexdigest()[:16]
