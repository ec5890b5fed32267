"""Looking at a migration's destination (hypervisor/migration.py `_open_within`):
libvirt's open has no timeout, so an unreachable destination must not hold a
peer-to-peer migration for the kernel's SYN retries."""

from __future__ import annotations

import socket
import time

import libvirt

from hacluster.hypervisor.migration import _open_within
from raftlab.harness import free_ports


def test_a_destination_that_never_answers_is_given_up_after_the_timeout() -> None:
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    filler = socket.create_connection(hole.getsockname())  # the queue is full: SYNs drop
    try:
        began = time.monotonic()
        looked = _open_within(f"qemu+tcp://127.0.0.1:{hole.getsockname()[1]}/system", 0.5)
        took = time.monotonic() - began
    finally:
        filler.close()
        hole.close()
    assert looked == "no answer within 0.5 s"
    assert took < 5.0


def test_a_refused_destination_says_why() -> None:
    (port,) = free_ports(1)
    looked = _open_within(f"qemu+tcp://127.0.0.1:{port}/system", 10.0)
    assert isinstance(looked, str) and "Connection refused" in looked, looked


def test_a_reachable_destination_is_opened() -> None:
    looked = _open_within("test:///default", 10.0)
    assert isinstance(looked, libvirt.virConnect)
    try:
        assert looked.getURI() == "test:///default"
    finally:
        looked.close()
