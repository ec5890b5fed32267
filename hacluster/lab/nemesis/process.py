"""Process faults on a powered host: its peer killed (started again on heal)
or frozen (SIGSTOP, SIGCONT on heal), its libvirtd frozen or restarted, its
processes starved of CPU."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from hacluster.lab.cgroups import CpuLimit
from hacluster.lab.nemesis.base import Fault

if TYPE_CHECKING:
    from hacluster.lab.cluster import LabCluster


def _signal(pid: int | None, sig: signal.Signals) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


class KillPeer(Fault):
    kind = "kill-peer"

    def __init__(self, lab: LabCluster, index: int, host: str, role: str = "") -> None:
        super().__init__(lab, index, f"SIGKILL of {role or host}'s peer"
                         + (f" ({host})" if role else "") + ", started again on heal",
                         [host], down=[host])
        self.host = host

    def _apply(self) -> None:
        host = self.lab.nodes[self.host].host
        if not _signal(host.peer_pid(), signal.SIGKILL):
            self.record.notes.append("no peer running")

    def _heal(self) -> None:
        self.lab.start_peer_if_powered(self.host)


class PausePeer(Fault):
    """SIGSTOP of the peer process for `hold_s`, then SIGCONT."""

    kind = "pause-peer"

    def __init__(self, lab: LabCluster, index: int, host: str, hold_s: float,
                 lease_s: float, role: str = "") -> None:
        longer = "longer" if hold_s > lease_s else "shorter"
        super().__init__(lab, index, f"SIGSTOP of {role or host}'s peer"
                         + (f" ({host})" if role else "")
                         + f" for {hold_s:.1f}s ({longer} than the {lease_s:g}s lease)",
                         [host], down=[host])
        self.host = host
        self._pid: int | None = None

    def _apply(self) -> None:
        self._pid = self.lab.nodes[self.host].host.peer_pid()
        if not _signal(self._pid, signal.SIGSTOP):
            self.record.notes.append("no peer running")

    def _heal(self) -> None:
        _signal(self._pid, signal.SIGCONT)


def libvirtd_pid(lab: LabCluster, host: str) -> int | None:
    for pid, argv in lab.nodes[host].host.libvirtd.processes():
        if argv and Path(argv[0]).name == "libvirtd":
            return pid
    return None


class PauseLibvirtd(Fault):
    kind = "pause-libvirtd"

    def __init__(self, lab: LabCluster, index: int, host: str, hold_s: float,
                 lease_s: float) -> None:
        longer = "longer" if hold_s > lease_s else "shorter"
        super().__init__(lab, index, f"SIGSTOP of {host}'s libvirtd for {hold_s:.1f}s "
                         f"({longer} than the {lease_s:g}s lease)", [host])
        self.host = host
        self._pid: int | None = None

    def _apply(self) -> None:
        self._pid = libvirtd_pid(self.lab, self.host)
        if not _signal(self._pid, signal.SIGSTOP):
            self.record.notes.append("no libvirtd running")

    def _heal(self) -> None:
        _signal(self._pid, signal.SIGCONT)


class RestartLibvirtd(Fault):
    """libvirtd stops and starts again. With libvirt's test driver its domains
    live in the daemon's memory, so they are gone, as if they all crashed."""

    kind = "restart-libvirtd"

    def __init__(self, lab: LabCluster, index: int, host: str) -> None:
        super().__init__(lab, index, f"{host}'s libvirtd restarts", [host])
        self.host = host

    def _apply(self) -> None:
        self.lab.nodes[self.host].host.libvirtd.stop_daemon()

    def _heal(self) -> None:
        libvirtd = self.lab.nodes[self.host].host.libvirtd
        with self.lab.power_held(self.host) as on:
            if on and libvirtd.init_pid() is not None and libvirtd_pid(self.lab, self.host) is None:
                libvirtd.start_daemon()


class StarveCpu(Fault):
    """Every process of the host (peer, its children, libvirtd) held to
    `percent` % of one CPU (a cgroup CPU quota)."""

    kind = "starve-cpu"

    def __init__(self, lab: LabCluster, index: int, host: str, percent: int) -> None:
        super().__init__(lab, index, f"{host}'s processes starved to {percent}% of a CPU",
                         [host])
        self.host = host
        self._limit = CpuLimit(percent)

    def _apply(self) -> None:
        self._limit.apply(self.lab.nodes[self.host].host.pids())

    def _heal(self) -> None:
        with contextlib.suppress(OSError):
            self._limit.release()
