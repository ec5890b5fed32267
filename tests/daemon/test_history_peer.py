"""The event history of a real `hacluster peer` process, read through hactl: who wrote
what, queried by host, VM and time; kept across a restart; a damaged or unusable
history directory never stops the peer."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.solo import VM_XML, SoloPeer
from hacluster.rpc.client import RpcClient
from hacluster.rpc.protocol import RpcError


@pytest.fixture
def solo(tmp_path: Path) -> Iterator[SoloPeer]:
    peer = SoloPeer(tmp_path)
    yield peer
    if peer.proc is not None and peer.proc.poll() is None:
        peer.proc.kill()
        peer.proc.wait()


def add_vm(peer: SoloPeer, name: str) -> None:
    xml = peer.base / f"{name}.xml"
    xml.write_text(VM_XML.format(name=name))
    peer.hactl("vm", "add", str(xml), "--desired", "stopped")


def replicated(items: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(i["index"], i["kind"], i["subject"], i["message"]) for i in items
            if not i["local"]]


def test_history_answers_by_vm_host_and_time_and_survives_a_restart(solo: SoloPeer) -> None:
    solo.start()
    add_vm(solo, "vm1")
    add_vm(solo, "vm2")
    solo.hactl("vm", "set", "vm1", "--priority", "7")
    solo.hactl("settings", "set", "fence_cap=5")
    vm1 = solo.events("--vm", "vm1")
    assert {i["vm"] for i in vm1} == {"vm1"}
    assert [i["kind"] for i in vm1 if not i["local"]] == ["vm-added", "vm-updated"]
    assert all(i["origin"] == "root@solo" for i in vm1 if not i["local"])
    host = solo.events("--host", "solo")
    assert host and all(i["host"] == "solo" for i in host)
    assert any(i["kind"] == "host-added" for i in host)
    changed = next(i for i in solo.events() if i["kind"] == "settings-changed")
    at = float(changed["time"])  # type: ignore[arg-type]
    window = solo.events("--since", f"@{at}", "--until", f"@{at}")
    assert [i["kind"] for i in window] == ["settings-changed"]
    assert "by root@solo" in solo.hactl("events", "--vm", "vm2").stdout
    before = replicated(solo.events())
    solo.stop()
    solo.start()  # Raft applies its journal again: nothing is recorded twice
    after = replicated(solo.events())
    assert after[: len(before)] == before
    assert len(set(after)) == len(after)
    assert any("peer stopping" in str(i["message"]) for i in solo.events() if i["local"])


def test_follow_streams_what_matches_as_it_happens(solo: SoloPeer) -> None:
    solo.start()
    followed: list[dict[str, Any]] = []
    client = RpcClient.connect(str(solo.base / "hactl.sock"))

    def follow() -> None:
        with contextlib.suppress(OSError, RpcError):
            for item in client.stream("events", {"follow": True, "last": 0, "vm": "vm2"},
                                      timeout_s=math.inf):
                followed.append(item)

    threading.Thread(target=follow, daemon=True).start()
    try:
        add_vm(solo, "vm1")
        add_vm(solo, "vm2")
        deadline = time.monotonic() + 30
        while not any(i["kind"] == "vm-added" for i in followed):
            assert time.monotonic() < deadline, followed
            time.sleep(0.1)
        assert {i["vm"] for i in followed} == {"vm2"}
        assert next(i for i in followed if i["kind"] == "vm-added")["origin"] == "root@solo"
    finally:
        client.close()


def test_a_damaged_history_is_repaired_and_the_peer_starts(solo: SoloPeer) -> None:
    solo.start()
    add_vm(solo, "vm1")
    solo.stop()
    segments = sorted((solo.base / "data" / "history").iterdir())
    lines = segments[-1].read_bytes().splitlines(keepends=True)
    segments[-1].write_bytes(b"".join([lines[0], b"\x00garbage\n", *lines[1:],
                                       b'{"index": 99, "ti']))
    solo.start()
    status = solo.hactl("history").stdout
    assert "cut off" in status and "damaged lines skipped: 1" in status
    assert [i["kind"] for i in solo.events("--vm", "vm1") if not i["local"]] == ["vm-added"]
    add_vm(solo, "vm2")
    assert solo.events("--vm", "vm2")


def test_an_unusable_history_directory_never_stops_the_peer(solo: SoloPeer) -> None:
    (solo.base / "data").mkdir()
    (solo.base / "data" / "history").write_text("not a directory")
    solo.start()
    assert "NOT ON DISK" in solo.hactl("history").stdout
    add_vm(solo, "vm1")
    assert [i["kind"] for i in solo.events("--vm", "vm1") if not i["local"]] == ["vm-added"]
    assert "history kept in memory only" in solo.log.read_text()
