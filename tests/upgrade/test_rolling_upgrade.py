"""A rolling upgrade, end to end (issue 13): three lab hosts run the previous release
(built from its git tag, tests/upgrade/PREVIOUS_RELEASE) with HA VMs running, then each
host in turn, the leader last, has its peer stopped cleanly (shutdown policy freeze: its
VMs keep running) and started again on the same data directory with the current code.

The current code's peers are tests/daemon/newer_peer.py: this tree plus one command,
`frobnicate`, that no earlier release understands, so the version gate has something to
refuse while the cluster is mixed (whatever real commands this tree added since the
previous release, which the announcements are checked for too).

Judged by witnesses outside the cluster: the lab observer (every libvirtd polled) sees
every VM keep running exactly once, where it was, and no BMC logs a power-off."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemon.newer_peer import FROBNICATED_VM_STABLE_S, SOCKET
from daemon.support import converged

from hacluster import __version__
from hacluster.core.versions import this_peer
from hacluster.lab.cluster import LabCluster
from hacluster.lab.observer import Observer
from hacluster.rpc.client import RpcClient
from hacluster.rpc.protocol import ErrorCode, RpcError

from .release import Release, ReleaseUnavailable, export, understood

Factory = Callable[..., LabCluster]
CURRENT = [sys.executable, str(Path(__file__).parents[1] / "daemon" / "newer_peer.py")]
NEW_COMMAND = ("frobnicate", 1)


def previous_release(directory: Path) -> Release:
    """Fails (never skips) when this clone cannot build it: the test would prove nothing."""
    try:
        return export(directory)
    except ReleaseUnavailable as exc:
        pytest.fail(f"cannot build the previous release: {exc}", pytrace=False)


def frobnicate(lab: LabCluster, name: str) -> dict[str, Any]:
    """Through the version gate, as hactl's writes go (only a current peer serves it)."""
    socket = str(lab.nodes[name].host.spec.path / SOCKET)
    with RpcClient.connect(socket, timeout_s=30) as rpc:
        result: dict[str, Any] = rpc.call("test.frobnicate", {})
        return result


def refused_for(lab: LabCluster, name: str) -> RpcError | None:
    """The gate's refusal of the new command, or None if it was admitted (and applied)."""
    try:
        frobnicate(lab, name)
    except RpcError as exc:
        if exc.code is ErrorCode.CONFLICT:
            return exc
        raise
    return None


def runs_release(lab: LabCluster, name: str, release: Release) -> bool:
    """The host's peer process runs the release's code (its PYTHONPATH starts there)."""
    pid = lab.nodes[name].host.peer_pid()
    assert pid is not None, f"{name}: no peer running"
    env = dict(item.split(b"=", 1) for item in
               Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item)
    return env[b"PYTHONPATH"].decode().split(os.pathsep)[0] == str(release.path)


def last_start(lab: LabCluster, name: str) -> str:
    """The host's peer log line of its last start (it names the release since 0.3.0)."""
    log = (lab.nodes[name].host.spec.path / "peer.log").read_text()
    return [line for line in log.splitlines() if "peer running" in line][-1]


def next_host(lab: LabCluster, old: list[str]) -> str:
    """Followers first, the leader last (its clean stop hands leadership over anyway)."""
    leader = lab.wait_leader()
    return next((n for n in old if n != leader), leader)


def upgrade(lab: LabCluster, name: str) -> None:
    """Stop the old peer cleanly (its VMs frozen, running), start the current code on the
    same data directory, and wait until it is back: caught up and its host online."""
    host = lab.nodes[name].host
    host.stop_peer(timeout_s=30)
    shown = lab.hosts()[name]
    assert shown["peer_stopped"] and shown["shutdown"] == "freeze", shown
    host.spec = dataclasses.replace(host.spec, release="")
    host.write()  # a power cycle through its BMC would now start the current code too
    host.start_peer(CURRENT)

    def back() -> bool:
        shown = lab.hosts()[name]
        return (lab.call("status", name=name)["peer"]["caught_up"]
                and not shown["peer_stopped"] and shown["state"] == "online")

    lab.wait(back, 30, f"{name} back on the current code")


def announced(lab: LabCluster, name: str) -> list[str]:
    """What the cluster recorded about the host's announcements, oldest first."""
    with lab.client(name) as rpc:
        return [item["message"] for item in rpc.stream("events", {"host": name, "last": 500})
                if item["kind"] == "versions-announced" and item["subject"] == name]


def assert_vms_untouched(observer: Observer, placed: dict[str, str], since: float) -> None:
    for vm, host in placed.items():
        assert observer.where(vm) == [host], f"{vm} runs on {observer.where(vm)}, not {host}"
    changed = [s for s in observer.sightings if s.at >= since]
    assert changed == [], f"VMs stopped or started during the upgrade: {changed}"
    assert observer.violations == []
    offs = {h: observer.power_offs(h) for h in observer.hosts()}
    assert all(v == [] for v in offs.values()), f"a host was powered off: {offs}"


def test_rolling_upgrade_from_the_previous_release_keeps_vms_running(
        lab_factory: Factory, tmp_path: Path) -> None:
    release = previous_release(tmp_path / "previous-release")
    gained = sorted({*this_peer("x").commands, NEW_COMMAND} - understood(release.path))
    lab = lab_factory(3, release=str(release.path))
    assert all(runs_release(lab, n, release) for n in lab.nodes)
    assert all("release=" not in last_start(lab, n) for n in lab.nodes)  # 0.2.0 did not say
    assert lab.call("settings.show")["settings"]["shutdown_policy"] == "freeze"
    vms = lab.add_vms(3)
    observer = lab.observer
    assert isinstance(observer, Observer)
    placed = {vm: observer.where(vm)[0] for vm in vms}
    since = time.monotonic()

    old = sorted(lab.nodes)
    while old:
        name = next_host(lab, old)
        upgrade(lab, name)
        old.remove(name)
        assert not runs_release(lab, name, release)
        assert f"release={__version__}" in last_start(lab, name)
        # what the old peer had announced lacked exactly what the current code added
        news = "now understands " + ", ".join(f"{t} v{v}" for t, v in gained) + ";"
        lab.wait(lambda: announced(lab, name)[-1].startswith(news), 10,  # noqa: B023
                 f"{name} announcing {news}")
        if old:  # mixed: the new command is refused, naming exactly the old hosts
            refusal = refused_for(lab, name)
            assert refusal is not None, "frobnicate admitted while old hosts remain"
            assert refusal.details == {"command": "frobnicate", "version": 1, "hosts": old}
            assert all(f"{n} (does not know frobnicate)" in refusal.message for n in old)
        assert_vms_untouched(observer, placed, since)

    # every host upgraded: the gate admits the command and every peer applies it
    assert refused_for(lab, name) is None
    index = lab.call("status", name=name)["peer"]["applied_index"]
    lab.wait(converged(lab, at_least=index), 30, "equal digests on every peer")
    for node in lab.nodes:
        settings = lab.call("settings.show", name=node)["settings"]
        assert settings["vm_stable_s"] == FROBNICATED_VM_STABLE_S
    assert lab.call("fence.history")["fences"] == []
    assert_vms_untouched(observer, placed, since)
    assert {v["name"]: v["host"] for v in lab.call("vm.list")["vms"]} == placed
