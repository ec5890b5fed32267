"""Disk leases: what libvirt says when a disk is locked, and whether libvirt's lock
manager is configured to take such locks. No libvirt import: the adapter passes in the
error's code, domain and message, and the configuration is read from libvirt's files.

libvirt's `lockd` lock manager (qemu.conf `lock_manager = "lockd"`) asks a virtlockd
daemon for a lease on every writable, non-shareable disk of a domain before its guest
CPUs first run (qemu-lockd.conf `auto_disk_leases`, on by default). virtlockd holds an
fcntl lock, either on the disk image itself (the default, "direct") or on a file named
by the SHA-256 of the disk's path in `file_lockspace_dir` ("indirect"), a directory on
storage every host mounts. A second host's start of the same disk then fails with
VIR_ERR_RESOURCE_BUSY from the lockspace code ("resource busy: Lockspace resource '...'
is locked"): the error `held_lock` recognises. QEMU's own image locking refuses a
second writer earlier where its locks reach (one host, some shared filesystems):
"Failed to get "write" lock", recognised too. Both mean a live process holds the disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# libvirt's public error enums (virerror.h); stable across releases.
VIR_ERR_RESOURCE_BUSY = 87
VIR_FROM_LOCKING = 42
VIR_FROM_LOCKSPACE = 51
_LOCK_DOMAINS = frozenset({VIR_FROM_LOCKING, VIR_FROM_LOCKSPACE})
_QEMU_IMAGE_LOCK = 'Failed to get "write" lock'


def held_lock(code: int, domain: int, message: str) -> str:
    """Why a failed start means that a live process holds a disk of the domain
    ("" when it does not): libvirt's lock manager refused the lease, or QEMU could
    not lock the image for writing."""
    if code == VIR_ERR_RESOURCE_BUSY and domain in _LOCK_DOMAINS:
        return f"disk lease held elsewhere (libvirt lock manager: {message})"
    if _QEMU_IMAGE_LOCK in message:
        line = next((part.strip() for part in message.splitlines()
                     if _QEMU_IMAGE_LOCK in part), message)
        image = re.search(r"image \[([^\]]*)\]", message)
        where = f" {image.group(1)}" if image else ""
        return f"disk image{where} locked by another QEMU ({line.split(': ')[-1]})"
    return ""


# ------------------------------------------------------------ configuration


@dataclass(frozen=True)
class LockSetup:
    """What a host's libvirt configuration says about disk leases."""

    lock_manager: str  # "" when qemu.conf sets none (libvirt's "nop": no locks)
    auto_disk_leases: bool
    lockspace_dir: str  # "" = direct: locks on the disk images themselves

    def describe(self) -> str:
        where = (f"lease files in {self.lockspace_dir}" if self.lockspace_dir
                 else "locks on the disk images themselves")
        return f"lock_manager {self.lock_manager or 'none'}, {where}"


def parse_libvirt_conf(text: str) -> dict[str, str | int]:
    """The scalar settings of a libvirt configuration file (qemu.conf, qemu-lockd.conf):
    `key = "string"` or `key = integer`, comments after `#`; lists are skipped. A key
    set twice keeps its last value, as libvirt reads it."""
    values: dict[str, str | int] = {}
    depth = 0
    for raw in text.splitlines():
        line = _without_comment(raw).strip()
        if depth:  # inside a list that spans lines
            depth += line.count("[") - line.count("]")
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            continue
        if value.startswith("["):
            depth = value.count("[") - value.count("]")
        elif len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            values[key] = value[1:-1]
        elif re.fullmatch(r"-?\d+", value):
            values[key] = int(value)
    return values


def _without_comment(line: str) -> str:
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#":
            return line[:i]
    return line


def read_lock_setup(config_dir: str | Path) -> LockSetup:
    """Read qemu.conf and qemu-lockd.conf (absent: libvirt's defaults) from config_dir.
    Raises OSError when qemu.conf cannot be read."""
    base = Path(config_dir)
    qemu = parse_libvirt_conf((base / "qemu.conf").read_text())
    try:
        lockd = parse_libvirt_conf((base / "qemu-lockd.conf").read_text())
    except FileNotFoundError:
        lockd = {}
    manager = qemu.get("lock_manager", "")
    auto = lockd.get("auto_disk_leases", 1)
    space = lockd.get("file_lockspace_dir", "")
    return LockSetup(str(manager), auto not in (0, "0"), str(space))


def lock_setup_problem(config_dir: str, lease_dir: str) -> tuple[str, LockSetup | None]:
    """("", setup) when libvirt at config_dir takes disk leases (in lease_dir, when
    one is given); otherwise what is wrong, naming the file and the option."""
    qemu_conf = Path(config_dir) / "qemu.conf"
    lockd_conf = Path(config_dir) / "qemu-lockd.conf"
    try:
        setup = read_lock_setup(config_dir)
    except OSError as exc:
        return f"cannot read {qemu_conf}: {exc.strerror or exc}", None
    if setup.lock_manager != "lockd":
        shown = (f'"{setup.lock_manager}"' if setup.lock_manager
                 else "nothing (libvirt locks nothing)")
        return (f'{qemu_conf} sets lock_manager to {shown}; disk leases need '
                f'lock_manager = "lockd" and a running virtlockd (contrib/libvirt/), then a '
                "restart of libvirtd"), setup
    if not setup.auto_disk_leases:
        return (f"{lockd_conf} sets auto_disk_leases = 0: disks get no lease unless the "
                "domain XML carries <lease> elements; set auto_disk_leases = 1"), setup
    if lease_dir and Path(setup.lockspace_dir or "/") != Path(lease_dir):
        found = f'"{setup.lockspace_dir}"' if setup.lockspace_dir else "nothing (direct locks)"
        return (f"{lockd_conf} sets file_lockspace_dir to {found}, expected "
                f'"{lease_dir}" ([hypervisor] disk_lease_dir)'), setup
    if setup.lockspace_dir and not Path(setup.lockspace_dir).is_dir():
        return (f"{lockd_conf} file_lockspace_dir {setup.lockspace_dir} is not a directory "
                "(is the shared storage mounted?)"), setup
    return "", setup
