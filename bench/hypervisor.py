"""Hypervisor benchmark: how fast the libvirt driver notices that a VM died.

A private libvirtd with QEMU in its own network namespace (the lab's), one 32 MiB
diskless domain, driven through LibvirtHypervisor (libvirt-python) as the agent uses it.

Measures
  crash_event_median_s / _max_s   QEMU SIGKILLed -> the driver reports CRASHED (a
                                  libvirt lifecycle event; target under 1 s)
  resync_after_restart_median_s   QEMU SIGKILLed while libvirtd was down -> CRASHED
  / _max_s                        reported after libvirtd is back (no event exists
                                  for it: the driver resyncs on reconnect)
  start_median_s                  define + start of the domain, for scale

The driver's periodic resync is set to 60 s, so every figure comes from an event or
the resync on reconnect, never from the periodic poll.

Usage: python bench/hypervisor.py [--trials N]   (the last stdout line is one JSON object)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from hacluster.hypervisor.domxml import domain_type_for, minimal_domain_xml
from hacluster.hypervisor.libvirt_driver import LibvirtHypervisor
from hacluster.lab import libvirtd as lab
from hacluster.lab import netns
from hacluster.ports import DomainState as S

NAME = "bench-vm"
RESYNC_S = 60.0
WAIT_S = 30.0


class CrashWatch:
    """A listener that timestamps the first CRASHED report of NAME after arm()."""

    def __init__(self) -> None:
        self._seen = threading.Event()
        self.at = 0.0
        self.reason = ""

    def arm(self) -> None:
        self._seen.clear()

    def __call__(self, name: str, state: S, reason: str) -> None:
        if name == NAME and state is S.CRASHED and not self._seen.is_set():
            self.at, self.reason = time.monotonic(), reason
            self._seen.set()

    def wait(self) -> float:
        if not self._seen.wait(WAIT_S):
            raise TimeoutError(f"no CRASHED report within {WAIT_S:g} s")
        return self.at


def start_vm(hv: LibvirtHypervisor, host: lab.LabLibvirtd) -> tuple[int, float]:
    began = time.monotonic()
    hv.define(NAME, minimal_domain_xml(NAME, 32, 1, domain_type_for(hv.uri)))
    hv.start(NAME)
    took = time.monotonic() - began
    pid = host.qemu_pid(NAME)
    if pid is None:
        raise RuntimeError("the domain runs but its QEMU process was not found")
    return pid, took


def crash_trial(hv: LibvirtHypervisor, host: lab.LabLibvirtd,
                watch: CrashWatch) -> tuple[float, float]:
    pid, started = start_vm(hv, host)
    watch.arm()
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    return watch.wait() - killed, started


def resync_trial(hv: LibvirtHypervisor, host: lab.LabLibvirtd, watch: CrashWatch) -> float:
    pid, _ = start_vm(hv, host)
    host.stop_daemon()
    watch.arm()
    try:
        os.kill(pid, signal.SIGKILL)  # libvirtd is down: no event will ever say so
    finally:
        host.start_daemon()
    back = time.monotonic()
    return watch.wait() - back


def run(trials: int, workdir: Path) -> dict[str, float | int]:
    netns.cleanup_stale()  # whatever crashed runs left behind
    with netns.LabNetwork() as network:
        space = network.add("a")
        host = lab.LabLibvirtd(lab.LibvirtdSpec(str(workdir / "a"), "qemu", space.name, "bench-a"))
        try:
            host.start()
            return measure(host, trials)
        finally:
            host.kill_all()


def measure(host: lab.LabLibvirtd, trials: int) -> dict[str, float | int]:
    watch = CrashWatch()
    crashes: list[float] = []
    starts: list[float] = []
    resyncs: list[float] = []
    with LibvirtHypervisor(host.uri, reconnect_interval_s=0.05,
                           resync_interval_s=RESYNC_S) as hv:
        hv.subscribe(watch)
        for _ in range(trials):
            crash, started = crash_trial(hv, host, watch)
            crashes.append(crash)
            starts.append(started)
            hv.undefine(NAME)
        for _ in range(max(3, trials // 3)):
            resyncs.append(resync_trial(hv, host, watch))
            hv.undefine(NAME)
    return {
        "trials": trials,
        "crash_event_median_s": round(statistics.median(crashes), 4),
        "crash_event_max_s": round(max(crashes), 4),
        "resync_after_restart_median_s": round(statistics.median(resyncs), 4),
        "resync_after_restart_max_s": round(max(resyncs), 4),
        "resync_trials": len(resyncs),
        "start_median_s": round(statistics.median(starts), 4),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=15)
    args = parser.parse_args()
    reason = lab.unavailable_reason("qemu") or netns.unavailable_reason()
    if reason:
        print(f"bench/hypervisor.py: cannot run a QEMU libvirtd here: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="hvb", dir="/tmp") as workdir:
        print(json.dumps(run(args.trials, Path(workdir))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
