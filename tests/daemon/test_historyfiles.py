"""The event history's files (daemon/historyfiles.py) on a real directory: bounded by
size and age, a record cut off by a crash is cut away, damaged lines are skipped, and
the history (daemon/history.py) answers queries by host, VM and time."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hacluster.daemon.history import History, items_of
from hacluster.daemon.historyfiles import SegmentStore, parse_record
from hacluster.fsm import commands as c
from hacluster.fsm.events import Event
from hacluster.fsm.model import Desired


def record(index: int, at: float, padding: int = 0) -> dict[str, object]:
    return {"index": index, "time": at, "origin": "h1", "command": "vm-report",
            "events": [{"kind": "vm-state", "subject": "vm1", "message": "x" * padding,
                        "data": {}, "host": "h1", "vm": "vm1"}]}


def all_records(store: SegmentStore) -> list[dict[str, object]]:
    return [r for chunk in store.read(float("-inf"), float("inf")) for r in chunk]


def test_the_oldest_segments_go_beyond_the_size_cap(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, max_bytes=16_384, max_age_s=1e9)
    store.open()
    for i in range(1, 401):
        store.append([record(i, 1000.0 + i, padding=100)])
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert on_disk <= 16_384 + store.segment_bytes
    kept = all_records(store)
    assert kept[-1]["index"] == 400 and kept[0]["index"] > 1
    assert [r["index"] for r in kept] == list(range(int(kept[0]["index"]), 401))  # type: ignore[call-overload]
    store.close()


def test_segments_older_than_the_age_cap_go(tmp_path: Path) -> None:
    now = [1000.0]
    store = SegmentStore(tmp_path, max_bytes=8192, max_age_s=100.0, wall=lambda: now[0])
    store.open()
    for i in range(1, 40):  # about 6 segments, all written at time 1000
        store.append([record(i, 1000.0, padding=100)])
    now[0] = 2000.0
    store.append([record(40, 2000.0, padding=900)])  # a new segment: the old ones go
    assert [r["index"] for r in all_records(store)] == [40]
    store.close()


def test_a_record_cut_off_by_a_crash_is_cut_away(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, max_bytes=1 << 20, max_age_s=1e9)
    store.open()
    store.append([record(1, 10.0), record(2, 11.0)])
    store.close()
    segment = next(tmp_path.iterdir())
    with open(segment, "ab") as f:
        f.write(b'{"index": 3, "time": 12.0, "ev')  # no newline: the write was cut off
    again = SegmentStore(tmp_path, max_bytes=1 << 20, max_age_s=1e9)
    again.open()
    assert any("cut off" in p for p in again.problems)
    assert again.last_index == 2
    again.append([record(3, 12.0)])
    assert [r["index"] for r in all_records(again)] == [1, 2, 3]
    assert all(parse_record(line) for line in segment.read_bytes().splitlines())
    again.close()


def test_damaged_lines_are_skipped_and_named(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, max_bytes=1 << 20, max_age_s=1e9)
    store.open()
    store.append([record(1, 10.0)])
    store.close()
    segment = next(tmp_path.iterdir())
    segment.write_bytes(segment.read_bytes() + b"\x00\xff garbage\n[1, 2]\n"
                        + b'{"index": 7, "time": 1.0, "events": []}\n'  # no origin
                        + b'{"index": 7, "time": 1.0, "origin": "h1", "command": "x", '
                          b'"events": [1]}\n' + b"[" * 100_000 + b"\n"
                        + segment.read_bytes().replace(b'"index":1', b'"index":2'))
    again = SegmentStore(tmp_path, max_bytes=1 << 20, max_age_s=1e9)
    again.open()
    assert again.damaged_lines == 5
    assert any(f"{segment.name}:2:" in p for p in again.problems)
    assert [r["index"] for r in all_records(again)] == [1, 2]
    again.close()


def entry(name: str, origin: str, at: float, command: c.Command | None = None) -> c.Envelope:
    command = command or c.SetVmDesired(name=name, desired=Desired.STARTED)
    return c.Envelope(command, "r", origin, at, 0.0)


def test_queries_by_host_vm_and_time(tmp_path: Path) -> None:
    history = History(tmp_path / "history", 1 << 20, 1e9, "h1")
    history.open()
    history.record_entry(5, entry("vm1", "root@h1", 100.0), [
        Event(5, "vm-state", "vm1", "placed on h2", (("host", "h2"),))])
    history.record_entry(6, entry("vm2", "h1", 200.0), [
        Event(6, "vm-state", "vm2", "placed on h3", (("host", "h3"),))])
    suspect = c.MarkHostSuspect(name="h2", evidence="silent")
    history.record_entry(7, entry("h2", "h1", 300.0, suspect), [
        Event(7, "host-state", "h2", "lease silent", (("to", "suspect"),))])
    history.record_entry(8, entry("h2", "root@h1", 400.0, c.SetHostMaintenance(name="h2",
                                                                               on=False)), [])
    history.record_entry(9, entry("h2", "h2", 500.0, c.ReportHostLoad(name="h2", load=0.5)),
                         [])  # a peer's periodic report that changed nothing: left out
    history.record_entry(6, entry("vm2", "h1", 200.0), [])  # applied again: not twice
    assert history.flush()
    assert [i["index"] for i in history.query(host="h2")] == [5, 7, 8]
    assert [i["index"] for i in history.query(vm="vm2")] == [6]
    assert [i["index"] for i in history.query(since=200.0, until=300.0)] == [6, 7]
    assert [i["index"] for i in history.query(last=2)] == [7, 8]
    assert history.query(vm="vm1")[0]["origin"] == "root@h1"
    assert history.query(host="h2")[-1]["kind"] == "write"
    asyncio.run(history.close())
    reopened = History(tmp_path / "history", 1 << 20, 1e9, "h1")
    reopened.open()
    assert [i["index"] for i in reopened.query()] == [5, 6, 7, 8]
    asyncio.run(reopened.close())


def test_an_unusable_directory_keeps_the_history_in_memory(tmp_path: Path) -> None:
    (tmp_path / "history").write_text("a file where the directory should be")
    history = History(tmp_path / "history", 1 << 20, 1e9, "h1")
    history.open()
    history.record_entry(5, entry("vm1", "root@h1", 100.0), [
        Event(5, "vm-state", "vm1", "placed on h2", (("host", "h2"),))])
    assert history.flush()
    assert "kept in memory" in history.status()["error"]
    assert [i["vm"] for i in history.query()] == ["vm1"]
    asyncio.run(history.close())


def test_an_entry_without_events_is_one_write_item() -> None:
    items = items_of({"index": 3, "time": 1.0, "origin": "h2", "command": "host-load",
                      "events": [], "subject": "h2", "host": "h2", "vm": ""})
    assert [(i["kind"], i["host"]) for i in items] == [("write", "h2")]
