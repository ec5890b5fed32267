"""Determinism across processes: peers run with different str hash seeds, so any
iteration over a set or dict of names that leaks into the state or the events
would make them diverge. Replays one generated log in two fresh interpreters
with different PYTHONHASHSEED values and compares digests and events."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import msgpack

import hacluster
from hacluster.fsm import ClusterState, apply, encode_command, state_digest
from hacluster.fsm import commands as c

from .generators import RandomChooser, envelopes

REPLAY = """
import hashlib, json, sys
import msgpack
from hacluster.fsm import ClusterState, apply, state_digest
state = ClusterState()
trace = hashlib.sha256()
digests = []
for index, entry in enumerate(msgpack.unpackb(sys.stdin.buffer.read()), start=1):
    for event in apply(state, entry, index):
        trace.update(repr(event).encode())
    if index % 50 == 0:
        digests.append(state_digest(state))
print(json.dumps({"digest": state_digest(state), "events": trace.hexdigest(),
                  "digests": digests}))
"""


def generated_log(seed: int, count: int) -> list[bytes]:
    state = ClusterState()
    log: list[bytes] = []

    def step(env: c.Envelope) -> None:
        log.append(encode_command(env))
        apply(state, log[-1], len(log))

    envelopes(RandomChooser(seed), count, step, state)
    return log


def replay_here(log: list[bytes]) -> dict[str, object]:
    state = ClusterState()
    trace = hashlib.sha256()
    digests = []
    for index, entry in enumerate(log, start=1):
        for event in apply(state, entry, index):
            trace.update(repr(event).encode())
        if index % 50 == 0:
            digests.append(state_digest(state))
    return {"digest": state_digest(state), "events": trace.hexdigest(), "digests": digests}


def replay_in_subprocess(log: list[bytes], hash_seed: str) -> dict[str, object]:
    # the child must import the very hacluster this process imported
    root = str(Path(next(iter(hacluster.__path__))).resolve().parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": path}
    result = subprocess.run(
        [sys.executable, "-c", REPLAY],
        input=msgpack.packb(log),
        capture_output=True,
        env=env,
        cwd=root,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    replay: dict[str, object] = json.loads(result.stdout)
    return replay


def test_generated_log_exercises_many_commands() -> None:
    log = generated_log(seed=11, count=1_500)
    kinds = {msgpack.unpackb(entry)[1] for entry in log}
    assert len(kinds) >= 20, sorted(kinds)


def test_replays_under_different_hash_seeds_agree() -> None:
    log = [entry for seed in (1, 2, 3) for entry in generated_log(seed, 500)]
    here = replay_here(log)
    assert replay_in_subprocess(log, "1") == here
    assert replay_in_subprocess(log, "4242") == here
