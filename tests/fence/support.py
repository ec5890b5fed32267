"""Assertions shared by the fencing tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable

import pytest

from hacluster.ports import BmcProbe, FenceResult

# A password no library prints by accident; the secrecy checks look for it.
PASSWORD = "Hc-Secr3t.Pw_91"
# Deadlines that are the feature under test may be overrun by this much
# (thread hand-off, process reaping, a loaded 2-CPU CI machine).
MARGIN_S = 0.75


def assert_no_secret(*things: object, secret: str = PASSWORD) -> None:
    for thing in things:
        for text in (str(thing), repr(thing)):
            assert secret not in text, f"password leaked in {text!r}"


def assert_one_line(result: FenceResult | BmcProbe) -> None:
    text = result.evidence if isinstance(result, FenceResult) else result.detail
    assert text and "\n" not in text


def timed(call: Callable[[], FenceResult], deadline_s: float) -> FenceResult:
    """Run a fence call whose deadline is the feature under test, and check
    it came back within deadline + margin (wall clock, measured here)."""
    start = time.monotonic()
    result = call()
    took = time.monotonic() - start
    assert took <= deadline_s + MARGIN_S, f"took {took:.2f} s for a {deadline_s} s deadline"
    return result


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.01)


def processes_mentioning(needle: str) -> list[str]:
    """Command lines of live (non-zombie) processes containing `needle`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            found.append(cmdline)
    return found


def start_host_process() -> subprocess.Popen[bytes]:
    """A stand-in for a host's workload, in its own process group, so a BMC's
    power-off command can kill the whole group."""
    return subprocess.Popen(["sleep", "300"], start_new_session=True)


def need(tool: str) -> None:
    if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
        pytest.skip(f"{tool} not installed (apt-get install openipmi ipmitool fence-agents)")
