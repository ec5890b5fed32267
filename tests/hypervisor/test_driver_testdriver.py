"""LibvirtHypervisor against libvirt's in-process test driver (fast)."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from hacluster.hypervisor.domxml import minimal_domain_xml
from hacluster.hypervisor.libvirt_driver import VM_UUID_NAMESPACE, LibvirtHypervisor
from hacluster.ports import DomainInfo, HostCapacity, Hypervisor, HypervisorError
from hacluster.ports import DomainState as S

from .support import Recorder


def _xml(name: str, memory_mib: int = 32, vcpus: int = 1) -> str:
    return minimal_domain_xml(name, memory_mib, vcpus, "test")


def _info(hv: LibvirtHypervisor, name: str) -> DomainInfo | None:
    return next((info for info in hv.list_domains() if info.name == name), None)


def test_satisfies_the_hypervisor_port() -> None:
    port: Hypervisor = LibvirtHypervisor("test:///default")  # checked by mypy
    port.close()


def test_capacity_from_node_info_or_override(hv: LibvirtHypervisor) -> None:
    capacity = hv.capacity()
    assert capacity.memory_mib > 0 and capacity.vcpus > 0
    fixed = HostCapacity(memory_mib=4096, vcpus=4)
    with LibvirtHypervisor("test:///default", capacity_override=fixed) as other:
        assert other.capacity() == fixed


def test_define_start_list_destroy_undefine(hv: LibvirtHypervisor, name: str) -> None:
    hv.define(name, _xml(name, 64, 2))
    assert _info(hv, name) == DomainInfo(name, S.SHUTOFF, 64, 2)
    hv.start(name)
    hv.start(name)  # already running: no error
    assert _info(hv, name) == DomainInfo(name, S.RUNNING, 64, 2)
    hv.destroy(name)
    hv.destroy(name)  # already off: no error
    assert _info(hv, name) == DomainInfo(name, S.SHUTOFF, 64, 2)
    hv.undefine(name)
    hv.undefine(name)  # already gone: no error
    assert _info(hv, name) is None


def test_domain_states_in_one_call_agree_with_the_full_listing(hv: LibvirtHypervisor,
                                                               name: str) -> None:
    hv.define(name, _xml(name))
    assert hv.domain_states()[name] is S.SHUTOFF
    hv.start(name)
    assert hv.domain_states() == {info.name: info.state for info in hv.list_domains()}
    assert hv.domain_states()[name] is S.RUNNING
    hv.undefine(name)
    assert name not in hv.domain_states()


def test_shutdown_of_a_cooperative_domain(hv: LibvirtHypervisor, name: str) -> None:
    hv.define(name, _xml(name))
    hv.start(name)
    hv.shutdown(name, timeout_s=2.0)  # the test driver powers off at once
    assert _info(hv, name) == DomainInfo(name, S.SHUTOFF, 32, 1)
    hv.shutdown(name, timeout_s=2.0)  # already off: no error


def test_undefine_destroys_a_running_domain(hv: LibvirtHypervisor, name: str) -> None:
    hv.define(name, _xml(name))
    hv.start(name)
    hv.undefine(name)
    assert _info(hv, name) is None


def test_redefine_only_when_the_xml_changed(hv: LibvirtHypervisor, name: str) -> None:
    events = Recorder()
    hv.subscribe(events)
    hv.define(name, _xml(name, 32))
    hv.define(name, _xml(name, 32) + "\n\n")  # same definition: left alone
    hv.define(name, _xml(name, 96))  # changed: redefined under the same uuid
    assert _info(hv, name) == DomainInfo(name, S.SHUTOFF, 96, 1)
    hv.start(name)
    events.wait(name, S.RUNNING)


def test_an_xml_without_uuid_is_defined_under_the_uuid_of_the_vms_name(
        hv: LibvirtHypervisor, name: str) -> None:
    """Every host defines the VM under the same uuid, so a live migration back to a host
    that kept an inactive definition (failback after a fence) is not refused."""
    hv.define(name, _xml(name))
    expected = str(uuid.uuid5(VM_UUID_NAMESPACE, name))
    assert hv._require("test", name).UUIDString() == expected
    hv.undefine(name)
    own = _xml(name).replace("<vcpu>", "<uuid>00000000-0000-4000-8000-00000000000a</uuid>"
                             "<vcpu>")
    hv.define(name, own)  # the XML's own uuid wins
    assert hv._require("test", name).UUIDString() == "00000000-0000-4000-8000-00000000000a"


def test_define_refuses_a_mismatched_or_broken_xml(hv: LibvirtHypervisor, name: str) -> None:
    with pytest.raises(HypervisorError, match=f"'{name}'.*names 'other'"):
        hv.define(name, _xml("other"))
    with pytest.raises(HypervisorError, match=f"'{name}'.*does not parse"):
        hv.define(name, "<domain>")
    assert _info(hv, name) is None


def test_errors_name_the_domain_and_the_cause(hv: LibvirtHypervisor, name: str) -> None:
    with pytest.raises(HypervisorError, match=f"start of domain '{name}'.*no such domain"):
        hv.start(name)
    with pytest.raises(HypervisorError, match=f"migrate of domain '{name}'.*no such domain"):
        hv.migrate(name, "test:///default", 1.0)
    hv.define(name, _xml(name))
    hv.start(name)
    with pytest.raises(HypervisorError, match=f"migration of domain '{name}'.*not supported"):
        hv.migrate(name, "test:///default", 1.0)
    bad_uuid = _xml(name).replace(
        "<vcpu>", "<uuid>00000000-0000-4000-8000-000000000009</uuid><vcpu>"
    )
    with pytest.raises(HypervisorError, match=f"define of domain '{name}'.*already exists"):
        hv.define(name, bad_uuid)


def test_unreachable_uri_is_a_hypervisor_error() -> None:
    hv = LibvirtHypervisor("test+unix:///default?socket=/nonexistent/sock")
    with hv, pytest.raises(HypervisorError, match="cannot connect to test\\+unix"):
        hv.list_domains()


def test_closed_hypervisor_refuses_calls() -> None:
    hv = LibvirtHypervisor("test:///default")
    hv.list_domains()
    hv.close()
    hv.close()
    with pytest.raises(HypervisorError, match="closed"):
        hv.list_domains()


def test_lifecycle_events_reach_subscribers(hv: LibvirtHypervisor, name: str) -> None:
    events = Recorder()
    hv.subscribe(events)
    hv.define(name, _xml(name))
    hv.start(name)
    hv.destroy(name)
    hv.undefine(name)
    events.wait(name, S.SHUTOFF, reason="undefined")
    assert events.of(name) == [
        (S.RUNNING, "started/booted"),
        (S.SHUTOFF, "stopped/destroyed"),
        (S.SHUTOFF, "undefined/removed"),
    ]


def test_parallel_calls_from_a_thread_pool(hv: LibvirtHypervisor) -> None:
    errors: list[BaseException] = []
    lock = threading.Lock()

    def cycle(index: int) -> None:
        vm = f"par-{index}"
        try:
            for _ in range(5):
                hv.define(vm, _xml(vm))
                hv.start(vm)
                assert any(info.name == vm for info in hv.list_domains())
                hv.destroy(vm)
            hv.undefine(vm)
        except BaseException as exc:  # collected, re-raised below
            with lock:
                errors.append(exc)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(cycle, range(16)))
    assert errors == []
    assert not [info for info in hv.list_domains() if info.name.startswith("par-")]
