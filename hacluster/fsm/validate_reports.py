"""The rules of fsm/validate.py for what hosts report about their own safety: the shared
storage they write heartbeats to and the leader's storage checks (core/storage.py), and
their watchdogs (self-fencing)."""

from __future__ import annotations

import math
from collections.abc import Iterator

from hacluster.fsm import commands as c
from hacluster.fsm.model import StorageCheck, StorageVerdict, Watchdog, WatchdogKind

Found = tuple[str, str]  # (field, message); "" message: no problem

MAX_HEARTBEAT_PATHS = 8  # shared storage directories a host writes heartbeats to
MAX_PATH_BYTES = 1024
MAX_STORAGE_READS = 32  # read lines kept in one storage check's evidence


def storage_check_problem(check: StorageCheck, field: str) -> Found:
    if check.checks < 0:
        return f"{field}.checks", f"checks must be >= 0 (got {check.checks})"
    if len(check.reads) > MAX_STORAGE_READS:
        return f"{field}.reads", (f"at most {MAX_STORAGE_READS} reads are kept (got "
                                  f"{len(check.reads)})")
    if check.verdict is StorageVerdict.NONE and (check.checks or check.reads):
        return f"{field}.verdict", "a storage check without a verdict has no checks or reads"
    return "", ""


def heartbeat_paths_problem(paths: tuple[str, ...]) -> str:
    """Absolute directories, each once, at most MAX_HEARTBEAT_PATHS ("" if fine): the
    leader reads every host's heartbeats at the paths that host reported."""
    if len(paths) > MAX_HEARTBEAT_PATHS:
        return f"at most {MAX_HEARTBEAT_PATHS} heartbeat paths (got {len(paths)})"
    if len(set(paths)) != len(paths):
        return "a heartbeat path is listed twice"
    for path in paths:
        parts = path.split("/")
        if not path.startswith("/") or "\x00" in path or ".." in parts or \
                len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
            return (f"heartbeat path {path!r}: expected an absolute directory without "
                    f"'..', at most {MAX_PATH_BYTES} bytes")
    return ""


def _report_storage(cmd: c.ReportStorage, admission: bool) -> Iterator[Found]:
    yield "heartbeat_paths", heartbeat_paths_problem(cmd.heartbeat_paths)


def _storage_checked(cmd: c.StorageChecked, admission: bool) -> Iterator[Found]:
    yield "token", "" if cmd.token >= 0 else f"token must be >= 0 (got {cmd.token})"
    yield "check.verdict", ("" if cmd.check.verdict is not StorageVerdict.NONE else
                            "a storage check needs a verdict")
    yield storage_check_problem(cmd.check, "check")


def watchdog_problem(w: Watchdog) -> Found:
    if w.kind is WatchdogKind.NONE:
        return "watchdog.armed", "a host without a watchdog cannot have it armed" \
            if w.armed else ""
    for name in ("timeout_s", "self_fence_s"):
        value = getattr(w, name)
        if not (math.isfinite(value) and value > 0):
            return f"watchdog.{name}", f"{name} must be a positive number (got {value})"
    return "", ""


def _report_watchdog(cmd: c.ReportWatchdog, admission: bool) -> Iterator[Found]:
    yield watchdog_problem(cmd.watchdog)
