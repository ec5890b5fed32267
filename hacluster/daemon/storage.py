"""Shared storage for the storage activity check (core/storage.py decides): this host's
heartbeat writer and the leader's reader.

Both touch files only in threads of their own, with a deadline: a hung NFS server
stalls one of those threads, never the lease loop or the leader's decisions.

- **Writer.** At every lease renewal round the peer hands `HeartbeatWriter.beat` a
  record (host, boot id, counter, wall time, JSON) for each configured directory; each
  directory has one writing thread, which writes `<dir>/.hacluster/<host>.heartbeat.tmp`
  and renames it over the heartbeat file (atomic: a reader sees the old record or the
  new one). While a write has not returned (a hung mount) that directory is skipped;
  failures are logged at most once a minute per directory and shown in status.
- **Reader.** The leader reads a host's heartbeat files and its VMs' disk files, each
  in a thread of a small pool, and waits at most `read_timeout_s`: a file not read by
  then counts as not readable. Every file is opened before it is looked at (fstat on
  the open file): NFS revalidates attributes on open (close-to-open consistency), where
  a plain stat could answer from an attribute cache many seconds old.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hacluster.core.ratelimit import RateLimiter
from hacluster.core.registration import storage_report
from hacluster.core.storage import (
    DISK,
    ERROR,
    HEARTBEAT,
    HEARTBEAT_DIR,
    MISSING,
    OK,
    CheckStorage,
    FileRead,
    StorageRead,
    heartbeat_file,
)
from hacluster.daemon.proposer import Proposer
from hacluster.daemon.replica import Replica
from hacluster.fsm.model import HostRole

log = logging.getLogger("hacluster.storage")
RECORD_MAX_BYTES = 4096
READ_THREADS = 4  # threads the leader's reads may hold (hung ones included)
LOG_EVERY_S = 60.0
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    try:
        return Path(BOOT_ID_FILE).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def wall_text(at: float) -> str:
    """A wall clock reading for people: 23:46:17.123Z (UTC)."""
    return time.strftime("%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"


class HeartbeatWriter:
    def __init__(self, me: str, paths: tuple[str, ...], timeout_s: float,
                 boot: str | None = None) -> None:
        self.me = me
        self.paths = paths
        self.timeout_s = timeout_s
        self.boot = boot if boot is not None else boot_id()
        self.counter = 0
        self._threads = {p: ThreadPoolExecutor(1, thread_name_prefix="hacluster-heartbeat")
                         for p in paths}
        self._running: dict[str, tuple[Future[None], float]] = {}
        self._written: dict[str, float] = {}  # path -> last write done (monotonic)
        self._problems: dict[str, str] = {}  # path -> latest failure (cleared on success)
        self._limiter = RateLimiter(LOG_EVERY_S)

    def beat(self) -> None:
        """One heartbeat in every directory; returns at once (called by the lease loop)."""
        if not self.paths:
            return
        self.counter += 1
        now = time.monotonic()
        record = json.dumps({"host": self.me, "boot": self.boot, "counter": self.counter,
                             "wall": round(time.time(), 3)}).encode()
        for path in self.paths:
            running = self._running.get(path)
            if running is not None and not running[0].done():  # skipped, said if overdue
                if now - running[1] > self.timeout_s:
                    self._problem(path, f"a write has not returned for "
                                  f"{now - running[1]:.1f} s (deadline {self.timeout_s:g} "
                                  "s): is the storage hung?")
                continue
            self._running[path] = (self._threads[path].submit(self._write, path, record), now)

    def _write(self, path: str, record: bytes) -> None:
        started = time.monotonic()
        target = heartbeat_file(path, self.me)
        try:
            if not os.path.isdir(path):  # never create it: it may be an absent mount
                raise FileNotFoundError(f"{path} is not a directory here")
            os.makedirs(os.path.join(path, HEARTBEAT_DIR), exist_ok=True)
            with open(f"{target}.tmp", "wb") as out:
                out.write(record)
            os.replace(f"{target}.tmp", target)
        except OSError as exc:
            self._problem(path, f"cannot write {target}: {exc.strerror or exc}")
            return
        took = time.monotonic() - started
        if took > self.timeout_s:
            self._problem(path, f"writing {target} took {took:.1f} s (deadline "
                          f"{self.timeout_s:g} s)")
            return
        self._written[path] = time.monotonic()
        self._problems.pop(path, None)

    def _problem(self, path: str, text: str) -> None:
        self._problems[path] = text
        burst = self._limiter.hit(path, time.monotonic())
        if burst is not None:
            more = f" ({burst.suppressed} more since)" if burst.suppressed else ""
            log.warning("storage heartbeat: %s%s", text, more,
                        extra={"path": path, "host": self.me})

    async def keep_record(self, proposer: Proposer | None, replica: Replica,
                          caught_up: Callable[[], bool], role: HostRole) -> None:
        """Say where this host writes heartbeats once every host reads that command
        (the peer's registration may have run before a rolling upgrade ended)."""
        if proposer is None or not caught_up():
            return
        with replica.read() as state:
            todo = storage_report(self.me, state, role, self.paths)
        if todo is not None:
            log.info("register: %s", todo[1], extra={"host": self.me})
            await proposer.submit(todo[0], deadline_s=5.0)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {path: {"last_write_s": round(now - self._written[path], 2)
                       if path in self._written else None,
                       "problem": self._problems.get(path, "")} for path in self.paths}

    def close(self) -> None:
        for pool in self._threads.values():
            pool.shutdown(wait=False, cancel_futures=True)


class StorageReader:
    """The leader's reads of a host's storage, each bounded by a deadline."""

    def __init__(self, threads: int = READ_THREADS) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="hacluster-storage-read")

    async def read(self, check: CheckStorage, timeout_s: float) -> StorageRead:
        started, wall = time.monotonic(), time.time()
        jobs = [(path, HEARTBEAT, heartbeat_file(path, check.host))
                for path in check.heartbeat_paths]
        jobs += [(path, DISK, path) for path in check.disks]
        futures = [asyncio.wrap_future(self._pool.submit(_read_file, kind, root, file))
                   for root, kind, file in jobs]
        if futures:
            await asyncio.wait(futures, timeout=timeout_s)
        files = []
        for (root, kind, file), future in zip(jobs, futures, strict=True):
            if future.done() and not future.cancelled() and future.exception() is None:
                files.append(future.result())
            else:
                failed = future.done() and not future.cancelled()
                problem = str(future.exception()) if failed else "no answer"
                future.cancel()  # (a thread stuck in the kernel stays stuck; it is one)
                files.append(FileRead(root if kind == HEARTBEAT else file, kind, ERROR,
                                      shown=f"not read within {timeout_s:g} s: {problem}"))
        return StorageRead(check.host, started, wall_text(wall), time.monotonic() - started,
                           tuple(files))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _read_file(kind: str, root: str, file: str) -> FileRead:
    """One heartbeat (reported by its directory) or disk file, opened then fstat'ed."""
    shown_path = root if kind == HEARTBEAT else file
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if os.path.isdir(root if kind == HEARTBEAT else os.path.dirname(file)):
            return FileRead(shown_path, kind, MISSING, shown="no such file")
        return FileRead(shown_path, kind, ERROR, shown="not readable here: no such directory")
    except OSError as exc:
        return FileRead(shown_path, kind, ERROR, shown=f"not readable: {exc.strerror or exc}")
    try:
        info = os.fstat(fd)
        data = os.read(fd, RECORD_MAX_BYTES) if kind == HEARTBEAT else b""
    except OSError as exc:
        return FileRead(shown_path, kind, ERROR, shown=f"not readable: {exc.strerror or exc}")
    finally:
        os.close(fd)
    modified = wall_text(info.st_mtime_ns / 1e9)
    if kind == DISK:
        return FileRead(shown_path, kind, OK, (info.st_size, info.st_mtime_ns),
                        f"modified {modified}")
    return _heartbeat(shown_path, data, info.st_size, info.st_mtime_ns, modified)


def _heartbeat(path: str, data: bytes, size: int, mtime_ns: int, modified: str) -> FileRead:
    try:
        record = json.loads(data)
        counter, boot, wall = int(record["counter"]), str(record["boot"]), float(record["wall"])
    except (ValueError, KeyError, TypeError):
        return FileRead(path, HEARTBEAT, OK, (None, None, size, mtime_ns),
                        f"not a heartbeat record ({size} bytes, modified {modified})")
    return FileRead(path, HEARTBEAT, OK, (counter, boot, size, mtime_ns),
                    f"#{counter} boot {boot[:8]} written {wall_text(wall)}")
