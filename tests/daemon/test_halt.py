"""What a peer does about version skew, in-process: the proposer's gate (nothing
enters Raft that some host cannot read), the halt report and its exit code, and a
snapshot of a newer format halting the Raft node instead of loading wrong state."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
from core.builders import Cluster

from hacluster.core.versions import this_peer
from hacluster.daemon.halt import (
    EXIT_HALTED,
    EXIT_VERSION_SKEW,
    exit_code_for,
    halt_report,
    unreadable_cause,
)
from hacluster.daemon.proposer import Proposer, VersionGateError
from hacluster.daemon.replica import Replica
from hacluster.fsm import ClusterState, codec
from hacluster.fsm import commands as c
from hacluster.ports import ProposeStatus
from hacluster.raft import ApplyFailed, NodeHalted, RaftNode, RaftProposeResult, StorageError
from raftlab.harness import free_ports, wait_for


class Frobnicate(c.Command):
    """A command of a newer release (not registered: this peer cannot decode it)."""

    TYPE = "frobnicate"


class RecordingRaft:
    """Stands in for RaftNode.propose: records what would have entered the log."""

    def __init__(self) -> None:
        self.proposed: list[bytes] = []

    def propose(self, data: bytes, timeout_s: float) -> RaftProposeResult:
        self.proposed.append(data)
        return RaftProposeResult(ProposeStatus.COMMITTED, len(self.proposed))


def proposer_over(state: ClusterState) -> tuple[Proposer, RecordingRaft]:
    raft = RecordingRaft()

    @contextmanager
    def read() -> Iterator[ClusterState]:
        yield state

    pool = ThreadPoolExecutor(max_workers=1)
    return Proposer(raft, "h1", pool, 1.0, lambda: 0.0, read), raft  # type: ignore[arg-type]


def cluster_with_an_old_host() -> Cluster:
    cluster = Cluster()
    cluster.add_hosts("h1", "h2")
    mine = this_peer("h1")
    cluster.ok(c.AnnounceVersions(name="h1", commands=(*mine.commands, ("frobnicate", 1)),
                                  entry_formats=mine.entry_formats))
    return cluster  # h2 never announced: release 0.1.0


def entry_format(data: bytes) -> int:
    head = msgpack.unpackb(data)[0]
    assert isinstance(head, int)
    return head


def test_the_proposer_refuses_what_a_host_cannot_read_before_raft_sees_it() -> None:
    proposer, raft = proposer_over(cluster_with_an_old_host().state)
    with pytest.raises(VersionGateError) as refused:
        asyncio.run(proposer.submit(Frobnicate(), deadline_s=1.0))
    assert raft.proposed == []
    assert refused.value.lacking == ("h2",) and refused.value.command_type == "frobnicate"
    assert "h2 (never announced" in str(refused.value)


def test_the_proposer_writes_format_1_while_a_host_reads_only_that() -> None:
    cluster = cluster_with_an_old_host()
    proposer, raft = proposer_over(cluster.state)
    assert asyncio.run(proposer.submit(c.Noop(term=1), deadline_s=1.0)).committed
    mine = this_peer("h2")
    cluster.ok(c.AnnounceVersions(name="h2", commands=mine.commands, entry_formats=(1, 2)))
    assert asyncio.run(proposer.submit(c.Noop(term=1), deadline_s=1.0)).committed
    assert [entry_format(d) for d in raft.proposed] == [1, 2]


def test_the_announcement_passes_the_gate_in_format_1() -> None:
    proposer, raft = proposer_over(cluster_with_an_old_host().state)
    mine = this_peer("h2")
    announce = c.AnnounceVersions(name="h2", commands=mine.commands, entry_formats=(1, 2))
    assert asyncio.run(proposer.submit(announce, deadline_s=1.0)).committed
    assert entry_format(raft.proposed[0]) == 1


def unreadable_halt() -> ApplyFailed:
    """What the Raft engine raises when apply meets an entry it cannot decode."""
    cluster = Cluster()
    data = msgpack.packb([2, "frobnicate", 1, "rid", "h1", 1.0, 1.0, {}])
    try:
        cluster.apply_bytes(data)
    except codec.UnreadableEntry as exc:
        try:
            raise ApplyFailed(f"apply of log index 1 raised {exc!r}") from exc
        except ApplyFailed as halted:
            return halted
    raise AssertionError("apply did not raise")


def test_an_unreadable_entry_halts_with_its_own_exit_code_and_a_report() -> None:
    halted = unreadable_halt()
    assert exit_code_for(halted) == EXIT_VERSION_SKEW == 76
    report = halt_report(halted, "h3")
    assert (report["index"], report["command_type"], report["version"],
            report["entry_format"]) == (1, "frobnicate", 1, 2)
    assert report["reason"].startswith("cannot apply log index 1 (frobnicate v1")
    assert report["understands"]["commands"]["add-host"] == 1
    assert report["understands"]["entry_formats"] == [1, 2]
    assert report["understands"]["snapshot_formats"] == list(range(1, codec.SNAPSHOT_FORMAT + 1))
    assert "upgrade this peer" in report["remedy"]


def test_other_halts_keep_the_ordinary_exit_code() -> None:
    halted = StorageError("disk full")
    assert unreadable_cause(halted) is None and exit_code_for(halted) == EXIT_HALTED
    assert halt_report(halted, "h3")["reason"] == "disk full"


def start_node(data_dir: Path, address: str) -> tuple[RaftNode, Replica]:
    replica = Replica()
    node = RaftNode(address, [], "s3cret", data_dir, replica.apply, replica.snapshot,
                    replica.restore)
    return node, replica


def test_a_snapshot_of_a_newer_format_halts_the_node_instead_of_loading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    address = f"127.0.0.1:{free_ports(1)[0]}"
    node, _ = start_node(tmp_path, address)
    try:
        wait_for(node.is_leader, 10, "self-election")
        envelope = c.Envelope(c.AddHost(name="h1"), "rid-1", "h1", 1.0, 1.0)
        assert node.propose(codec.encode_command(envelope), 2.0).status is ProposeStatus.COMMITTED
        newer = codec.SNAPSHOT_FORMAT + 1
        monkeypatch.setattr(codec, "SNAPSHOT_FORMAT", newer)  # written by a newer release
        monkeypatch.setattr(codec, "everyone_runs", lambda *_: True)  # in its own format
        node.compact()
        wait_for(lambda: node.status().log_first_index > 1, 10, "a snapshot")
    finally:
        node.close()
    monkeypatch.undo()
    with pytest.raises(NodeHalted) as halted:
        start_node(tmp_path, address)
    assert exit_code_for(halted.value) == EXIT_VERSION_SKEW
    cause: Any = unreadable_cause(halted.value)
    assert isinstance(cause, codec.SnapshotTooNew)
    readable = ", ".join(str(f) for f in range(1, newer))
    expected = f"snapshot format {newer} is newer than this peer reads (formats {readable})"
    assert expected in str(cause)


def test_systemd_does_not_restart_a_peer_that_cannot_read_the_log() -> None:
    unit = Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "hacluster.service"
    line = next(x for x in unit.read_text().splitlines()
                if x.startswith("RestartPreventExitStatus="))
    assert str(EXIT_VERSION_SKEW) in line.partition("=")[2].split()
