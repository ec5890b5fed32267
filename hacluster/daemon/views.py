"""Plain-data views of the replicated state for RPC replies (secrets redacted)."""

from __future__ import annotations

from typing import Any

from hacluster.core.bmc import NO_ADDRESS, bmc_health
from hacluster.fsm import failback
from hacluster.fsm.apply import frozen_by_fences
from hacluster.fsm.apply_fence import cap_reopens_at, fences_in_window
from hacluster.fsm.apply_shutdown import policy_of
from hacluster.fsm.events import Event
from hacluster.fsm.model import (
    BmcOverride,
    BmcSettings,
    ClusterState,
    Failback,
    FenceDevice,
    FenceFallback,
    FenceRecord,
    Host,
    StorageCheck,
    StorageVerdict,
    Vm,
    Watchdog,
)
from hacluster.fsm.relations import waiting_for
from hacluster.fsm.states import FENCE_PENDING_HOSTS, HostState, VmState

SEALED = "<sealed>"


def _bmc_override(b: BmcOverride) -> dict[str, Any]:
    return {"address": b.address, "driver": b.driver, "port": b.port, "username": b.username,
            "password": SEALED if b.sealed_password else "", "cipher_suite": b.cipher_suite,
            "agent": b.agent, "action": b.action, "options": dict(b.options)}


def bmc_defaults(b: BmcSettings) -> dict[str, Any]:
    return {"driver": b.driver, "port": b.port, "username": b.username,
            "password": SEALED if b.sealed_password else "", "cipher_suite": b.cipher_suite,
            "agent": b.agent, "options": dict(b.options), "verify_tls": b.verify_tls}


def host_view(state: ClusterState, host: Host, lease_ages: dict[str, float] | None = None,
              detail: bool = False) -> dict[str, Any]:
    vms = state.vms_on(host.name)
    bmc = bmc_health(state, host)
    view: dict[str, Any] = {
        "name": host.name, "state": host.state.value, "role": host.role.value,
        "reason": host.reason, "memory_mib": host.memory_mib, "vcpus": host.vcpus,
        "used_memory_mib": state.usage_of(host.name).memory_mib,
        "vms": len(vms), "load": host.load, "bmc_ok": bmc.ok,
        "bmc_detail": bmc.detail, "peer_stopped": host.peer_stopped,
        "lease_links": lease_ages or {}, "watchdog": watchdog_view(host.watchdog),
        "shutdown_policy": policy_of(state, host).value if host.runs_vms else "",
        "shutdown": host.shutdown, "tags": list(host.tags),
        "storage": {"heartbeat_paths": list(host.heartbeat_paths),
                    "check": storage_check_view(host.storage_check)},
        "fence_levels": fence_levels_view(host),
        "failback_ready": host.failback_ready,
    }
    if detail:
        view.update(addresses=list(host.addresses), raft_address=host.raft_address,
                    migration_uri=host.migration_uri, fence_token=host.fence_token,
                    fence_wanted=host.fence_wanted, since=host.since,
                    bmc=_bmc_override(host.bmc), vm_names=[vm.name for vm in vms])
    return view


def fence_levels_view(host: Host) -> list[str]:
    """One line per fencing level, in order ([] when the host's BMC alone fences it)."""
    return [f"{n}: " + " + ".join(fence_device_line(d) for d in level.devices)
            for n, level in enumerate(host.fence_levels, 1)]


def fence_device_line(d: FenceDevice) -> str:
    """A device as hactl shows it; the password only as <sealed>."""
    if d.driver == "bmc":
        return "bmc (the host's BMC settings)"
    words = [d.driver, *([d.agent] if d.agent else []),
             f"{d.address}:{d.port}" if d.port else d.address]
    if d.username:
        words.append(f"username={d.username}")
    if d.sealed_password:
        words.append(f"password={SEALED}")
    if d.cipher_suite >= 0:
        words.append(f"cipher={d.cipher_suite}")
    words += [f"{k}={v}" for k, v in d.options]
    return " ".join(words)


def watchdog_view(w: Watchdog) -> dict[str, Any]:
    return {"kind": w.kind.value, "armed": w.armed, "timeout_s": w.timeout_s,
            "self_fence_s": w.self_fence_s}


def storage_check_view(check: StorageCheck) -> dict[str, Any]:
    return {"verdict": check.verdict.value, "checks": check.checks, "reads": list(check.reads)}


def vm_view(vm: Vm, detail: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {
        "name": vm.name, "state": vm.state.value, "host": vm.host,
        "target_host": vm.target_host, "desired": vm.desired.value, "ha": vm.ha.value,
        "priority": vm.priority, "memory_mib": vm.memory_mib, "vcpus": vm.vcpus,
        "reason": vm.reason,
    }
    if detail:
        view.update(allowed_hosts=list(vm.allowed_hosts), anti_affinity=vm.anti_affinity,
                    max_restarts=vm.max_restarts, max_relocates=vm.max_relocates,
                    restarts=vm.restarts, relocates=vm.relocates, placement=vm.placement,
                    since=vm.since, xml=vm.xml, start_after=list(vm.start_after),
                    colocation=vm.colocation, required_tags=list(vm.required_tags),
                    preferred_hosts=[list(p) for p in vm.preferred_hosts],
                    failback=vm.failback.value)
    return view


def fence_view(r: FenceRecord) -> dict[str, Any]:
    return {"token": r.token, "host": r.host, "incident": r.incident, "attempt": r.attempt,
            "action": r.action.value, "reason": r.reason, "evidence": r.evidence,
            "requested_by": r.requested_by, "requested_at": r.requested_at,
            "result": r.result.value, "result_evidence": r.result_evidence,
            "method": r.method, "confirmed_by": r.confirmed_by, "finished_at": r.finished_at,
            "storage": storage_check_view(r.storage)}


def settings_view(state: ClusterState) -> dict[str, Any]:
    s = state.settings
    out = {name: getattr(s, name) for name in s.__dataclass_fields__ if name != "bmc"}
    out = {k: getattr(v, "value", v) for k, v in out.items()}
    out["bmc"] = bmc_defaults(s.bmc)
    return out


def cap_view(state: ClusterState) -> dict[str, Any]:
    counted = fences_in_window(state)
    reopens = cap_reopens_at(state)
    return {"cap": state.settings.fence_cap, "window_s": state.settings.fence_window_s,
            "used": len(counted), "tokens": [r.token for r in counted],
            "reached": reopens is not None,
            "reopens_at_log_time": reopens if reopens not in (None, float("inf")) else None}


def waiting_for_operator(state: ClusterState) -> list[str]:
    """Everything an operator should look at now, one line each."""
    out = []
    for name in sorted(state.hosts):
        host = state.hosts[name]
        if host.state in FENCE_PENDING_HOSTS and host.state is not HostState.FENCING:
            out.append(f"host {name} is {host.state.value}: {host.reason} -> hactl fence "
                       f"confirm {name} --reason TEXT, or hactl fence retry {name}")
            if host.state is HostState.FENCE_FAILED and host.watchdog.armed and \
                    state.settings.fence_fallback is FenceFallback.WATCHDOG:
                w = host.watchdog
                out.append(f"host {name}: its {w.kind.value} watchdog resets it; the leader "
                           f"counts it fenced {w.resets_within_s:g} s + margin after its "
                           "last acknowledged renewal")
        out.extend(_storage_waits(state, host))
        bmc = bmc_health(state, host)
        if bmc.ok is False and host.state is not HostState.REMOVED:
            hint = f" -> hactl bmc set --host {name} --address ADDRESS" \
                if bmc.detail == NO_ADDRESS else ""
            out.append(f"host {name} cannot be fenced: {bmc.detail}{hint}")
        if host.peer_stopped:
            left = [vm.name for vm in state.vms_on(name) if vm.host == name and
                    vm.state is not VmState.STARTING]
            shown = f" ({', '.join(left[:10])}{', ...' if len(left) > 10 else ''})" \
                if left else ""
            planned = f" for a planned shutdown ({host.shutdown})" if host.shutdown else ""
            out.append(f"host {name}: its peer is stopped{planned}; its VMs are not "
                       f"protected{shown}")
    for name in sorted(state.vms):
        vm = state.vms[name]
        if vm.state in (VmState.PENDING, VmState.ERROR):
            out.append(f"vm {name} is {vm.state.value}: {vm.reason}")
        out.extend(_order_waits(state, vm))
    out.extend(_failback_waits(state))
    if state.settings.cluster_maintenance:
        out.append("cluster maintenance is on: no host will be fenced")
        for name, vms in frozen_by_fences(state).items():
            out.append(f"cluster maintenance holds the fence of {name}: its VMs stay frozen "
                       f"({', '.join(vms) or 'none'}) -> hactl cluster maintenance off, or "
                       f"hactl fence confirm {name} --reason TEXT")
    return out


def _order_waits(state: ClusterState, vm: Vm) -> list[str]:
    """A VM held by its start order on a dependency that will not start by itself."""
    if vm.state not in (VmState.STARTING, VmState.RECOVERY) or not vm.start_after:
        return []
    stuck = [d for d in waiting_for(state, vm)
             if state.vms[d].state in (VmState.PENDING, VmState.ERROR, VmState.STOPPED)]
    if not stuck:
        return []
    why = ", ".join(f"{d} is {state.vms[d].state.value}" for d in stuck)
    return [f"vm {vm.name} waits to start until {', '.join(stuck)} run(s) (mandatory start "
            f"order; {why}) -> hactl explain {vm.name}"]


def _storage_waits(state: ClusterState, host: Host) -> list[str]:
    """What the storage activity check holds, or cannot do, for this host."""
    name, check = host.name, host.storage_check
    if host.state is HostState.STORAGE_ACTIVE:
        return [f"host {name} is storage-active: its lease expired but it still writes "
                "shared storage, so it is not fenced and its VMs stay there; find out why "
                f"it is cut off (or, once it is off, hactl fence confirm {name} --reason "
                f"TEXT) [{check.summary()}]"]
    if check.verdict is StorageVerdict.UNREADABLE:
        return [f"host {name}: the leader cannot read its storage, so a fence without a "
                f"BMC read-back (its watchdog's) waits [{check.summary()}]"]
    writers = any(h.heartbeat_paths for h in state.hosts.values())
    if writers and not host.heartbeat_paths and host.runs_vms and \
            host.state is not HostState.REMOVED:
        return [f"host {name} writes no storage heartbeats ([storage] heartbeat_paths) "
                "while other hosts do: no storage check spares it"]
    return []


def event_view(e: Event) -> dict[str, Any]:
    return {"index": e.index, "kind": e.kind, "subject": e.subject, "message": e.message,
            "data": dict(e.data)}


def _failback_waits(state: ClusterState) -> list[str]:
    """Online hosts not ready to take back the VMs with failback auto that prefer them
    (fsm/failback.py): only an operator's `hactl host ready` lets them return."""
    waiting: dict[str, list[str]] = {}
    why: dict[str, str] = {}
    for name in sorted(state.vms):
        vm = state.vms[name]
        if vm.failback is not Failback.AUTO or vm.state is not VmState.STARTED:
            continue
        best = failback.judge(state, vm, state.log_time).best
        host = state.hosts.get(best)
        if host is None or host.state is not HostState.ONLINE or vm.host == best:
            continue
        problem = failback.ready_problem(host, state.settings, state.log_time)
        if problem.startswith(f"host {best} is back but not ready"):
            waiting.setdefault(best, []).append(name)
            why[best] = problem
    return [f"{why[host]}; {', '.join(vms[:10])} would fail back there"
            for host, vms in sorted(waiting.items())]
