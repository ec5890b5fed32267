"""A fence worker never outlives the peer that started it: a worker acting for a
dead peer could power a host off on behalf of nobody."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# The parent starts an attempt against a BMC that never answers (pyghmi keeps
# trying for seconds), says which worker runs it, and waits to be killed.
PARENT = """
import threading, time
from hacluster.fence.ipmi import IpmiFencer
from hacluster.ports import BmcTarget, FenceAction, Secret
fencer = IpmiFencer(keep_idle=False)
target = BmcTarget(host="h9", address="127.0.0.1", port=9, username="admin",
                   password=Secret("secret"))
threading.Thread(target=fencer.fence, args=(target, FenceAction.OFF, 60.0), daemon=True).start()
time.sleep(60)
"""


def children_running_ipmi(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if f"PPid:\t{parent}\n" in status and b"hacluster.fence.ipmi" in cmdline:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead too
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def test_busy_worker_dies_with_its_peer() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT])
    try:
        deadline = time.monotonic() + 20
        while not children_running_ipmi(parent.pid):
            assert time.monotonic() < deadline, "no fence worker started"
            time.sleep(0.02)
        worker = children_running_ipmi(parent.pid)[0]
        time.sleep(0.5)  # the worker is inside its attempt now
        assert alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 1.5
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(worker), "the fence worker outlived its peer"
    finally:
        parent.kill()
        parent.wait()
