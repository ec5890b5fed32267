"""hactl's human output for status: the refused line (pure functions, no peers)."""

from __future__ import annotations

from typing import Any

from hacluster.cli import render
from hacluster.core.ratelimit import RefusalLog


def status_doc(refused: dict[str, Any]) -> dict[str, Any]:
    peer = {"name": "h1", "role": "voter", "leader": "h1", "term": 3, "has_quorum": True,
            "applied_index": 9, "caught_up": True, "halted": None, "refused": refused}
    return {"peer": peer, "hosts": [], "vms_by_state": {}, "waiting": []}


def test_no_refusals_no_line() -> None:
    quiet = {"raft": RefusalLog().summary(0.0), "rpc": {}}
    assert "refused" not in render.status(status_doc(quiet))
    assert render.refused({}) == ""


def test_refusals_make_one_compact_line() -> None:
    raft, rpc = RefusalLog(), RefusalLog()
    for i in range(3000):
        raft.refuse("handshake_timeout", "10.0.0.9", i / 1000)
    raft.refuse("bad_handshake", "10.0.0.7", 3.0)
    rpc.refuse("bad_token", "10.0.0.5", 0.0)
    doc = status_doc({"raft": raft.summary(5.0), "rpc": rpc.summary(200.0)})
    lines = [line for line in render.status(doc).splitlines() if "refused" in line]
    assert lines == ["refused: raft 3001 (handshake_timeout 3000, bad_handshake 1) last from "
                     "10.0.0.7 2s ago; rpc 1 (bad_token 1) last from 10.0.0.5 3m ago"]


def test_the_storage_column() -> None:
    def host(storage: dict[str, Any] | None) -> dict[str, Any]:
        return {"name": "h2", "state": "storage-active", "role": "voter", "used_memory_mib": 0,
                "memory_mib": 8192, "vms": 2, "bmc_ok": True, "reason": "", "storage": storage}

    none = {"verdict": "none", "checks": 0, "reads": []}
    active = {"verdict": "active", "checks": 1, "reads": ["..."]}
    shown = [render.storage(s) for s in (None, {"heartbeat_paths": [], "check": none},
                                         {"heartbeat_paths": ["/a", "/b"], "check": none},
                                         {"heartbeat_paths": ["/a"], "check": active})]
    assert shown == ["-", "-", "2 paths", "active (1)"]
    table = render.hosts_table([host({"heartbeat_paths": ["/a"], "check": active})])
    assert "STORAGE" in table.splitlines()[0] and "active (1)" in table


def test_the_fence_history_shows_the_storage_check() -> None:
    fence = {"token": 7, "host": "h2", "attempt": 1, "action": "off", "result": "off",
             "confirmed_by": "h1", "requested_by": "h1", "requested_at": 0.0,
             "result_evidence": "read back off", "reason": "lease expired"}
    quiet = {"verdict": "quiet", "checks": 3, "reads": ["..."]}
    lines = render.fences_table([{**fence, "storage": quiet}, fence]).splitlines()
    assert "STORAGE" in lines[0] and "quiet 3" in lines[1] and " - " in lines[2]


def test_a_failing_heartbeat_write_is_said() -> None:
    doc = status_doc({})
    doc["peer"]["storage_heartbeats"] = {
        "/mnt/a": {"last_write_s": 0.2, "problem": ""},
        "/mnt/b": {"last_write_s": None, "problem": "cannot write x: Read-only file system"}}
    lines = [line for line in render.status(doc).splitlines() if "HEARTBEAT" in line]
    assert lines == ["STORAGE HEARTBEAT /mnt/b: cannot write x: Read-only file system"]
