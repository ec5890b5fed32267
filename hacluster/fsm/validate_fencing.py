"""What is wrong with a host's fencing levels (`SetHostFencing`), whatever the state:
how many levels and devices, each device's kind, address, port, agent and options.
fsm/validate.py applies it before proposing and at apply (a new command: both alike)."""

from __future__ import annotations

import re

from hacluster.fsm.model import FENCE_DEVICE_DRIVERS, FenceDevice, FenceLevel

Found = tuple[str, str]  # (field, message); "" message: no problem

MAX_FENCE_LEVELS = 4
MAX_LEVEL_DEVICES = 4
MAX_DEVICE_OPTIONS = 16
FENCE_AGENT_RE = re.compile(r"^(/[^\0]*/)?fence_[A-Za-z0-9_.-]+$")  # a name, or an absolute path
OPTION_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# a host name, an IPv4 address, or an IPv6 one (brackets optional)
DEVICE_ADDRESS_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*|"
                               r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?)$")


def fence_levels_problem(levels: tuple[FenceLevel, ...]) -> Found:
    """The first thing wrong with a host's fencing levels, as (field, message)."""
    if len(levels) > MAX_FENCE_LEVELS:
        return "levels", f"at most {MAX_FENCE_LEVELS} fencing levels (got {len(levels)})"
    for number, level in enumerate(levels, 1):
        where = f"level {number}"
        if not level.devices:
            return "levels", f"{where} has no device"
        if len(level.devices) > MAX_LEVEL_DEVICES:
            return "levels", (f"{where}: at most {MAX_LEVEL_DEVICES} devices per level (got "
                              f"{len(level.devices)})")
        if len(set(level.devices)) != len(level.devices):
            return "levels", f"{where}: a device is listed twice"
        for position, device in enumerate(level.devices, 1):
            problem = fence_device_problem(device)
            if problem:
                return "levels", f"{where}, device {position} ({device.driver}): {problem}"
    return "", ""


def fence_device_problem(d: FenceDevice) -> str:
    """What is wrong with one fence device on its own ("" if nothing)."""
    if d.driver not in FENCE_DEVICE_DRIVERS:
        return f"unknown device kind {d.driver!r}: one of {', '.join(FENCE_DEVICE_DRIVERS)}"
    if d.driver == "bmc":
        return "" if d == FenceDevice("bmc") else (
            "a bmc device is the host's own BMC settings (hactl bmc set): it takes no "
            "address, credentials or options")
    if not DEVICE_ADDRESS_RE.match(d.address):
        return (f"address {d.address!r}: expected a host name or an IP address"
                if d.address else "an address is needed")
    if not 0 <= d.port < 65536:
        return f"port {d.port} out of range"
    if d.cipher_suite < -1 or d.cipher_suite > 255:
        return f"cipher suite {d.cipher_suite} out of range (-1 for the default)"
    if (d.driver == "agent") != bool(d.agent):
        return ("an agent device names its fence agent" if d.driver == "agent" else
                f"only an agent device names a fence agent (got {d.agent!r})")
    if d.agent and not FENCE_AGENT_RE.match(d.agent):
        return f"fence agent {d.agent!r}: expected a fence_* executable (e.g. fence_apc_snmp)"
    return _device_options_problem(d)


def _device_options_problem(d: FenceDevice) -> str:
    if d.options and d.driver == "ipmi":
        return "an ipmi device takes no options"
    if len(d.options) > MAX_DEVICE_OPTIONS:
        return f"at most {MAX_DEVICE_OPTIONS} options (got {len(d.options)})"
    keys = [key for key, _ in d.options]
    if len(set(keys)) != len(keys):
        return "an option is given twice"
    for key, value in d.options:
        if not OPTION_KEY_RE.match(key) or any(ch in value for ch in "\r\n\0"):
            return f"option {key!r}: expected key=value on one line (key: letters, digits, _ -)"
        if key in ("action", "password", "passwd"):
            return f"option {key!r} is set by hacluster (give a password with password-file)"
    return ""
