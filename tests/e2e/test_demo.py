"""`hacluster demo` prints the recovery timeline and removes everything it
created, also when interrupted with Ctrl-C half-way."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hacluster.lab.cluster import lab_unavailable

DEMO = [sys.executable, "-m", "hacluster.cli.main", "demo", "--fast"]


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
    done = subprocess.run(DEMO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "fence-confirmed" in done.stdout and "runs on" in done.stdout
    assert "VMs seen on two hosts at once: 0" in done.stdout
    root = re.search(r"in (/\S+hacluster-demo-\S+)", done.stdout)
    assert root is not None
    assert not Path(root.group(1)).exists()
    assert processes_under(root.group(1)) == []


def test_interrupted_demo_cleans_up() -> None:
    """Ctrl-C mid-recovery; started the way a shell starts a job with "&" (SIGINT
    ignored), which the demo must override to clean up."""
    ignoring = ["bash", "-c", 'trap "" INT; exec "$@"', "demo", *DEMO]
    proc = subprocess.Popen(ignoring, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("cutting the power"):
            break  # mid-recovery: the lease alone takes 0.9 s from here
    root = re.search(r"in (/\S+hacluster-demo-\S+)", "".join(lines))
    assert root is not None, "".join(lines)
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, rest
    assert "removed everything the demo created" in rest
    assert not Path(root.group(1)).exists()
    deadline = time.monotonic() + 10
    while processes_under(root.group(1)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_under(root.group(1)) == []
