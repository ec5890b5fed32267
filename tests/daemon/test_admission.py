"""Bad input is refused by the admin API before it is proposed (issue 9, item 3): real
peer processes, and the Raft log of the peer asked must not grow. Before, an invalid name
or setting was committed and then refused by apply, and a 2.8 MB domain XML went through
Raft (or failed inside the peer) before it was refused."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from hacluster.fsm.domain_xml import MAX_DOMAIN_XML_BYTES
from hacluster.hypervisor.domxml import minimal_domain_xml
from hacluster.lab.cluster import LabCluster
from hacluster.rpc.protocol import ErrorCode, RpcError

Factory = Callable[..., LabCluster]
PEER = "h1"


def raft_position(lab: LabCluster) -> tuple[int, int, int]:
    peer = lab.call("status", name=PEER)["peer"]
    return peer["commit_index"], peer["applied_index"], peer["term"]


def quiet_lab(lab_factory: Factory) -> LabCluster:
    """A lab whose log stands still: without BMC addresses no host reports its BMC's
    health (each report names the probe's latency, so each one is a new entry)."""
    lab = lab_factory(3)
    lab.add_vms(1)
    for name in lab.nodes:
        lab.call("bmc.set", {"host": name, "address": ""})
    return lab


def still(lab: LabCluster, for_s: float = 1.0, timeout_s: float = 30.0) -> tuple[int, int, int]:
    """The peer's (commit index, applied index, term) once they stood still for for_s."""
    seen, since = raft_position(lab), time.monotonic()
    give_up = since + timeout_s
    while time.monotonic() - since < for_s:
        assert time.monotonic() < give_up, "the log never stood still"
        time.sleep(0.1)
        now = raft_position(lab)
        if now != seen:
            seen, since = now, time.monotonic()
    return seen


def refused_without_growing_the_log(lab: LabCluster, method: str,
                                    params: dict[str, Any]) -> tuple[RpcError, float]:
    """Call method, which must fail, and how long the call took; the log must not move
    meanwhile. Another host's entry (a load report every 30 s) may land in the window:
    then it is tried again, while a refusal that went through Raft moves it every time."""
    moves = []
    for _ in range(3):
        refusals = rejected_events(lab)
        before = still(lab)
        start = time.monotonic()
        with pytest.raises(RpcError) as refused:
            lab.call(method, params, name=PEER)
        took = time.monotonic() - start
        after = raft_position(lab)
        if after == before:
            assert rejected_events(lab) == refusals, "apply refused an entry meanwhile"
            return refused.value, took
        moves.append((before, after))
    raise AssertionError(f"{method} moved the log each time: {moves}")


def rejected_events(lab: LabCluster) -> list[dict[str, Any]]:
    with lab.client(PEER) as rpc:
        return [e for e in rpc.stream("events", {"last": 1000}) if e["kind"] == "rejected"]


def big_xml(name: str, size: int) -> str:
    xml = minimal_domain_xml(name, 64, 1, "test")
    return xml.replace("</domain>", f"<description>{'x' * size}</description></domain>")


CASES: list[tuple[str, str, dict[str, Any], ErrorCode, str, str]] = [
    # (what, method, params, code, field, part of the message)
    ("invalid VM name", "vm.add", {"xml": minimal_domain_xml("bad name!", 64, 1, "test")},
     ErrorCode.BAD_PARAMS, "name", "invalid VM name 'bad name!'"),
    ("setting out of range", "settings.set", {"values": {"fence_cap": -1}},
     ErrorCode.BAD_PARAMS, "fence_cap", "fence_cap must be >= 0"),
    ("setting that does not fit the others", "settings.set", {"values": {"lease_ttl_s": 0.1}},
     ErrorCode.BAD_PARAMS, "lease_ttl_s", "lease_renew_s < lease_suspect_s < lease_ttl_s"),
    ("fence cap window", "fence.cap", {"window_s": 0.0},
     ErrorCode.BAD_PARAMS, "fence_window_s", "fence_window_s must be a positive number"),
    ("malformed XML", "vm.set", {"name": "vm1", "xml": "<domain><name>vm1</name>"},
     ErrorCode.BAD_PARAMS, "xml", "does not parse"),
    ("XML of another VM", "vm.set", {"name": "vm1", "xml": minimal_domain_xml("vm2")},
     ErrorCode.BAD_PARAMS, "xml", "names 'vm2', not the VM's name 'vm1'"),
    ("oversized XML", "vm.add", {"xml": big_xml("big1", MAX_DOMAIN_XML_BYTES)},
     ErrorCode.BAD_PARAMS, "xml", "larger than the limit of 262144 bytes"),
    ("entities", "vm.add", {"xml": '<!DOCTYPE d [<!ENTITY e "e">]>'
                                   "<domain><name>&e;</name></domain>"},
     ErrorCode.BAD_PARAMS, "xml", "must not contain a DOCTYPE"),
    ("a VM that exists", "vm.add", {"xml": minimal_domain_xml("vm1", 64, 1, "test")},
     ErrorCode.CONFLICT, "name", "VM vm1 already exists"),
    ("unknown target host", "vm.migrate", {"name": "vm1", "target": "h9"},
     ErrorCode.NOT_FOUND, "target", "unknown host 'h9'"),
    ("empty confirm reason", "fence.confirm", {"host": "h2", "reason": " "},
     ErrorCode.BAD_PARAMS, "reason", "needs who and a reason"),
    ("BMC port", "bmc.set", {"host": "h2", "port": 70000},
     ErrorCode.BAD_PARAMS, "bmc.port", "BMC port 70000 out of range"),
    # refused before Raft's membership changes too (that is a log entry of its own)
    ("invalid host name with a Raft address", "host.add",
     {"name": "h 4", "raft_address": "127.0.0.9:7440"},
     ErrorCode.BAD_PARAMS, "name", "invalid host name 'h 4'"),
    ("host that exists, with a Raft address", "host.add",
     {"name": "h2", "raft_address": "127.0.0.9:7440"},
     ErrorCode.CONFLICT, "name", "host h2 already exists"),
]


def test_bad_input_is_refused_before_it_reaches_the_log(lab_factory: Factory) -> None:
    lab = quiet_lab(lab_factory)
    for what, method, params, code, field, why in CASES:
        error, _ = refused_without_growing_the_log(lab, method, params)
        assert (error.code, error.details.get("field")) == (code, field), (what, error)
        assert why in error.message, (what, error)
    assert lab.vms()["vm1"]["state"] == "started"
    assert sorted(lab.hosts()) == ["h1", "h2", "h3"]


def test_a_huge_domain_xml_is_refused_at_once_without_an_election(
        lab_factory: Factory, capsys: pytest.CaptureFixture[str]) -> None:
    """Three legal 2.8 MB domain XMLs (under the 4 MiB RPC frame): before, they went
    toward Raft and the cluster went through elections (or the peer failed with an
    internal error). Only facts are asserted; the time is printed."""
    lab = quiet_lab(lab_factory)
    leader, term = lab.wait_leader(), raft_position(lab)[2]
    xml = big_xml("huge", 2_800_000)
    took = []
    for _ in range(3):
        error, seconds = refused_without_growing_the_log(lab, "vm.add", {"xml": xml})
        took.append(seconds)
        assert (error.code, error.details.get("field")) == (ErrorCode.BAD_PARAMS, "xml")
        assert f"larger than the limit of {MAX_DOMAIN_XML_BYTES} bytes" in error.message
    assert lab.wait_leader() == leader
    assert [lab.call("status", name=n)["peer"]["term"] for n in lab.nodes] == [term] * 3
    assert "huge" not in lab.vms()
    with capsys.disabled():
        print(f"\n2.8 MB domain XML refused in {', '.join(f'{t:.3f}' for t in took)} s")
