"""`hacluster demo`: a lab cluster on this machine, a host loses power, and its
VMs come back elsewhere; printed as a timeline. Everything it creates is
removed at the end, also on Ctrl-C."""

from __future__ import annotations

import io
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from hacluster.lab.cluster import LabCluster
from hacluster.lab.events import EventFollower

SHOWN_EVENTS = ("host-state", "fence-requested", "fence-confirmed", "fence-failed",
                "fence-cap-reached", "vm-state", "noop")


@dataclass
class Timeline:
    zero: float = 0.0
    lines: list[tuple[float, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, at: float, source: str, text: str) -> None:
        with self.lock:
            self.lines.append((at, source, text))

    def render(self) -> str:
        with self.lock:
            rows = sorted(self.lines)
        return "\n".join(f"{at - self.zero:+7.2f}s  {source:<8} {text}" for at, source, text
                         in rows)


def _observed(lab: LabCluster, timeline: Timeline, since: float) -> None:
    assert lab.observer is not None
    for s in lab.observer.sightings:
        if s.at >= since:
            verb = "runs on" if s.running else "stopped on"
            timeline.add(s.at, "libvirt", f"{s.vm} {verb} {s.host} (seen by the observer)")
    for name, node in lab.nodes.items():
        for e in node.bmc.events():
            if e.mono >= since:
                timeline.add(e.mono, "bmc", f"{name} {e.event} ({e.cause})")


def _summary(lab: LabCluster, victim: str, moved: list[str], cut: float) -> str:
    assert lab.observer is not None
    starts = [lab.observer.first_start(n, cut, not_on=victim) for n in moved]
    done = [s for s in starts if s is not None]
    settings = lab.call("settings.show")["settings"]
    fence = lab.call("fence.history", {"host": victim})["fences"][-1]
    lines = [
        f"{victim} lost power; {len(done)}/{len(moved)} of its VMs run elsewhere.",
        f"recovery time (power loss -> last VM running elsewhere, as the observer saw it): "
        f"{max(done) - cut:.2f}s" if done else "recovery incomplete",
        f"  lease timeout {settings['lease_ttl_s']}s, fence {fence['result']} via "
        f"{fence['method']} ({fence['result_evidence'][:60]})",
        f"  VMs seen on two hosts at once: {len(lab.observer.violations)}",
    ]
    return "\n".join(lines)


def run_demo(hosts: int = 3, vms: int = 4, profile: str = "default", keep: bool = False,
             qemu: bool = False) -> int:
    # Ctrl-C must clean up even when our parent ignored SIGINT for us (a job a
    # shell started with "&", some CI runners): Python then installs no handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if isinstance(sys.stdout, io.TextIOWrapper):  # progress shows at once through a pipe too
        sys.stdout.reconfigure(line_buffering=True)
    root = tempfile.mkdtemp(prefix="hacluster-demo-")
    lab = LabCluster(root, hosts, profile=profile, driver="qemu" if qemu else "test",
                     isolation="netns" if qemu else "loopback")
    timeline = Timeline()
    follower: EventFollower | None = None
    try:
        kind = "network namespace, QEMU libvirtd" if qemu else "libvirtd test driver"
        print(f"starting {hosts} hosts (peer + {kind} + IPMI BMC simulator each) in {root}")
        lab.start()
        names = lab.add_vms(vms)
        placement = {n: v["host"] for n, v in lab.vms().items()}
        print("VMs: " + ", ".join(f"{n} on {h}" for n, h in sorted(placement.items())))
        victim = placement[names[0]]
        moved = sorted(n for n, h in placement.items() if h == victim)
        watcher = next(n for n in lab.nodes if n != victim)
        follower = EventFollower(lab, watcher)
        follower.start()
        time.sleep(0.5)
        print(f"\ncutting the power of {victim} (it runs {', '.join(moved)}) ...\n")
        cut = lab.power_off(victim, "demo: power cut")
        timeline.zero = cut
        lab.wait(lambda: _done(lab, moved, victim), 60, "recovery")
        # the watcher's event stream may trail the peer that answered _done
        lab.wait(lambda: all(follower.started_after(n, cut) for n in moved), 10,
                 "the watcher's events of the recovery")
        for at, item in follower.events:
            if item["kind"] in SHOWN_EVENTS:
                subject = f"{item['subject']} " if item["subject"] else ""
                timeline.add(at, "cluster", f"{item['kind']} {subject}{item['message'][:110]}")
        _observed(lab, timeline, cut - 0.01)
        print(timeline.render())
        print()
        print(_summary(lab, victim, moved, cut))
        return 0 if lab.observer and not lab.observer.violations else 1
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up")
        return 130
    finally:
        if follower is not None:
            follower.stop()
        lab.stop(keep=keep)
        print(f"removed everything the demo created{' (kept ' + root + ')' if keep else ''}")


def _done(lab: LabCluster, moved: list[str], victim: str) -> bool:
    vms: dict[str, Any] = lab.vms()
    assert lab.observer is not None
    return all(vms[n]["state"] == "started" and vms[n]["host"] != victim
               and lab.observer.where(n) for n in moved)
