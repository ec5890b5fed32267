"""What is wrong with a command, before it is proposed and before it is applied.

`command_problem(command)` returns the first thing wrong with a command that no
state can make right ("" when there is none): a name that is not a name, a number out
of its range, a value that is not one of the allowed ones, text or a whole command too
large for the log, a domain XML that is too large, does not parse, declares a DOCTYPE
or entities, is not a <domain> or names another VM. `find_problem` says the same with
the field at fault. `state_problem(state, command)` adds what a replica can tell: a
host or VM the command needs does not exist, a VM or host to add already does, a
setting that does not fit with the others. The admin API (daemon/api.py) runs both
before it proposes anything, so refused input never reaches Raft: it grows no journal
and never slows replication (issue 9, item 3).

## Two tiers, and why `apply` enforces only one

`apply` runs `find_problem(command, at_apply=True)` before any handler, so every
stateless rule is written once, here, and an entry that bypassed the API is refused
the same way on every peer. But `apply` must refuse exactly the entries it always
refused: during a rolling upgrade peers of two releases apply the same log, and an
upgraded peer replays journal entries written before it was upgraded. Were it to
refuse an entry an older release accepted (a 300 KiB or a malformed domain XML, say),
its state would differ from the others' from that index on, and nothing would say so.
Hence two tiers:

- Rules checked at apply: the stateless checks apply's handlers made before this
  module existed, moved here with their messages. Checked before the handler's state
  checks instead of among them, they can change which reason a command with several
  faults is refused for, never whether it is refused. A refusal changes no replicated
  state (only the applied index, log time and request id, as before; events are not
  replicated), so peers of either release keep equal states.
- Rules checked only before proposing (`if admission:` below): everything new in this
  release. They cannot make peers diverge because apply never sees them. Moving one
  into apply is safe only together with a new command version, which proposers write
  once every host announced it understands it (core/versions.py): then no older peer
  and no older entry meets the rule.

Conclusion: `apply` refuses nothing it accepted before.

## Limits

A domain XML may have MAX_DOMAIN_XML_BYTES (256 KiB) when proposed, and why is said in
fsm/domain_xml.py; apply keeps refusing above APPLY_MAX_XML_BYTES (1 MiB) only.
MAX_TEXT_BYTES bounds every other text field, MAX_COMMAND_BYTES a whole command as
written to the log (both far below the Raft node's max_command_bytes, 512 KiB).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any

import msgpack

from hacluster.fsm import commands as c
from hacluster.fsm import failback
from hacluster.fsm.context import name_problem
from hacluster.fsm.domain_xml import (
    MAX_DOMAIN_XML_BYTES,
    applied_xml_size_problem,
    domain_xml_problem,
)
from hacluster.fsm.model import (
    BmcOverride,
    ClusterState,
    FenceAction,
    FenceResult,
)
from hacluster.fsm.states import HostState
from hacluster.fsm.validate_fencing import fence_levels_problem
from hacluster.fsm.validate_reports import (  # noqa: F401 (also imported from here)
    MAX_HEARTBEAT_PATHS,
    MAX_PATH_BYTES,
    MAX_STORAGE_READS,
    _report_storage,
    _report_watchdog,
    _storage_checked,
    heartbeat_paths_problem,
    storage_check_problem,
    watchdog_problem,
)
from hacluster.fsm.validate_settings import (  # noqa: F401 (also imported from here)
    CHECKED_SETTINGS,
    DRIVER_RE,
    LEASE_SETTINGS,
    _bmc_defaults,
    _planned_shutdown,
    _set_settings,
    _shutdown_policy,
    setting_problem,
    settings_given,
    settings_problem,
    shutdown_policy_problem,
)
from hacluster.fsm.wire import WireError, encode_fields, spec_of

MAX_TEXT_BYTES = 16 * 1024  # any other text field: reasons, evidence, addresses
MAX_COMMAND_BYTES = MAX_DOMAIN_XML_BYTES + 64 * 1024  # a whole command, msgpack

INVALID, UNKNOWN, EXISTS = "invalid", "unknown", "exists"  # Problem.kind

COMMAND_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
MAX_ANNOUNCED = 1024
FENCE_ACTIONS = ("", *(a.value for a in FenceAction))
VM_COMMANDS = (c.AddVm, c.RemoveVm, c.SetVmOptions, c.SetVmDesired, c.MigrateVm, c.VmReport,
               c.MakeRoom, c.FailbackVm)

Found = tuple[str, str]  # (field, message); "" message: no problem


@dataclass(frozen=True, slots=True)
class Problem:
    field: str  # the command's field at fault ("" for the command as a whole)
    message: str
    kind: str = INVALID  # INVALID, UNKNOWN (a name the state lacks), EXISTS


def command_problem(command: c.Command, *, at_apply: bool = False) -> str:
    """The first thing wrong with `command` whatever the state ("" when valid)."""
    problem = find_problem(command, at_apply=at_apply)
    return problem.message if problem else ""


def find_problem(command: c.Command, *, at_apply: bool = False) -> Problem | None:
    """Every stateless rule before proposing; at apply, only those apply always had."""
    admission = not at_apply
    if admission:
        found = _first(_wire_shape(command))
        if found is None:
            found = _first(_names(command))
        if found is not None:
            return found
    rules = _RULES.get(type(command))
    found = _first(rules(command, admission)) if rules else None
    if found is None and admission:
        found = _first(_texts(command)) or _log_size(command)
    return found


def subject_of(command: c.Command) -> str:
    """The host or VM a command is about, for the events of its refusal."""
    return str(getattr(command, "name", "") or getattr(command, "host", ""))


def _first(found: Iterator[Found]) -> Problem | None:
    for field, message in found:
        if message:
            return Problem(field, message)
    return None


# ---------------------------------------------------------------- any command

def _wire_shape(command: c.Command) -> Iterator[Found]:
    """Each field has the type its hint names (an enum field one of its values): what
    the peers' decoder demands of every entry (a mistyped one would halt them all)."""
    spec = spec_of(type(command))  # type: ignore[arg-type]
    for name, decode, encode in zip(spec.names, spec.decoders, spec.encoders, strict=True):
        value = getattr(command, name)
        try:
            decode(value if encode is None else encode(value))
        except (WireError, TypeError, ValueError, AttributeError) as exc:
            yield name, f"{name}: {exc}"


def _refs(command: c.Command) -> Iterator[tuple[str, str, str]]:
    """(field, kind, name) of every host, VM or group name a command carries."""
    values = {f.name: getattr(command, f.name) for f in fields(command)}
    if "name" in values:
        yield "name", "VM" if isinstance(command, VM_COMMANDS) else "host", values["name"]
    if "host" in values and (values["host"] or not isinstance(command, c.SetShutdownPolicy)):
        yield "host", "host", values["host"]  # (a shutdown policy's "" is the cluster's)
    if values.get("target"):
        yield "target", "host", values["target"]
    for host in values.get("allowed_hosts") or ():
        yield "allowed_hosts", "host", host
    for host, _ in values.get("preferred_hosts") or ():
        yield "preferred_hosts", "host", host
    if values.get("anti_affinity"):
        yield "anti_affinity", "anti-affinity group", values["anti_affinity"]
    yield from _relation_refs(values)


def _relation_refs(values: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """The names of the VM relations (start order, colocation, host tags)."""
    for vm in values.get("start_after") or ():
        yield "start_after", "VM", vm
    if values.get("colocation"):
        yield "colocation", "colocation group", values["colocation"]
    for tag in values.get("required_tags") or ():
        yield "required_tags", "tag", tag
    if values.get("tag") is not None:
        yield "tag", "tag", values["tag"]


def _names(command: c.Command) -> Iterator[Found]:
    for field, kind, name in _refs(command):
        yield field, name_problem(kind, name, strict=True)


def _texts(command: c.Command) -> Iterator[Found]:
    for path, text in _strings(command, ""):
        size = len(text.encode("utf-8", "surrogatepass"))
        if path != "xml" and size > MAX_TEXT_BYTES:
            yield path, f"{path}: {size} bytes of text; the limit is {MAX_TEXT_BYTES}"


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _strings(item, path)
    elif is_dataclass(value):
        for f in fields(value):
            yield from _strings(getattr(value, f.name), f"{path}.{f.name}" if path else f.name)


def _log_size(command: c.Command) -> Problem | None:
    sizes = {}
    for name, value in encode_fields(command).items():
        try:
            sizes[name] = len(msgpack.packb(value, use_bin_type=True))
        except (TypeError, ValueError, OverflowError) as exc:  # an int beyond 64 bits
            return Problem(name, f"{name}: cannot be written to the log ({exc})")
    if sum(sizes.values()) <= MAX_COMMAND_BYTES:
        return None
    largest = max(sizes, key=lambda k: sizes[k])
    return Problem(largest, f"the command takes more than {MAX_COMMAND_BYTES} bytes in the "
                   f"log ({largest}: {sizes[largest]} bytes)")


# ---------------------------------------------------------------- hosts

def _add_host(cmd: c.AddHost, admission: bool) -> Iterator[Found]:
    yield "name", name_problem("host", cmd.name)
    yield "memory_mib", ("memory_mib and vcpus must be >= 0"
                         if cmd.memory_mib < 0 or cmd.vcpus < 0 else "")
    yield from bmc_override_problems(cmd.bmc)
    yield "addresses", address_problem(cmd.addresses)
    if admission:
        yield "addresses", _links_twice(cmd.addresses)
        yield "raft_address", _host_port_problem(cmd.raft_address) if cmd.raft_address else ""


def address_problem(addresses: tuple[str, ...]) -> str:
    for entry in addresses:
        link, sep, address = entry.partition("=")
        if not sep or not link or not address:
            return f"address {entry!r}: expected link=address"
    return ""


def _links_twice(addresses: tuple[str, ...]) -> str:
    links = [entry.partition("=")[0] for entry in addresses]
    if len(set(links)) != len(links):
        return f"addresses {', '.join(addresses)}: a link is listed twice"
    return ""


def _host_port_problem(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"raft_address: expected host:port, got {value!r}"
    return ""


def _set_addresses(cmd: c.SetHostAddresses, admission: bool) -> Iterator[Found]:
    yield "addresses", address_problem(cmd.addresses)
    yield "addresses", ("" if cmd.addresses else
                        f"host {cmd.name}: at least one lease link is needed")
    yield "addresses", _links_twice(cmd.addresses)


def _host_ready(cmd: c.HostReady, admission: bool) -> Iterator[Found]:
    if admission:  # apply ignores a capacity <= 0 (unknown); it never refused one
        yield "memory_mib", ("memory_mib and vcpus must be >= 0"
                             if cmd.memory_mib < 0 or cmd.vcpus < 0 else "")


def _announce(cmd: c.AnnounceVersions, admission: bool) -> Iterator[Found]:
    field = "commands"
    if not cmd.commands or not cmd.entry_formats:
        yield field, "an announcement names at least one command and one log entry format"
    if len(cmd.commands) > MAX_ANNOUNCED or len(cmd.entry_formats) > MAX_ANNOUNCED:
        yield field, f"an announcement names at most {MAX_ANNOUNCED} commands and entry formats"
    bad = [f"{t!r} v{v}" for t, v in cmd.commands if not COMMAND_TYPE_RE.match(t) or v < 1]
    bad += [f"entry format {f}" for f in cmd.entry_formats if f < 1]
    yield field, f"not a command version or entry format: {', '.join(bad)}" if bad else ""


def _report_load(cmd: c.ReportHostLoad, admission: bool) -> Iterator[Found]:
    ok = math.isfinite(cmd.load) and cmd.load >= 0
    yield "load", "" if ok else f"load must be a finite number >= 0 (got {cmd.load})"


def bmc_override_problems(bmc: BmcOverride) -> Iterator[Found]:
    yield "bmc.action", ("" if bmc.action in FENCE_ACTIONS else
                         f"fence action {bmc.action!r}: expected one of "
                         f"{'|'.join(a for a in FENCE_ACTIONS if a)}")
    yield "bmc.driver", ("" if not bmc.driver or DRIVER_RE.match(bmc.driver) else
                         f"BMC driver {bmc.driver!r}: expected a name such as ipmi, redfish "
                         "or agent")
    yield "bmc.port", "" if 0 <= bmc.port < 65536 else f"BMC port {bmc.port} out of range"


def _set_host_bmc(cmd: c.SetHostBmc, admission: bool) -> Iterator[Found]:
    yield from bmc_override_problems(cmd.bmc)


# ---------------------------------------------------------------- fencing

def _set_host_fencing(cmd: c.SetHostFencing, admission: bool) -> Iterator[Found]:
    yield fence_levels_problem(cmd.levels)  # a new command: apply checks it all alike


def _request_fence(cmd: c.RequestFence | c.Noop, admission: bool) -> Iterator[Found]:
    if admission:
        yield "term", "" if cmd.term >= 0 else f"term must be >= 0 (got {cmd.term})"
    if isinstance(cmd, c.RequestFence):  # (a version 1 entry has no storage check)
        yield storage_check_problem(cmd.storage, "storage")


def _token(token: int) -> Found:
    return "token", "" if token >= 1 else f"fence token must be a log index >= 1 (got {token})"


def _confirm_fence(cmd: c.ConfirmFence, admission: bool) -> Iterator[Found]:
    proves = cmd.result.host_is_off and cmd.result is not FenceResult.MANUAL
    yield "result", "" if proves else (f"result {cmd.result.value} does not prove host "
                                       f"{cmd.host} is off")
    if admission:
        yield _token(cmd.token)


def _fence_failed(cmd: c.FenceFailed, admission: bool) -> Iterator[Found]:
    if admission:
        yield _token(cmd.token)
    failure = not cmd.result.host_is_off and cmd.result is not FenceResult.PENDING
    yield "result", "" if failure else f"result {cmd.result.value} is not a failure"


def _hold_fence(cmd: c.HoldFence, admission: bool) -> Iterator[Found]:
    yield "reason", "" if cmd.reason.strip() else "a held fence needs a reason"


def _watchdog_confirm(cmd: c.WatchdogConfirm, admission: bool) -> Iterator[Found]:
    yield _token(cmd.token)  # a command younger than this module: apply checks it all
    yield "evidence", "" if cmd.evidence.strip() else "a watchdog confirm needs its timing"
    yield storage_check_problem(cmd.storage, "storage")


def _admin_confirm(cmd: c.AdminConfirmFence, admission: bool) -> Iterator[Found]:
    given = cmd.who.strip() and cmd.reason.strip()
    yield "reason", "" if given else "an operator confirm needs who and a reason"


# ---------------------------------------------------------------- VMs

def limits_problem(memory_mib: int, vcpus: int, max_restarts: int, max_relocates: int) -> str:
    if memory_mib <= 0 or vcpus <= 0:
        return "memory_mib and vcpus must be > 0"
    if max_restarts < 0 or max_relocates < 0:
        return "max_restarts and max_relocates must be >= 0"
    return ""


def _add_vm(cmd: c.AddVm, admission: bool) -> Iterator[Found]:
    yield "name", name_problem("VM", cmd.name)
    if admission:
        yield "xml", domain_xml_problem(cmd.xml, cmd.name)
    yield "xml", applied_xml_size_problem(cmd.xml)
    yield "memory_mib", limits_problem(cmd.memory_mib, cmd.vcpus, cmd.max_restarts,
                                       cmd.max_relocates)
    yield from _relations(cmd)
    yield "preferred_hosts", failback.preferences_problem(cmd.preferred_hosts)


def _relations(cmd: c.AddVm | c.SetVmOptions | c.TagHost) -> Iterator[Found]:
    """The relation fields are new (AddVm/SetVmOptions v2, TagHost): apply checks them
    as admission does. The state's checks (cycles, unknown VMs, contradictions) are
    apply's (fsm/relations.py `relation_problem`)."""
    values = {f.name: getattr(cmd, f.name) for f in fields(cmd)}
    for field, kind, name in _relation_refs(values):
        yield field, name_problem(kind, name, strict=True)
    if cmd.name in (values.get("start_after") or ()):
        yield "start_after", f"VM {cmd.name} cannot start after itself"


def _set_vm_options(cmd: c.SetVmOptions, admission: bool) -> Iterator[Found]:
    changes = [f.name for f in fields(cmd) if f.name != "name" and getattr(cmd, f.name)
               is not None]
    yield "name", "" if changes else "nothing to change"
    if cmd.xml is not None:
        if admission:
            yield "xml", domain_xml_problem(cmd.xml, cmd.name)
        yield "xml", applied_xml_size_problem(cmd.xml)
    if admission:  # apply checks the updated record (apply_vms.set_vm_options)
        yield "max_restarts", limits_problem(1, 1, cmd.max_restarts or 0,
                                             cmd.max_relocates or 0)
    yield from _relations(cmd)
    yield "preferred_hosts", failback.preferences_problem(cmd.preferred_hosts or ())


def _failback_vm(cmd: c.FailbackVm, admission: bool) -> Iterator[Found]:
    yield "target", "" if cmd.target else "a failback needs its target host"


def _vm_report(cmd: c.VmReport, admission: bool) -> Iterator[Found]:
    yield "observed", "" if cmd.observed in c.VM_REPORTS else f"unknown report {cmd.observed!r}"
    if admission:
        yield "placement", "" if cmd.placement >= 0 else "placement must be >= 0"


_RULES: dict[type[c.Command], Any] = {
    c.AddHost: _add_host,
    c.HostReady: _host_ready,
    c.SetHostAddresses: _set_addresses,
    c.AnnounceVersions: _announce,
    c.ReportHostLoad: _report_load,
    c.SetHostBmc: _set_host_bmc,
    c.RequestFence: _request_fence,
    c.Noop: _request_fence,
    c.ConfirmFence: _confirm_fence,
    c.FenceFailed: _fence_failed,
    c.HoldFence: _hold_fence,
    c.AdminConfirmFence: _admin_confirm,
    c.WatchdogConfirm: _watchdog_confirm,
    c.ReportWatchdog: _report_watchdog,
    c.ReportStorage: _report_storage,
    c.StorageChecked: _storage_checked,
    c.AddVm: _add_vm,
    c.SetVmOptions: _set_vm_options,
    c.VmReport: _vm_report,
    c.FailbackVm: _failback_vm,
    c.SetSettings: _set_settings,
    c.SetBmcDefaults: _bmc_defaults,
    c.PlannedShutdown: _planned_shutdown,  # new commands: apply checks them all alike
    c.SetShutdownPolicy: _shutdown_policy,
    c.TagHost: lambda cmd, admission: _relations(cmd),
    c.SetHostFencing: _set_host_fencing,
}


# ---------------------------------------------------------------- against a replica

def state_problem(state: ClusterState, command: c.Command) -> Problem | None:
    """What a replica can tell before proposing: names the command needs that the state
    lacks (or has, for an add), settings that do not fit together. A replica may lag the
    leader's by a moment; apply decides in the end, with the same rules."""
    if isinstance(command, c.AddVm):
        if command.name in state.vms:
            return Problem("name", f"VM {command.name} already exists", EXISTS)
        return None
    if isinstance(command, c.AddHost):
        host = state.hosts.get(command.name)
        if host is not None and host.state is not HostState.REMOVED:
            return Problem("name", f"host {command.name} already exists "
                           f"({host.state.value})", EXISTS)
        return None
    if isinstance(command, c.SetSettings):
        problem = settings_problem(replace(state.settings, **settings_given(command)))
        return Problem(_lease_field(command), problem) if problem else None
    return _missing(state, command)


def _missing(state: ClusterState, command: c.Command) -> Problem | None:
    """A host or VM the command is about that this replica does not know (a removed
    host counts as unknown, as apply's lookups have it). Host limits may name hosts
    still to come, and a report's host is judged against the VM's placement."""
    for field, kind, name in _refs(command):
        reporter = field == "host" and isinstance(command, c.VmReport)
        if reporter or field in ("allowed_hosts", "anti_affinity", "colocation",
                                 "required_tags", "tag", "preferred_hosts"):
            continue
        if kind == "VM":
            missing = name not in state.vms
        else:
            host = state.hosts.get(name)
            missing = host is None or host.state is HostState.REMOVED
        if missing:
            return Problem(field, f"unknown {kind} {name!r}", UNKNOWN)
    return None


def _lease_field(cmd: c.SetSettings) -> str:
    given = settings_given(cmd)
    return next((k for k in LEASE_SETTINGS if k in given), next(iter(given), ""))
