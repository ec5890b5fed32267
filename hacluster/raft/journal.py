"""A checksummed, fsync'ed replacement for pysyncobj's mmap FileJournal.

File layout::

    header  : magic "HAJRNL01", u32 version, u64 durable_index, u32 crc32(header)
    records : u32 length, u32 crc32, u64 index, u64 term, <length> bytes of command

`durable_index` is written right *after* an fdatasync covered every record up to it, so
on open every entry up to it must be present and intact: a missing or damaged entry at
or below it is corruption or truncation (CorruptStorage). Damage after it can only be a
write that was torn by a crash before it was ever fsync'ed, hence never acknowledged to
anyone: that tail is saved to a side file and dropped.

Writes go to the kernel at once (they survive SIGKILL); `sync()` is the durability
barrier (fdatasync + meta), called before any message leaves the node.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn, overload

from pysyncobj.journal import Journal

from hacluster.raft.errors import CorruptStorage, StorageError
from hacluster.raft.files import Disk, Meta, atomic_write, encode_meta, save_aside

log = logging.getLogger(__name__)

Entry = tuple[bytes, int, int]  # (command, index, term), as pysyncobj stores them

_MAGIC = b"HAJRNL01"
_VERSION = 1
_HEADER = struct.Struct("<8sIQ")
_HEADER_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size + _HEADER_CRC.size
_RECORD = struct.Struct("<IIQQ")  # length, crc, index, term
_CRC_COVER = struct.Struct("<IQQ")  # what the crc covers besides the command


def encode_header(durable_index: int) -> bytes:
    head = _HEADER.pack(_MAGIC, _VERSION, durable_index)
    return head + _HEADER_CRC.pack(zlib.crc32(head))


def encode_record(command: bytes, index: int, term: int) -> bytes:
    crc = zlib.crc32(command, zlib.crc32(_CRC_COVER.pack(len(command), index, term)))
    return _RECORD.pack(len(command), crc, index, term) + command


@dataclass
class JournalScan:
    """What a journal file holds, after checking every record."""

    entries: list[Entry] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # file offset after each record
    durable_index: int = 0
    good_size: int = HEADER_SIZE  # bytes of header + intact records
    tail_problem: str | None = None  # why bytes after good_size are unusable

    @property
    def last_index(self) -> int:
        return self.entries[-1][1] if self.entries else 0


def scan_journal(path: str, raw: bytes) -> JournalScan:
    """Parse and verify a journal's bytes; raise CorruptStorage for promised data."""
    if len(raw) < HEADER_SIZE:
        raise CorruptStorage(path, f"journal header truncated ({len(raw)} bytes)")
    head = raw[: _HEADER.size]
    if zlib.crc32(head) != _HEADER_CRC.unpack_from(raw, _HEADER.size)[0]:
        raise CorruptStorage(path, "journal header checksum mismatch")
    magic, version, durable = _HEADER.unpack(head)
    if magic != _MAGIC or version != _VERSION:
        raise CorruptStorage(path, f"not a hacluster journal (magic {magic!r} v{version})")
    scan = JournalScan(durable_index=durable)
    _scan_records(raw, scan)
    if scan.tail_problem is not None and scan.last_index < durable:
        raise CorruptStorage(
            path,
            f"{scan.tail_problem} at offset {scan.good_size} after index {scan.last_index}, "
            f"but entries up to index {durable} were synced",
        )
    if scan.last_index < durable:
        raise CorruptStorage(
            path, f"truncated: last entry is {scan.last_index}, entries up to {durable} were synced"
        )
    return scan


def _scan_records(raw: bytes, scan: JournalScan) -> None:
    offset, size = HEADER_SIZE, len(raw)
    while offset < size:
        if size - offset < _RECORD.size:
            scan.tail_problem = "incomplete record header"
            return
        length, crc, index, term = _RECORD.unpack_from(raw, offset)
        start = offset + _RECORD.size
        if start + length > size:
            scan.tail_problem = "record runs past the end of the file"
            return
        command = raw[start : start + length]
        if zlib.crc32(command, zlib.crc32(_CRC_COVER.pack(length, index, term))) != crc:
            scan.tail_problem = "record checksum mismatch"
            return
        if scan.entries:
            _, prev_index, prev_term = scan.entries[-1]
            if index != prev_index + 1 or term < prev_term:
                scan.tail_problem = f"record index {index} term {term} does not follow"
                return
        scan.entries.append((command, index, term))
        offset = start + length
        scan.ends.append(offset)
        scan.good_size = offset


class DurableJournal(Journal):
    """pysyncobj Journal over our record file plus a meta file (term, vote, commit)."""

    def __init__(self, path: str, meta_path: str, meta: Meta, disk: Disk) -> None:
        self._path = path
        self._dir = os.path.dirname(path) or "."
        self._meta_path = meta_path
        self._meta = meta
        self._disk = disk
        self._entries: list[Entry] = []
        self._ends: list[int] = []
        self._durable = 0  # value of the header's durable_index on disk (maybe unsynced)
        self._size = HEADER_SIZE
        self._data_dirty = False  # records written but not fdatasync'ed
        self._header_dirty = False  # header rewritten but not fdatasync'ed
        self._vote_dirty = False  # term/vote changed but not stored
        self._commit_dirty = False
        self._persisted_commit = meta.commit_index  # commit index in the meta file
        self._fd = -1
        # Called with each new commit index (commit-term bookkeeping of the node).
        self.on_commit_index: Callable[[int], None] | None = None
        # Called with every storage failure before it is raised: pysyncobj swallows
        # exceptions in places (snapshot install), the node must still halt.
        self.on_failure: Callable[[BaseException], object] | None = None

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str, meta_path: str, meta: Meta, disk: Disk) -> DurableJournal:
        """Open (verifying every record) or create the journal at `path`."""
        journal = cls(path, meta_path, meta, disk)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            atomic_write(path, encode_header(0), disk)
            raw = encode_header(0)
        scan = scan_journal(path, raw)
        if scan.tail_problem is not None:
            side = save_aside(path, raw[scan.good_size :], disk)
            log.warning(
                "%s: %s at offset %d (never synced): dropped, bytes kept in %s",
                path,
                scan.tail_problem,
                scan.good_size,
                side,
            )
        journal._adopt(scan)
        return journal

    def _adopt(self, scan: JournalScan) -> None:
        self._entries, self._ends = scan.entries, scan.ends
        self._durable, self._size = scan.durable_index, scan.good_size
        try:
            self._fd = os.open(self._path, os.O_RDWR)
            if os.fstat(self._fd).st_size != self._size:
                os.ftruncate(self._fd, self._size)
                self._disk.datasync(self._fd)
        except OSError as exc:
            raise StorageError(f"cannot open {self._path}: {exc}") from exc

    # ------------------------------------------------------------ pysyncobj Journal API

    def add(self, command: bytes, idx: int, term: int) -> None:
        if self._entries and idx != self._entries[-1][1] + 1:
            self._fail(f"{self._path}: append of index {idx} after {self._entries[-1][1]}")
        command = bytes(command)
        record = encode_record(command, idx, term)
        self._pwrite(record, self._size)
        self._size += len(record)
        self._entries.append((command, idx, term))
        self._ends.append(self._size)
        self._data_dirty = True

    def clear(self) -> None:
        self._truncate_to(0)

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        self._truncate_to(max(entryFrom, 0))

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Drop entries before position `entryTo` (log compaction after a snapshot)."""
        # The snapshot that replaces these entries was just renamed into place: make the
        # rename durable before the entries it covers disappear.
        try:
            self._disk.sync_dir(self._dir)
        except OSError as exc:
            self._fail(f"cannot fsync {self._dir}: {exc}")
        self.rewrite(self._entries[entryTo:])

    @overload
    def __getitem__(self, item: int) -> Entry: ...

    @overload
    def __getitem__(self, item: slice) -> list[Entry]: ...

    def __getitem__(self, item: int | slice) -> Entry | list[Entry]:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        self.close()

    def flush(self) -> None:
        self.sync()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        if raftCommitIndex != self._meta.commit_index:
            self._meta.commit_index = raftCommitIndex
            self._commit_dirty = True
        if self.on_commit_index is not None:
            self.on_commit_index(raftCommitIndex)

    def getRaftCommitIndex(self) -> int:
        return self._meta.commit_index

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        self._meta.term = term
        self._meta.voted_for = votedForNodeId
        # Stored at the next barrier: before any message reflecting it is sent.
        self._vote_dirty = True

    def getCurrentTerm(self) -> int:
        return self._meta.term

    def getVotedForNodeId(self) -> str | None:
        return self._meta.voted_for

    def onOneSecondTimer(self) -> None:
        self.sync()
        if self._header_dirty:
            self._datasync()
            self._header_dirty = False
        if self._commit_dirty:
            self._store_meta()

    # ------------------------------------------------------------ durability

    def sync(self) -> None:
        """The barrier: every record written and the term/vote become durable."""
        self._sync_data()
        if self._vote_dirty:
            self._store_meta()

    def sync_term(self) -> None:
        """Make a changed term/vote durable (no-op when unchanged)."""
        if self._vote_dirty:
            self._store_meta()

    def sync_through(self, index: int) -> None:
        """Barrier for a leader about to apply up to `index`: it counts itself in the
        majority, so its own copy must be durable (matters when no message was sent,
        e.g. a single-node cluster)."""
        if index > self._durable:
            self._sync_data()

    def _sync_data(self) -> None:
        if not self._data_dirty:
            return
        self._datasync()
        self._data_dirty = False
        last = self._entries[-1][1] if self._entries else 0
        if last != self._durable:
            # Promise only what the fdatasync above covered; the header itself reaches
            # the disk with the next fdatasync (or the one-second timer).
            self._write_header(last)

    def rewrite(self, entries: list[Entry]) -> None:
        """Atomically replace the file with exactly `entries` (all durable)."""
        last = entries[-1][1] if entries else 0
        body = bytearray(encode_header(last))
        ends = []
        for command, index, term in entries:
            body += encode_record(command, index, term)
            ends.append(len(body))
        old_fd = self._fd
        try:
            atomic_write(self._path, bytes(body), self._disk)
        except StorageError as exc:
            self._fail(str(exc))
        try:
            self._fd = os.open(self._path, os.O_RDWR)
        except OSError as exc:
            self._fail(f"cannot reopen {self._path}: {exc}")
        if old_fd >= 0:
            os.close(old_fd)
        self._entries, self._ends = list(entries), ends
        self._size, self._durable = len(body), last
        self._data_dirty = self._header_dirty = False

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self.sync()
            if self._header_dirty:
                self._datasync()
                self._header_dirty = False
            if self._commit_dirty:
                self._store_meta()
        finally:
            os.close(self._fd)
            self._fd = -1

    @property
    def durable_index(self) -> int:
        return self._durable

    @property
    def persisted_commit_index(self) -> int:
        """Commit index stored in the meta file (replayed without peers at restart)."""
        return self._persisted_commit

    @property
    def first_index(self) -> int:
        return self._entries[0][1] if self._entries else 0

    @property
    def last_index(self) -> int:
        return self._entries[-1][1] if self._entries else 0

    def term_at(self, index: int) -> int:
        """Term of the entry at log index `index` (0 if not in the journal)."""
        if not self._entries:
            return 0
        pos = index - self._entries[0][1]
        if 0 <= pos < len(self._entries):
            return self._entries[pos][2]
        return 0

    # ------------------------------------------------------------ internals

    def _truncate_to(self, position: int) -> None:
        if position >= len(self._entries):
            return
        new_last = self._entries[position - 1][1] if position > 0 else 0
        new_size = self._ends[position - 1] if position > 0 else HEADER_SIZE
        if self._durable > new_last:
            # Lower the promise durably *before* cutting, or a crash in between would
            # look like a truncated journal on the next start.
            self._write_header(new_last)
            self._datasync()
            self._header_dirty = False
        try:
            os.ftruncate(self._fd, new_size)
        except OSError as exc:
            self._fail(f"cannot truncate {self._path}: {exc}")
        del self._entries[position:]
        del self._ends[position:]
        self._size = new_size
        self._data_dirty = True

    def _write_header(self, durable_index: int) -> None:
        self._pwrite(encode_header(durable_index), 0)
        self._durable = durable_index
        self._header_dirty = True

    def _pwrite(self, data: bytes, offset: int) -> None:
        try:
            view = memoryview(data)
            while view:
                written = os.pwrite(self._fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as exc:
            self._fail(f"cannot write {self._path}: {exc}")

    def _datasync(self) -> None:
        try:
            self._disk.datasync(self._fd)
        except OSError as exc:
            self._fail(f"cannot fdatasync {self._path}: {exc}")

    def _store_meta(self) -> None:
        self._sync_data()  # the commit index must not run ahead of durable entries
        try:
            atomic_write(self._meta_path, encode_meta(self._meta), self._disk)
        except StorageError as exc:
            self._fail(str(exc))
        self._persisted_commit = self._meta.commit_index
        self._vote_dirty = self._commit_dirty = False

    def _fail(self, message: str) -> NoReturn:
        exc = StorageError(message)
        if self.on_failure is not None:
            self.on_failure(exc)
        raise exc
