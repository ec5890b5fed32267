"""A peer with a corrupt or truncated journal/snapshot refuses to start, naming the
file; with the rebuild flag it moves the files aside and catches up from the others."""

from __future__ import annotations

import os

import pytest

from hacluster.raft.files import (
    CATCHING_UP_NAME,
    JOURNAL_NAME,
    META_NAME,
    SNAPSHOT_NAME,
    encode_meta,
    load_meta,
)
from raftlab.harness import Peer, PeerFailed, propose_all, wait_for
from raftlab.peer import CORRUPT_EXIT

DAMAGE = ["corrupt", "truncated", "zeroed", "tail_zeroed", "emptied", "cut_mid_record"]


def damage(path: str, how: str) -> None:
    """corrupt: one byte flipped in the middle; truncated: cut to 60 %; zeroed: every
    byte zero, same size; tail_zeroed: the last 40 % zero; emptied: 0 bytes;
    cut_mid_record: the last 3 bytes gone (the last record, or the snapshot's checksum)."""
    size = os.path.getsize(path)
    if how in ("truncated", "emptied", "cut_mid_record"):
        os.truncate(path, {"truncated": size * 6 // 10, "emptied": 0,
                           "cut_mid_record": size - 3}[how])
        return
    with open(path, "r+b") as f:
        if how in ("zeroed", "tail_zeroed"):
            start = 0 if how == "zeroed" else size * 6 // 10
            f.seek(start)
            f.write(bytes(size - start))
            return
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))


def set_term(peer: Peer, term: int, voted_for: str | None) -> None:
    """Rewrite a stopped peer's meta file (its current term and vote)."""
    meta_path = os.path.join(peer.data_dir, META_NAME)
    meta = load_meta(meta_path)
    assert meta is not None
    meta.term, meta.voted_for = term, voted_for
    with open(meta_path, "wb") as f:
        f.write(encode_meta(meta))


def compact(peer: Peer) -> None:
    peer.call("compact")
    wait_for(lambda: peer.status()["log_first_index"] > 1, 10, f"{peer.name} to compact")


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("target", [JOURNAL_NAME, SNAPSHOT_NAME])
def test_bad_storage_refuses_then_rebuild_recovers(make_cluster, target, how):
    c = make_cluster(3).start()
    leader, _ = c.wait_leader()
    propose_all(leader, 40, "a")
    c.wait_converged(min_count=40)
    victim = next(p for p in c.peers if p is not leader)
    if target == SNAPSHOT_NAME:
        compact(victim)
        compact(leader)  # the rebuilt peer then has to install the leader's snapshot
        propose_all(leader, 5, "b")
    victim.stop()
    path = os.path.join(victim.data_dir, target)
    damage(path, how)

    with pytest.raises(PeerFailed) as info:
        victim.start()
    assert info.value.doc["path"] == path
    assert victim.proc is not None and victim.proc.returncode == CORRUPT_EXIT

    propose_all(leader, 5, "while-refused")
    victim.start(rebuild=True)
    status = victim.status()
    assert status["rebuilt_into"] is not None
    assert target in os.listdir(status["rebuilt_into"])  # moved aside, not deleted
    expected = 50 if target == SNAPSHOT_NAME else 45
    c.wait_converged(min_count=expected)
    if target == SNAPSHOT_NAME:  # it caught up by installing the leader's snapshot
        assert victim.status()["log_first_index"] > 1
    wait_for(lambda: not victim.status()["abstaining"], 10, "the rebuilt peer to vote again")
    # The rebuilt peer is a full member again: it survives a leader change.
    leader.kill()
    new_leader, _ = c.wait_leader()
    propose_all(new_leader, 3, "c")
    c.wait_converged(min_count=expected + 3)


def test_a_rebuilt_peer_with_a_higher_term_than_the_leader_catches_up(make_cluster):
    """It kept its meta file (term and vote), and that term is above the leader's (it
    stood for election while cut off, say). pysyncobj ignores append_entries of a lower
    term, so without telling the others its term it would never catch up."""
    c = make_cluster(3).start()
    leader, term = c.wait_leader()
    propose_all(leader, 10, "a")
    c.wait_converged(min_count=10)
    victim = next(p for p in c.peers if p is not leader)
    victim.stop()
    set_term(victim, term + 20, None)
    damage(os.path.join(victim.data_dir, JOURNAL_NAME), "corrupt")
    victim.start(rebuild=True)
    c.wait_converged(min_count=10)
    wait_for(lambda: not victim.status()["abstaining"], 20, "the rebuilt peer to vote again")
    new_leader, new_term = c.wait_leader()
    assert new_term > term + 20  # the cluster elected above the rebuilt peer's term
    propose_all(new_leader, 3, "b")
    c.wait_converged(min_count=13)


def test_a_rebuilt_peer_restarted_before_it_caught_up_still_does_not_vote(make_cluster):
    """Its journal holds part of what it once acknowledged until it caught up: a restart
    in between (a crash, a reboot) must not make it a voter again. The abstention is on
    disk (raft.catching-up) until it caught up."""
    c = make_cluster(3).start()
    leader, _ = c.wait_leader()
    propose_all(leader, 10, "a")
    c.wait_converged(min_count=10)
    victim = next(p for p in c.peers if p is not leader)
    others = [p for p in c.peers if p is not victim]
    for peer in c.peers:
        peer.stop()
    damage(os.path.join(victim.data_dir, JOURNAL_NAME), "corrupt")
    victim.start(rebuild=True)  # nobody to catch up from
    assert victim.status()["abstaining"]
    victim.kill()
    victim.start()  # restarted before it caught up, without --rebuild
    assert victim.status()["abstaining"]
    assert os.path.exists(os.path.join(victim.data_dir, CATCHING_UP_NAME))
    for peer in others:
        peer.start()
    c.wait_converged(min_count=10)
    wait_for(lambda: not victim.status()["abstaining"], 20, "the rebuilt peer to vote again")
    assert not os.path.exists(os.path.join(victim.data_dir, CATCHING_UP_NAME))
    victim.stop()
    victim.start()
    assert not victim.status()["abstaining"]


def test_a_peer_that_stood_for_election_while_cut_off_catches_up(make_cluster):
    """Its vote requests for a higher term were lost in a cut; it kept that term (meta
    file) and came back behind the others. pysyncobj ignores a leader of a lower term and
    pre-vote keeps this peer from winning an election: without telling the leader its
    term it would never apply another entry (soak seed 21, default profile: h1 stuck at
    term 6 while h2 led term 5)."""
    c = make_cluster(3).start()
    leader, term = c.wait_leader()
    propose_all(leader, 10, "a")
    c.wait_converged(min_count=10)
    victim = next(p for p in c.peers if p is not leader)
    victim.stop()
    propose_all(leader, 5, "b")  # it falls behind: it cannot win a pre-vote
    set_term(victim, term + 3, victim.address)  # it voted for itself
    victim.start()
    c.wait_converged(min_count=15)
    new_leader, new_term = c.wait_leader()
    assert new_term > term + 3
    propose_all(new_leader, 3, "c")
    c.wait_converged(min_count=18)
