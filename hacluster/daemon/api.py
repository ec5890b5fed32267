"""The admin RPC methods a peer serves (hactl and embedders speak these).

Reads answer from this peer's replica and say how fresh it is; writes go
through Raft (pysyncobj forwards them to the leader) and answer once applied,
with the events they caused.

Nothing is proposed before it passed the rules of fsm/validate.py: a value no state
can make right (a bad name, a number out of range, a domain XML too large or not
well-formed) is a `bad-params` error naming the field; a host or VM this peer's
replica does not know is `not-found`, one to add that it already knows `conflict`; a
setting that does not fit with the others `bad-params`. So refused input never enters
the log. What apply refuses all the same (the replica may lag, the state may change
before the entry commits) is a `rejected` error whose message is apply's reason; a
command some host would not understand (the version gate, core/versions.py) is a
`conflict` error naming those hosts. A halted peer (daemon/halt.py) answers `status`
only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from hacluster.core import versions
from hacluster.core.explain import explain
from hacluster.daemon import views
from hacluster.daemon.api_events import EventMethods
from hacluster.daemon.api_fencing import FencingMethods
from hacluster.daemon.proposer import NoLeaderError, VersionGateError
from hacluster.daemon.vmparams import vm_option_params
from hacluster.fsm import ClusterState
from hacluster.fsm import commands as c
from hacluster.fsm import events as ev
from hacluster.fsm.domain_xml import domain_xml_problem
from hacluster.fsm.model import BmcOverride, BmcSettings, Desired, HostRole
from hacluster.fsm.states import HostState
from hacluster.fsm.validate import EXISTS, INVALID, UNKNOWN, find_problem, state_problem
from hacluster.fsm.wire import WireError, decode_fields
from hacluster.ports import ProposeStatus
from hacluster.rpc.protocol import ErrorCode, RpcError, optional, validate_params
from hacluster.rpc.server import CallContext, Method
from hacluster.secrets import seal

if TYPE_CHECKING:
    from hacluster.daemon.peer import Peer

SETTING_KEYS = [name for name in c.SetSettings.__dataclass_fields__]
PROBLEM_CODES = {INVALID: ErrorCode.BAD_PARAMS, UNKNOWN: ErrorCode.NOT_FOUND,
                 EXISTS: ErrorCode.CONFLICT}


class Api(FencingMethods, EventMethods):
    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    def methods(self) -> dict[str, Method]:
        return {name.replace("_", "."): getattr(self, "m_" + name) for name in (
            "status", "host_list", "host_show", "host_add", "host_remove", "host_maintenance",
            "host_promote", "host_demote", "host_tag", "host_fencing",
            "vm_list", "vm_show", "vm_add", "vm_remove", "vm_set", "vm_start", "vm_stop",
            "vm_disable", "vm_migrate", "fence_history", "fence_confirm", "fence_retry",
            "fence_cap", "cluster_maintenance", "events", "history_status", "config_show",
            "explain",
            "bmc_show", "bmc_set", "settings_show", "settings_set", "shutdown_policy")}

    # ------------------------------------------------------------ helpers

    def _freshness(self) -> dict[str, Any]:
        s = self.peer.status(digest=False)
        return {"peer": s["name"], "leader": s["leader"], "is_leader": s["is_leader"],
                "has_quorum": s["has_quorum"], "applied_index": s["applied_index"],
                "commit_index": s["commit_index"], "caught_up": s["caught_up"]}

    @contextmanager
    def _read(self) -> Iterator[ClusterState]:
        """The local replica, once it has caught up with the cluster since this
        peer started. Before that it can lack committed entries (Raft does not
        keep the commit index across a restart), and an empty VM list would
        read as "no VMs". `status` alone answers regardless, to diagnose."""
        self._not_halted()
        if not self.peer.caught_up():
            raise RpcError(ErrorCode.UNAVAILABLE, f"peer {self.peer.me} has not caught up with "
                           "the cluster since it started (no leader has answered it yet), so "
                           "its state may lack committed entries; retry in a moment, or "
                           "--connect another peer", {"peer": self.peer.me})
        with self.peer.read() as state:
            yield state

    def _not_halted(self) -> None:
        halted = self.peer.halted
        if halted:
            raise RpcError(ErrorCode.UNAVAILABLE, f"peer {self.peer.me} halted and applies "
                           f"nothing more: {halted['reason']} (hactl status says more)",
                           {"peer": self.peer.me, "exit_code": halted["exit_code"]})

    def _admit(self, command: c.Command) -> None:
        """Refuse, before anything is proposed, what the rules of fsm/validate.py refuse:
        the stateless ones always, those on the state once this replica caught up."""
        problem = find_problem(command)
        if problem is None and self.peer.caught_up():
            with self.peer.read() as state:
                problem = state_problem(state, command)
        if problem is not None:
            raise RpcError(PROBLEM_CODES[problem.kind], problem.message,
                           {"field": problem.field, "command": command.TYPE})

    async def _write(self, ctx: CallContext, command: c.Command) -> dict[str, Any]:
        self._not_halted()
        self._admit(command)
        origin = f"{ctx.user}@{self.peer.me}"
        try:
            outcome = await self.peer.submit(command, origin=origin)
        except VersionGateError as exc:
            raise RpcError(ErrorCode.CONFLICT, f"not proposed: {exc}", {
                "command": exc.command_type, "version": exc.version,
                "hosts": list(exc.lacking)}) from None
        if outcome.status is ProposeStatus.MAYBE:
            raise RpcError(ErrorCode.MAYBE_APPLIED, "the command may or may not have been "
                           "applied (leader change or timeout); check with a read")
        if not outcome.committed:
            raise RpcError(ErrorCode.NO_QUORUM, "no leader: this peer cannot reach a "
                           "majority of the voters")
        for event in outcome.events:
            if event.kind == ev.REJECTED:
                raise RpcError(ErrorCode.REJECTED, event.message,
                               {"index": event.index, "subject": event.subject})
        return {"index": outcome.index, "events": [views.event_view(e)
                                                    for e in outcome.events]}

    async def _membership(self, change: Any, address: str) -> None:
        try:
            await change(address)
        except NoLeaderError as exc:
            raise RpcError(ErrorCode.NO_QUORUM, f"Raft membership change for {address} not "
                           f"made: {exc}") from None
        except (RuntimeError, ValueError) as exc:
            raise RpcError(ErrorCode.CONFLICT, f"Raft membership change for {address} "
                           f"failed: {exc}") from None

    def _host(self, name: str) -> None:
        with self._read() as state:
            if name not in state.hosts:
                raise RpcError(ErrorCode.NOT_FOUND, f"unknown host {name!r}")

    def _vm(self, name: str) -> None:
        with self._read() as state:
            if name not in state.vms:
                raise RpcError(ErrorCode.NOT_FOUND, f"unknown VM {name!r}")

    # ------------------------------------------------------------ status

    async def m_status(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        validate_params(params, {})
        lease_ages = self.peer.lease_ages()
        with self.peer.read() as state:
            hosts = [views.host_view(state, state.hosts[n], lease_ages.get(n))
                     for n in sorted(state.hosts)]
            by_state: dict[str, list[str]] = {}
            for name in sorted(state.vms):
                by_state.setdefault(state.vms[name].state.value, []).append(name)
            waiting = views.waiting_for_operator(state)
            maintenance = state.settings.cluster_maintenance
        return {"freshness": self._freshness(), "peer": self.peer.status(), "hosts": hosts,
                "vms_by_state": by_state, "waiting": waiting,
                "cluster_maintenance": maintenance}

    # ------------------------------------------------------------ hosts

    async def m_host_list(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        validate_params(params, {})
        lease_ages = self.peer.lease_ages()
        with self._read() as state:
            hosts = [views.host_view(state, state.hosts[n], lease_ages.get(n))
                     for n in sorted(state.hosts)]
        return {"freshness": self._freshness(), "hosts": hosts}

    async def m_host_show(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        p = validate_params(params, {"name": str})
        self._host(p["name"])
        with self._read() as state:
            view = views.host_view(state, state.hosts[p["name"]],
                                   self.peer.lease_ages().get(p["name"]), detail=True)
        return {"freshness": self._freshness(), "host": view}

    async def m_host_add(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        p = validate_params(params, {
            "name": str, "raft_address": optional(str, default=""),
            "addresses": optional(list, default=[]), "role": optional(str, default="voter"),
            "bmc_address": optional(str, default="")})
        role = _enum(HostRole, p["role"], "role")
        command = c.AddHost(
            name=p["name"], addresses=tuple(str(a) for a in p["addresses"]), role=role,
            raft_address=p["raft_address"], bmc=BmcOverride(address=p["bmc_address"]))
        self._admit(command)  # before Raft's membership changes for it
        if role is not HostRole.MEMBER and p["raft_address"]:
            await self._membership(self.peer.add_raft_member, p["raft_address"])
        return await self._write(ctx, command)

    async def m_host_remove(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        p = validate_params(params, {"name": str})
        self._host(p["name"])
        with self._read() as state:
            host = state.hosts[p["name"]]
        result = await self._write(ctx, c.RemoveHost(name=p["name"]))
        if host.raft_address and host.role is not HostRole.MEMBER:
            await self._membership(self.peer.remove_raft_member, host.raft_address)
            replacement = self._member_to_promote()
            if replacement:  # keep the number of voters: a member takes the seat
                result["promoted"] = replacement
                await self._promote(ctx, replacement)
        return result

    def _member_to_promote(self) -> str:
        with self._read() as state:
            members = sorted(n for n, h in state.hosts.items()
                             if h.role is HostRole.MEMBER and h.raft_address
                             and h.state is HostState.ONLINE)
        return members[0] if members else ""

    async def _promote(self, ctx: CallContext, name: str) -> dict[str, Any]:
        with self._read() as state:
            host = state.hosts[name]
        if host.role is not HostRole.MEMBER:
            raise RpcError(ErrorCode.CONFLICT, f"host {name} is a {host.role.value}, not a "
                           "non-voting member")
        if not host.raft_address:
            raise RpcError(ErrorCode.CONFLICT, f"host {name} has no Raft address on record")
        await self._membership(self.peer.add_raft_member, host.raft_address)
        return await self._write(ctx, c.SetHostRole(name=name, role=HostRole.VOTER))

    async def m_host_promote(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        p = validate_params(params, {"name": str})
        self._host(p["name"])
        return await self._promote(ctx, p["name"])

    async def m_host_demote(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        p = validate_params(params, {"name": str})
        self._host(p["name"])
        with self._read() as state:
            host = state.hosts[p["name"]]
        result = await self._write(ctx, c.SetHostRole(name=p["name"], role=HostRole.MEMBER))
        if host.raft_address:
            await self._membership(self.peer.remove_raft_member, host.raft_address)
        return result

    async def m_host_maintenance(self, ctx: CallContext,
                                 params: dict[str, Any]) -> dict[str, Any]:
        p = validate_params(params, {"name": str, "on": bool,
                                     "ready": optional(bool, default=False)})
        self._host(p["name"])
        if p["ready"] and p["on"]:
            raise RpcError(ErrorCode.BAD_PARAMS, "ready goes with maintenance off (hactl "
                           "host ready HOST)", {"field": "ready"})
        ready, note = p["ready"], ""
        if ready:  # during a rolling upgrade: maintenance off, as before failback existed
            with self._read() as state:
                gate = versions.admit(state, c.SetHostMaintenance.TYPE, 2)
            if not gate.admitted:
                ready, note = False, f"maintenance off only; not marked ready: {gate.refusal}"
        result = await self._write(ctx, c.SetHostMaintenance(name=p["name"], on=p["on"],
                                                             ready=ready))
        return {**result, "note": note} if note else result

    async def m_host_tag(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        p = validate_params(params, {"name": str, "tag": str, "add": bool})
        self._host(p["name"])
        return await self._write(ctx, c.TagHost(name=p["name"], tag=p["tag"], add=p["add"]))

    # ------------------------------------------------------------ VMs

    async def m_vm_list(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        validate_params(params, {})
        with self._read() as state:
            vms = [views.vm_view(state.vms[n]) for n in sorted(state.vms)]
        return {"freshness": self._freshness(), "vms": vms}

    async def m_vm_show(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        p = validate_params(params, {"name": str})
        self._vm(p["name"])
        with self._read() as state:
            view = views.vm_view(state.vms[p["name"]], detail=True)
        return {"freshness": self._freshness(), "vm": view}

    async def m_vm_add(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        from hacluster.hypervisor.domxml import DomainXmlError, domain_resources

        p = validate_params(params, {
            "xml": str, "priority": optional(int, default=0), "desired": optional(str),
            "memory_mib": optional(int), "vcpus": optional(int), **vm_option_params()})
        problem = domain_xml_problem(p["xml"])  # the size first, then one careful parse
        if problem:
            raise RpcError(ErrorCode.BAD_PARAMS, problem, {"field": "xml"})
        try:
            name, memory_mib, vcpus = domain_resources(p["xml"])
        except DomainXmlError as exc:
            raise RpcError(ErrorCode.BAD_PARAMS, f"domain XML: {exc}", {"field": "xml"}) from None
        fields = {"name": name, "xml": p["xml"], "memory_mib": p["memory_mib"] or memory_mib,
                  "vcpus": p["vcpus"] or vcpus}
        fields.update({k: v for k, v in p.items() if v is not None and k not in fields})
        return await self._write(ctx, _decode(c.AddVm, fields))

    async def m_vm_remove(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        p = validate_params(params, {"name": str})
        self._vm(p["name"])
        return await self._write(ctx, c.RemoveVm(name=p["name"]))

    async def m_vm_set(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        p = validate_params(params, {
            "name": str, "priority": optional(int), "xml": optional(str), **vm_option_params()})
        self._vm(p["name"])
        fields = {k: v for k, v in p.items() if v is not None}
        if len(fields) == 1:
            raise RpcError(ErrorCode.BAD_PARAMS, "nothing to change")
        return await self._write(ctx, _decode(c.SetVmOptions, fields))

    async def _desired(self, ctx: CallContext, params: dict[str, Any],
                       desired: Desired) -> dict[str, Any]:
        p = validate_params(params, {"name": str})
        self._vm(p["name"])
        return await self._write(ctx, c.SetVmDesired(name=p["name"], desired=desired))

    async def m_vm_start(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        return await self._desired(ctx, params, Desired.STARTED)

    async def m_vm_stop(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        return await self._desired(ctx, params, Desired.STOPPED)

    async def m_vm_disable(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        return await self._desired(ctx, params, Desired.DISABLED)

    async def m_vm_migrate(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        p = validate_params(params, {"name": str, "target": optional(str, default="")})
        self._vm(p["name"])
        return await self._write(ctx, c.MigrateVm(name=p["name"], target=p["target"]))

    async def m_explain(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        p = validate_params(params, {"name": str})
        self._vm(p["name"])
        with self._read() as state:
            lines = explain(state, p["name"])
        return {"freshness": self._freshness(), "lines": lines}

    # ------------------------------------------------------------ fencing

    async def m_fence_history(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        p = validate_params(params, {"host": optional(str, default=""),
                                     "limit": optional(int, default=50)})
        with self._read() as state:
            records = [r for r in state.fences if not p["host"] or r.host == p["host"]]
            shown = [views.fence_view(r) for r in records[-max(1, p["limit"]):]]
        return {"freshness": self._freshness(), "fences": shown}

    async def m_fence_confirm(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        p = validate_params(params, {"host": str, "reason": str})
        self._host(p["host"])
        return await self._write(ctx, c.AdminConfirmFence(host=p["host"], who=ctx.user,
                                                          reason=p["reason"]))

    async def m_fence_retry(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        p = validate_params(params, {"host": str})
        self._host(p["host"])
        return await self._write(ctx, c.RetryFence(host=p["host"], who=ctx.user))

    async def m_fence_cap(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        p = validate_params(params, {"cap": optional(int), "window_s": optional(float)})
        if p["cap"] is not None or p["window_s"] is not None:
            await self._write(ctx, c.SetSettings(fence_cap=p["cap"],
                                                 fence_window_s=p["window_s"]))
        with self._read() as state:
            return {"freshness": self._freshness(), "cap": views.cap_view(state)}

    async def m_cluster_maintenance(self, ctx: CallContext,
                                    params: dict[str, Any]) -> dict[str, Any]:
        p = validate_params(params, {"on": bool})
        return await self._write(ctx, c.SetClusterMaintenance(on=p["on"], who=ctx.user))

    # ------------------------------------------------------------ settings, BMC, config

    async def m_settings_show(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        validate_params(params, {})
        with self._read() as state:
            return {"freshness": self._freshness(), "settings": views.settings_view(state)}

    async def m_settings_set(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        p = validate_params(params, {"values": dict})
        unknown = sorted(set(p["values"]) - set(SETTING_KEYS))
        if "shutdown_policy" in unknown:
            raise RpcError(ErrorCode.BAD_PARAMS, "the shutdown policy has a command of its "
                           "own: hactl settings shutdown-policy POLICY [--host NAME]",
                           {"field": "shutdown_policy"})
        if unknown:
            raise RpcError(ErrorCode.BAD_PARAMS, f"unknown setting {unknown[0]!r}",
                           {"field": unknown[0], "known": SETTING_KEYS})
        return await self._write(ctx, _decode(c.SetSettings, p["values"]))

    async def m_shutdown_policy(self, ctx: CallContext,
                                params: dict[str, Any]) -> dict[str, Any]:
        """What a peer stopped by SIGTERM does with its VMs: the cluster's policy, or one
        host's ("default": it follows the cluster's again)."""
        p = validate_params(params, {"policy": str, "host": optional(str, default="")})
        if p["host"]:
            self._host(p["host"])
        policy = "" if p["policy"] == "default" and p["host"] else p["policy"]
        return await self._write(ctx, c.SetShutdownPolicy(host=p["host"], policy=policy))

    async def m_bmc_show(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        validate_params(params, {})
        with self._read() as state:
            hosts = {n: views.host_view(state, h, detail=True)["bmc"]
                     for n, h in sorted(state.hosts.items())}
            defaults = views.bmc_defaults(state.settings.bmc)
        return {"freshness": self._freshness(), "defaults": defaults, "hosts": hosts}

    async def m_bmc_set(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        """Cluster defaults (no host) or one host's overrides; the password is sealed here."""
        p = validate_params(params, {
            "host": optional(str, default=""), "address": optional(str),
            "driver": optional(str), "port": optional(int), "username": optional(str),
            "password": optional(str), "cipher_suite": optional(int), "agent": optional(str),
            "action": optional(str), "verify_tls": optional(bool)})
        sealed = {"sealed_password": seal(self.peer.secret, p["password"])} \
            if p["password"] is not None else {}
        given = {k: v for k, v in p.items()
                 if v is not None and k not in ("host", "password")} | sealed
        if not p["host"]:
            given.pop("address", None)
            given.pop("action", None)
            with self._read() as state:
                current = state.settings.bmc
            return await self._write(ctx, c.SetBmcDefaults(bmc=_replace(current, given)))
        self._host(p["host"])
        given.pop("verify_tls", None)
        with self._read() as state:
            override = state.hosts[p["host"]].bmc
        return await self._write(ctx, c.SetHostBmc(name=p["host"],
                                                   bmc=_replace(override, given)))

    async def m_config_show(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        validate_params(params, {})
        return {"freshness": self._freshness(), "config": self.peer.config_view()}


def _enum(cls: Any, value: str, field: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        allowed = "|".join(m.value for m in cls)
        raise RpcError(ErrorCode.BAD_PARAMS, f"{field}: expected {allowed}, got {value!r}",
                       {"field": field}) from None


def _decode(cls: type, fields: dict[str, Any]) -> Any:
    try:
        return decode_fields(cls, fields)
    except WireError as exc:
        raise RpcError(ErrorCode.BAD_PARAMS, str(exc)) from None


def _replace(record: BmcSettings | BmcOverride, changes: dict[str, Any]) -> Any:
    fields = {name: getattr(record, name) for name in record.__dataclass_fields__}
    fields.update(changes)
    return _decode(type(record), {k: list(v) if isinstance(v, tuple) else v
                                  for k, v in fields.items()})

