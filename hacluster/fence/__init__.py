"""Fencing adapters: power a host off through its BMC and prove it is off.

`make_fencer()` returns a `FenceRouter`, a `ports.Fencer` that hands each
target to the backend named by `BmcTarget.driver`:

- "ipmi"    `hacluster.fence.ipmi.IpmiFencer` (pyghmi, IPMI v2 over UDP)
- "redfish" `hacluster.fence.redfish.RedfishFencer` (pyghmi Redfish, HTTPS)
- "agent"   `hacluster.fence.agent.AgentFencer` (fence-agents executables)

Backends are created on first use, so a library is imported only when a
target needs it. Embedders add their own backend with `register` (or the
`extra` argument): anything with the `Fencer` methods will do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from hacluster.ports import (
    BmcProbe,
    BmcTarget,
    FenceAction,
    FenceOutcome,
    Fencer,
    FenceResult,
    PowerState,
    Secret,
)

BackendFactory = Callable[[], Fencer]


class UnknownDriver(KeyError):
    """No backend is registered under this driver name."""


def _ipmi() -> Fencer:
    from hacluster.fence.ipmi import IpmiFencer

    return IpmiFencer()


def _redfish() -> Fencer:
    from hacluster.fence.redfish import RedfishFencer

    return RedfishFencer()


def _agent() -> Fencer:
    from hacluster.fence.agent import AgentFencer

    return AgentFencer()


def default_backends() -> dict[str, BackendFactory]:
    """The built-in drivers, as factories (nothing is imported yet)."""
    return {"ipmi": _ipmi, "redfish": _redfish, "agent": _agent}


def _scrubbed(text: str, secret: Secret) -> str:
    value = secret.reveal()
    return text.replace(value, "***") if value else text


class FenceRouter:
    """A Fencer that dispatches on `target.driver`. Never raises from
    fence/probe: an unknown driver or a crashing backend is an ERROR result."""

    def __init__(self, factories: Mapping[str, BackendFactory] | None = None) -> None:
        self._factories: dict[str, BackendFactory] = dict(
            default_backends() if factories is None else factories
        )
        self._backends: dict[str, Fencer] = {}
        self._lock = threading.Lock()

    def register(self, driver: str, factory: BackendFactory) -> None:
        """Add or replace a driver; the backend is built on first use."""
        with self._lock:
            self._factories[driver] = factory
            self._backends.pop(driver, None)

    def drivers(self) -> list[str]:
        with self._lock:
            return sorted(self._factories)

    def backend(self, driver: str) -> Fencer:
        """The backend for `driver`, built once; UnknownDriver if none."""
        with self._lock:
            found = self._backends.get(driver)
            if found is None:
                factory = self._factories.get(driver)
                if factory is None:
                    raise UnknownDriver(driver)
                found = factory()
                self._backends[driver] = found
            return found

    def close(self) -> None:
        """Release what backends hold (the IPMI backend keeps an idle worker
        process); the router can still be used afterwards."""
        with self._lock:
            backends = list(self._backends.values())
        for backend in backends:
            close = getattr(backend, "close", None)
            if callable(close):
                close()

    def fence(self, target: BmcTarget, action: FenceAction, deadline_s: float) -> FenceResult:
        method = f"{target.driver} {target.address}:{target.port}"
        try:
            return self.backend(target.driver).fence(target, action, deadline_s)
        except UnknownDriver:
            return FenceResult(
                FenceOutcome.ERROR, f"unknown fence driver {target.driver!r}", method
            )
        except Exception as err:  # a plug-in backend broke its promise not to raise
            text = _scrubbed(f"backend raised {type(err).__name__}: {err}", target.password)
            return FenceResult(FenceOutcome.ERROR, " ".join(text.split()), method)

    def probe(self, target: BmcTarget, deadline_s: float) -> BmcProbe:
        try:
            return self.backend(target.driver).probe(target, deadline_s)
        except UnknownDriver:
            return BmcProbe(False, PowerState.UNKNOWN, f"unknown fence driver {target.driver!r}")
        except Exception as err:
            text = _scrubbed(f"backend raised {type(err).__name__}: {err}", target.password)
            return BmcProbe(False, PowerState.UNKNOWN, " ".join(text.split()))


def make_fencer(extra: Mapping[str, BackendFactory] | None = None) -> FenceRouter:
    """The standard router, plus (or overriding) the `extra` drivers."""
    router = FenceRouter()
    for driver, factory in (extra or {}).items():
        router.register(driver, factory)
    return router


__all__ = ["BackendFactory", "FenceRouter", "UnknownDriver", "default_backends", "make_fencer"]
