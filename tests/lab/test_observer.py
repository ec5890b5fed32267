"""The lab's observer watches every host, also the ones added after it started."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hacluster.lab.cluster import LabCluster
from hacluster.lab.observer import Observer
from hacluster.ports import Hypervisor

from .support import wait_for

Factory = Callable[..., LabCluster]


def test_a_host_added_to_a_running_observer_is_watched() -> None:
    libvirt_driver = pytest.importorskip("hacluster.hypervisor.libvirt_driver")

    def connect() -> Hypervisor:
        # libvirt's test driver runs one domain, "test", in every fresh instance
        hypervisor: Hypervisor = libvirt_driver.LibvirtHypervisor("test:///default")
        return hypervisor

    observer = Observer({}, powered=lambda host: True, interval_s=0.02)
    observer.start()
    try:
        observer.add_host("late", connect)
        wait_for(lambda: observer.where("test") == ["late"], 10, "the late host looked at")
        assert observer.hosts() == ["late"]
        with pytest.raises(ValueError):
            observer.add_host("late", connect)
    finally:
        observer.stop()
    assert observer.first_start("test", 0.0) is not None


def test_a_lab_host_added_later_is_watched_and_can_be_fenced(lab_factory: Factory) -> None:
    lab = lab_factory(3)
    lab.add_host("h4", role="member")
    lab.wait(lambda: lab.hosts().get("h4", {}).get("state") == "online", 30, "h4 online")
    names = lab.add_vms(3, allowed_hosts=["h4"])  # they run there, and the observer sees it
    assert lab.observer is not None
    observer = lab.observer
    assert all(observer.where(n) == ["h4"] for n in names)
    for name in names:
        lab.call("vm.set", {"name": name, "allowed_hosts": []})
    cut = lab.power_off("h4")
    lab.wait(lambda: all(observer.where(n) and "h4" not in observer.where(n) for n in names),
             60, "the VMs of h4 running elsewhere")
    assert [c.cause for c in observer.power_offs("h4", cut)][:1] == ["lab power cut"]
    assert all(observer.first_sighting(n, cut, running=False, on="h4") for n in names)
    assert lab.hosts()["h4"]["state"] == "fenced"  # its BMC was configured when it joined
    assert observer.violations == []
