"""Disk leases with real libvirtd + QEMU: lab instances running libvirt's lockd lock
manager, each with its own virtlockd, sharing one lockspace directory; a third instance
runs no lock manager. Every instance keeps its own copy of the disk image at the same
path (hacluster.lab.cluster explains why), so QEMU's own image lock never interferes:
only the lease can stop a second start."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from hacluster.hypervisor.domxml import domain_type_for, minimal_domain_xml
from hacluster.hypervisor.libvirt_driver import LibvirtHypervisor
from hacluster.lab import libvirtd as lab
from hacluster.ports import DiskLockHeld
from hacluster.ports import DomainState as S

DISK = "/var/lib/libvirt/images/{}.img"
CAPTURED = json.loads((Path(__file__).parent / "data" / "start_errors.json").read_text())


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, lab.LabLibvirtd]]:
    reason = lab.unavailable_reason("qemu")
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("dl", numbered=True)
    space = str(base / "lockspace")
    specs = {"a": space, "b": space, "plain": None}
    made: dict[str, lab.LabLibvirtd] = {}
    try:
        for short, lockspace in specs.items():
            made[short] = lab.LabLibvirtd(lab.LibvirtdSpec(str(base / short),
                                                           lockspace_dir=lockspace))
            made[short].start()
        yield made
    finally:
        for instance in made.values():
            instance.kill_all()


@pytest.fixture
def hvs(hosts: dict[str, lab.LabLibvirtd]) -> Iterator[dict[str, LibvirtHypervisor]]:
    drivers = {short: LibvirtHypervisor(host.uri) for short, host in hosts.items()}
    try:
        yield drivers
    finally:
        for hv in drivers.values():
            for info in hv.list_domains():
                hv.undefine(info.name)
            hv.close()


def define(hosts: dict[str, lab.LabLibvirtd], hv: LibvirtHypervisor, name: str) -> None:
    for host in hosts.values():  # every host has its own copy of the image
        image = host.base / "lib" / "images" / f"{name}.img"
        image.parent.mkdir(parents=True, exist_ok=True)
        with open(image, "ab") as handle:
            handle.truncate(1 << 20)
    hv.define(name, minimal_domain_xml(name, 32, 1, domain_type_for(hv.uri),
                                       disk=DISK.format(name)))


def state(hv: LibvirtHypervisor, name: str) -> S | None:
    return next((info.state for info in hv.list_domains() if info.name == name), None)


def test_a_second_host_cannot_start_a_disk_leased_by_a_live_copy(
        hosts: dict[str, lab.LabLibvirtd], hvs: dict[str, LibvirtHypervisor], name: str) -> None:
    a, b = hvs["a"], hvs["b"]
    define(hosts, a, name)
    define(hosts, b, name)
    a.start(name)
    leases = os.listdir(hosts["a"].spec.lockspace_dir or "")
    assert len(leases) == 1, "one lease file per writable disk in the shared lockspace"
    with pytest.raises(DiskLockHeld) as refused:
        b.start(name)
    assert refused.value.why.startswith("disk lease held elsewhere (libvirt lock manager: "
                                        "resource busy: Lockspace resource")
    # the same error as the one captured for the unit tests (data/start_errors.json)
    stored = CAPTURED["errors"]["lockd"]["message"]
    assert re.sub(r"'[0-9a-f]{64}'", "'H'", str(refused.value)).endswith(
        re.sub(r"'[0-9a-f]{64}'", "'H'", stored))
    assert state(b, name) in (S.SHUTOFF, S.CRASHED) and state(a, name) is S.RUNNING
    # virtlockd keeps the lease while libvirtd restarts, as QEMU keeps running
    hosts["a"].restart_daemon()
    with pytest.raises(DiskLockHeld):
        b.start(name)
    a.destroy(name)  # the copy is gone: its lease with it
    b.start(name)
    assert state(b, name) is S.RUNNING


def test_a_host_without_the_lock_manager_starts_a_second_copy(
        hosts: dict[str, lab.LabLibvirtd], hvs: dict[str, LibvirtHypervisor], name: str) -> None:
    """The control: no lease taken, nothing stops the second copy (QEMU's own image
    lock cannot, the images being per host), which is what the leases prevent."""
    a, plain = hvs["a"], hvs["plain"]
    define(hosts, a, name)
    define(hosts, plain, name)
    a.start(name)
    plain.start(name)
    assert state(a, name) is S.RUNNING and state(plain, name) is S.RUNNING


def test_qemus_own_image_lock_is_a_held_lock_too(
        hosts: dict[str, lab.LabLibvirtd], hvs: dict[str, LibvirtHypervisor], name: str) -> None:
    """Two domains with one image on one host: QEMU refuses the second writer."""
    plain = hvs["plain"]
    define(hosts, plain, name)
    plain.start(name)
    other = f"{name}-b"
    plain.define(other, minimal_domain_xml(other, 32, 1, domain_type_for(plain.uri),
                                           disk=DISK.format(name)))
    with pytest.raises(DiskLockHeld) as refused:
        plain.start(other)
    assert refused.value.why == (f"disk image {DISK.format(name)} locked by another QEMU "
                                 '(Failed to get "write" lock)')
