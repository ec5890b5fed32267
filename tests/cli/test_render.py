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
