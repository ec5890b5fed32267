"""Low-level durable file helpers: counted fsync, atomic replace, the meta file, the
data-directory lock and the quarantine of bad files.

Every fsync of the Raft adapter goes through one `Disk`, so tests and benchmarks can
count them and measure their cost.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass

from hacluster.raft.errors import CorruptStorage, RaftError, StorageError

JOURNAL_NAME = "raft.journal"
META_NAME = "raft.meta"
SNAPSHOT_NAME = "raft.snapshot"
LOCK_NAME = "raft.lock"
# present from a rebuild until the peer caught up: it votes and stands for nothing meanwhile,
# also after a restart (its journal holds only part of what it once acknowledged)
CATCHING_UP_NAME = "raft.catching-up"


class Disk:
    """fsync front-end: counts calls and time; `enabled=False` skips them (benchmarks)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self.count = 0
        self.seconds = 0.0

    def datasync(self, fd: int) -> None:
        """Make a file's data (and its size) durable."""
        self._timed(os.fdatasync, fd)

    def fsync(self, fd: int) -> None:
        self._timed(os.fsync, fd)

    def sync_dir(self, directory: str) -> None:
        """Make renames and creations inside `directory` durable."""
        if not self.enabled:
            return
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._timed(os.fsync, fd)
        finally:
            os.close(fd)

    def _timed(self, call: object, fd: int) -> None:
        if not self.enabled:
            return
        start = time.perf_counter()
        call(fd)  # type: ignore[operator]
        elapsed = time.perf_counter() - start
        with self._lock:
            self.count += 1
            self.seconds += elapsed


def atomic_write(path: str, data: bytes, disk: Disk) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new file whole."""
    tmp = path + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, data)
            disk.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        disk.sync_dir(os.path.dirname(path) or ".")
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc}") from exc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# ---------------------------------------------------------------- meta file

_META_MAGIC = b"HAMETA01"
_META_HEAD = struct.Struct("<8sI")  # magic, payload length
_CRC = struct.Struct("<I")


@dataclass
class Meta:
    """Raft's persistent scalars: current term, vote in that term, known commit index."""

    term: int = 0
    voted_for: str | None = None
    commit_index: int = 1


def encode_meta(meta: Meta) -> bytes:
    payload = json.dumps(
        {"term": meta.term, "voted_for": meta.voted_for, "commit_index": meta.commit_index},
        sort_keys=True,
    ).encode()
    body = _META_HEAD.pack(_META_MAGIC, len(payload)) + payload
    return body + _CRC.pack(zlib.crc32(body))


def load_meta(path: str) -> Meta | None:
    """The stored meta, None if the file does not exist; CorruptStorage if it is bad."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    if len(raw) < _META_HEAD.size + _CRC.size:
        raise CorruptStorage(path, f"truncated meta file ({len(raw)} bytes)")
    magic, length = _META_HEAD.unpack_from(raw)
    if magic != _META_MAGIC:
        raise CorruptStorage(path, "not a hacluster meta file (bad magic)")
    if len(raw) != _META_HEAD.size + length + _CRC.size:
        raise CorruptStorage(path, "meta file length does not match its header (truncated?)")
    body = raw[: -_CRC.size]
    if zlib.crc32(body) != _CRC.unpack_from(raw, len(body))[0]:
        raise CorruptStorage(path, "meta file checksum mismatch")
    try:
        doc = json.loads(body[_META_HEAD.size :])
        return Meta(int(doc["term"]), doc["voted_for"], int(doc["commit_index"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptStorage(path, f"meta file content is invalid: {exc}") from exc


# ---------------------------------------------------------------- lock and quarantine


class DirLock:
    """An exclusive flock on the data directory: two peers must never share one."""

    def __init__(self, directory: str) -> None:
        self._path = os.path.join(directory, LOCK_NAME)
        self._fd: int | None = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            self._fd = None
            raise RaftError(f"{directory} is in use by another process ({exc})") from exc

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def quarantine(directory: str, names: list[str], disk: Disk) -> str:
    """Move the named files of `directory` into a fresh quarantine-* subdirectory.

    Nothing is deleted: an operator can inspect or restore the files.
    """
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for attempt in range(1000):
        target = os.path.join(directory, f"quarantine-{stamp}-{attempt}")
        try:
            os.mkdir(target, 0o700)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - a thousand quarantines in one second
        raise StorageError(f"cannot create a quarantine directory in {directory}")
    for name in names:
        source = os.path.join(directory, name)
        if os.path.exists(source):
            os.rename(source, os.path.join(target, name))
    disk.sync_dir(target)
    disk.sync_dir(directory)
    return target


def save_aside(path: str, data: bytes, disk: Disk) -> str:
    """Keep bytes we are about to drop (a torn journal tail) in a side file."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    side = f"{path}.torn-{stamp}-{os.getpid()}"
    atomic_write(side, data, disk)
    return side
