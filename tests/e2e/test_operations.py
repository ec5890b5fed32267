"""Operations on a running lab cluster: notifications, lease renewal over two
networks, a fenced host that returns with stale copies, promotion of a member."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

from hacluster.lab.cluster import LabCluster, backend_of
from hacluster.lab.faults import AddressCut

Factory = Callable[..., LabCluster]


def vms_on(lab: LabCluster, host: str) -> list[str]:
    return sorted(n for n, v in lab.vms().items() if v["host"] == host)


def test_notification_hook_receives_fence_events(lab_factory: Factory,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "notified.jsonl"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ncat >> {out}\necho >> {out}\n")
    hook.chmod(0o755)
    lab = lab_factory(3, notify_hook=str(hook))
    lab.add_vms(3)
    leader = lab.wait_leader()
    victim = next(n for n in sorted(lab.nodes) if n != leader and vms_on(lab, n))
    lab.power_off(victim)
    lab.wait(lambda: lab.hosts()[victim]["state"] == "fenced", 30, "fenced")
    lab.wait(lambda: out.exists() and "fence-succeeded" in out.read_text(), 10, "notified")
    events = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    kinds = [e["event"] for e in events if e["host"] == victim]
    assert kinds.index("fence-requested") < kinds.index("fence-succeeded")
    assert all(e["cluster"] for e in events)


def test_a_cut_link_is_noticed_and_the_other_keeps_the_lease(lab_factory: Factory) -> None:
    lab = lab_factory(3, links=2)
    lab.add_vms(3)
    address = lab.nodes["h2"].host.spec.address
    with AddressCut(backend_of(address)):
        ttl = lab.call("settings.show")["settings"]["lease_ttl_s"]
        time.sleep(ttl * 4)
        hosts = lab.hosts()
        assert hosts["h2"]["state"] == "online"
        links = hosts["h2"]["lease_links"]
        assert links["backend"] > ttl * 2 and links["main"] < ttl
    assert lab.call("fence.history")["fences"] == []


def test_a_link_added_to_the_config_reaches_the_cluster_state(lab_factory: Factory) -> None:
    """Rolling change: each host in turn stops cleanly, gets a second lease link in
    its config and starts again; its peer updates its record, so the others send
    renewals on the new link too and nobody is fenced on the way."""
    lab = lab_factory(3)
    lab.add_vms(3)
    for name, node in lab.nodes.items():
        host = node.host
        host.stop_peer()
        host.spec = dataclasses.replace(host.spec,
                                        backend_address=backend_of(host.spec.address))
        host.write()
        host.power_on()
        lab.wait(lambda n=name: len(lab.call("host.show", {"name": n})["host"]["addresses"])
                 == 2, 30,
                 f"{name}'s backend link in the cluster state")
        lab.wait(lambda n=name: lab.hosts()[n]["state"] == "online", 30, f"{name} online")
    ttl = lab.call("settings.show")["settings"]["lease_ttl_s"]

    def renewed_on_both_links() -> bool:  # as the answering peer hears them ("self": itself)
        others = [h["lease_links"] for h in lab.hosts().values() if "self" not in h["lease_links"]]
        return len(others) == 2 and all(set(links) == {"main", "backend"}
                                        and max(links.values()) < ttl for links in others)

    lab.wait(renewed_on_both_links, 30, "renewals on both links from every host")
    assert lab.call("fence.history")["fences"] == []


def test_returning_host_destroys_copies_placed_elsewhere(lab_factory: Factory) -> None:
    """An operator confirms a cut-off host off by mistake (its fence action is none,
    so nobody powered it off): its VMs start elsewhere while it still runs them. When
    it comes back, its agent destroys its copies before it takes part again."""
    lab = lab_factory(3)
    lab.add_vms(4)
    leader = lab.wait_leader()
    victim = next(n for n in sorted(lab.nodes) if n != leader and vms_on(lab, n))
    moved = vms_on(lab, victim)
    lab.call("bmc.set", {"host": victim, "action": "none"})
    observer = lab.observer
    assert observer is not None
    with lab.cut_off(victim):
        lab.wait(lambda: lab.hosts()[victim]["state"] == "fence-failed", 30, "fence-failed")
        lab.call("fence.confirm", {"host": victim, "reason": "I thought it was off"})
        lab.wait(lambda: all(len(observer.where(n)) == 2 for n in moved), 20,
                 "the mistaken second copies")
    lab.wait(lambda: all(observer.where(n) and victim not in observer.where(n)
                         for n in moved), 30, "the stale copies destroyed")
    lab.wait(lambda: lab.hosts()[victim]["state"] == "online", 30, "the host back")
    vms = lab.vms()
    assert all(observer.where(n) == [vms[n]["host"]] for n in moved)


def test_a_member_is_promoted_to_voter(lab_factory: Factory) -> None:
    lab = lab_factory(3)
    node = lab.add_host("h4", role="member")
    lab.wait(lambda: lab.hosts().get("h4", {}).get("state") == "online", 30, "member online")
    assert lab.hosts()["h4"]["role"] == "member"
    assert lab.call("status", name="h4")["peer"]["role"] == "member"
    lab.call("host.promote", {"name": "h4"})
    lab.wait(lambda: node.host.peer_pid() is None, 20, "the peer exits to change its role")
    node.host.power_on()  # systemd restarts it (exit code 75) in production
    lab.wait(lambda: lab.call("status", name="h4")["peer"]["role"] == "voter", 30,
             "restarted as a voter")
    lab.wait(lambda: lab.call("status", name="h4")["peer"]["has_quorum"], 30, "voting")
    assert lab.hosts()["h4"]["role"] == "voter"


def test_two_hosts_and_a_witness_survive_a_host_loss(lab_factory: Factory) -> None:
    """A two-host site: the witness votes (so one host can die) and runs no VMs."""
    lab = lab_factory(2)
    lab.add_host("w", role="witness")
    lab.wait(lambda: lab.hosts().get("w", {}).get("state") == "online", 30, "witness online")
    lab.add_vms(2)
    assert all(v["host"] != "w" for v in lab.vms().values())
    victim = lab.vms()["vm1"]["host"]
    moved = vms_on(lab, victim)
    lab.power_off(victim)
    survivor = next(n for n in ("h1", "h2") if n != victim)
    lab.wait(lambda: all(lab.vms()[n]["host"] == survivor
                         and lab.vms()[n]["state"] == "started" for n in moved), 30,
             "recovered onto the other host")
    assert lab.hosts()[victim]["state"] == "fenced"
    assert lab.observer is not None and lab.observer.violations == []
