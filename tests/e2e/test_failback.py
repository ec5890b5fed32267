"""Failback end to end with real QEMU (live migration needs it: the test driver cannot
migrate): a VM that prefers a host fails over when that host loses power, stays away
while the host is back but not said ready, and after `hactl host ready` returns by live
migration. Judged from outside the cluster too: the lab observer polls every libvirtd."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest

from hacluster.hypervisor.libvirt_driver import LibvirtHypervisor
from hacluster.lab.cluster import LabCluster
from hacluster.lab.events import EventFollower
from hacluster.lab.observer import Observer
from hacluster.ports import DomainState

pytestmark = pytest.mark.netns

Factory = Callable[..., LabCluster]


def hactl(lab: LabCluster, peer: str, *words: str) -> str:
    argv = [sys.executable, "-m", "hacluster.cli.hactl", "--connect",
            lab.nodes[peer].host.spec.rpc_socket, *words]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _redefine_under_another_uuid(uri: str, name: str) -> str:
    """What a host of release 0.2.0 (a random uuid per host) or a hand-made definition
    leaves behind: the VM's inactive definition under a uuid its running copy lacks."""
    stale = str(uuid.uuid4())
    with LibvirtHypervisor(uri) as hv:
        assert [i.state for i in hv.list_domains() if i.name == name] == [DomainState.SHUTOFF]
        xml = hv._require("read", name).XMLDesc(0)
        hv.undefine(name)
        hv.define(name, re.sub(r"<uuid>[^<]*</uuid>", f"<uuid>{stale}</uuid>", xml, count=1))
        assert hv._require("read", name).UUIDString() == stale
    return stale


@pytest.mark.parametrize("stale_uuid", [False, True], ids=["same-uuid", "stale-uuid"])
def test_a_vm_live_migrates_back_after_host_ready(lab_factory: Factory,
                                                  stale_uuid: bool) -> None:
    lab = lab_factory(3, "fast", driver="qemu", isolation="netns")
    observer = lab.observer
    assert isinstance(observer, Observer)
    leader = lab.wait_leader()
    home = next(n for n in sorted(lab.nodes) if n != leader)
    lab.set_settings({"failback_hold_down_s": 1.0})
    lab.add_vms(1, preferred_hosts=[[home, 100]], failback="auto")
    assert lab.vms()["vm1"]["host"] == home  # placement prefers it

    cut = lab.power_off(home)
    lab.wait(lambda: lab.vms()["vm1"]["state"] == "started" and lab.vms()["vm1"]["host"]
             != home and home not in observer.where("vm1") and bool(observer.where("vm1")),
             40, "vm1 running elsewhere")
    away = lab.vms()["vm1"]["host"]
    lab.power_on(home)
    lab.wait(lambda: lab.hosts()[home]["state"] == "online", 90, f"{home} back online")
    assert not lab.hosts()[home]["failback_ready"]  # back, not ready: vm1 stays
    explained = hactl(lab, leader, "explain", "vm1")
    assert f"host {home} is back but not ready: waiting for `hactl host ready {home}`" \
        in explained, explained
    assert lab.vms()["vm1"]["host"] == away
    home_uri = lab.nodes[home].host.libvirtd.uri
    stale = ""
    if stale_uuid:  # libvirt alone refuses the migration back ("already exists with uuid")
        stale = _redefine_under_another_uuid(home_uri, "vm1")
    with LibvirtHypervisor(lab.nodes[away].host.libvirtd.uri) as hv:
        running_uuid = hv._require("read", "vm1").UUIDString()

    events = EventFollower(lab, leader)
    events.start()
    moment = max((s.at for s in observer.sightings), default=cut)
    try:
        assert "VMs that prefer it may fail back" in hactl(lab, leader, "host", "ready", home)
        lab.wait(lambda: lab.vms()["vm1"]["host"] == home and lab.vms()["vm1"]["state"]
                 == "started" and observer.where("vm1") == [home], 60, "vm1 back home")
    finally:
        events.stop()
    said = [e["message"] for _, e in events.events
            if e["kind"] == "vm-state" and e["subject"] == "vm1"]
    assert any(m.startswith(f"failback to {home} (score 100, {away} 0)") for m in said), said
    assert f"live-migrated from {away} to {home}" in said  # live, not stopped and started
    gone = observer.first_sighting("vm1", moment, running=False, on=away)
    came = observer.first_sighting("vm1", moment, not_on=away)
    assert gone is not None and came is not None
    assert came.by >= gone.after, "vm1 ran on both ends at once"
    # The observer looks at each host in turn, so at a live migration's switch-over it may
    # pair the source's last look with the target's first (test_planned_shutdown.py): the
    # check above is the one that proves two copies; no other VM may have any.
    assert [v for v in observer.violations if v.split()[0] != "vm1"] == []
    assert [f["host"] for f in lab.call("fence.history")["fences"]] == [home]
    assert f"on its preferred host {home} (score 100)" in hactl(lab, leader, "explain", "vm1")
    with LibvirtHypervisor(home_uri) as hv:  # the incoming definition replaced the stale one
        assert hv._require("read", "vm1").UUIDString() == running_uuid
    if stale_uuid:  # the source's log names what was replaced
        log = (lab.nodes[away].host.spec.path / "peer.log").read_text()
        assert re.search(f"removed the stale inactive definition of vm1 on {re.escape(home_uri)} "
                         f"\\(uuid {stale}\\) .*\\(uuid {running_uuid}\\)", log), log[-3000:]
