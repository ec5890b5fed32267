"""Embedding hacluster: run a peer inside your own program, with your own fence
backend, submit commands, read the state and follow events.

    python contrib/embed_example.py

A one-peer cluster (it is its own leader) on loopback, with libvirt's test
driver as the hypervisor, so it runs anywhere hacluster is installed.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import tempfile
import time

import uvloop

from hacluster.config import parse_config
from hacluster.daemon.peer import Peer
from hacluster.fsm import Event
from hacluster.fsm import commands as c
from hacluster.hypervisor.domxml import minimal_domain_xml
from hacluster.ports import BmcProbe, BmcTarget, FenceAction, FenceOutcome, FenceResult, PowerState


class PduFencer:
    """A custom fence backend (anything with fence() and probe() will do): here it
    would switch a PDU outlet off; it only records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def fence(self, target: BmcTarget, action: FenceAction, deadline_s: float) -> FenceResult:
        self.calls.append(f"{action.value} {target.host}")
        return FenceResult(FenceOutcome.OFF, "outlet 7 switched off, reads off", "pdu")

    def probe(self, target: BmcTarget, deadline_s: float) -> BmcProbe:
        return BmcProbe(True, PowerState.ON, "pdu answers")


async def main() -> int:
    data = tempfile.mkdtemp(prefix="hacluster-embed-")
    config = parse_config({
        "peer": {"name": "app1", "raft_address": "127.0.0.1:17440", "data_dir": data},
        "leases": {"port": 17441},
        "hypervisor": {"uri": "test:///default", "memory_mib": 4096, "vcpus": 4},
        "rpc": {"socket": f"{data}/hactl.sock"},
    }, "embedded")
    peer = Peer(config, cluster_secret=secrets.token_hex(16), fencer=PduFencer())
    seen: list[Event] = []
    peer.subscribe(seen.extend)  # called from the Raft thread: keep it quick

    ready = asyncio.Event()
    serving = asyncio.create_task(peer.serve(on_ready=ready.set))
    await asyncio.wait_for(ready.wait(), 30)
    await _until(lambda: _host_state(peer) == "online", 20)

    outcome = await peer.submit(c.AddVm(name="web1", xml=minimal_domain_xml("web1", 256, 1,
                                                                           "test"),
                                        memory_mib=256, vcpus=1, priority=5))
    print(f"add-vm committed at index {outcome.index}: {[str(e) for e in outcome.events]}")
    await _until(lambda: _vm_state(peer, "web1") == "started", 20)
    with peer.read() as state:
        vm = state.vms["web1"]
        print(f"web1 is {vm.state.value} on {vm.host}: {vm.reason}")
    print(f"events seen by the subscriber: {len(seen)}; last: {seen[-1]}")
    print(f"status: leader={peer.status()['is_leader']} digest={peer.status()['digest']}")

    peer.request_stop()
    await serving
    return 0


def _host_state(peer: Peer) -> str:
    with peer.read() as state:
        host = state.hosts.get(peer.me)
        return host.state.value if host else "missing"


def _vm_state(peer: Peer, name: str) -> str:
    with peer.read() as state:
        vm = state.vms.get(name)
        return vm.state.value if vm else "missing"


async def _until(check: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("the embedded peer did not get there in time")
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
