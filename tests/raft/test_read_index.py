"""Read index on real peers (core/readindex.py): a leader answers a read only once a
majority of voters processed an AppendEntries it sent after the request arrived. A
leader cut off from its followers still believes it leads for a while (pysyncobj's
fallback), and must not answer meanwhile."""

from __future__ import annotations

import os
import signal

from raftlab.harness import Cluster, Peer, propose_all, wait_for


def other_than(cluster: Cluster, excluded: Peer) -> list[Peer]:
    return [p for p in cluster.peers if p is not excluded]


def suspend(peer: Peer, sig: signal.Signals) -> None:
    assert peer.proc is not None
    os.kill(peer.proc.pid, sig)


def test_a_leader_confirms_reads_through_its_majority(make_cluster):
    c = make_cluster(3).start()
    leader, term = c.wait_leader()
    propose_all(leader, 3, "r")
    doc = leader.call("read_index", timeout=5.0)
    assert doc["mark"]["term"] == term and doc["confirmed"]
    assert doc["mark"]["commit_index"] >= 4  # the no-op and three entries
    assert other_than(c, leader)[0].call("read_index")["mark"] is None  # followers never


def test_a_leader_cut_off_from_its_majority_answers_no_read(make_cluster):
    c = make_cluster(3).start()
    leader, term = c.wait_leader()
    wait_for(lambda: leader.call("read_index", timeout=5.0)["confirmed"], 20, "a first read")
    followers = other_than(c, leader)
    for peer in followers:
        suspend(peer, signal.SIGSTOP)
    try:
        doc = leader.call("read_index", timeout=1.0)
        # It still believes it leads (fallback 4 s), takes a mark, but nobody confirms.
        assert doc["leader_term"] == term and doc["mark"] is not None
        assert not doc["confirmed"]
    finally:
        for peer in followers:
            suspend(peer, signal.SIGCONT)
    wait_for(lambda: any(p.call("read_index", timeout=2.0).get("confirmed") for p in c.peers),
             30, "a confirmed read once the followers run again")


# ---------------------------------------------------------------- self-fencing grants


def test_followers_are_allowed_only_from_answers_a_confirmed_leader_granted(make_cluster):
    """A follower may count its self-fencing allowance from when an answer of its left,
    once the leader granted that answer after a majority confirmed a later mark. A
    restarted follower numbers its answers afresh: a grant of its previous process's
    answer never allows the new one."""
    c = make_cluster(3).start()
    leader, _ = c.wait_leader()
    followers = other_than(c, leader)
    assert all(p.call("allowed")["age"] is None for p in followers)  # nothing granted yet
    wait_for(lambda: len(leader.call("grant", timeout=5.0)["granted"]) == 2, 20,
             "both followers' answers granted")
    wait_for(lambda: all(p.call("allowed")["age"] is not None for p in followers), 10,
             "the grants reached the followers")
    ages = [p.call("allowed")["age"] for p in followers]
    assert all(0 <= age < 10 for age in ages), ages
    restarted = followers[0]
    restarted.kill()
    restarted.start()
    c.wait_leader()
    assert restarted.call("allowed")["age"] is None  # the old grant matches no new answer
    wait_for(lambda: leader.call("grant", timeout=5.0)["granted"] and
             restarted.call("allowed")["age"] is not None, 30, "a grant of its new answers")
