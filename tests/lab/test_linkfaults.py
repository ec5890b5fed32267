"""Every network fault of the lab cuts what it claims to cut, and nothing more:
proven with real sockets in the processes' own cgroups or namespaces.

The loopback case that mattered (issue 10): a host's process that opens a
connection from 127.0.0.1 (not from its own address) must be cut as well."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from hacluster.lab.cgroups import join_argv
from hacluster.lab.isolation import Isolation, isolation_unavailable, make_isolation
from hacluster.lab.linkfaults import Drop, lossy

TCP_SERVER = (
    "import socket,sys;s=socket.socket();s.bind((sys.argv[1],0));s.listen();"
    "print(s.getsockname()[1],flush=True)\n"
    "while True:\n c,_=s.accept();c.sendall(b'ok');c.close()"
)
# connect to argv[1]:argv[2], from the source address argv[3] ("" = any)
TCP_CLIENT = (
    "import socket,sys\ntry:\n"
    " c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=0.5,"
    "source_address=(sys.argv[3],0))\n"
    " c.settimeout(10)\n"
    " print(c.recv(2).decode())\n"
    "except OSError: print('timeout')"
)
UDP_SERVER = (
    "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
    "s.setsockopt(socket.SOL_SOCKET,33,1<<23)\n"  # SO_RCVBUFFORCE: no overflow drops
    "s.bind((sys.argv[1],0));print(s.getsockname()[1],flush=True);n=0\n"
    "s.settimeout(None)\n"
    "while True:\n"
    " d,_=s.recvfrom(64)\n"
    " if d==b'end': print(n,flush=True); n=0\n"
    " else: n+=1"
)
# send argv[3] datagrams to argv[1]:argv[2] (a drop in the output hook fails the send: EPERM)
UDP_SENDER = (
    "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
    "for _ in range(int(sys.argv[3])):\n"
    " try: s.sendto(b'x',(sys.argv[1],int(sys.argv[2])))\n"
    " except PermissionError: pass"
)

pytestmark = pytest.mark.netns


@pytest.fixture(params=["loopback", "netns"])
def isolation(request: pytest.FixtureRequest) -> Iterator[Isolation]:
    reason = isolation_unavailable(request.param)
    if reason:
        pytest.skip(reason)
    made = make_isolation(request.param)
    made.create()
    try:
        yield made
    finally:
        made.destroy()


class Hosts:
    """Run processes as lab hosts of an isolation: in their namespace, or in
    their cgroup (loopback)."""

    def __init__(self, isolation: Isolation, names: list[str]) -> None:
        self.isolation = isolation
        self.places = {n: isolation.add_host(n) for n in names}
        self.procs: list[subprocess.Popen[str]] = []

    def address(self, name: str) -> str:
        return self.places[name][0]

    def argv(self, name: str | None, argv: list[str]) -> list[str]:
        if name is None:  # the root namespace, outside every host: where the BMCs live
            return argv
        procs = self.isolation.procs_file(name)
        if procs:
            argv = join_argv(procs, argv)
        netns = self.places[name][1]
        return ["nsenter", f"--net=/run/netns/{netns}", *argv] if netns else argv

    def serve(self, name: str | None, script: str,
              address: str) -> tuple[subprocess.Popen[str], int]:
        proc = subprocess.Popen(self.argv(name, [sys.executable, "-c", script, address]),
                                stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        return proc, int(proc.stdout.readline())

    def run(self, name: str, script: str, *args: str) -> str:
        done = subprocess.run(self.argv(name, [sys.executable, "-c", script, *args]),
                              capture_output=True, text=True, timeout=30, check=True)
        return done.stdout.strip()

    def connect(self, name: str, address: str, port: int, source: str = "") -> str:
        return self.run(name, TCP_CLIENT, address, str(port), source)

    def datagrams(self, sender: str, receiver: str, count: int = 200) -> int:
        """How many of `count` datagrams from `sender` reach `receiver`."""
        server, port = self.serve(receiver, UDP_SERVER, self.address(receiver))
        self.run(sender, UDP_SENDER, self.address(receiver), str(port), str(count))
        # the end marker comes from the receiver's own namespace/cgroup: never dropped
        self.run(receiver, UDP_SENDER.replace("b'x'", "b'end'"), self.address(receiver),
                 str(port), "1")
        assert server.stdout is not None
        return int(server.stdout.readline())

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def hosts(isolation: Isolation) -> Iterator[Hosts]:
    made = Hosts(isolation, ["a", "b", "c"])
    try:
        yield made
    finally:
        made.close()


def test_isolating_a_host_cuts_its_connections_from_any_source(
        isolation: Isolation, hosts: Hosts) -> None:
    _, b_port = hosts.serve("b", TCP_SERVER, hosts.address("b"))
    _, a_port = hosts.serve("a", TCP_SERVER, hosts.address("a"))
    _, bmc_port = hosts.serve(None, TCP_SERVER, isolation.bmc_address)  # like ipmi_sim
    sources = [hosts.address("a")] + (["127.0.0.1"] if isolation.kind == "loopback" else [])
    for source in sources:
        assert hosts.connect("a", hosts.address("b"), b_port, source) == "ok"
    isolation.cut("a", [hosts.address("b"), hosts.address("c")])
    for source in sources:  # from its own address, and from 127.0.0.1 (issue 10)
        assert hosts.connect("a", hosts.address("b"), b_port, source) == "timeout", source
    back = ["", "127.0.0.1"] if isolation.kind == "loopback" else [""]
    for source in back:  # the others reach it from no address either
        assert hosts.connect("b", hosts.address("a"), a_port, source) == "timeout", source
    assert hosts.connect("c", hosts.address("b"), b_port) == "ok"  # the others still talk
    assert hosts.connect("a", isolation.bmc_address, bmc_port) == "ok"  # the BMC network is up
    isolation.restore("a")
    for source in sources:
        assert hosts.connect("a", hosts.address("b"), b_port, source) == "ok"


def test_a_one_way_cut_drops_one_direction_only(isolation: Isolation, hosts: Hosts) -> None:
    assert hosts.datagrams("a", "b") == 200
    fault = isolation.links.install([Drop("a", "b")])
    try:
        assert hosts.datagrams("a", "b") == 0
        assert hosts.datagrams("b", "a") == 200
        assert hosts.datagrams("a", "c") == 200
    finally:
        isolation.links.remove(fault)
    assert hosts.datagrams("a", "b") == 200


def test_loss_drops_a_share_between_the_chosen_hosts_only(
        isolation: Isolation, hosts: Hosts) -> None:
    fault = isolation.links.install(lossy(["a", "b"], 30))
    try:
        # 1000 datagrams at 30 %: 700 expected, 600-800 is over six standard deviations wide
        assert 600 <= hosts.datagrams("a", "b", 1000) <= 800
        assert 600 <= hosts.datagrams("b", "a", 1000) <= 800
        assert hosts.datagrams("a", "c", 1000) == 1000
    finally:
        isolation.links.remove(fault)
    assert isolation.links.active() == []


def test_bad_drops_are_refused() -> None:
    with pytest.raises(ValueError, match="two hosts"):
        Drop("a", "a")
    with pytest.raises(ValueError, match="1-100"):
        Drop("a", "b", 0)
