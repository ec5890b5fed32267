"""`hacluster peer` as real processes (a lab cluster on loopback): restarts from
the journal, full-cluster power loss, membership changes, clean leave, wrong
secret, corrupt journal. Peer state digests are compared after each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hacluster.lab.cluster import LabCluster
from hacluster.ports import PowerState
from hacluster.rpc.protocol import ErrorCode, RpcError

from .support import converged, digests

Factory = Callable[..., LabCluster]


def test_sigkilled_peer_restarts_from_its_journal(lab_factory: Factory) -> None:
    lab = lab_factory(3)
    lab.add_vms(2)
    host = lab.nodes["h2"].host
    pid = host.peer_pid()
    assert pid is not None
    subprocess.run(["kill", "-9", str(pid)], check=True)
    lab.wait(lambda: host.peer_pid() is None, 10, "peer gone")
    lab.call("vm.stop", {"name": "vm1"})  # the log moves on without it
    # its lease runs out and the leader fences it; a peer started before the
    # BMC's power-off lands would be killed by it
    lab.wait(lambda: lab.hosts()["h2"]["state"] == "fenced", 30, "h2 fenced")
    host.power_on()
    lab.wait(converged(lab), 30, "equal digests after the restart")
    assert "vm1" in lab.call("vm.list", name="h2")["vms"][0]["name"]


def test_whole_cluster_power_loss_keeps_every_committed_entry(lab_factory: Factory) -> None:
    lab = lab_factory(3)
    lab.add_vms(3)
    lab.wait(converged(lab), 20, "converged before the outage")
    before = digests(lab)["h1"]
    for node in lab.nodes.values():
        node.host.power_off()
    lab.nodes["h1"].host.power_on()  # alone, it cannot learn what was committed
    lab.wait(lambda: lab.call("status", name="h1")["peer"]["name"] == "h1", 30, "h1 answers")
    assert not lab.call("status", name="h1")["peer"]["caught_up"]
    with pytest.raises(RpcError) as refused:  # not an empty list that reads as "no VMs"
        lab.call("vm.list", name="h1")
    assert refused.value.code is ErrorCode.UNAVAILABLE
    assert "has not caught up" in refused.value.message
    hactl = [sys.executable, "-m", "hacluster.cli.hactl", "--connect",
             lab.nodes["h1"].host.spec.rpc_socket]
    status = subprocess.run([*hactl, "status"], capture_output=True, text=True, timeout=30)
    assert status.returncode == 0 and "NOT CAUGHT UP" in status.stdout
    listed = subprocess.run([*hactl, "vm", "list"], capture_output=True, text=True, timeout=30)
    assert listed.returncode == 3 and "has not caught up" in listed.stderr
    for node in lab.nodes.values():
        node.host.power_on()
    lab.wait(converged(lab, at_least=before[0]), 60,
             "every peer past the old index with equal digests")
    assert sorted(lab.vms()) == ["vm1", "vm2", "vm3"]


def test_a_host_joins_and_leaves_through_hactl(lab_factory: Factory) -> None:
    lab = lab_factory(3)
    lab.add_host("h4")
    lab.wait(lambda: lab.hosts().get("h4", {}).get("state") == "online", 30, "h4 online")
    lab.wait(converged(lab), 30, "h4 caught up")
    status = lab.call("status", name="h4")["peer"]
    assert status["has_quorum"]
    lab.nodes["h4"].host.stop_peer()
    lab.call("host.maintenance", {"name": "h4", "on": True})
    lab.call("host.remove", {"name": "h4"})
    assert lab.hosts()["h4"]["state"] == "removed"


def test_sigterm_leaves_cleanly_and_nobody_is_fenced(lab_factory: Factory) -> None:
    lab = lab_factory(3)
    lab.add_vms(3)
    host = lab.nodes["h3"].host
    host.stop_peer()
    lab.wait(lambda: lab.hosts()["h3"]["peer_stopped"], 10, "peer marked stopped")
    settings = lab.call("settings.show")["settings"]
    time.sleep(settings["lease_ttl_s"] * 3)  # long enough to have fenced it, were it judged
    assert lab.hosts()["h3"]["state"] == "online"
    assert lab.call("fence.history")["fences"] == []
    host.power_on()
    lab.wait(lambda: not lab.hosts()["h3"]["peer_stopped"], 20, "peer running again")


def test_wrong_secret_cannot_join(lab_factory: Factory, tmp_path: Path) -> None:
    lab = lab_factory(3)
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("this-is-not-the-cluster-secret-0123456789")
    wrong.chmod(0o600)
    before = lab.call("status")["peer"]["term"]
    node = lab.add_host("h4", secret_file=str(wrong))
    # lab.wait treats "no peer answers" as not yet
    lab.wait(lambda: bool(lab.call("status", name="h4")), 30, "h4's peer answers")
    intruder = node.host.spec.raft_address.rsplit(":", 1)[0]

    def refused_by(name: str) -> list[dict[str, object]]:
        raft = lab.call("status", name=name)["peer"]["refused"]["raft"]
        return [r for r in raft.get("recent", []) if r["source"] == intruder]

    # every running peer says so within a couple of seconds, naming the intruder
    for name in ("h1", "h2", "h3"):
        lab.wait(lambda name=name: bool(refused_by(name)), 3, f"{name} to count h4's refusal")
        assert refused_by(name)[0]["kind"] in ("bad_handshake", "handshake_dropped")
        log = (lab.nodes[name].host.spec.path / "peer.log").read_text()
        lines = [x for x in log.splitlines() if "refused Raft connection" in x]
        assert any(intruder in x and "secret" in x for x in lines), lines[-5:]
    shown = subprocess.run([sys.executable, "-m", "hacluster.cli.hactl", "--connect",
                            lab.nodes["h1"].host.spec.rpc_socket, "status"],
                           capture_output=True, text=True, timeout=30)
    refused_line = next(x for x in shown.stdout.splitlines() if x.startswith("refused: "))
    assert "raft " in refused_line and intruder in refused_line, refused_line
    time.sleep(3)  # it has tried to reach the others for a while
    assert lab.hosts()["h4"]["state"] == "joining"  # added by the operator, never ready
    assert lab.call("status")["peer"]["term"] == before
    assert node.host.peer_pid() is not None  # it runs, alone, without quorum
    assert not lab.call("status", name="h4")["peer"]["has_quorum"]


def test_corrupt_journal_refuses_to_start_and_rebuild_recovers(lab_factory: Factory) -> None:
    lab = lab_factory(3)
    lab.add_vms(1)
    host = lab.nodes["h2"].host
    host.power_off()
    # the leader fences the silent host; its BMC's power-off would kill a peer started before
    lab.wait(lambda: lab.hosts()["h2"]["state"] == "fenced", 30, "h2 fenced")
    journals = sorted((host.spec.path / "data" / "raft").rglob("*journal*"))
    assert journals, "no journal file found"
    journal = max(journals, key=lambda p: p.stat().st_size)
    data = bytearray(journal.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = b"\xff" * 16
    journal.write_bytes(bytes(data))
    config = str(host.spec.path / "peer.toml")
    run = subprocess.run([sys.executable, "-m", "hacluster.cli.main", "peer", "--config", config],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 3
    assert journal.name in run.stderr and "--rebuild" in run.stderr
    host.libvirtd.start()
    log = open(host.spec.path / "peer.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "hacluster.cli.main", "peer", "--config",
                             config, "--rebuild"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    host.pid_file.write_text(str(proc.pid))
    lab.wait(converged(lab), 60, "the rebuilt peer caught up")
    quarantined = list((host.spec.path / "data" / "raft").glob("quarantine-*"))
    assert quarantined, "the damaged files were not kept aside"


def test_a_membership_change_waits_out_a_missing_leader(lab_factory: Factory) -> None:
    """`host add` on a peer that has no leader (the others are restarting) is retried
    until a leader takes it, instead of failing at once: it never entered the log."""
    lab = lab_factory(3)
    for name in ("h2", "h3"):
        lab.nodes[name].host.stop_peer()
    lab.wait(lambda: lab.call("status", name="h1")["peer"]["leader"] is None, 20,
             "h1 alone, without a leader")  # a leader without quorum steps down in 2 s
    outcome: dict[str, object] = {}

    def add() -> None:
        try:
            outcome["result"] = lab.call("host.add", {
                "name": "h9", "raft_address": "127.0.0.99:7440", "role": "voter"}, name="h1")
        except (RpcError, RuntimeError) as exc:
            outcome["error"] = exc

    adding = threading.Thread(target=add)
    adding.start()
    time.sleep(1.0)
    assert adding.is_alive(), f"gave up while there was no leader: {outcome}"
    for name in ("h2", "h3"):
        lab.nodes[name].host.power_on()
    adding.join(60)
    assert "error" not in outcome, outcome
    # the Raft change committed first, then the host record (that order is the API's)
    assert lab.hosts()["h9"]["state"] == "joining"


def test_a_pause_of_every_peer_fences_nobody(lab_factory: Factory) -> None:
    """Every peer process stands still for three lease timeouts (a suspended machine, a
    starved CI box), then goes on. Nobody renewed meanwhile, but nobody was dead either:
    a leader elected afterwards grants full leases, and a leader that kept its office
    discounts its own pause (Manager.own_pause) instead of fencing every host."""
    lab = lab_factory(3)
    lab.add_vms(3)
    ttl = lab.call("settings.show")["settings"]["lease_ttl_s"]
    pids = [node.host.peer_pid() for node in lab.nodes.values()]
    assert all(pids)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(ttl * 3)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    time.sleep(ttl * 3)  # time to fence, were anyone judged dead
    assert lab.call("fence.history")["fences"] == []
    assert all(h["state"] == "online" for h in lab.hosts().values())
    assert all(v["state"] == "started" for v in lab.vms().values())
    assert all(node.bmc.power is PowerState.ON for node in lab.nodes.values())
