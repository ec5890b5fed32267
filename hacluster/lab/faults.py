"""A cut of one *address* on loopback: an nftables table, owned by this
process, that drops every packet from or to it (e.g. one lease link of a
host, its backend address). It tells packets by address only, so it is not a
host cut: a host's process that talks from 127.0.0.1 passes. To cut a host,
use `LabCluster.cut` (hacluster.lab.linkfaults, which also tells packets by
their socket's cgroup). The BMCs (on 127.0.0.1) and the RPC Unix sockets stay
reachable, as a management network would."""

from __future__ import annotations

import os
import subprocess


class AddressCut:
    def __init__(self, address: str) -> None:
        self.address = address
        self.table = f"halab_{os.getpid()}_{address.replace('.', '_')}"
        self.active = False

    def _nft(self, *args: str) -> None:
        done = subprocess.run(["nft", *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"nft {' '.join(args)}: {done.stderr.strip()}")

    def apply(self) -> None:
        self._nft("add", "table", "inet", self.table)
        self._nft("add", "chain", "inet", self.table, "out",
                  "{ type filter hook output priority 0; }")
        self._nft("add", "rule", "inet", self.table, "out", "ip", "saddr", self.address, "drop")
        self._nft("add", "rule", "inet", self.table, "out", "ip", "daddr", self.address, "drop")
        self.active = True

    def restore(self) -> None:
        if self.active:
            self._nft("delete", "table", "inet", self.table)
            self.active = False

    def __enter__(self) -> AddressCut:
        self.apply()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
