"""The chassis behind a simulated BMC: ipmi_sim's `chassis_control` program.

ipmi_sim runs `<program> get power` (we print `power:1` or `power:0`),
`<program> set power 0|1` and `<program> set identify SECONDS FORCE` and waits
for the program to exit before it answers the IPMI request, so every call here
must return quickly. The state lives in files in one directory (written by
`hacluster.lab.bmc.BmcSim`):

- `power`        "1" or "0", replaced atomically
- `chassis.json` {"power_off_cmd": [...], "power_on_cmd": [...], "cmd_timeout_s": N}
- `mode.json`    {"mode": "works" | "slow" | ..., "delay_s": N}
- `pending.json` the change a slow BMC has accepted but not yet made
- `power.log`    one JSON object per line for every power change and identify
                 (`mono`: done, the state file changed; `began`: the hook started)
- `reads.log`    one line per `get power` an IPMI client asked: "WALL STATE" (the
                 wall clock in seconds, 1 or 0), written by the shell wrapper

Run as `python -m hacluster.lab.chassis DIR get power` and the like, or
through `command_argv(DIR)` (what the wrapper script ipmi_sim calls uses);
`... DIR apply-later 0|1 DELAY` is the slow mode's delayed change. Only the
standard library is imported, and little of it, because ipmi_sim starts this
for every request.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

POWER_FILE = "power"
CONFIG_FILE = "chassis.json"
MODE_FILE = "mode.json"
PENDING_FILE = "pending.json"
LOG_FILE = "power.log"
READS_FILE = "reads.log"
LOCK_FILE = "chassis.lock"
CMD_LOG_FILE = "commands.log"


def read_power(directory: Path) -> bool | None:
    """True for on, False for off, None if the file is missing or garbled."""
    try:
        text = (directory / POWER_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return {"1": True, "0": False}.get(text)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace a file atomically so a concurrent reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _write_power(directory: Path, on: bool) -> None:
    tmp = directory / f".{POWER_FILE}.{os.getpid()}.tmp"
    tmp.write_text("1" if on else "0")
    os.replace(tmp, directory / POWER_FILE)


def log_event(
    directory: Path, event: str, cause: str, detail: str = "", began: float | None = None,
    at: float | None = None,
) -> None:
    """Append one line; O_APPEND keeps lines from different processes whole.
    `began`: when a power change started (its hook ran from then until `at`);
    `at`: when it took effect (default: now)."""
    now = time.monotonic() if at is None else at  # CLOCK_MONOTONIC: comparable across processes
    line = json.dumps(
        {
            "wall": time.time(),
            "mono": now,
            "began": now if began is None else began,
            "event": event,
            "cause": cause,
            "detail": detail,
        }
    )
    with open(directory / LOG_FILE, "a") as log:
        log.write(line + "\n")


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Serialise state changes: ipmi_sim may run us again while a change runs
    (pyghmi retransmits), and the lab itself changes power from the test."""
    with open(directory / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_hook(directory: Path, argv: list[str], timeout_s: float) -> str:
    """Run the power-off/on command; return a short result for the log."""
    if not argv:
        return "no command"
    import subprocess  # only the set-power path pays for this import

    with open(directory / CMD_LOG_FILE, "a") as out:
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"command timed out after {timeout_s:g} s"
        except OSError as err:
            return f"command failed to start: {err.strerror}"
    return f"command exit {done.returncode}"


def apply_power(directory: Path, on: bool, cause: str) -> bool:
    """Make the change now (caller holds the lock). Returns False if the
    chassis already was in that state. The hook runs before the state file
    changes, so "reads off" really means the host's processes are gone."""
    if read_power(directory) is on:
        return False
    config = _read_json(directory / CONFIG_FILE)
    hook = config.get("power_on_cmd" if on else "power_off_cmd") or []
    began = time.monotonic()
    result = _run_hook(directory, list(hook), float(config.get("cmd_timeout_s", 10.0)))
    done = time.monotonic()  # the hook has killed (or started) the host's processes by now
    _write_power(directory, on)
    log_event(directory, "power-on" if on else "power-off", cause, result, began, done)
    return True


# -S skips site-packages (this starts for every IPMI request, so startup time
# counts; only the standard library is needed); hacluster's own directory is
# appended to the path, after the standard library, so nothing is shadowed.
_RUN = (
    "import sys; sys.path.append(sys.argv[1]); from hacluster.lab.chassis import main; "
    "sys.exit(main(sys.argv[2:]))"
)


def command_argv(directory: Path) -> list[str]:
    """How to run this program for the chassis in `directory` (append the
    ipmi_sim arguments)."""
    root = str(Path(__file__).resolve().parents[2])
    return [sys.executable, "-S", "-c", _RUN, root, str(directory)]


def _spawn_apply_later(directory: Path, on: bool, delay_s: float) -> None:
    import subprocess

    # stdio must not be ipmi_sim's pipe, or ipmi_sim would wait for this child
    # to exit before answering. The child stays in ipmi_sim's process group so
    # stopping the simulator also stops a pending change.
    subprocess.Popen(
        [*command_argv(directory), "apply-later", "1" if on else "0", repr(delay_s)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )


def set_power(directory: Path, on: bool) -> None:
    """ipmi_sim's `set power 0|1`."""
    with locked(directory):
        mode = _read_json(directory / MODE_FILE)
        delay_s = float(mode.get("delay_s", 0.0)) if mode.get("mode") == "slow" else 0.0
        if delay_s <= 0:
            (directory / PENDING_FILE).unlink(missing_ok=True)
            apply_power(directory, on, "ipmi")
            return
        pending = _read_json(directory / PENDING_FILE)
        if pending.get("on") is on or (not pending and read_power(directory) is on):
            return  # a retransmitted request, or nothing to change
        due = time.monotonic() + delay_s
        write_json(directory / PENDING_FILE, {"on": on, "due": due})
        log_event(directory, "power-accepted", "ipmi", f"{'on' if on else 'off'} in {delay_s:g} s")
        _spawn_apply_later(directory, on, delay_s)


def apply_later(directory: Path, on: bool, delay_s: float) -> None:
    """The slow BMC's change, made delay_s after it was accepted, unless a
    newer request replaced it meanwhile."""
    time.sleep(delay_s)
    with locked(directory):
        pending = _read_json(directory / PENDING_FILE)
        if pending.get("on") is not on:
            return
        (directory / PENDING_FILE).unlink(missing_ok=True)
        apply_power(directory, on, "ipmi-delayed")


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: chassis DIR get power | set power 0|1 | set identify N F", file=sys.stderr)
        return 2
    directory, verb, what, rest = Path(argv[0]), argv[1], argv[2], argv[3:]
    if (verb, what) == ("get", "power"):
        print(f"power:{1 if read_power(directory) else 0}")
    elif (verb, what) == ("set", "power") and rest:
        set_power(directory, rest[0] == "1")
    elif (verb, what) == ("set", "identify"):
        log_event(directory, "identify", "ipmi", " ".join(rest))
    elif verb == "apply-later" and rest:
        apply_later(directory, what == "1", float(rest[0]))
    # Anything else ipmi_sim may ask (boot device, ...) is not simulated: an
    # empty answer makes ipmi_sim report the parameter as unsupported.
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
