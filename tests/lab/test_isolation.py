"""What a lab cluster's isolation modes promise: in netns mode a cut takes a
host off the data network (the other hosts) while its BMC network (the
bridge's own address, where the BMC simulators listen) stays up. And the
observer records every BMC power change from the power logs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from hacluster.lab.bmc import PowerEvent
from hacluster.lab.isolation import NetnsIsolation, isolation_unavailable, make_isolation
from hacluster.lab.observer import Observer
from hacluster.ports import Hypervisor

# A TCP server printing its port, and a client printing "ok" or "timeout".
SERVER = (
    "import socket,sys;s=socket.socket();s.bind((sys.argv[1],0));s.listen();"
    "print(s.getsockname()[1],flush=True)\n"
    "while True:\n c,_=s.accept();c.sendall(b'ok');c.close()"
)
CLIENT = (
    "import socket,sys\ntry:\n"
    " c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=0.3)\n"
    " c.settimeout(10)\n"  # a dropped SYN shows in connect; the answer needs the server scheduled
    " print(c.recv(2).decode())\n"
    "except OSError: print('timeout')"
)


@pytest.fixture
def isolation() -> Iterator[NetnsIsolation]:
    reason = isolation_unavailable("netns")
    if reason:
        pytest.skip(reason)
    made = make_isolation("netns")
    assert isinstance(made, NetnsIsolation)
    made.create()
    try:
        yield made
    finally:
        made.destroy()


def _serve(argv: list[str], address: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([*argv, sys.executable, "-c", SERVER, address],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def _reach(isolation: NetnsIsolation, source: str, address: str, port: int) -> str:
    done = isolation.network.run(source, [sys.executable, "-c", CLIENT, address, str(port)])
    return done.stdout.strip()


@pytest.mark.netns
def test_a_cut_drops_the_data_network_and_keeps_the_bmc_network(
        isolation: NetnsIsolation) -> None:
    isolation.add_host("a")
    b_address, b_netns = isolation.add_host("b")
    bmc, bmc_port = _serve([], isolation.bmc_address)  # root namespace, like ipmi_sim
    peer, peer_port = _serve(["nsenter", f"--net=/run/netns/{b_netns}"], b_address)
    try:
        isolation.cut("a", [b_address])
        assert _reach(isolation, "a", b_address, peer_port) == "timeout"
        assert _reach(isolation, "a", isolation.bmc_address, bmc_port) == "ok"
        isolation.restore("a")
        assert _reach(isolation, "a", b_address, peer_port) == "ok"
    finally:
        for proc in (bmc, peer):
            proc.kill()
            proc.wait()


def test_loopback_hosts_get_addresses_of_their_own() -> None:
    isolation = make_isolation("loopback")
    first, second = isolation.add_host("h1"), isolation.add_host("h2")
    assert first[0] != second[0] and first[0].startswith("127.") and first[1] == ""
    assert isolation.bmc_address == "127.0.0.1"
    with pytest.raises(ValueError, match="unknown isolation"):
        make_isolation("vlan")


def test_the_observer_records_every_power_change_once() -> None:
    log = {"h1": [PowerEvent(0.0, 5.0, "power-off", "ipmi", "", 4.9),
                  PowerEvent(0.0, 6.0, "identify", "ipmi", "")],
           "h2": []}
    observer = Observer({"h1": _no_hypervisor, "h2": _no_hypervisor}, lambda _: False,
                        power_log=lambda host: log[host])
    observer.sample()
    log["h1"].append(PowerEvent(0.0, 9.0, "power-on", "lab", "", 8.0))
    observer.sample()
    observer.sample()
    assert [(c.host, c.on, c.cause, c.began, c.at) for c in observer.power_changes] == [
        ("h1", False, "ipmi", 4.9, 5.0), ("h1", True, "lab", 8.0, 9.0)]
    assert [c.at for c in observer.power_offs("h1", after=1.0)] == [5.0]


def _no_hypervisor() -> Hypervisor:
    raise AssertionError("an unpowered host is never asked")
