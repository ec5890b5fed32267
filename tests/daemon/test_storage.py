"""daemon/storage.py on real files: the heartbeat writer (atomic, never waits for a hung
storage) and the leader's reader (a deadline on every check), judged by core/storage.py."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import pytest

from hacluster.core.storage import (
    DISK,
    ERROR,
    HEARTBEAT,
    MISSING,
    OK,
    CheckStorage,
    StorageWatch,
    heartbeat_file,
)
from hacluster.daemon import storage as adapter
from hacluster.daemon import views
from hacluster.daemon.notify import notification
from hacluster.daemon.storage import HeartbeatWriter, StorageReader
from hacluster.fsm import commands as c
from hacluster.fsm.model import ClusterState, Host, StorageCheck, StorageVerdict
from tests.core.builders import Cluster


def wait_for(condition: object, timeout_s: float = 5.0) -> None:
    give_up = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < give_up, "timed out"
        time.sleep(0.01)


def written(writer: HeartbeatWriter, path: Path) -> dict[str, object]:
    target = Path(heartbeat_file(str(path), writer.me))
    wait_for(lambda: target.exists() and json.loads(target.read_text())["counter"]
             == writer.counter)
    return json.loads(target.read_text())  # type: ignore[no-any-return]


def read(check: CheckStorage, timeout_s: float = 2.0) -> adapter.StorageRead:
    reader = StorageReader()
    try:
        return asyncio.run(reader.read(check, timeout_s))
    finally:
        reader.close()


def test_every_beat_replaces_the_record_in_every_directory(tmp_path: Path) -> None:
    pools = [tmp_path / "a", tmp_path / "b"]
    for pool in pools:
        pool.mkdir()
    writer = HeartbeatWriter("h1", tuple(map(str, pools)), 2.0, boot="boot-1")
    try:
        for _ in range(2):
            writer.beat()
            for pool in pools:
                written(writer, pool)
        for pool in pools:
            record = written(writer, pool)
            assert (record["host"], record["boot"], record["counter"]) == ("h1", "boot-1", 2)
            assert abs(float(record["wall"]) - time.time()) < 5  # type: ignore[arg-type]
            assert sorted(os.listdir(pool / ".hacluster")) == ["h1.heartbeat"]  # no .tmp
        assert all(s["problem"] == "" for s in writer.status().values())
    finally:
        writer.close()


def test_a_missing_directory_is_reported_never_created(tmp_path: Path) -> None:
    absent = tmp_path / "not-mounted"
    writer = HeartbeatWriter("h1", (str(absent),), 2.0)
    try:
        writer.beat()
        wait_for(lambda: writer.status()[str(absent)]["problem"])
        assert "not a directory" in writer.status()[str(absent)]["problem"]
        assert not absent.exists()
    finally:
        writer.close()


def test_a_hung_storage_never_holds_the_beat_and_is_said(tmp_path: Path) -> None:
    """A FIFO where the temporary file goes: opening it for writing blocks, as a write
    to a hung NFS server does. beat() returns at once all the same, skips that directory
    while the write hangs and keeps writing the other one."""
    hung, fine = tmp_path / "hung", tmp_path / "fine"
    for pool in (hung, fine):
        (pool / ".hacluster").mkdir(parents=True)
    fifo = Path(heartbeat_file(str(hung), "h1") + ".tmp")
    os.mkfifo(fifo)
    writer = HeartbeatWriter("h1", (str(hung), str(fine)), 0.2)
    try:
        took = []
        for _ in range(3):
            started = time.monotonic()
            writer.beat()
            took.append(time.monotonic() - started)
            assert written(writer, fine)["counter"] == writer.counter
            time.sleep(0.15)
        assert max(took) < 0.05
        assert "a write has not returned" in writer.status()[str(hung)]["problem"]
        assert not Path(heartbeat_file(str(hung), "h1")).exists()
    finally:
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the hung write finish
        time.sleep(0.2)
        os.close(fd)
        writer.close()


def test_the_reader_reads_heartbeats_and_disks(tmp_path: Path) -> None:
    pool, empty = tmp_path / "pool", tmp_path / "empty"
    pool.mkdir()
    empty.mkdir()
    image = pool / "vm1.qcow2"
    image.write_bytes(b"\0" * 1024)
    writer = HeartbeatWriter("h2", (str(pool),), 2.0, boot="bootbootboot")
    try:
        writer.beat()
        written(writer, pool)
    finally:
        writer.close()
    check = CheckStorage("h2", (str(pool), str(empty), str(tmp_path / "absent")),
                         (str(image), str(pool / "gone.qcow2")), "test")
    files = read(check).files
    assert [(f.kind, f.state) for f in files] == [
        (HEARTBEAT, OK), (HEARTBEAT, MISSING), (HEARTBEAT, ERROR), (DISK, OK), (DISK, MISSING)]
    assert files[0].mark[:2] == (1, "bootbootboot")
    assert files[0].shown.startswith("#1 boot bootboot written ")
    assert "no such directory" in files[2].shown
    assert files[3].mark == (1024, image.stat().st_mtime_ns)


def test_a_read_past_its_deadline_counts_as_not_readable(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    release = threading.Event()
    real = adapter._read_file

    def hangs(kind: str, root: str, file: str) -> adapter.FileRead:
        if "hung" in root:
            release.wait(10)
        return real(kind, root, file)

    monkeypatch.setattr(adapter, "_read_file", hangs)
    (tmp_path / "ok").mkdir()
    check = CheckStorage("h2", (str(tmp_path / "hung"), str(tmp_path / "ok")), (), "test")
    started = time.monotonic()
    try:
        files = read(check, timeout_s=0.3).files
    finally:
        release.set()
    assert time.monotonic() - started < 2.0
    assert (files[0].state, files[1].state) == (ERROR, MISSING)
    assert "not read within 0.3 s" in files[0].shown


def test_writer_reader_and_verdict_together(tmp_path: Path) -> None:
    """Beats between two reads are activity; without beats, quiet after the checks."""
    pool = tmp_path / "pool"
    pool.mkdir()
    writer = HeartbeatWriter("h2", (str(pool),), 2.0)
    host = Host(name="h2", heartbeat_paths=(str(pool),))
    watch = StorageWatch()
    watch.configure(2, 0.01, configured=True)

    def check_once(now: float) -> None:
        order = watch.due(ClusterState(), host, now, "test")
        assert order is not None
        watch.result(read(order), now)

    try:
        writer.beat()
        written(writer, pool)
        check_once(1.0)
        writer.beat()
        written(writer, pool)
        check_once(2.0)
        assert watch.verdict("h2") is StorageVerdict.ACTIVE
        check_once(3.0)
        assert watch.verdict("h2") is None
        check_once(4.0)
        assert watch.verdict("h2") is StorageVerdict.QUIET
    finally:
        writer.close()


def test_status_says_what_the_check_holds_and_what_it_cannot_do() -> None:
    cluster = Cluster()
    cluster.add_hosts("h1", "h2", "h3")
    cluster.ok(c.ReportStorage(name="h2", heartbeat_paths=("/mnt/pool",)))
    cluster.ok(c.ReportStorage(name="h1", heartbeat_paths=("/mnt/pool",)))
    cluster.suspect("h2")
    cluster.ok(c.StorageChecked(host="h2", check=StorageCheck(StorageVerdict.ACTIVE, 1, (
        "12:00:01.000Z (+1.0 s, 0.01 s) h2: /mnt/pool: #7 -> WRITTEN",))))
    waiting = views.waiting_for_operator(cluster.state)
    assert any(line.startswith("host h2 is storage-active: its lease expired but it still "
                               "writes shared storage") for line in waiting)
    assert any(line.startswith("host h3 writes no storage heartbeats") for line in waiting)
    view = views.host_view(cluster.state, cluster.host("h2"))
    assert view["state"] == "storage-active"
    assert view["storage"]["check"]["verdict"] == "active"
    cluster.suspect("h1")
    cluster.ok(c.StorageChecked(host="h1", check=StorageCheck(StorageVerdict.UNREADABLE, 3)))
    assert any(line.startswith("host h1: the leader cannot read its storage")
               for line in views.waiting_for_operator(cluster.state))


def test_an_operator_is_notified_of_a_storage_active_host() -> None:
    cluster = Cluster()
    cluster.add_hosts("h2")
    cluster.suspect("h2")
    events = cluster.ok(c.StorageChecked(host="h2", check=StorageCheck(
        StorageVerdict.ACTIVE, 1, ("t=1 h2: /mnt/pool: #7 -> WRITTEN",))))
    docs = [d for d in (notification(e, "h1") for e in events) if d is not None]
    assert [(d["event"], d["host"]) for d in docs] == [("storage-active", "h2")]
    assert "WRITTEN" in str(docs[0]["message"])
