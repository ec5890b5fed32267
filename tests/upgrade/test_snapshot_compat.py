"""A snapshot this release writes while a host of the previous release is in the cluster
is one that release reads (its own code decodes it, in its own process), with the same
state: a new leader may send a lagging old peer a snapshot mid-upgrade, and a snapshot
it cannot read would halt it (exit 76)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import msgpack

from hacluster.core import versions
from hacluster.fsm import commands as c
from hacluster.fsm import encode_snapshot, state_digest
from tests.core.builders import Cluster

from .release import understood
from .test_rolling_upgrade import previous_release

READ_IT = ("import sys, json; from hacluster.fsm import decode_snapshot, state_digest; "
           "s = decode_snapshot(open(sys.argv[1], 'rb').read()); "
           "print(json.dumps([sorted(s.hosts), sorted(s.vms), s.applied_index, "
           "state_digest(s)]))")


def mixed_cluster(old_commands: set[tuple[str, int]]) -> Cluster:
    """Three hosts and VMs; h1 and h2 upgraded, h3 still announces the old release."""
    cluster = Cluster()
    cluster.add_hosts("h1", "h2", "h3")
    for i in range(4):
        cluster.add_vm(f"vm{i}", memory_mib=256)
    for name in ("h1", "h2"):
        cluster.ok(versions.announcement(cluster.state, name))
    cluster.ok(c.AnnounceVersions(name="h3", commands=tuple(sorted(old_commands)),
                                  entry_formats=(1, 2)))
    return cluster


def test_the_previous_release_reads_what_this_one_writes_mid_upgrade(tmp_path: Path) -> None:
    release = previous_release(tmp_path / "old")
    state = mixed_cluster(understood(release.path)).state
    data = encode_snapshot(state)
    assert msgpack.unpackb(data)["format"] < 7  # the gate keeps the newer format back
    (tmp_path / "snapshot").write_bytes(data)
    out = subprocess.run([sys.executable, "-c", READ_IT, str(tmp_path / "snapshot")],
                         capture_output=True, text=True, timeout=60, cwd=release.path,
                         env=dict(os.environ, PYTHONPATH=str(release.path)))
    assert out.returncode == 0, out.stderr
    hosts, vms, index, digest = json.loads(out.stdout)
    assert (hosts, vms, index) == (sorted(state.hosts), sorted(state.vms),
                                   state.applied_index)
    assert digest == state_digest(state)  # byte for byte the state that release would write
