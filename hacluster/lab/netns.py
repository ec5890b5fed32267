"""Network namespaces joined by a bridge, for tests and the demo (needs root).

A `LabNetwork` owns one bridge in the root namespace and any number of
namespaces, each with a veth pair into that bridge and an address from a
private /24 it picks itself (inside 10.213.0.0/16, never used before on this
machine). Processes in the root namespace reach every namespace through the
bridge address, so peers outside and inside namespaces can talk.

Faults: `cut` drops every packet (or only those to/from given peers) with an
nftables table inside the namespace, `set_loss` drops a random share, and
`cut(..., link=True)` takes the link down instead. The rules live in the
namespace, so removing the namespace removes them; nothing is added to the
root namespace's firewall.

Every name starts with a per-run prefix "hc<pid base36>-<2 random chars>", so
`cleanup_stale()` can remove what a crashed run left behind (only prefixes
whose process is gone) without touching a run still in progress.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

_POOL = ipaddress.IPv4Network("10.213.0.0/16")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_CUT_TABLE = "hacluster_cut"
_LOSS_TABLE = "hacluster_loss"


class NetnsError(RuntimeError):
    """A namespace, link or rule could not be set up or removed."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _base36(number: int) -> str:
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = _DIGITS[digit] + text
        if number == 0:
            return text


def new_prefix(tag: str = "hc") -> str:
    """A fresh name prefix that records the creating process."""
    suffix = "".join(secrets.choice(_DIGITS) for _ in range(2))
    return f"{tag}{_base36(os.getpid())}-{suffix}"


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or None when they can (probed)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "nsenter", "nft") if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    probe = f"{new_prefix()}-probe"
    done = _ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"cannot create a network namespace: {done.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _netns_names() -> list[str]:
    out = _ip("-j", "netns", "list", check=False).stdout.strip()
    return [entry["name"] for entry in json.loads(out or "[]")]


def _link_names() -> list[str]:
    out = _ip("-j", "link", "show", check=False).stdout.strip()
    return [entry["ifname"] for entry in json.loads(out or "[]")]


def cleanup_prefix(prefix: str) -> None:
    """Remove every namespace and link named with `prefix`; idempotent."""
    for link in _link_names():
        if link.startswith(prefix):
            _ip("link", "del", link, check=False)  # a veth takes its peer along
    for name in _netns_names():
        if name.startswith(prefix):
            _ip("netns", "del", name, check=False)


def cleanup_stale(tag: str = "hc") -> list[str]:
    """Remove leftovers of runs whose process is gone; returns their prefixes."""
    pattern = re.compile(rf"^({re.escape(tag)}([0-9a-z]+)-[0-9a-z]{{2}})")
    stale = set()
    for name in _netns_names() + _link_names():
        match = pattern.match(name)
        if match and not os.path.exists(f"/proc/{int(match.group(2), 36)}"):
            stale.add(match.group(1))
    for prefix in sorted(stale):
        cleanup_prefix(prefix)
    return sorted(stale)


def _addresses() -> list[tuple[str, ipaddress.IPv4Network]]:
    """(interface, network) of every IPv4 address in the root namespace."""
    out = _ip("-j", "-4", "addr", "show", check=False).stdout.strip()
    return [
        (
            link["ifname"],
            ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False),
        )
        for link in json.loads(out or "[]")
        for addr in link.get("addr_info", [])
    ]


def _used_networks() -> list[ipaddress.IPv4Network]:
    used = [net for _, net in _addresses()]
    for route in json.loads(_ip("-j", "-4", "route", "show", check=False).stdout or "[]"):
        dst = route.get("dst", "default")
        if dst != "default":
            used.append(ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
    return used


@dataclass(frozen=True)
class Namespace:
    name: str  # under /run/netns
    address: str  # its address on the bridge
    host_link: str  # the veth end in the root namespace


class LabNetwork:
    """A bridge plus namespaces; use as a context manager to clean up."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or new_prefix()
        self.bridge = f"{self.prefix}b"
        if len(self.bridge) > 12:
            raise NetnsError(f"prefix {self.prefix!r} is too long for interface names")
        self.subnet: ipaddress.IPv4Network | None = None
        self._spaces: dict[str, Namespace] = {}
        self._next_host = 2

    @property
    def gateway(self) -> str:
        """The bridge's address: how namespaces reach the root namespace."""
        if self.subnet is None:
            raise NetnsError("network not created")
        return str(self.subnet.network_address + 1)

    def create(self) -> LabNetwork:
        _ip("link", "add", self.bridge, "type", "bridge")
        try:
            self.subnet = self._claim_subnet()
            _ip("link", "set", self.bridge, "up")
        except NetnsError:
            self.destroy()
            raise
        return self

    def _claim_subnet(self) -> ipaddress.IPv4Network:
        """The first free /24 from a prefix-dependent start. Another run may
        claim the same one concurrently, so check again after claiming."""
        subnets = list(_POOL.subnets(new_prefix=24))
        start = int.from_bytes(self.prefix.encode(), "big") % len(subnets)
        for subnet in subnets[start:] + subnets[:start]:
            if any(subnet.overlaps(used) for used in _used_networks()):
                continue
            _ip("addr", "add", f"{subnet.network_address + 1}/24", "dev", self.bridge)
            clash = [link for link, net in _addresses() if net.overlaps(subnet)]
            if clash == [self.bridge]:
                return subnet
            _ip("addr", "flush", "dev", self.bridge)
        raise NetnsError(f"no free /24 left in {_POOL}")

    def add(self, short: str) -> Namespace:
        """A namespace named "<prefix>-<short>" with lo up and one address."""
        if self.subnet is None:
            raise NetnsError("create() the network first")
        index = self._next_host
        self._next_host += 1
        space = Namespace(
            f"{self.prefix}-{short}",
            str(self.subnet.network_address + index),
            f"{self.prefix}v{index}",
        )
        _ip("netns", "add", space.name)
        self._spaces[short] = space
        _ip("-n", space.name, "link", "set", "lo", "up")
        _ip(
            "link",
            "add",
            space.host_link,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            space.name,
        )
        _ip("link", "set", space.host_link, "master", self.bridge, "up")
        _ip("-n", space.name, "addr", "add", f"{space.address}/24", "dev", "eth0")
        _ip("-n", space.name, "link", "set", "eth0", "up")
        _ip("-n", space.name, "route", "add", "default", "via", self.gateway)
        return space

    def namespace(self, short: str) -> Namespace:
        return self._spaces[short]

    def remove(self, short: str) -> None:
        space = self._spaces.pop(short, None)
        if space is not None:
            _ip("link", "del", space.host_link, check=False)
            _ip("netns", "del", space.name, check=False)

    def argv(self, short: str, command: Sequence[str]) -> list[str]:
        """`command` wrapped to run inside the namespace (for Popen)."""
        return ["nsenter", f"--net=/run/netns/{self._spaces[short].name}", *command]

    def run(
        self, short: str, command: Sequence[str], *, check: bool = True, timeout_s: float = 10.0
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(short, command),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and done.returncode != 0:
            raise NetnsError(f"{' '.join(command)} in {short}: {done.stderr.strip()}")
        return done

    def _nft(self, short: str, script: str) -> None:
        done = subprocess.run(
            self.argv(short, ["nft", "-f", "-"]), input=script, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise NetnsError(f"nft in {short}: {done.stderr.strip()}")

    def _drop_table(self, short: str, table: str) -> None:
        # "add" first makes the delete idempotent on nft versions without "destroy".
        self._nft(short, f"add table inet {table}\ndelete table inet {table}\n")

    def cut(self, short: str, peers: Sequence[str] = (), *, link: bool = False) -> None:
        """Isolate the namespace: silently drop all its traffic except
        loopback, or only traffic to/from `peers`; link=True downs the link."""
        if link:
            _ip("link", "set", self._spaces[short].host_link, "down")
            return
        match_in = f"ip saddr {{ {', '.join(peers)} }} " if peers else ""
        match_out = f"ip daddr {{ {', '.join(peers)} }} " if peers else ""
        self._drop_table(short, _CUT_TABLE)
        self._nft(
            short,
            f"table inet {_CUT_TABLE} {{\n"
            "  chain input { type filter hook input priority -200; policy accept;\n"
            f'    iifname "lo" accept; {match_in}drop; }}\n'
            "  chain output { type filter hook output priority -200; policy accept;\n"
            f'    oifname "lo" accept; {match_out}drop; }}\n'
            "}\n",
        )

    def set_loss(self, short: str, percent: int) -> None:
        """Drop `percent` % of packets each way (0 removes the rule)."""
        self._drop_table(short, _LOSS_TABLE)
        if percent <= 0:
            return
        # numgen's range is 0-99, so "< 100" does not parse; 100 % is a plain drop
        rule = "drop" if percent >= 100 else f"numgen random mod 100 < {int(percent)} drop"
        self._nft(
            short,
            f"table inet {_LOSS_TABLE} {{\n"
            "  chain input { type filter hook input priority -190; policy accept;\n"
            f'    iifname != "lo" {rule}; }}\n'
            "  chain output { type filter hook output priority -190; policy accept;\n"
            f'    oifname != "lo" {rule}; }}\n'
            "}\n",
        )

    def restore(self, short: str) -> None:
        """Undo cut() (either kind) and set_loss()."""
        _ip("link", "set", self._spaces[short].host_link, "up")
        self._drop_table(short, _CUT_TABLE)
        self._drop_table(short, _LOSS_TABLE)

    def destroy(self) -> None:
        """Remove namespaces, veths and the bridge; safe to call twice."""
        for short in list(self._spaces):
            self.remove(short)
        cleanup_prefix(self.prefix)
        self.subnet = None

    def __enter__(self) -> LabNetwork:
        return self.create()

    def __exit__(self, *_exc: object) -> None:
        self.destroy()


def main() -> None:
    """`python -m hacluster.lab.netns cleanup`: remove leftovers of dead runs."""
    removed = cleanup_stale()
    print("\n".join(removed) if removed else "nothing to clean up")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
