"""Opening a peer's Raft storage: verify every file, cross-check them, and (only when
asked) move bad files aside and start empty to catch up from the other peers.

Valid on-disk states, and what we do with them:

* no files: a fresh peer.
* journal from index 1, no snapshot.
* snapshot at S, journal starting at S-1 with the same entries S-1 and S (normal).
* snapshot at S, journal starting before S-1 and holding S: a crash between writing the
  snapshot and compacting the journal. We compact now; pysyncobj would otherwise throw
  away the journal's entries after S, which were acknowledged.
* snapshot at S, journal ending before S (or disagreeing at S): a crash while installing
  a snapshot received from the leader; pysyncobj resets the journal to the snapshot.

Anything else (a journal starting after index 1 without a snapshot, a snapshot older than
the journal, files ending before the recorded commit index, a missing journal next to a
meta or snapshot file, a checksum failure) raises CorruptStorage naming the file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from hacluster.raft.errors import CorruptStorage
from hacluster.raft.files import (
    CATCHING_UP_NAME,
    JOURNAL_NAME,
    META_NAME,
    SNAPSHOT_NAME,
    DirLock,
    Disk,
    Meta,
    atomic_write,
    encode_meta,
    load_meta,
    quarantine,
)
from hacluster.raft.journal import DurableJournal
from hacluster.raft.snapshot import SnapshotData, read_snapshot

log = logging.getLogger(__name__)


@dataclass
class Storage:
    journal: DurableJournal
    snapshot_path: str
    lock: DirLock
    rebuilt_into: str | None = None  # quarantine directory when started by a rebuild
    catching_up: bool = False  # rebuilt and not caught up yet (this run or an earlier one)
    disk: Disk | None = None

    def caught_up(self) -> None:
        """The rebuilt peer holds everything committed when it started: it may vote."""
        path = os.path.join(os.path.dirname(self.snapshot_path), CATCHING_UP_NAME)
        try:
            os.unlink(path)
            if self.disk is not None:
                self.disk.sync_dir(os.path.dirname(path) or ".")
        except FileNotFoundError:
            pass
        except OSError as exc:  # safe: after a restart it abstains until caught up again
            log.error("cannot remove %s: %s", path, exc)
        self.catching_up = False


def open_storage(data_dir: str, disk: Disk, rebuild: bool) -> Storage:
    """Lock `data_dir` and open its Raft files; see the module docstring."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    lock = DirLock(data_dir)
    marker = os.path.join(data_dir, CATCHING_UP_NAME)
    try:
        try:
            journal, snapshot_path = _open_checked(data_dir, disk)
            return Storage(journal, snapshot_path, lock, catching_up=os.path.exists(marker),
                           disk=disk)
        except CorruptStorage as exc:
            if not rebuild:
                raise
            log.error("corrupt Raft storage (%s); rebuilding from the other peers", exc)
            atomic_write(marker, b"rebuilt: no vote until caught up\n", disk)
            journal, snapshot_path, moved_to = _rebuild(data_dir, disk)
            return Storage(journal, snapshot_path, lock, rebuilt_into=moved_to,
                           catching_up=True, disk=disk)
    except BaseException:
        lock.release()
        raise


def _paths(data_dir: str) -> tuple[str, str, str]:
    return (
        os.path.join(data_dir, JOURNAL_NAME),
        os.path.join(data_dir, META_NAME),
        os.path.join(data_dir, SNAPSHOT_NAME),
    )


def _open_checked(data_dir: str, disk: Disk) -> tuple[DurableJournal, str]:
    journal_path, meta_path, snapshot_path = _paths(data_dir)
    stored_meta = load_meta(meta_path)
    snapshot = read_snapshot(snapshot_path) if os.path.exists(snapshot_path) else None
    if not os.path.exists(journal_path) and (stored_meta is not None or snapshot is not None):
        raise CorruptStorage(journal_path, "journal is missing but meta/snapshot files exist")
    meta = stored_meta if stored_meta is not None else Meta()
    journal = DurableJournal.open(journal_path, meta_path, meta, disk)
    try:
        _cross_check(journal, meta, snapshot, journal_path, snapshot_path)
        if snapshot is not None:
            _compact_to_snapshot(journal, snapshot)
    except BaseException:
        journal.close()
        raise
    return journal, snapshot_path


def _cross_check(
    journal: DurableJournal,
    meta: Meta,
    snapshot: SnapshotData | None,
    journal_path: str,
    snapshot_path: str,
) -> None:
    first = journal.first_index if len(journal) else None
    last = journal.last_index
    if snapshot is None and first is not None and first > 1:
        raise CorruptStorage(snapshot_path, f"snapshot is missing: the journal starts at {first}")
    if snapshot is not None and first is not None and first > snapshot.prev[1]:
        raise CorruptStorage(
            snapshot_path, f"snapshot ends at {snapshot.index}, before the journal's start {first}"
        )
    covered = max(last, snapshot.index if snapshot is not None else 0)
    if meta.commit_index > max(covered, 1):
        raise CorruptStorage(
            journal_path,
            f"truncated: log ends at index {covered}, "
            f"commit index {meta.commit_index} was recorded",
        )


def _compact_to_snapshot(journal: DurableJournal, snapshot: SnapshotData) -> None:
    """Make the journal start at the snapshot's (prev, last) pair when it holds them."""
    if not len(journal):
        return
    pos = snapshot.prev[1] - journal.first_index
    if pos <= 0 or pos + 1 >= len(journal):
        return  # already aligned, or the journal does not reach the snapshot
    if journal[pos] != snapshot.prev or journal[pos + 1] != snapshot.last:
        return  # diverging uncommitted tail: pysyncobj resets to the snapshot
    log.warning("journal predates snapshot %d: compacting it now", snapshot.index)
    journal.rewrite(journal[pos:])


def _rebuild(data_dir: str, disk: Disk) -> tuple[DurableJournal, str, str]:
    """Move the log files (and the meta file if it is bad) aside and start empty.

    A readable meta file is kept: its term and vote stop this peer from voting twice in
    a term it already voted in. The commit index is reset since the log is gone.
    """
    journal_path, meta_path, snapshot_path = _paths(data_dir)
    names = [JOURNAL_NAME, SNAPSHOT_NAME]
    try:
        meta = load_meta(meta_path) or Meta()
    except CorruptStorage:
        names.append(META_NAME)
        meta = Meta()
    moved_to = quarantine(data_dir, names, disk)
    log.error(
        "moved %s into %s; this peer starts empty and will not vote before it has "
        "caught up with a leader",
        ", ".join(names),
        moved_to,
    )
    meta.commit_index = 1
    atomic_write(meta_path, encode_meta(meta), disk)
    journal = DurableJournal.open(journal_path, meta_path, meta, disk)
    return journal, snapshot_path, moved_to
