"""`hacluster demo` prints the recovery timeline and removes everything it
created, also when interrupted with Ctrl-C half-way."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hacluster.lab.cluster import lab_unavailable

DEMO = [sys.executable, "-m", "hacluster.cli.main", "demo", "--fast"]
# Without PYTHONUNBUFFERED (a CI runner may not set it): the demo must flush by itself.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def finish(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The rest of the demo's output; on a hang, Ctrl-C it so that it still cleans up
    (a SIGKILL would leave its peers, libvirtds and BMCs running into later tests)."""
    try:
        return proc.communicate(timeout=timeout_s)[0]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            rest = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            rest = proc.communicate()[0]
        pytest.fail(f"the demo did not finish in {timeout_s:g} s:\n{rest[-3000:]}")


def assert_nothing_left(root: str) -> None:
    assert not Path(root).exists()
    deadline = time.monotonic() + 10
    while processes_under(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_under(root) == []


def processes_under(root: str) -> list[str]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if root in cmdline:
                out.append(cmdline)
    return out


@pytest.fixture(autouse=True)
def needs_lab() -> None:
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)


def test_demo_prints_the_recovery_and_cleans_up() -> None:
    proc = subprocess.Popen(DEMO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV)
    out = finish(proc, 200)
    assert proc.returncode == 0, out[-6000:]
    assert "fence-confirmed" in out and "runs on" in out
    assert "VMs seen on two hosts at once: 0" in out
    root = re.search(r"in (/\S+hacluster-demo-\S+)", out)
    assert root is not None
    assert_nothing_left(root.group(1))


def test_interrupted_demo_cleans_up() -> None:
    """Ctrl-C mid-recovery; started the way a shell starts a job with "&" (SIGINT
    ignored), which the demo must override to clean up."""
    ignoring = ["bash", "-c", 'trap "" INT; exec "$@"', "demo", *DEMO]
    proc = subprocess.Popen(ignoring, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("cutting the power"):
            break  # mid-recovery: the lease alone takes 0.9 s from here
    root = re.search(r"in (/\S+hacluster-demo-\S+)", "".join(lines))
    assert root is not None, "".join(lines)
    proc.send_signal(signal.SIGINT)
    rest = finish(proc, 120)
    assert proc.returncode == 130, rest
    assert "removed everything the demo created" in rest
    assert_nothing_left(root.group(1))
