"""Journal, meta and snapshot files: checksums, torn tails, truncation, recovery."""

from __future__ import annotations

import os

import pytest

from hacluster.raft.errors import CorruptStorage
from hacluster.raft.files import (
    JOURNAL_NAME,
    META_NAME,
    SNAPSHOT_NAME,
    Disk,
    Meta,
    atomic_write,
    encode_meta,
)
from hacluster.raft.journal import HEADER_SIZE, DurableJournal
from hacluster.raft.recovery import open_storage
from hacluster.raft.snapshot import SnapshotData, encode_snapshot


def cmd(i: int) -> bytes:
    return b"\x00" + f"command-{i}".encode()


def make_journal(d: str, count: int, synced: bool = True) -> DurableJournal:
    journal = DurableJournal.open(
        os.path.join(d, JOURNAL_NAME), os.path.join(d, META_NAME), Meta(), Disk()
    )
    for i in range(1, count + 1):
        journal.add(cmd(i), i, 1)
    if synced:
        journal.sync()
    return journal


def reopen(d: str) -> DurableJournal:
    return open_storage(d, Disk(), rebuild=False).journal


def flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def test_journal_roundtrip_keeps_entries_and_durable_index(tmp_path):
    d = str(tmp_path)
    make_journal(d, 20).close()
    storage = open_storage(d, Disk(), rebuild=False)
    journal = storage.journal
    assert [e[1] for e in journal[:]] == list(range(1, 21))
    assert journal[4] == (cmd(5), 5, 1)
    assert journal.durable_index == 20
    storage.lock.release()


def test_second_process_cannot_open_the_same_directory(tmp_path):
    d = str(tmp_path)
    first = open_storage(d, Disk(), rebuild=False)
    with pytest.raises(Exception, match="in use"):
        open_storage(d, Disk(), rebuild=False)
    first.lock.release()


def test_torn_tail_after_durable_index_is_dropped_and_kept_aside(tmp_path):
    d = str(tmp_path)
    journal = make_journal(d, 10)  # durable up to 10
    journal.add(cmd(11), 11, 1)  # written, never synced: a crash may tear it
    path = os.path.join(d, JOURNAL_NAME)
    size = os.path.getsize(path)
    os.truncate(path, size - 5)
    storage = open_storage(d, Disk(), rebuild=False)
    assert storage.journal.last_index == 10
    sides = [n for n in os.listdir(d) if n.startswith(JOURNAL_NAME + ".torn-")]
    assert len(sides) == 1
    assert os.path.getsize(os.path.join(d, sides[0])) > 0
    storage.lock.release()


def test_truncation_below_durable_index_refuses_naming_the_journal(tmp_path):
    d = str(tmp_path)
    make_journal(d, 30).close()
    path = os.path.join(d, JOURNAL_NAME)
    os.truncate(path, HEADER_SIZE + (os.path.getsize(path) - HEADER_SIZE) // 2)
    with pytest.raises(CorruptStorage) as info:
        reopen(d)
    assert info.value.path == path
    assert "synced" in info.value.detail


def test_truncation_at_a_record_boundary_is_detected(tmp_path):
    d = str(tmp_path)
    journal = make_journal(d, 30)
    boundary = journal._ends[14]  # after entry 15
    journal.close()
    path = os.path.join(d, JOURNAL_NAME)
    os.truncate(path, boundary)
    with pytest.raises(CorruptStorage, match="truncated"):
        reopen(d)


def test_flipped_bit_in_synced_record_refuses(tmp_path):
    d = str(tmp_path)
    make_journal(d, 30).close()
    path = os.path.join(d, JOURNAL_NAME)
    flip_byte(path, os.path.getsize(path) // 2)
    with pytest.raises(CorruptStorage) as info:
        reopen(d)
    assert info.value.path == path


def test_corrupt_header_refuses(tmp_path):
    d = str(tmp_path)
    make_journal(d, 3).close()
    flip_byte(os.path.join(d, JOURNAL_NAME), 10)
    with pytest.raises(CorruptStorage, match="header"):
        reopen(d)


def test_corrupt_meta_refuses_naming_it(tmp_path):
    d = str(tmp_path)
    make_journal(d, 3).close()
    meta = os.path.join(d, META_NAME)
    atomic_write(meta, encode_meta(Meta(term=3, voted_for="a:1", commit_index=3)), Disk())
    flip_byte(meta, 20)
    with pytest.raises(CorruptStorage) as info:
        reopen(d)
    assert info.value.path == meta


def test_commit_index_beyond_log_is_truncation(tmp_path):
    d = str(tmp_path)
    make_journal(d, 5).close()
    atomic_write(os.path.join(d, META_NAME), encode_meta(Meta(2, None, 50)), Disk())
    with pytest.raises(CorruptStorage, match="commit index 50"):
        reopen(d)


def test_lowering_the_log_lowers_the_durable_index_first(tmp_path):
    d = str(tmp_path)
    journal = make_journal(d, 10)
    journal.deleteEntriesFrom(5)  # keep entries 1..5 (positions 0..4)
    journal.add(cmd(99), 6, 2)
    journal.close()
    reopened = reopen(d)
    assert reopened.last_index == 6 and reopened[-1] == (cmd(99), 6, 2)


def write_snapshot_file(d: str, index: int, state: bytes = b"state") -> str:
    path = os.path.join(d, SNAPSHOT_NAME)
    data = SnapshotData(
        (cmd(index), index, 1),
        (cmd(index - 1), index - 1, 1),
        ("127.0.0.1:1", "127.0.0.1:2"),
        state,
    )
    atomic_write(path, encode_snapshot(data), Disk())
    return path


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_bad_snapshot_refuses_naming_it(tmp_path, damage):
    d = str(tmp_path)
    make_journal(d, 20).close()
    path = write_snapshot_file(d, 10, state=b"x" * 1000)
    if damage == "flip":
        flip_byte(path, 500)
    else:
        os.truncate(path, 300)
    with pytest.raises(CorruptStorage) as info:
        reopen(d)
    assert info.value.path == path


def test_journal_without_its_snapshot_refuses(tmp_path):
    d = str(tmp_path)
    journal = make_journal(d, 20)
    journal.rewrite(journal[9:])  # as if compacted at index 11
    journal.close()
    with pytest.raises(CorruptStorage, match="snapshot is missing") as info:
        reopen(d)
    assert info.value.path == os.path.join(d, SNAPSHOT_NAME)


def test_crash_between_snapshot_and_compaction_keeps_the_tail(tmp_path):
    d = str(tmp_path)
    make_journal(d, 20).close()
    write_snapshot_file(d, 10)
    journal = reopen(d)
    assert journal.first_index == 9 and journal.last_index == 20


def test_rebuild_quarantines_bad_files_and_keeps_a_good_vote(tmp_path):
    d = str(tmp_path)
    make_journal(d, 30).close()
    atomic_write(os.path.join(d, META_NAME), encode_meta(Meta(7, "127.0.0.1:9", 30)), Disk())
    journal_path = os.path.join(d, JOURNAL_NAME)
    flip_byte(journal_path, os.path.getsize(journal_path) // 2)
    storage = open_storage(d, Disk(), rebuild=True)
    assert storage.rebuilt_into is not None
    assert sorted(os.listdir(storage.rebuilt_into)) == [JOURNAL_NAME]
    assert len(storage.journal) == 0
    assert storage.journal.getCurrentTerm() == 7
    assert storage.journal.getVotedForNodeId() == "127.0.0.1:9"
    assert storage.journal.getRaftCommitIndex() == 1
    storage.journal.close()
    storage.lock.release()


def test_rebuild_of_a_healthy_directory_changes_nothing(tmp_path):
    d = str(tmp_path)
    make_journal(d, 5).close()
    storage = open_storage(d, Disk(), rebuild=True)
    assert storage.rebuilt_into is None and storage.journal.last_index == 5
    storage.lock.release()
