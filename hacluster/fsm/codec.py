"""Byte formats: log entries (commands) and snapshots (whole state).

Log entry: msgpack [2, type, version, request_id, origin, stamped_at, log_clock, {fields}]
(format 1, written before the log clock existed, has no log_clock: its stamped_at served).
Snapshot:  msgpack {"format": SNAPSHOT_FORMAT, ...} with records as positional lists,
hosts and VMs sorted by name, so equal states give equal bytes (and digests).
(Format 1 had no "versions" map: it loads with none, as if no host had announced.
Formats 1 and 2 had no settings.probe_after_s, formats 1 to 3 no settings.fence_fallback,
settings.watchdog_margin_s and host.watchdog, formats 1 to 4 no host.heartbeat_paths,
host.storage_check and fence.storage, formats 1 to 5 no settings.shutdown_policy,
host.shutdown_policy, host.shutdown, vm.migrate_tried and vm.tried_hosts, formats 1 to 6
no host.tags, host.fence_levels, host.failback_ready, vm.start_after, vm.colocation,
vm.required_tags, vm.preferred_hosts, vm.failback and the failback settings: they load
with their defaults.)

What this peer cannot read, it never skips: `apply` raises `UnreadableEntry`, and a
snapshot of a newer format raises `SnapshotTooNew`; both are `UnreadableLog`, on which
the peer halts (docs/safety.md, "Version skew").
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgpack

from hacluster.fsm.commands import COMMANDS_BY_TYPE, Command, Envelope, Undecodable
from hacluster.fsm.model import (
    ClusterState,
    FenceAction,
    FenceRecord,
    Host,
    HostVersions,
    Settings,
    Vm,
)
from hacluster.fsm.releases import RELEASE_0_3_0, everyone_runs
from hacluster.fsm.wire import (
    WireError,
    decode_dataclass,
    decode_fields,
    encode_dataclass,
    encode_fields,
)

ENTRY_FORMAT = 2
ENTRY_FORMATS = (1, 2)  # formats this peer reads
SNAPSHOT_FORMAT = 7
SNAPSHOT_FORMATS = (1, 2, 3, 4, 5, 6, 7)  # formats this peer loads (older ones migrated)
MAX_ENTRY_BYTES = 4 * 1024 * 1024


class SnapshotError(ValueError):
    """A snapshot cannot be decoded; the message says which part is wrong."""


class UnreadableLog(Exception):
    """This peer cannot read what the cluster wrote (a log entry, a snapshot): it must
    stop applying rather than skip it and diverge from the other peers."""


class UnreadableEntry(UnreadableLog):
    """A committed log entry this peer cannot decode (a newer peer's command, an entry
    format it does not read, or damage). Raised by `apply` before anything changed."""

    def __init__(self, index: int, entry: Undecodable) -> None:
        self.index = index
        self.entry = entry
        read = f"{entry.command_type} v{entry.version}, " if entry.command_type else ""
        read += f"entry format {entry.entry_format}" if entry.entry_format else "no envelope"
        super().__init__(f"cannot apply log index {index} ({read}): {entry.problem}; "
                         f"{understood_here()}")


class SnapshotTooNew(SnapshotError, UnreadableLog):
    """A snapshot written in a format newer than this peer loads."""


def understood_here() -> str:
    """One line: what this peer reads (for the messages of a peer that must stop)."""
    return (f"this peer reads log entry formats {_listed(ENTRY_FORMATS)}, snapshot "
            f"formats {_listed(SNAPSHOT_FORMATS)} and {len(COMMANDS_BY_TYPE)} command "
            "types (hactl --json status lists them)")


def _listed(numbers: tuple[int, ...]) -> str:
    return ", ".join(map(str, numbers))


def encode_command(envelope: Envelope, entry_format: int = ENTRY_FORMAT) -> bytes:
    cmd = envelope.command
    version = cmd.wire_version()
    head = [ENTRY_FORMAT, cmd.TYPE, version, envelope.request_id, envelope.origin,
            float(envelope.stamped_at)]
    # A version's readers refuse fields they do not know: leave out those added later
    # (wire_version() chose the oldest version that carries the command, so they hold
    # their defaults, which the reader fills in).
    missing = cmd.fields_missing_in(version)
    fields = {k: v for k, v in encode_fields(cmd).items() if k not in missing}
    if entry_format == 1:  # for peers that read format 1 only
        head[0] = 1
        return msgpack.packb([*head, fields], use_bin_type=True)
    return msgpack.packb([*head, float(envelope.log_clock), fields], use_bin_type=True)


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
                           f"{_listed(ENTRY_FORMATS)})", entry_format=raw[0])
    if len(raw) != 6 + raw[0]:
        return Undecodable("not a hacluster log entry (wrong envelope)")
    return _decode_envelope(raw)


def _decode_envelope(raw: list[Any]) -> Envelope | Undecodable:
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
        return Undecodable("malformed envelope metadata", entry_format=raw[0])
    what = (raw[0], str(ctype), version if type(version) is int else 0)
    cls = COMMANDS_BY_TYPE.get(ctype) if isinstance(ctype, str) else None
    if cls is None:
        return Undecodable(f"unknown command type {ctype!r}", request_id, float(stamped_at),
                           *what)
    if type(version) is not int or version not in cls.versions_read():
        return Undecodable(
            f"{ctype} version {version!r} not supported (this peer reads "
            f"{_listed(cls.versions_read())})", request_id, float(stamped_at), *what)
    try:
        command = decode_fields(cls, fields)
    except WireError as exc:
        return Undecodable(f"{ctype}: {exc}", request_id, float(stamped_at), *what)
    return Envelope(command, request_id, origin, float(stamped_at), float(log_clock))


def command_summary(command: Command) -> dict[str, Any]:
    """Fields of a command for logs/events, with sealed secrets left out at any depth."""
    return _without_secrets(command)


def _without_secrets(record: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        if "password" in f.name:
            continue
        out[f.name] = _secretless(getattr(record, f.name))
    return out


def _secretless(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return _without_secrets(value)
    if isinstance(value, tuple) and any(dataclasses.is_dataclass(v) for v in value):
        return tuple(_secretless(v) for v in value)  # e.g. fencing levels and devices
    return value


def encode_snapshot(state: ClusterState) -> bytes:
    """The state in the newest snapshot format every host reads (`snapshot_format`):
    during a rolling upgrade an older peer may be sent this snapshot, and one it cannot
    read would halt it. Each record is encoded once."""
    records = _records(state)
    fmt = SNAPSHOT_FORMAT
    if not everyone_runs(state, RELEASE_0_3_0):
        older = _in_format(records, OLDEST_WRITTEN_SNAPSHOT_FORMAT)
        if older is not None:
            fmt, records = OLDEST_WRITTEN_SNAPSHOT_FORMAT, older
    doc = {
        "format": fmt,
        "applied_index": state.applied_index,
        "log_time": state.log_time,
        **records,
        "recent": [[rid, idx] for rid, idx in state.recent_requests.items()],
        "versions": [encode_dataclass(state.versions[n]) for n in sorted(state.versions)],
    }
    return msgpack.packb(doc, use_bin_type=True)


OLDEST_WRITTEN_SNAPSHOT_FORMAT = 6  # what 0.2.0 writes and reads
_RECORD_TYPES = {"settings": Settings, "hosts": Host, "vms": Vm, "fences": FenceRecord}


def snapshot_format(state: ClusterState) -> int:
    """Format 7 once every host that is not removed runs 0.3.0 (fsm/releases.py), else
    format 6, which 0.2.0 reads, if the state fits in it (the fields of format 7 at their
    defaults, as the version gate and fsm/releases.py keep them while an older host is in
    the cluster); else this peer's own format."""
    if everyone_runs(state, RELEASE_0_3_0) or \
            _in_format(_records(state), OLDEST_WRITTEN_SNAPSHOT_FORMAT) is None:
        return SNAPSHOT_FORMAT
    return OLDEST_WRITTEN_SNAPSHOT_FORMAT


def _records(state: ClusterState) -> dict[str, Any]:
    """The state's records, encoded as this release writes them."""
    return {
        "settings": encode_dataclass(state.settings),
        "hosts": [encode_dataclass(state.hosts[n]) for n in sorted(state.hosts)],
        "vms": [encode_dataclass(state.vms[n]) for n in sorted(state.vms)],
        "fences": [encode_dataclass(r) for r in state.fences],
    }


def _in_format(records: dict[str, Any], fmt: int) -> dict[str, Any] | None:
    """The records as format `fmt` holds them: without the fields added since, which
    must all hold their defaults (None when one does not: the state does not fit)."""
    out: dict[str, Any] = {}
    for key, raw in records.items():
        trim = _trimmer(_RECORD_TYPES[key], fmt)
        out[key] = trim(raw) if key == "settings" else [trim(r) for r in raw]
        if out[key] is None or (key != "settings" and None in out[key]):
            return None
    return out


def _trimmer(cls: type, fmt: int) -> Callable[[list[Any]], list[Any] | None]:
    """Cuts the fields a record type gained after format `fmt` (always its last ones)."""
    names = [f.name for f in dataclasses.fields(cls)]
    added = [names.index(name) for f, records in FIELDS_ADDED.items() if f > fmt
             for name in records.get(cls, ())]
    defaults = encode_dataclass(_default_record(cls))
    keep = len(names) - len(added)

    def trim(raw: list[Any]) -> list[Any] | None:
        if any(raw[i] != defaults[i] for i in added):
            return None
        return raw[:keep]
    return trim


def decode_snapshot(data: bytes) -> ClusterState:
    try:
        doc = msgpack.unpackb(data, raw=False, use_list=True)
    except Exception as exc:
        raise SnapshotError(f"snapshot is not msgpack ({type(exc).__name__})") from None
    found = doc.get("format") if isinstance(doc, dict) else None
    if type(found) is int and found > SNAPSHOT_FORMAT:
        raise SnapshotTooNew(f"snapshot format {found} is newer than this peer reads "
                             f"(formats {_listed(SNAPSHOT_FORMATS)}): upgrade this peer")
    if found not in SNAPSHOT_FORMATS:
        raise SnapshotError(
            f"unknown snapshot format {found!r} (this peer reads {_listed(SNAPSHOT_FORMATS)})"
        )
    try:
        hosts = [decode_dataclass(Host, _padded(Host, h, found)) for h in doc["hosts"]]
        vms = [decode_dataclass(Vm, _padded(Vm, v, found)) for v in doc["vms"]]
        state = ClusterState(
            hosts={h.name: h for h in hosts},
            vms={v.name: v for v in vms},
            fences=[decode_dataclass(FenceRecord, _padded(FenceRecord, r, found))
                    for r in doc["fences"]],
            settings=_settings(doc["settings"], found),
            log_time=float(doc["log_time"]),
            applied_index=int(doc["applied_index"]),
            recent_requests=OrderedDict((str(rid), int(idx)) for rid, idx in doc["recent"]),
            versions=_versions(doc.get("versions", []) if found == 1 else doc["versions"]),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise SnapshotError(f"snapshot content is invalid: {exc}") from None
    return state


# snapshot format -> the record fields it added (always at the end of their record)
FIELDS_ADDED: dict[int, dict[type, tuple[str, ...]]] = {
    3: {Settings: ("probe_after_s",)},
    4: {Settings: ("fence_fallback", "watchdog_margin_s"), Host: ("watchdog",)},
    5: {Host: ("heartbeat_paths", "storage_check"), FenceRecord: ("storage",)},
    6: {Settings: ("shutdown_policy",), Host: ("shutdown_policy", "shutdown"),
        Vm: ("migrate_tried", "tried_hosts")},
    # 0.3.0: relations (host tags, start order, colocation), fencing levels, failback
    7: {Settings: ("failback_max_concurrent", "failback_stickiness", "failback_hold_down_s",
                   "failback_ready_after_s"),
        Host: ("tags", "fence_levels", "failback_ready"),
        Vm: ("start_after", "colocation", "required_tags", "preferred_hosts", "failback")},
}


def _padded(cls: type, raw: Any, found: int) -> Any:
    """A record of an older snapshot lacks the fields added since: they take their
    defaults (encoded, as the record's other fields are)."""
    if not isinstance(raw, list):
        return raw
    padding = _padding(cls, found)
    return [*raw, *padding] if padding else raw


@functools.cache
def _padding(cls: type, found: int) -> tuple[Any, ...]:
    """The encoded defaults of the fields `cls` gained after format `found`, in order
    (once per record type and format: a snapshot holds thousands of records)."""
    added = [name for fmt, records in sorted(FIELDS_ADDED.items()) if fmt > found
             for name in records.get(cls, ())]
    defaults = encode_dataclass(_default_record(cls))
    names = [f.name for f in dataclasses.fields(cls)]
    return tuple(defaults[names.index(name)] for name in added)


def _default_record(cls: type) -> Any:
    if cls is Host:
        return Host(name="-")
    if cls is Vm:
        return Vm(name="-")
    if cls is FenceRecord:
        return FenceRecord(token=0, host="-", incident=0, attempt=0, action=FenceAction.OFF,
                           reason="", evidence="", requested_by="", requested_at=0.0)
    return cls()


def _settings(raw: list[Any], found: int) -> Settings:
    return decode_dataclass(Settings, _padded(Settings, raw, found))


def _versions(records: list[Any]) -> dict[str, HostVersions]:
    decoded = [decode_dataclass(HostVersions, r) for r in records]
    return {v.name: v for v in decoded}


def state_digest(state: ClusterState) -> str:
    """Short hex digest of the replicated state (equal on every peer at equal index)."""
    return hashlib.sha256(encode_snapshot(state)).hexdigest()[:16]
