"""Network namespaces, the bridge between them, and cut/restore (needs root)."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from collections.abc import Iterator

import pytest

from hacluster.lab import netns

pytestmark = pytest.mark.netns

# A tiny TCP echo server, and a client that prints "ok", "timeout" or "refused".
SERVER = (
    "import socket,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
    "s.bind(('0.0.0.0',int(sys.argv[1])));s.listen();print('ready',flush=True)\n"
    "while True:\n c,_=s.accept();c.sendall(b'ok');c.close()"
)
CLIENT = (
    "import socket,sys\ntry:\n"
    " c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=float(sys.argv[3]))\n"
    " c.settimeout(10)\n"  # a dropped SYN shows in connect; the answer needs the server scheduled
    " print(c.recv(2).decode())\n"
    "except TimeoutError: print('timeout')\nexcept OSError: print('refused')"
)
PORT = 7777


@pytest.fixture(scope="module")
def net() -> Iterator[netns.LabNetwork]:
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(reason)
    netns.cleanup_stale()  # whatever crashed runs left behind
    with netns.LabNetwork() as network:
        network.add("a")
        network.add("b")
        server = subprocess.Popen(
            network.argv("b", [sys.executable, "-c", SERVER, str(PORT)]),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            yield network
        finally:
            server.kill()
            server.wait()


def _reach(net: netns.LabNetwork, source: str | None, address: str, wait_s: float = 0.3) -> str:
    argv = [sys.executable, "-c", CLIENT, address, str(PORT), str(wait_s)]
    if source is None:
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
    else:
        done = net.run(source, argv)
    return done.stdout.strip()


def test_namespaces_reach_each_other_and_the_root_namespace(net: netns.LabNetwork) -> None:
    a, b = net.namespace("a"), net.namespace("b")
    assert net.subnet is not None and net.subnet.subnet_of(ipaddress.IPv4Network("10.0.0.0/8"))
    assert ipaddress.IPv4Address(a.address) in net.subnet
    assert _reach(net, "a", b.address) == "ok"
    assert _reach(net, None, b.address) == "ok"  # from the root namespace, via the bridge
    assert "eth0" in net.run("a", ["ip", "-o", "addr"]).stdout


def test_cut_drops_everything_until_restored(net: netns.LabNetwork) -> None:
    b = net.namespace("b")
    net.cut("b")
    try:
        assert _reach(net, "a", b.address) == "timeout"  # silent drop, not a refusal
        assert _reach(net, None, b.address) == "timeout"
        assert _reach(net, "b", "127.0.0.1") == "ok"  # loopback keeps working
    finally:
        net.restore("b")
    assert _reach(net, "a", b.address) == "ok"


def test_cut_towards_some_peers_only(net: netns.LabNetwork) -> None:
    a, b = net.namespace("a"), net.namespace("b")
    net.cut("b", peers=[a.address])
    try:
        assert _reach(net, "a", b.address) == "timeout"
        assert _reach(net, None, b.address) == "ok"
    finally:
        net.restore("b")
    assert _reach(net, "a", b.address) == "ok"


def test_cut_by_taking_the_link_down(net: netns.LabNetwork) -> None:
    b = net.namespace("b")
    net.cut("b", link=True)
    try:
        assert _reach(net, "a", b.address) == "timeout"
    finally:
        net.restore("b")
    assert _reach(net, "a", b.address, wait_s=3.0) == "ok"


def test_total_loss_and_back(net: netns.LabNetwork) -> None:
    b = net.namespace("b")
    net.set_loss("b", 100)
    try:
        assert _reach(net, "a", b.address) == "timeout"
    finally:
        net.set_loss("b", 0)
    assert _reach(net, "a", b.address) == "ok"
    net.restore("b")  # restoring what is not cut is fine


def _leftovers(prefix: str) -> list[str]:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return [word for word in (names + links).replace(":", " ").split() if word.startswith(prefix)]


def test_destroy_is_complete_and_idempotent() -> None:
    if netns.unavailable_reason():
        pytest.skip(str(netns.unavailable_reason()))
    network = netns.LabNetwork().create()
    other = netns.LabNetwork().create()
    try:
        network.add("x")
        assert network.subnet != other.subnet  # runs never share an address range
        assert _leftovers(network.prefix)
    finally:
        network.destroy()
        network.destroy()
        other.destroy()
    assert _leftovers(network.prefix) == []
    assert _leftovers(other.prefix) == []


def test_cleanup_stale_removes_only_dead_runs() -> None:
    if netns.unavailable_reason():
        pytest.skip(str(netns.unavailable_reason()))
    dead = "hc2ii3ao-zz"  # pid 4194304: above any kernel's pid limit
    mine = netns.LabNetwork()
    subprocess.run(["ip", "netns", "add", f"{dead}-left"], check=True)
    subprocess.run(["ip", "link", "add", f"{dead}b", "type", "bridge"], check=True)
    try:
        with mine:
            mine.add("y")
            assert dead in netns.cleanup_stale()
            assert _leftovers(dead) == []
            assert _leftovers(mine.prefix)  # a live run is left alone
    finally:
        netns.cleanup_prefix(dead)
