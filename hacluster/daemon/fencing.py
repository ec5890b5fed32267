"""Glue between the replicated BMC settings and a Fencer backend."""

from __future__ import annotations

import logging

from hacluster.core.bmc import BmcSpec
from hacluster.fsm.model import FenceResult
from hacluster.ports import BmcTarget, FenceOutcome, Secret
from hacluster.secrets import SecretError, unseal

log = logging.getLogger("hacluster.fence")


def bmc_target(spec: BmcSpec, cluster_secret: str) -> BmcTarget:
    """Unseal the password just before use; raises SecretError if it cannot."""
    password: Secret = unseal(cluster_secret, spec.sealed_password)
    return BmcTarget(
        host=spec.host, driver=spec.driver, address=spec.address, port=spec.port,
        username=spec.username, password=password,
        cipher_suite=spec.cipher_suite if spec.cipher_suite >= 0 else None,
        agent=spec.agent, options=spec.options, verify_tls=spec.verify_tls)


def as_record_result(outcome: FenceOutcome) -> FenceResult:
    """The backend's outcome as the replicated fence-history result."""
    return FenceResult(outcome.value)


__all__ = ["SecretError", "as_record_result", "bmc_target"]
