"""Disk faults of one peer: its data directory full (a small tmpfs mounted
in its place) or read-only, and a restart from an old copy of its journal.
Each stops the peer with SIGKILL to swap the directory, as a crash would."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hacluster.lab.nemesis.base import Fault

if TYPE_CHECKING:
    from hacluster.lab.cluster import LabCluster

_FREE_BYTES = 64 * 1024  # what is left on the small disk


def _kill_peer(lab: LabCluster, host: str) -> None:
    node = lab.nodes[host].host
    pid = node.peer_pid()
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while node.peer_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.02)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"mount {' '.join(args)}: {done.stderr.strip()}")


class SmallDisk(Fault):
    """The peer's data directory on a tmpfs with 64 KiB left (full soon), or
    mounted read-only (readonly=True). Heal copies what the peer wrote back."""

    kind = "disk-full"

    def __init__(self, lab: LabCluster, index: int, host: str, readonly: bool = False) -> None:
        what = "read-only" if readonly else f"full ({_FREE_BYTES // 1024} KiB left)"
        super().__init__(lab, index, f"{host}'s data directory {what}", [host], down=[host])
        if readonly:
            self.kind = self.record.kind = "disk-readonly"
        self.host = host
        self.readonly = readonly
        self.data = lab.nodes[host].host.spec.path / "data"
        self.real = self.data.with_name("data.real")
        self._mounted = False

    def _apply(self) -> None:
        _kill_peer(self.lab, self.host)
        self.data.rename(self.real)
        self.data.mkdir()
        size = _size(self.real) + _FREE_BYTES
        _mount("-t", "tmpfs", "-o", f"size={size}", "hacluster-soak", str(self.data))
        self._mounted = True
        shutil.copytree(self.real, self.data, dirs_exist_ok=True)
        if self.readonly:
            _mount("-o", "remount,ro", str(self.data))
        self.lab.start_peer_if_powered(self.host)

    def _heal(self) -> None:
        if not self._mounted:
            return
        _kill_peer(self.lab, self.host)
        if not self.readonly:  # what it managed to write is its newest state
            shutil.copytree(self.data, self.real, dirs_exist_ok=True)
        subprocess.run(["umount", "-l", str(self.data)], check=False)
        self._mounted = False
        self.data.rmdir()
        self.real.rename(self.data)
        self.lab.start_peer_if_powered(self.host)


class OldJournal(Fault):
    """Copy the peer's data directory (peer killed for a consistent copy, then
    started again); on heal, kill it again and restart it from that copy: it
    has lost every entry of the hold."""

    kind = "old-journal"

    def __init__(self, lab: LabCluster, index: int, host: str) -> None:
        super().__init__(lab, index, f"{host}'s peer restarted from an old copy of its "
                         "journal", [host], down=[host])
        self.host = host
        self.data = lab.nodes[host].host.spec.path / "data"
        self.copy = self.data.with_name("data.old")

    def _apply(self) -> None:
        _kill_peer(self.lab, self.host)
        shutil.rmtree(self.copy, ignore_errors=True)
        shutil.copytree(self.data, self.copy)
        self.lab.start_peer_if_powered(self.host)

    def _heal(self) -> None:
        _kill_peer(self.lab, self.host)
        shutil.rmtree(self.data)
        self.copy.rename(self.data)
        self.lab.start_peer_if_powered(self.host)
