"""hactl's words for fence devices (`hactl host fencing`), turned into the maps the
`host.fencing` RPC method takes (daemon/api_fencing.py).

    bmc                                       the host's own BMC settings (hactl bmc set)
    ipmi:ADDRESS[:PORT][,KEY=VALUE...]        IPMI (credentials default to the cluster's)
    redfish:ADDRESS[:PORT][,KEY=VALUE...]     Redfish (HTTPS)
    agent:FENCE_AGENT:ADDRESS[:PORT][,KEY=VALUE...]   a fence-agents program

KEY=VALUE: username=NAME, password-file=PATH (read here, sent to the peer, which seals
it), cipher=N (IPMI cipher suite), port=N; any other key is an option for the agent
(plug=3) or Redfish (system=...). An IPv6 address with a port is written in brackets:
ipmi:[fe80::1]:623.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

KINDS = ("ipmi", "redfish", "agent")


class DeviceSyntaxError(ValueError):
    """A device word hactl cannot read; the message shows the expected form."""


def _address_port(text: str, word: str) -> tuple[str, int | None]:
    if text.startswith("["):  # [v6]:port or [v6]
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
        return host, _port(port, word) if port else None
    if text.count(":") == 1:  # host:port (a bare v6 address has several colons)
        host, port = text.split(":")
        return host, _port(port, word)
    return text, None


def _port(text: str, word: str) -> int:
    if not text.isdigit():
        raise DeviceSyntaxError(f"{word!r}: port {text!r} is not a number")
    return int(text)


def parse_device(word: str) -> dict[str, Any]:
    """One device word to a `host.fencing` device map (the password file is read)."""
    if word == "bmc":
        return {"driver": "bmc"}
    target, *pairs = word.split(",")
    kind, sep, rest = target.partition(":")
    if not sep or kind not in KINDS or not rest:
        raise DeviceSyntaxError(f"{word!r}: expected bmc, ipmi:ADDRESS[:PORT], "
                                "redfish:ADDRESS[:PORT] or agent:FENCE_AGENT:ADDRESS[:PORT] "
                                "(then ,KEY=VALUE...)")
    device: dict[str, Any] = {"driver": kind}
    if kind == "agent":
        agent, sep, rest = rest.partition(":")
        if not sep or not rest:
            raise DeviceSyntaxError(f"{word!r}: expected agent:FENCE_AGENT:ADDRESS[:PORT]")
        device["agent"] = agent
    device["address"], port = _address_port(rest, word)
    if port is not None:
        device["port"] = port
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DeviceSyntaxError(f"{word!r}: expected KEY=VALUE after a comma, got {pair!r}")
        _setting(device, options, key, value, word)
    if options:
        device["options"] = options
    return device


def _setting(device: dict[str, Any], options: dict[str, str], key: str, value: str,
             word: str) -> None:
    if key == "username":
        device["username"] = value
    elif key == "password-file":
        device["password"] = Path(value).read_text().strip()
    elif key in ("cipher", "port"):
        device["cipher_suite" if key == "cipher" else "port"] = _port(value, word)
    elif key in options:
        raise DeviceSyntaxError(f"{word!r}: {key} is given twice")
    else:
        options[key] = value


def fencing_params(a: argparse.Namespace) -> dict[str, Any]:
    """`hactl host fencing NAME --level DEVICE... [--level ...]` or `--clear`."""
    if bool(a.level) == bool(a.clear):
        raise DeviceSyntaxError("give the levels in order (--level DEVICE [DEVICE...], "
                                "repeated) or --clear")
    levels = [[parse_device(word) for word in devices] for devices in (a.level or [])]
    return {"name": a.name, "levels": levels}
