"""Fixtures: the in-process test driver, and private libvirtd instances.

Private instances need root, namespaces and the tools hacluster.lab checks; the
tests skip with the reason only when those are truly missing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hacluster.hypervisor.libvirt_driver import LibvirtHypervisor
from hacluster.lab import libvirtd as lab
from hacluster.lab import netns


@pytest.fixture
def name() -> str:
    """A domain name no other test uses (test:///default is shared per process)."""
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def hv() -> Iterator[LibvirtHypervisor]:
    driver = LibvirtHypervisor("test:///default")
    before = {info.name for info in driver.list_domains()}
    yield driver
    for info in driver.list_domains():
        if info.name not in before:
            driver.undefine(info.name)
    driver.close()


def _short_tmp(factory: pytest.TempPathFactory, label: str) -> Path:
    # unix socket paths are limited to 107 bytes
    return factory.mktemp(label, numbered=True)


@pytest.fixture(scope="module")
def test_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lab.LabLibvirtd]:
    reason = lab.unavailable_reason("test")
    if reason:
        pytest.skip(reason)
    instance = lab.LabLibvirtd(lab.LibvirtdSpec(str(_short_tmp(tmp_path_factory, "td")), "test"))
    instance.start()
    try:
        yield instance
    finally:
        instance.kill_all()


@pytest.fixture(scope="module")
def network() -> Iterator[netns.LabNetwork]:
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(reason)
    netns.cleanup_stale()  # whatever crashed runs left behind
    with netns.LabNetwork() as net:
        yield net


@pytest.fixture(scope="module")
def qemu_pair(
    tmp_path_factory: pytest.TempPathFactory, network: netns.LabNetwork
) -> Iterator[tuple[lab.LabLibvirtd, lab.LabLibvirtd]]:
    """Two real libvirtd + QEMU hosts, each in its own network namespace."""
    reason = lab.unavailable_reason("qemu")
    if reason:
        pytest.skip(reason)
    base = _short_tmp(tmp_path_factory, "qp")
    hosts = []
    try:
        for short in ("a", "b"):
            space = network.add(short)
            spec = lab.LibvirtdSpec(
                str(base / short), "qemu", space.name, f"host-{short}", migration_host=space.address
            )
            instance = lab.LabLibvirtd(spec)
            hosts.append(instance)
            instance.start()
        yield hosts[0], hosts[1]
    finally:
        for instance in hosts:
            instance.kill_all()
