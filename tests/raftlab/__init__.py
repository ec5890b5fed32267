"""Raft test scaffolding: a peer process around RaftNode (peer.py), the harness that
starts and drives such processes (harness.py) and trivial state machines (bytelog.py,
bench_replica.py). Used by tests/ and bench/raft.py; not part of the product."""
