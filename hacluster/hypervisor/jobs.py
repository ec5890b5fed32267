"""Deadlines for long hypervisor jobs (live migration) that libvirt itself
does not bound: after the timeout, keep asking for an abort until the job ends.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def abort_after(
    timeout_s: float, abort: Callable[[], None], label: str, retry_s: float = 0.1
) -> Iterator[threading.Event]:
    """Call abort() once timeout_s has passed and every retry_s after that,
    until the block ends; the yielded event tells whether it fired. Retrying
    matters because an abort during a job's preparation phase is refused
    ("no job is active") and would otherwise be lost."""
    done = threading.Event()
    fired = threading.Event()

    def watch() -> None:
        if done.wait(timeout_s):
            return
        fired.set()
        while not done.is_set():
            abort()
            done.wait(retry_s)

    thread = threading.Thread(target=watch, name=f"abort {label}", daemon=True)
    thread.start()
    try:
        yield fired
    finally:
        done.set()
        thread.join()
