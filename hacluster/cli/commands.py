"""Every hactl command: its words, arguments, RPC method, and how to show the result.
One table drives the argument parser, the interactive shell and its completion."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hacluster.cli import render
from hacluster.cli.fencespec import fencing_params
from hacluster.fsm.domain_xml import MAX_DOMAIN_XML_BYTES

Arg = tuple[tuple[str, ...], dict[str, Any]]
Params = Callable[[argparse.Namespace], dict[str, Any]]


@dataclass(frozen=True)
class Spec:
    words: tuple[str, ...]
    method: str
    help: str
    examples: tuple[str, ...]
    params: Params
    args: tuple[Arg, ...] = ()
    render: Callable[[Any], str] | None = None
    streamed: bool = False
    completes: tuple[str, ...] = field(default=())  # "host" | "vm" per positional


def _name(a: argparse.Namespace) -> dict[str, Any]:
    return {"name": a.name}


def _none(a: argparse.Namespace) -> dict[str, Any]:
    return {}


def _given(a: argparse.Namespace, *keys: str) -> dict[str, Any]:
    return {k: getattr(a, k) for k in keys if getattr(a, k) is not None}


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def parse_pairs(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE words to a map; numbers become int or float, the rest stays text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        value: Any = raw
        for kind in (int, float):
            try:
                value = kind(raw)
                break
            except ValueError:
                continue
        out[key] = value
    return out


AGES = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: float) -> float:
    """A point in time as seconds since the epoch: ISO 8601 (local time unless it names
    its zone), @EPOCH, or an age before now (90s, 30m, 2h, 7d)."""
    text = text.strip()
    try:
        if text.startswith("@"):
            return float(text[1:])
        if text[-1:] in AGES and text[:-1].replace(".", "", 1).isdigit():
            return now - float(text[:-1]) * AGES[text[-1]]
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use 2026-01-02T10:00, @EPOCH, or an age "
                         "such as 30m, 2h, 7d)") from None


def _events(a: argparse.Namespace) -> dict[str, Any]:
    now = time.time()
    params: dict[str, Any] = {"follow": a.follow, "last": a.last,
                              **{k: v for k in ("host", "vm") if (v := getattr(a, k))}}
    for key in ("since", "until"):
        if getattr(a, key):
            params[key] = parse_time(getattr(a, key), now)
    return params


def _vm_options(a: argparse.Namespace) -> dict[str, Any]:
    params = _given(a, "priority", "ha", "anti_affinity", "max_restarts", "max_relocates",
                    "colocation", "failback")
    for listed in ("allowed_hosts", "start_after", "required_tags"):
        if getattr(a, listed) is not None:  # "" clears the list
            params[listed] = _csv(getattr(a, listed))
    if a.prefer is not None:
        params["preferred_hosts"] = parse_preferred(a.prefer)
    return params


def parse_preferred(text: str) -> list[list[Any]]:
    """`h1=100,h2=50` -> [["h1", 100], ["h2", 50]]; a host without a score gets 100 less
    10 for each host listed before it (`h1,h2`: 100, 90); "" clears the list."""
    out: list[list[Any]] = []
    for place, item in enumerate(_csv(text)):
        name, sep, score = item.partition("=")
        if not sep:
            out.append([name, max(1, 100 - 10 * place)])
            continue
        try:
            out.append([name, int(score)])
        except ValueError:
            raise ValueError(f"--prefer {item!r}: the score after '=' must be a whole "
                             "number (1 to 1000000)") from None
    return out


def read_domain_xml(path: str) -> str:
    """A domain XML file, refused before it is read (let alone sent) when it is larger
    than a peer accepts; the peer checks the rest (fsm/domain_xml.py)."""
    size = Path(path).stat().st_size
    if size > MAX_DOMAIN_XML_BYTES:
        raise ValueError(f"{path}: {size} bytes; a domain XML may have at most "
                         f"{MAX_DOMAIN_XML_BYTES} bytes ({MAX_DOMAIN_XML_BYTES // 1024} KiB)")
    return Path(path).read_text()


def _vm_add(a: argparse.Namespace) -> dict[str, Any]:
    return {"xml": read_domain_xml(a.file), **_vm_options(a), **_given(a, "desired")}


def _vm_set(a: argparse.Namespace) -> dict[str, Any]:
    params = {"name": a.name, **_vm_options(a)}
    if a.xml_file:
        params["xml"] = read_domain_xml(a.xml_file)
    return params


def _bmc_set(a: argparse.Namespace) -> dict[str, Any]:
    params = _given(a, "host", "address", "driver", "port", "username", "cipher_suite",
                    "agent", "action")
    if a.password_file:
        params["password"] = Path(a.password_file).read_text().strip()
    return params


VM_OPTIONS: tuple[Arg, ...] = (
    (("--priority",), {"type": int, "help": "higher is placed and recovered first"}),
    (("--ha",), {"choices": ["restart", "none"], "help": "restart after failures or not"}),
    (("--allowed-hosts",), {"metavar": "H1,H2", "help": "host limits (comma separated)"}),
    (("--anti-affinity",), {"metavar": "GROUP", "help": "members never share a host"}),
    (("--max-restarts",), {"type": int, "help": "restarts in place before relocating"}),
    (("--max-relocates",), {"type": int, "help": "relocations before giving up (error)"}),
    (("--start-after",), {"metavar": "VM1,VM2", "help": "start only once these VMs run "
                          "(mandatory start order, no timeout; '' clears)"}),
    (("--colocation",), {"metavar": "GROUP", "help": "members are kept together on one "
                         "host and move together ('' leaves the group)"}),
    (("--required-tags",), {"metavar": "T1,T2", "help": "run only on hosts carrying all "
                            "these tags (hactl host tag; '' clears)"}),
    (("--prefer",), {"metavar": "H1=SCORE,H2", "help": "preferred hosts with scores (higher "
                     "first; bare names 100, 90, ...; '' clears): placement prefers them"}),
    (("--failback",), {"choices": ["never", "auto"], "help": "auto: live-migrate back to the "
                       "best preferred host once it is ready (hactl host ready)"}),
)
NAME = (("name",), {"help": "name"})


def _tables(key: str, fn: Callable[[Any], str]) -> Callable[[Any], str]:
    return lambda result: fn(result[key])


COMMANDS: tuple[Spec, ...] = (
    Spec(("status",), "status", "leader, quorum, hosts, VMs, what waits for an operator",
         ("hactl status", "hactl --json status | jq .hosts"), _none, render=render.status),
    Spec(("host", "list"), "host.list", "hosts with state, lease age per link, BMC health",
         ("hactl host list",), _none, render=_tables("hosts", render.hosts_table)),
    Spec(("host", "show"), "host.show", "one host in detail", ("hactl host show h2",), _name,
         (NAME,), render=lambda r: render.block(f"host {r['host']['name']}", r["host"]),
         completes=("host",)),
    Spec(("host", "add"), "host.add", "add a host (and its Raft peer, for voters)",
         ("hactl host add h4 --raft 10.0.0.4:7440 --address mgmt=10.0.0.4 "
          "--bmc-address 10.0.1.4",),
         lambda a: {"name": a.name, "raft_address": a.raft or "", "role": a.role,
                    "addresses": a.address or [], "bmc_address": a.bmc_address or ""},
         (NAME, (("--raft",), {"metavar": "HOST:PORT", "help": "its Raft address"}),
          (("--address",), {"action": "append", "metavar": "LINK=IP",
                            "help": "a network it renews its lease over (repeatable)"}),
          (("--role",), {"default": "voter", "choices": ["voter", "member", "witness"]}),
          (("--bmc-address",), {"help": "its BMC address (see hactl bmc set)"}))),
    Spec(("host", "remove"), "host.remove", "remove an empty host from the cluster",
         ("hactl host remove h4",), _name, (NAME,), completes=("host",)),
    Spec(("host", "promote"), "host.promote",
         "make a non-voting member a Raft voter (its peer restarts in that role)",
         ("hactl host promote h7",), _name, (NAME,), completes=("host",)),
    Spec(("host", "demote"), "host.demote", "make a voter a non-voting member",
         ("hactl host demote h2",), _name, (NAME,), completes=("host",)),
    Spec(("host", "maintenance"), "host.maintenance",
         "on: drain by live migration, then hold in maintenance (never fenced); off: back",
         ("hactl host maintenance h2 on", "hactl host maintenance h2 off"),
         lambda a: {"name": a.name, "on": a.mode == "on"},
         (NAME, (("mode",), {"choices": ["on", "off"]})), completes=("host",)),
    Spec(("host", "drain"), "host.maintenance", "same as maintenance on",
         ("hactl host drain h2",), lambda a: {"name": a.name, "on": True}, (NAME,),
         completes=("host",)),
    Spec(("host", "ready"), "host.maintenance",
         "maintenance off, and the host may take VMs back: VMs with failback auto that "
         "prefer it return by live migration (a fenced or drained host waits for this)",
         ("hactl host ready h2",), lambda a: {"name": a.name, "on": False, "ready": True},
         (NAME,), completes=("host",)),
    Spec(("host", "tag"), "host.tag",
         "add or remove a host tag (VMs with --required-tags run only on hosts with them)",
         ("hactl host tag h2 add ssd", "hactl host tag h2 remove ssd"),
         lambda a: {"name": a.name, "tag": a.tag, "add": a.action == "add"},
         (NAME, (("action",), {"choices": ["add", "remove"]}), (("tag",), {"help": "tag"})),
         completes=("host",)),
    Spec(("host", "fencing"), "host.fencing",
         "set a host's fencing levels, tried in order; a level fences only when all its "
         "devices power off. DEVICE: bmc, ipmi:ADDR[:PORT], redfish:ADDR[:PORT] or "
         "agent:FENCE_AGENT:ADDR[:PORT], then ,KEY=VALUE... (username, password-file, "
         "cipher, or an agent option)",
         ("hactl host fencing h2 --level bmc --level "
          "agent:fence_apc_snmp:10.0.3.1,plug=3,password-file=/root/pdu.pw "
          "agent:fence_apc_snmp:10.0.3.2,plug=3,password-file=/root/pdu.pw",
          "hactl host fencing h2 --clear"), fencing_params,
         (NAME, (("--level",), {"action": "append", "nargs": "+", "metavar": "DEVICE",
                                "help": "one level: its devices, all of which must power "
                                "off (repeat for the next level)"}),
          (("--clear",), {"action": "store_true",
                          "help": "no levels: the host's BMC alone fences it"})),
         completes=("host",)),
    Spec(("vm", "list"), "vm.list", "VMs with state, host and the reason",
         ("hactl vm list",), _none, render=_tables("vms", render.vms_table)),
    Spec(("vm", "show"), "vm.show", "one VM in detail", ("hactl vm show db1",), _name,
         (NAME,), render=lambda r: render.block(f"vm {r['vm']['name']}", r["vm"]),
         completes=("vm",)),
    Spec(("vm", "add"), "vm.add", "define a VM from a libvirt domain XML file "
         f"(at most {MAX_DOMAIN_XML_BYTES // 1024} KiB)",
         ("hactl vm add db1.xml --priority 10 --anti-affinity db",), _vm_add,
         ((("file",), {"help": "domain XML (name, memory and vCPUs are read from it)"}),
          *VM_OPTIONS, (("--desired",), {"choices": ["started", "stopped", "disabled"]}))),
    Spec(("vm", "remove"), "vm.remove", "forget a stopped VM", ("hactl vm remove db1",),
         _name, (NAME,), completes=("vm",)),
    Spec(("vm", "set"), "vm.set",
         "change priority, limits, anti-affinity, relations, HA policy, caps, preferred "
         "hosts, failback",
         ("hactl vm set db1 --priority 20 --allowed-hosts h1,h2",
          "hactl vm set app1 --start-after db1 --colocation shop --required-tags ssd",
          "hactl vm set db1 --prefer h1=100,h2=50 --failback auto"), _vm_set,
         (NAME, *VM_OPTIONS, (("--xml-file",), {"help": "new domain XML (next start)"})),
         completes=("vm",)),
    Spec(("vm", "start"), "vm.start", "desired started", ("hactl vm start db1",), _name,
         (NAME,), completes=("vm",)),
    Spec(("vm", "stop"), "vm.stop", "desired stopped (stays down)", ("hactl vm stop db1",),
         _name, (NAME,), completes=("vm",)),
    Spec(("vm", "disable"), "vm.disable", "stop and stop managing it",
         ("hactl vm disable db1",), _name, (NAME,), completes=("vm",)),
    Spec(("vm", "migrate"), "vm.migrate", "live-migrate (to HOST, or where placement says)",
         ("hactl vm migrate db1 h3", "hactl vm migrate db1"),
         lambda a: {"name": a.name, "target": a.target or ""},
         (NAME, (("target",), {"nargs": "?", "help": "destination host"})),
         completes=("vm", "host")),
    Spec(("explain",), "explain", "why a VM is where it is, and where it would go next",
         ("hactl explain db1",), _name, (NAME,),
         render=lambda r: "\n".join(r["lines"]), completes=("vm",)),
    Spec(("fence", "history"), "fence.history", "every fence attempt with its evidence",
         ("hactl fence history", "hactl fence history h2 --limit 5"),
         lambda a: {"host": a.host or "", "limit": a.limit},
         ((("host",), {"nargs": "?"}), (("--limit",), {"type": int, "default": 50})),
         render=_tables("fences", render.fences_table), completes=("host",)),
    Spec(("fence", "confirm"), "fence.confirm",
         "state that a host is powered off (by hand): releases its VMs",
         ("hactl fence confirm h2 --reason 'pulled the power cords in rack B4'",),
         lambda a: {"host": a.host, "reason": a.reason},
         ((("host",), {}), (("--reason",), {"required": True})), completes=("host",)),
    Spec(("fence", "retry"), "fence.retry", "a new fence attempt for a fence-failed host",
         ("hactl fence retry h2",), lambda a: {"host": a.host}, ((("host",), {}),),
         completes=("host",)),
    Spec(("fence", "cap"), "fence.cap", "show (or set) the fence cap: K fences per window",
         ("hactl fence cap", "hactl fence cap --set 2 --window 3600"),
         lambda a: _given(a, "set", "window") and {"cap": a.set, "window_s": a.window}
         if (a.set is not None or a.window is not None) else {},
         ((("--set",), {"type": int, "metavar": "K"}),
          (("--window",), {"type": float, "metavar": "SECONDS"})),
         render=lambda r: render.block("fence cap", r["cap"])),
    Spec(("cluster", "maintenance"), "cluster.maintenance",
         "on: disable all fencing (hosts stay suspect); off: enable",
         ("hactl cluster maintenance on",), lambda a: {"on": a.mode == "on"},
         ((("mode",), {"choices": ["on", "off"]}),)),
    Spec(("events",), "events",
         "the event history: changes, decisions and who wrote what; --follow keeps printing",
         ("hactl events --follow", "hactl events --vm db1 --since 2h",
          "hactl events --host h2 --since '2026-01-02 10:00' --until '2026-01-02 11:00'",
          "hactl --json events --last 500"),
         _events,
         ((("--follow", "-f"), {"action": "store_true"}),
          (("--last",), {"type": int, "default": 50, "help": "at most this many (newest)"}),
          (("--host",), {"help": "only what concerns this host"}),
          (("--vm",), {"help": "only what concerns this VM"}),
          (("--since",), {"metavar": "TIME", "help": "from TIME: 2026-01-02[T10:00[:00]] "
                          "(local time unless it ends in Z or +HH:MM), @EPOCH, or an age "
                          "such as 90s, 30m, 2h, 7d"}),
          (("--until",), {"metavar": "TIME", "help": "up to TIME (as --since)"})),
         streamed=True),
    Spec(("history",), "history.status",
         "where this peer keeps its event history, its size, damage found at start",
         ("hactl history",), _none, render=lambda r: render.history_status(r["history"])),
    Spec(("config", "show"), "config.show", "this peer's configuration (no secrets)",
         ("hactl config show",), _none,
         render=lambda r: "\n".join(render.block(f"[{k}]", v) for k, v in r["config"].items()
                                    if isinstance(v, dict))),
    Spec(("settings", "show"), "settings.show", "replicated cluster settings",
         ("hactl settings show",), _none,
         render=lambda r: render.block("settings", r["settings"])),
    Spec(("settings", "set"), "settings.set", "change replicated settings",
         ("hactl settings set lease_ttl_s=5 selector=vm-count",),
         lambda a: {"values": parse_pairs(a.pairs)}, ((("pairs",), {"nargs": "+",
                                                              "metavar": "KEY=VALUE"}),)),
    Spec(("settings", "shutdown-policy"), "shutdown.policy",
         "what a peer stopped by SIGTERM does with its VMs (--host: that host's own; "
         "default: it follows the cluster's)",
         ("hactl settings shutdown-policy migrate",
          "hactl settings shutdown-policy freeze --host h2"),
         lambda a: {"policy": a.policy, "host": a.host or ""},
         ((("policy",), {"choices": ["migrate", "stop", "freeze", "failover", "default"]}),
          (("--host",), {"help": "this host only"}))),
    Spec(("bmc", "show"), "bmc.show", "BMC defaults and per-host overrides (sealed)",
         ("hactl bmc show",), _none,
         render=lambda r: "\n".join([render.block("defaults", r["defaults"])] + [
             render.block(f"host {h}", b) for h, b in r["hosts"].items()])),
    Spec(("bmc", "set"), "bmc.set", "set BMC defaults, or one host's overrides (--host)",
         ("hactl bmc set --username admin --password-file /root/bmc.pw",
          "hactl bmc set --host h2 --address 10.0.1.2 --port 623"), _bmc_set,
         ((("--host",), {}), (("--address",), {}),
          (("--driver",), {"help": "ipmi, redfish, agent, or a registered plug-in"}),
          (("--port",), {"type": int}),
          (("--username",), {}), (("--password-file",), {"help": "file holding the password"}),
          (("--cipher-suite",), {"type": int}), (("--agent",), {"help": "fence agent"}),
          (("--action",), {"choices": ["off", "reboot", "none", "identify"]}))),
)


def _examples(prefix: tuple[str, ...] = ()) -> str:
    """The first example of every command under prefix (all commands: no prefix)."""
    shown = [s.examples[0] for s in COMMANDS if s.words[: len(prefix)] == prefix]
    return "examples:\n" + "\n".join(f"  {e}" for e in shown)


def _add_spec(sub: Any, spec: Spec, parents: dict[tuple[str, ...], Any]) -> None:
    *group, leaf = spec.words
    target = sub
    for i in range(len(group)):
        key = tuple(group[: i + 1])
        if key not in parents:
            p = target.add_parser(group[i], help=f"{group[i]} commands",
                                  epilog=_examples(key),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
            parents[key] = p.add_subparsers(dest=f"sub_{i}", metavar="COMMAND", required=True)
        target = parents[key]
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in spec.examples)
    parser = target.add_parser(leaf, help=spec.help, description=spec.help, epilog=epilog,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    for flags, kwargs in spec.args:
        parser.add_argument(*flags, **kwargs)
    parser.set_defaults(spec=spec)


def build_parser(default_socket: str) -> argparse.ArgumentParser:
    from hacluster.cli import hactl

    parser = argparse.ArgumentParser(
        prog="hactl", description="Admin shell for a hacluster cluster. With no command, "
        "an interactive shell.",
        epilog=_examples() + "\n\n" + (hactl.__doc__ or "").split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connect", default=default_socket, metavar="TARGET",
                        help="peer to talk to: a Unix socket path, or HOST:PORT over TLS "
                        "(default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="also say how fresh each read is")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--token-file", help="bearer token for TCP")
    parser.add_argument("--cafile", help="CA for the peer's TLS certificate")
    parser.add_argument("--cert", help="client certificate (TLS)")
    parser.add_argument("--key", help="client key (TLS)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parents: dict[tuple[str, ...], Any] = {}
    for spec in COMMANDS:
        _add_spec(sub, spec, parents)
    parser.set_defaults(spec=None)
    return parser
