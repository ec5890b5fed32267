"""Run fence and probe attempts in a child process that can be killed.

Why a process and not a thread: pyghmi's IPMI sessions share one I/O thread
and event loop per process. Measured here: while one login waits on a silent
BMC, a login to a healthy BMC in the same process takes ~1 s instead of ~5 ms,
and a rejected login can surface as an AttributeError from a race in pyghmi;
a hung call may never return. Running each attempt in a child of its own keeps
BMCs from slowing each other down, and killing the child's process group at
the deadline guarantees that nothing more is sent after we report.

A child that answered cleanly is kept idle for the next attempt (one at a
time), so only the first attempt, or one after a failure, waits for an
interpreter and pyghmi's import (~0.2-0.4 s); a child whose BMC misbehaved is
retired, never reused.

Protocol: the parent writes one JSON line per request to the child's stdin
(the password travels only there, never in argv or the environment). The
child answers with lines that start with MARK: {"note": text or null,
"flags": {...}} as it goes, then {"fence": [outcome, detail]} or {"probe":
[ok, power, detail]}. Anything else the child prints (libraries, tracebacks)
is kept as evidence in case the child dies without an answer.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from hacluster.fence.attempt import Attempt, FenceFailure, scrub
from hacluster.fence.procedure import PowerSession, probe_action, run_action
from hacluster.ports import FenceAction, Secret

MARK = "\x1ehacluster-fence "
CLEANUP_THREAD_PREFIX = "fence-cleanup"
# The child's own procedure stops at the same deadline (CLOCK_MONOTONIC is
# shared by all processes); give its final line this long to arrive.
_ANSWER_GRACE_S = 0.15
_NOISE_KEEP = 2000

Request = dict[str, Any]
WorkerOpener = Callable[[Request, Attempt], PowerSession]


class WorkerFailed(FenceFailure):
    """The child process died or spoke nonsense; reported as ERROR."""


# ------------------------------------------------------------------ child side


def serve(open_session: WorkerOpener, prepare: Callable[[], object] | None = None) -> int:
    """The child's main: `prepare` (import the heavy library while nobody
    waits: an idle child sits here until it is needed), then answer requests
    one at a time until stdin closes."""
    _die_with_parent()
    if prepare is not None:
        prepare()
    lock = threading.Lock()

    def emit(message: dict[str, Any]) -> None:
        with lock:
            sys.stdout.write(MARK + json.dumps(message) + "\n")
            sys.stdout.flush()

    for line in sys.stdin:
        _answer(json.loads(line), open_session, emit)
        _join_cleanup(timeout_s=2.0)
    return 0


PARENT_ENV = "HACLUSTER_FENCE_PARENT"
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """A fence worker must never act after the peer that asked for it is gone (it would
    command a BMC on behalf of nobody): the kernel kills it when its parent dies, and a
    parent that died before this line ran is noticed by its pid."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = int(os.environ.get(PARENT_ENV, "0") or 0)
    if parent and os.getppid() != parent:
        os._exit(1)


def _answer(
    request: Request, open_session: WorkerOpener, emit: Callable[[dict[str, Any]], None]
) -> None:
    attempt = Attempt(float(request["deadline_mono"]) - time.monotonic())
    attempt.observer = lambda text, flags: emit({"note": text, "flags": flags})

    def opener(a: Attempt) -> PowerSession:
        return open_session(request, a)

    if request["op"] == "fence":
        action = FenceAction(request["action"])
        outcome, detail = run_action(opener, action, attempt, float(request["poll_s"]))
        emit({"fence": [outcome.value, detail]})
    else:
        ok, power, detail = probe_action(opener, attempt)
        emit({"probe": [ok, power.value, detail]})


def _join_cleanup(timeout_s: float) -> None:
    """Let background cleanup (e.g. an IPMI logout) finish after the answer
    went out, but not for long: the parent may kill us anyway."""
    end = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if thread.name.startswith(CLEANUP_THREAD_PREFIX):
            thread.join(max(0.0, end - time.monotonic()))


# ------------------------------------------------------------------ parent side


# The child starts isolated (-I: no environment variables, no cwd on the
# path) and then takes exactly the parent's import path, so it runs the same
# hacluster and libraries as the parent, wherever they were found.
_CHILD_CODE = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "import importlib; sys.exit(getattr(importlib.import_module(sys.argv[2]), sys.argv[3])())"
)


def _spawn(entry: tuple[str, str]) -> subprocess.Popen[bytes]:
    module, function = entry
    return subprocess.Popen(
        [sys.executable, "-I", "-c", _CHILD_CODE, json.dumps(sys.path), module, function],
        env={**os.environ, PARENT_ENV: str(os.getpid())},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, killed as a whole
    )


class Launcher:
    """Children running `module.function()` (which calls `serve`), with one
    idle child kept ready so an attempt does not wait for an interpreter and
    its imports. A child that answered cleanly goes back to being the idle
    one; any other is retired (its stdin closed, then killed if it lingers).
    When the parent exits, the idle child sees EOF and exits too."""

    def __init__(self, module: str, function: str, *, keep_idle: bool = True) -> None:
        self._entry = (module, function)
        self._keep_idle = keep_idle
        self._idle: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def take(self) -> subprocess.Popen[bytes]:
        """The idle child if there is one, else a new one."""
        with self._lock:
            proc, self._idle = self._idle, None
        if proc is None or proc.poll() is not None:
            proc = _spawn(self._entry)
        return proc

    def release(self, proc: subprocess.Popen[bytes], reusable: bool) -> None:
        """Hand a child back after an attempt; then make sure one is idle
        (started only now: a child importing its libraries during the attempt
        would compete with it for CPU)."""
        with self._lock:
            keep = reusable and self._keep_idle and self._idle is None and proc.poll() is None
            if keep:
                self._idle = proc
        if not keep:
            _retire(proc)
        self.warm()

    def warm(self) -> None:
        """Start an idle child if there is none (e.g. when the daemon starts)."""
        with self._lock:
            if self._keep_idle and (self._idle is None or self._idle.poll() is not None):
                self._idle = _spawn(self._entry)

    def close(self) -> None:
        with self._lock:
            proc, self._idle = self._idle, None
        if proc is not None:
            _kill(proc)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _retire(proc: subprocess.Popen[bytes], grace_s: float = 3.0) -> None:
    """Close the child's stdin so it exits after its cleanup (e.g. a logout);
    kill it if it lingers. Does not hold up the caller."""
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()

    def reap() -> None:
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _kill(proc)

    threading.Thread(target=reap, name="fence-worker-reaper", daemon=True).start()


class _Reader:
    """Splits the child's stdout into protocol messages and other output."""

    def __init__(self, attempt: Attempt) -> None:
        self._attempt = attempt
        self._buffer = b""
        self.noise = ""
        self.final: dict[str, Any] | None = None

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            self._line(raw.decode(errors="replace"))

    def _line(self, line: str) -> None:
        if not line.startswith(MARK):
            self.noise = (self.noise + " | " + line)[-_NOISE_KEEP:]
            return
        message = json.loads(line[len(MARK) :])
        if "flags" in message:
            self._attempt.update(**message["flags"])
            if message.get("note"):
                self._attempt.note(str(message["note"]))
        else:
            self.final = message


def run_in_worker(
    proc: subprocess.Popen[bytes], request: Request, attempt: Attempt, secret: Secret
) -> dict[str, Any] | None:
    """Hand `request` to a child from `Launcher.take`, mirroring its notes and
    flags into `attempt`. Returns its final message, or None if it had none by
    the deadline; then, or if it died (WorkerFailed), the child is killed.
    Give the child back with `Launcher.release` either way."""
    reader = _Reader(attempt)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        payload = {**request, "deadline_mono": attempt.deadline}
        proc.stdin.write((json.dumps(payload) + "\n").encode())
        proc.stdin.flush()
    except (BrokenPipeError, ValueError):
        pass  # it died (or was closed) already; the read below tells why
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while reader.final is None:
            left = attempt.remaining() + _ANSWER_GRACE_S
            if left <= 0 or not selector.select(left):
                _kill(proc)
                return None
            data = os.read(fd, 65536)
            if not data:
                _kill(proc)
                raise WorkerFailed(scrub(f"fence worker died: {reader.noise[-400:]}", secret))
            try:
                reader.feed(data)
            except (ValueError, TypeError) as err:
                _kill(proc)
                raise WorkerFailed(f"fence worker sent garbage: {err}") from None
    return reader.final
