"""Resolve one host's BMC settings: cluster defaults with its overrides (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hacluster.fsm.model import ClusterState


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
