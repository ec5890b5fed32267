"""The rules of fsm/validate.py for the cluster's settings, the BMC defaults and planned
shutdowns: what a value can be on its own, and how the lease timings must order."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import fields
from itertools import pairwise
from typing import Any

from hacluster.fsm import commands as c
from hacluster.fsm import failback
from hacluster.fsm.context import name_problem
from hacluster.fsm.model import Settings, ShutdownPolicy

Found = tuple[str, str]  # (field, message); "" message: no problem

# Built-in drivers are ipmi, redfish and agent; embedders may register more, so any
# plain name is accepted here and an unknown one fails visibly at the BMC check.
DRIVER_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
POSITIVE_SETTINGS = ("fence_window_s", "fence_timeout_s", "memory_overcommit",
                     "vcpu_overcommit", "lease_renew_s", "lease_suspect_s", "lease_ttl_s",
                     "vm_stable_s")
COUNTED_SETTINGS = ("fence_cap", "fence_retry_limit", "fence_retry_backoff_s")
CHECKED_SETTINGS = (*POSITIVE_SETTINGS, *COUNTED_SETTINGS, "probe_after_s",
                    "watchdog_margin_s", *failback.FAILBACK_SETTINGS)
LEASE_SETTINGS = ("lease_renew_s", "lease_suspect_s", "lease_ttl_s")


def setting_problem(name: str, value: Any) -> str:
    """What is wrong with one setting's value on its own ("" if nothing)."""
    if name in POSITIVE_SETTINGS and not (math.isfinite(value) and value > 0):
        return f"{name} must be a positive number (got {value})"
    wrong = {"fence_cap": lambda v: v < 0, "fence_retry_limit": lambda v: v < 1,
             "fence_retry_backoff_s": lambda v: not v >= 0}.get(name)
    if wrong is not None and wrong(value):
        return "fence_cap must be >= 0, fence_retry_limit >= 1, fence_retry_backoff_s >= 0"
    if name == "probe_after_s" and not (math.isfinite(value) and value >= 0):
        return f"probe_after_s must be 0 (off) or a positive number (got {value})"
    if name == "watchdog_margin_s" and not (math.isfinite(value) and value >= 0):
        return f"watchdog_margin_s must be a number >= 0 (got {value})"
    if name in failback.FAILBACK_SETTINGS:
        return failback.setting_problem(name, value)
    return ""


def settings_problem(s: Settings) -> str:
    """The first thing wrong with a settings record ("" when valid)."""
    for name in CHECKED_SETTINGS:
        problem = setting_problem(name, getattr(s, name))
        if problem:
            return problem
    if not s.lease_renew_s < s.lease_suspect_s < s.lease_ttl_s:
        return (
            "lease timings must satisfy lease_renew_s < lease_suspect_s < lease_ttl_s "
            f"(got {s.lease_renew_s} < {s.lease_suspect_s} < {s.lease_ttl_s})"
        )
    return ""


def settings_given(cmd: c.SetSettings) -> dict[str, Any]:
    return {f.name: getattr(cmd, f.name) for f in fields(cmd) if getattr(cmd, f.name)
            is not None}


def _set_settings(cmd: c.SetSettings, admission: bool) -> Iterator[Found]:
    given = settings_given(cmd)
    yield "", "" if given else "no setting given"
    for name in CHECKED_SETTINGS:
        if name in given:
            yield name, setting_problem(name, given[name])
    if admission:
        leases = [(k, given[k]) for k in LEASE_SETTINGS if k in given]
        if any(a[1] >= b[1] for a, b in pairwise(leases)):
            shown = ", ".join(f"{k}={v}" for k, v in leases)
            yield leases[-1][0], ("lease timings must satisfy lease_renew_s < "
                                  f"lease_suspect_s < lease_ttl_s (given: {shown})")


def shutdown_policy_problem(policy: str, inherit_ok: bool) -> str:
    """Why `policy` names no shutdown policy ("" if it does; "" inherits, for a host)."""
    known = [p.value for p in ShutdownPolicy]
    if policy in known or (inherit_ok and policy == ""):
        return ""
    return f"unknown shutdown policy {policy!r}: one of {', '.join(known)}"


def _planned_shutdown(cmd: c.PlannedShutdown, admission: bool) -> Iterator[Found]:
    yield "step", "" if cmd.step in c.SHUTDOWN_STEPS else \
        f"unknown step {cmd.step!r}: one of {', '.join(c.SHUTDOWN_STEPS)}"
    yield "policy", shutdown_policy_problem(cmd.policy, cmd.step == "back")
    for vm, placement in cmd.stopped:
        yield "stopped", name_problem("VM", vm, strict=True) or (
            "" if placement >= 0 else "placement must be >= 0")


def _shutdown_policy(cmd: c.SetShutdownPolicy, admission: bool) -> Iterator[Found]:
    yield "policy", shutdown_policy_problem(cmd.policy, bool(cmd.host))


def _bmc_defaults(cmd: c.SetBmcDefaults, admission: bool) -> Iterator[Found]:
    yield "bmc.driver", ("" if DRIVER_RE.match(cmd.bmc.driver) else
                         f"BMC driver {cmd.bmc.driver!r}: expected a name such as ipmi, "
                         "redfish or agent")
    yield "bmc.port", "" if 0 < cmd.bmc.port < 65536 else f"BMC port {cmd.bmc.port} out of range"
