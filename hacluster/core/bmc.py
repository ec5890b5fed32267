"""Resolve one host's BMC settings: cluster defaults with its overrides, and what
is known of whether that BMC could fence the host (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hacluster.fsm.model import ClusterState, FenceRecord, FenceResult, Host

NO_ADDRESS = "no BMC address configured"


@dataclass(frozen=True, slots=True)
class BmcSpec:
    host: str
    driver: str
    address: str
    port: int
    username: str
    sealed_password: bytes = field(repr=False)
    cipher_suite: int
    agent: str
    options: tuple[tuple[str, str], ...]
    verify_tls: bool


def bmc_spec(state: ClusterState, name: str) -> BmcSpec | None:
    """None when the host is unknown or has no BMC address."""
    host = state.hosts.get(name)
    if host is None or not host.bmc.address:
        return None
    base, over = state.settings.bmc, host.bmc
    return BmcSpec(
        host=name,
        driver=over.driver or base.driver,
        address=over.address,
        port=over.port or base.port,
        username=over.username or base.username,
        sealed_password=over.sealed_password or base.sealed_password,
        cipher_suite=over.cipher_suite if over.cipher_suite >= 0 else base.cipher_suite,
        agent=over.agent or base.agent,
        options=tuple(sorted({**dict(base.options), **dict(over.options)}.items())),
        verify_tls=base.verify_tls,
    )


@dataclass(frozen=True, slots=True)
class BmcHealth:
    ok: bool | None  # None: nothing known yet (or a witness, never fenced)
    detail: str


def bmc_health(state: ClusterState, host: Host) -> BmcHealth:
    """Could this host be fenced if it died now, from the newest evidence?

    The settings answer first: without an address it cannot, whatever a report said
    (a report describes the settings its host read; a host that dies before its next
    check never replaces one that `hactl bmc set` made stale). Then the newer of its
    own last check and a fence confirmed through its BMC since: a host just powered
    off through its BMC checks nothing more until it returns.
    """
    if not host.runs_vms:
        return BmcHealth(None, "a witness is never fenced")
    if not host.bmc.address and not host.fence_levels:
        return BmcHealth(False, NO_ADDRESS)
    fence = _confirmed_fence(state, host)
    if fence is not None and fence.finished_at >= host.bmc_checked_at:
        return BmcHealth(True, f"powered the host off (fence token {fence.token}, "
                               f"{fence.result.value} via {fence.method})")
    if not host.bmc.address:  # its fencing levels fence it; nobody checks their devices
        return BmcHealth(None, f"{NO_ADDRESS}; fenced through its {len(host.fence_levels)} "
                               "fencing level(s), not checked")
    if host.bmc_checked_at <= 0:
        return BmcHealth(None, host.bmc_detail)
    return BmcHealth(host.bmc_ok, host.bmc_detail)


def _confirmed_fence(state: ClusterState, host: Host) -> FenceRecord | None:
    """The host's current fence attempt, if its BMC confirmed the power off (an
    operator's confirm says nothing about the BMC)."""
    record = state.fence_record(host.fence_token) if host.fence_token else None
    if record is None or not record.result.host_is_off or record.result is FenceResult.MANUAL:
        return None
    return record
