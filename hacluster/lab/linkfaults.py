"""Directed packet drops between lab hosts: the one primitive every network
fault of the lab (isolation, splits, one-way cuts, loss) is made of.

A `Drop(src, dst, percent)` drops `percent` % of the packets host `src` sends
to host `dst` (100: all of them). What "sent by src" and "to dst" mean:

netns
    Each host is a namespace whose only way out is its veth, so every packet
    src sends to dst leaves through src's output hook with dst's address as
    destination: one rule in src's namespace, `ip daddr DST`.

loopback
    Hosts share the root namespace. A packet is src's when its source address
    is src's address *or* its socket belongs to src's cgroup (a peer that
    connects from 127.0.0.1 is still caught); it is for dst when its
    destination address is dst's *or* the socket that receives it belongs to
    dst's cgroup (found by nftables' socket lookup on input). Each packet
    matches exactly one rule, so a loss rate applies once.

The BMC network (127.0.0.1, or the bridge's address with netns) and the Unix
sockets are never dropped: they are the management network.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Drop:
    src: str
    dst: str
    percent: int = 100

    def __post_init__(self) -> None:
        if self.src == self.dst:
            raise ValueError(f"a drop needs two hosts, not {self.src} twice")
        if not 1 <= self.percent <= 100:
            raise ValueError(f"drop percent must be 1-100, not {self.percent}")

    def verdict(self) -> str:
        # numgen's range is 0-99, so "< 100" does not parse; 100 % is a plain drop
        return "drop" if self.percent >= 100 else f"numgen random mod 100 < {self.percent} drop"


class LinkFaultError(RuntimeError):
    """A rule could not be installed or removed."""


def _run_nft(argv_prefix: list[str], script: str) -> None:
    done = subprocess.run([*argv_prefix, "nft", "-f", "-"], input=script,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LinkFaultError(f"nft: {done.stderr.strip()}\n{script}")


def _table(name: str, output: list[str], input_: list[str]) -> str:
    # priority -210: before the lab's own cut (-200) and loss (-190) tables
    rules_out = "".join(f"    {r};\n" for r in output)
    rules_in = "".join(f"    {r};\n" for r in input_)
    return (f"table inet {name} {{\n"
            "  chain output { type filter hook output priority -210; policy accept;\n"
            f"{rules_out}  }}\n"
            "  chain input { type filter hook input priority -210; policy accept;\n"
            f"{rules_in}  }}\n}}\n")


def _drop_table(argv_prefix: list[str], name: str) -> None:
    _run_nft(argv_prefix, f"add table inet {name}\ndelete table inet {name}\n")


class LinkFaults:
    """Installs groups of drops as nftables tables and removes them.

    address: host -> its data-network address. netns: host -> its namespace
    name, or None for loopback. owner: host -> nft expression matching its
    sockets (loopback only; "" when unknown)."""

    def __init__(self, address: Callable[[str], str], netns: Callable[[str], str | None],
                 owner: Callable[[str], str]) -> None:
        self._address = address
        self._netns = netns
        self._owner = owner
        self._installed: dict[str, list[list[str]]] = {}  # fault id -> argv prefixes

    def install(self, drops: Iterable[Drop]) -> str:
        """Install the drops; returns an id for `remove`."""
        drops = list(drops)
        fault_id = f"hclink_{secrets.token_hex(4)}"
        by_place: dict[tuple[str, ...], tuple[list[str], list[str]]] = {}
        for drop in drops:
            place, output, input_ = self._rules(drop)
            rules = by_place.setdefault(tuple(place), ([], []))
            rules[0].extend(output)
            rules[1].extend(input_)
        prefixes: list[list[str]] = []
        self._installed[fault_id] = prefixes
        try:
            for where, (out_rules, in_rules) in sorted(by_place.items()):
                prefixes.append(list(where))
                _run_nft(list(where), _table(fault_id, out_rules, in_rules))
        except LinkFaultError:
            self.remove(fault_id)
            raise
        return fault_id

    def _rules(self, drop: Drop) -> tuple[list[str], list[str], list[str]]:
        """(nft argv prefix, output rules, input rules) for one drop."""
        src, dst = self._address(drop.src), self._address(drop.dst)
        verdict = drop.verdict()
        netns = self._netns(drop.src)
        if netns:
            return ["nsenter", f"--net=/run/netns/{netns}"], [f"ip daddr {dst} {verdict}"], []
        output = [f"ip saddr {src} ip daddr {dst} {verdict}"]
        input_: list[str] = []
        src_owner, dst_owner = self._owner(drop.src), self._owner(drop.dst)
        if src_owner:
            output.append(f"{src_owner} ip saddr != {src} ip daddr {dst} {verdict}")
        if dst_owner:
            input_.append(f"ip saddr {src} ip daddr != {dst} {dst_owner} {verdict}")
        return [], output, input_

    def remove(self, fault_id: str) -> None:
        failures = []
        for prefix in self._installed.pop(fault_id, []):
            try:
                _drop_table(prefix, fault_id)
            except LinkFaultError as exc:
                failures.append(str(exc))
        if failures:
            raise LinkFaultError("; ".join(failures))

    def remove_all(self) -> None:
        for fault_id in list(self._installed):
            self.remove(fault_id)

    def active(self) -> list[str]:
        return sorted(self._installed)


def isolate(host: str, others: Iterable[str]) -> list[Drop]:
    """Both directions between `host` and every other host."""
    return [d for other in others if other != host
            for d in (Drop(host, other), Drop(other, host))]


def split(side_a: Iterable[str], side_b: Iterable[str]) -> list[Drop]:
    b = list(side_b)
    return [d for x in side_a for y in b for d in (Drop(x, y), Drop(y, x))]


def lossy(hosts: Iterable[str], percent: int) -> list[Drop]:
    """`percent` % loss each way between every pair of `hosts`."""
    chosen = list(hosts)
    return [Drop(x, y, percent) for x in chosen for y in chosen if x != y]
