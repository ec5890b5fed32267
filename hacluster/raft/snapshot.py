"""Our snapshot file format (no pickle): the state machine's bytes plus what pysyncobj
needs to resume the log after it (the last two applied entries and the membership).

Layout::

    magic "HASNAP01", u32 meta length, u64 state length,
    meta (JSON: last and previous entry, cluster addresses), state bytes,
    u32 crc32 of everything before it
"""

from __future__ import annotations

import base64
import json
import os
import struct
import zlib
from dataclasses import dataclass

from hacluster.raft.errors import CorruptStorage, StorageError
from hacluster.raft.files import Disk
from hacluster.raft.journal import Entry

_MAGIC = b"HASNAP01"
_HEAD = struct.Struct("<8sIQ")
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class SnapshotData:
    last: Entry  # the last applied entry the state includes
    prev: Entry  # the entry before it (pysyncobj keeps both in the log)
    cluster: tuple[str | None, ...]  # member addresses; None stands for a read-only self
    state: bytes

    @property
    def index(self) -> int:
        return self.last[1]


def _entry_to_json(entry: Entry) -> list[object]:
    command, index, term = entry
    return [index, term, base64.b64encode(command).decode()]


def _entry_from_json(doc: list[object]) -> Entry:
    index, term, command = doc
    if not isinstance(index, int) or not isinstance(term, int) or not isinstance(command, str):
        raise ValueError(f"bad entry {doc!r}")
    return (base64.b64decode(command, validate=True), index, term)


def encode_snapshot(data: SnapshotData) -> bytes:
    meta = json.dumps(
        {
            "last": _entry_to_json(data.last),
            "prev": _entry_to_json(data.prev),
            "cluster": list(data.cluster),
        },
        sort_keys=True,
    ).encode()
    body = b"".join((_HEAD.pack(_MAGIC, len(meta), len(data.state)), meta, data.state))
    return body + _CRC.pack(zlib.crc32(body))


def decode_snapshot(path: str, raw: bytes) -> SnapshotData:
    """Parse and verify a snapshot; CorruptStorage names `path` on any defect."""
    if len(raw) < _HEAD.size + _CRC.size:
        raise CorruptStorage(path, f"snapshot truncated ({len(raw)} bytes)")
    magic, meta_len, state_len = _HEAD.unpack_from(raw)
    if magic != _MAGIC:
        raise CorruptStorage(path, f"not a hacluster snapshot (magic {magic!r})")
    expected = _HEAD.size + meta_len + state_len + _CRC.size
    if len(raw) != expected:
        raise CorruptStorage(path, f"snapshot is {len(raw)} bytes, header says {expected}")
    body = raw[: -_CRC.size]
    if zlib.crc32(body) != _CRC.unpack_from(raw, len(body))[0]:
        raise CorruptStorage(path, "snapshot checksum mismatch")
    try:
        meta = json.loads(body[_HEAD.size : _HEAD.size + meta_len])
        cluster = tuple(meta["cluster"])
        if not all(a is None or isinstance(a, str) for a in cluster):
            raise ValueError(f"bad cluster {cluster!r}")
        return SnapshotData(
            last=_entry_from_json(meta["last"]),
            prev=_entry_from_json(meta["prev"]),
            cluster=cluster,
            state=body[_HEAD.size + meta_len :],
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptStorage(path, f"snapshot metadata is invalid: {exc}") from exc


def write_snapshot(path: str, data: SnapshotData, disk: Disk) -> None:
    """Write and fsync `path` (pysyncobj renames it into place afterwards)."""
    raw = encode_snapshot(data)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view) :]
            disk.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(f"cannot write snapshot {path}: {exc}") from exc


def read_snapshot(path: str, disk: Disk | None = None) -> SnapshotData:
    """Read and verify a snapshot; with `disk`, also make the file durable first (a
    snapshot received from the leader was renamed into place without any fsync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise CorruptStorage(path, "snapshot file is missing") from None
    try:
        if disk is not None:
            disk.fsync(fd)
            disk.sync_dir(os.path.dirname(path) or ".")
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read()
    finally:
        os.close(fd)
    return decode_snapshot(path, raw)
