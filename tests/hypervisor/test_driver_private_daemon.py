"""LibvirtHypervisor against a private libvirtd serving the test driver over
its own unix socket: remote connections, keepalive, restarts."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from hacluster.hypervisor.domxml import minimal_domain_xml
from hacluster.hypervisor.libvirt_driver import LibvirtHypervisor
from hacluster.lab.libvirtd import LabLibvirtd
from hacluster.ports import DomainState as S
from hacluster.ports import HypervisorError

from .support import Recorder, wait_for


def _names(hv: LibvirtHypervisor) -> set[str]:
    return {info.name for info in hv.list_domains()}


def test_operations_and_events_over_the_socket(test_daemon: LabLibvirtd, name: str) -> None:
    with LibvirtHypervisor(test_daemon.uri) as hv:
        events = Recorder()
        hv.subscribe(events)
        hv.define(name, minimal_domain_xml(name, 32, 1, "test"))
        hv.start(name)
        events.wait(name, S.RUNNING)
        hv.destroy(name)
        events.wait(name, S.SHUTOFF, reason="stopped/destroyed")
    # the keeper connection holds the test driver's state between clients
    with LibvirtHypervisor(test_daemon.uri) as other:
        assert name in _names(other)
        other.undefine(name)
        assert name not in _names(other)


def test_undefine_removes_a_transient_domain(
    test_daemon: LabLibvirtd, name: str, tmp_path: Path
) -> None:
    xml = tmp_path / "d.xml"
    xml.write_text(minimal_domain_xml(name, 32, 1, "test"))
    subprocess.run(["virsh", "-q", "-c", test_daemon.uri, "create", str(xml)], check=True)
    with LibvirtHypervisor(test_daemon.uri) as hv:
        assert name in _names(hv)
        hv.undefine(name)
        assert name not in _names(hv)


def test_reconnects_and_resubscribes_after_a_libvirtd_restart(
    test_daemon: LabLibvirtd, name: str
) -> None:
    with LibvirtHypervisor(test_daemon.uri, reconnect_interval_s=0.05) as hv:
        events = Recorder()
        hv.subscribe(events)
        hv.define(name, minimal_domain_xml(name, 32, 1, "test"))
        hv.start(name)
        events.wait(name, S.RUNNING)
        test_daemon.restart_daemon()
        restarted = time.monotonic()
        # the test driver forgets everything on restart: the watcher notices
        # on its own (no call from us) and reports the domain as gone
        at, _ = events.wait(name, S.SHUTOFF, reason="resync/gone", timeout_s=5.0)
        assert at - restarted < 3.0
        later = f"{name}-2"
        hv.define(later, minimal_domain_xml(later, 32, 1, "test"))
        hv.start(later)
        events.wait(later, S.RUNNING)  # events flow on the new connection
        hv.undefine(later)


def test_calls_fail_cleanly_while_libvirtd_is_down(test_daemon: LabLibvirtd) -> None:
    with LibvirtHypervisor(test_daemon.uri) as hv:
        hv.list_domains()
        test_daemon.stop_daemon()
        try:
            with pytest.raises(HypervisorError, match="test\\+unix"):
                hv.list_domains()
            with pytest.raises(HypervisorError, match="start of domain 'anything' failed: cannot"):
                hv.start("anything")
        finally:
            test_daemon.start_daemon()
        wait_for(lambda: _try_list(hv), 5.0, "calls to work again")


def _try_list(hv: LibvirtHypervisor) -> bool:
    try:
        hv.list_domains()
    except HypervisorError:
        return False
    return True
