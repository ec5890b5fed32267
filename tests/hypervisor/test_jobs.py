"""The abort deadline used for live migrations, without libvirt."""

from __future__ import annotations

import threading

from hacluster.hypervisor.jobs import abort_after

from .support import wait_for


def test_no_abort_when_the_job_ends_in_time() -> None:
    calls: list[int] = []
    with abort_after(5.0, lambda: calls.append(1), "quick") as fired:
        pass
    assert not fired.is_set() and calls == []


def test_abort_is_retried_until_the_job_ends() -> None:
    calls: list[int] = []
    ended = threading.Event()

    def abort() -> None:
        calls.append(1)
        if len(calls) == 3:  # refused twice ("no job yet"), then accepted
            ended.set()

    with abort_after(0.01, abort, "slow", retry_s=0.01) as fired:
        wait_for(ended.is_set, 2.0, "the third abort")
    assert fired.is_set() and len(calls) >= 3
