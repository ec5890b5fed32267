"""The parameters vm.add and vm.set share (daemon/api.py), relations included: start
order (start_after), colocation group (colocation) and host tags (required_tags); and
failback: preferred hosts with scores (preferred_hosts), policy (failback)."""

from __future__ import annotations

from typing import Any

from hacluster.rpc.protocol import optional


def vm_option_params() -> dict[str, Any]:
    return {"ha": optional(str), "allowed_hosts": optional(list),
            "anti_affinity": optional(str), "max_restarts": optional(int),
            "max_relocates": optional(int), "start_after": optional(list),
            "colocation": optional(str), "required_tags": optional(list),
            "preferred_hosts": optional(list), "failback": optional(str)}
