"""Control groups for lab hosts (needs root).

Every process of a loopback lab host (its peer and whatever the peer starts)
runs in a cgroup v2 group of its own, so a network fault can tell a host's
packets by *ownership* (nftables `socket cgroupv2`) instead of by address: a
peer that opens a connection from 127.0.0.1 is still its host's. The same
groups carry CPU limits for the starvation fault (v2 `cpu.max` when the cpu
controller is on the v2 hierarchy, else the v1 cpu controller's CFS quota).

Group names start with "hacluster-lab-<pid>-": `cleanup_stale` removes those
of runs whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path

SYSFS_CGROUP = Path("/sys/fs/cgroup")  # nft resolves cgroupv2 paths below this
_PREFIX = "hacluster-lab-"
_CFS_PERIOD_US = 100_000


class CgroupError(RuntimeError):
    """A group could not be created, joined or limited."""


def _mounts(fstype: str) -> list[tuple[Path, str]]:
    """(mount point, options) of every mount of `fstype`."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[2] == fstype:
                found.append((Path(fields[1]), fields[3]))
    return found


def cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (also on hybrid systems), or None."""
    mounts = _mounts("cgroup2")
    return mounts[0][0] if mounts else None


def _cpu_v1_root() -> Path | None:
    for point, options in _mounts("cgroup"):
        if "cpu" in options.split(",") and (point / "cpu.cfs_quota_us").exists():
            return point
    return None


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "cgroups need root"
    root = cgroup2_root()
    if root is None:
        return "no cgroup v2 hierarchy is mounted"
    if not root.is_relative_to(SYSFS_CGROUP):
        return f"cgroup v2 is mounted at {root}, outside {SYSFS_CGROUP} (nft cannot name it)"
    return None


def cleanup_stale() -> list[str]:
    """Remove groups of lab runs whose process is gone; returns their names."""
    removed: list[str] = []
    pattern = re.compile(rf"^{re.escape(_PREFIX)}(\d+)-")
    for root in filter(None, [cgroup2_root(), _cpu_v1_root()]):
        for group in root.iterdir() if root.is_dir() else []:
            match = pattern.match(group.name)
            if match and not Path(f"/proc/{match.group(1)}").exists():
                _remove_tree(group, root)
                removed.append(group.name)
    return removed


def _remove_tree(group: Path, root: Path) -> None:
    """Move whatever still runs in `group` (and below) to `root`, then remove it."""
    if not group.is_dir():
        return
    for child in [p for p in group.iterdir() if p.is_dir()]:
        _remove_tree(child, root)
    with contextlib.suppress(OSError):
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (root / "cgroup.procs").write_text(pid)
    with contextlib.suppress(OSError):
        group.rmdir()


class HostGroups:
    """One v2 group per host under a group of this lab."""

    def __init__(self) -> None:
        root = cgroup2_root()
        if root is None:
            raise CgroupError("no cgroup v2 hierarchy is mounted")
        self.root = root
        self.base = root / f"{_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"

    def create(self, host: str) -> Path:
        path = self.base / host
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CgroupError(f"cannot create cgroup {path}: {exc}") from exc
        return path

    def procs_file(self, host: str) -> Path:
        return self.base / host / "cgroup.procs"

    def nft_match(self, host: str) -> str:
        """The nftables expression matching packets of sockets owned by the host."""
        relative = (self.base / host).relative_to(SYSFS_CGROUP)
        level = len((self.base / host).relative_to(self.root).parts)
        return f'socket cgroupv2 level {level} "{relative}"'

    def pids(self, host: str) -> list[int]:
        with contextlib.suppress(OSError):
            return [int(p) for p in self.procs_file(host).read_text().split()]
        return []

    def destroy(self) -> None:
        _remove_tree(self.base, self.root)


def join_argv(procs_file: str | os.PathLike[str], argv: list[str]) -> list[str]:
    """`argv` started inside the group whose cgroup.procs is `procs_file`: the
    shell joins it, then execs, so nothing runs outside the group even briefly."""
    return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs_file), *argv]


class CpuLimit:
    """Holds a set of processes to `percent` of one CPU until `release()`."""

    def __init__(self, percent: int) -> None:
        if not 1 <= percent <= 100:
            raise CgroupError(f"CPU percent must be 1-100, not {percent}")
        self.percent = percent
        self._group: Path | None = None
        self._root: Path | None = None

    def _make_group(self) -> tuple[Path, Path]:
        quota = _CFS_PERIOD_US * self.percent // 100
        name = f"{_PREFIX}{os.getpid()}-cpu-{secrets.token_hex(3)}"
        v2 = cgroup2_root()
        if v2 is not None and "cpu" in (v2 / "cgroup.controllers").read_text().split():
            with contextlib.suppress(OSError):
                (v2 / "cgroup.subtree_control").write_text("+cpu")
            group = v2 / name
            group.mkdir()
            (group / "cpu.max").write_text(f"{quota} {_CFS_PERIOD_US}")
            return group, v2
        v1 = _cpu_v1_root()
        if v1 is None:
            raise CgroupError("no cpu controller (cgroup v2 cpu.max or v1 cpu)")
        group = v1 / name
        group.mkdir()
        (group / "cpu.cfs_period_us").write_text(str(_CFS_PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(quota))
        return group, v1

    def apply(self, pids: set[int]) -> None:
        self._group, self._root = self._make_group()
        procs = self._group / "cgroup.procs"
        for pid in sorted(pids):
            with contextlib.suppress(ProcessLookupError, OSError):
                procs.write_text(str(pid))

    def release(self) -> None:
        if self._group is not None and self._root is not None:
            _remove_tree(self._group, self._root)
        self._group = self._root = None
