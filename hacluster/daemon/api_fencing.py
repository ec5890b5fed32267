"""The admin RPC method `host.fencing`: a host's fencing levels (mixed into
daemon/api.py's `Api`).

Params: {"name": HOST, "levels": [[DEVICE, ...], ...]}, levels in the order they are
tried, each a list of devices that must all power off; [] clears them (the host's BMC
alone fences it again). A DEVICE is a map with "driver" (bmc, ipmi, redfish, agent) and,
as needed, "address", "port", "username", "password" (in clear, over the admin
channel only: it is sealed here with the cluster secret, as `bmc.set` does, so the log,
snapshots and views only ever carry sealed bytes), "agent", "cipher_suite" and
"options" ({key: value} for agents and Redfish).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hacluster.fsm import commands as c
from hacluster.fsm.model import FenceDevice, FenceLevel
from hacluster.fsm.wire import WireError, decode_fields
from hacluster.rpc.protocol import ErrorCode, RpcError, validate_params
from hacluster.rpc.server import CallContext
from hacluster.secrets import seal

if TYPE_CHECKING:
    from hacluster.daemon.peer import Peer

DEVICE_KEYS = ("driver", "address", "port", "username", "password", "agent", "cipher_suite",
               "options")


class FencingMethods:
    peer: Peer

    def _host(self, name: str) -> None:
        raise NotImplementedError  # daemon/api.py

    async def _write(self, ctx: CallContext, command: c.Command) -> dict[str, Any]:
        raise NotImplementedError  # daemon/api.py

    async def m_host_fencing(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        """Set (or clear, with no levels) a host's fencing levels."""
        p = validate_params(params, {"name": str, "levels": list})
        self._host(p["name"])
        levels = levels_from_params(p["levels"], self.peer.secret)
        return await self._write(ctx, c.SetHostFencing(name=p["name"], levels=levels))


def levels_from_params(raw: list[Any], secret: str) -> tuple[FenceLevel, ...]:
    """The levels of a `host.fencing` call, passwords sealed; bad-params naming the
    level and device when one is not of the form above (fsm/validate.py checks the rest)."""
    levels = []
    for number, devices in enumerate(raw, 1):
        if not isinstance(devices, list):
            raise _bad(f"level {number}: expected a list of devices")
        levels.append(FenceLevel(tuple(_device(d, secret, f"level {number}, device {i}")
                                       for i, d in enumerate(devices, 1))))
    return tuple(levels)


def _device(raw: Any, secret: str, where: str) -> FenceDevice:
    if not isinstance(raw, dict):
        raise _bad(f"{where}: expected a map with driver, address, ...")
    unknown = sorted(str(k) for k in raw if k not in DEVICE_KEYS)
    if unknown:
        raise _bad(f"{where}: unknown key(s) {', '.join(unknown)} (known: "
                   f"{', '.join(DEVICE_KEYS)})")
    fields = {k: v for k, v in raw.items() if k != "password"}
    password = raw.get("password")
    if password is not None and not isinstance(password, str):
        raise _bad(f"{where}: password: expected a string")
    if password:
        fields["sealed_password"] = seal(secret, password)
    options = fields.get("options", {})
    if not isinstance(options, dict):
        raise _bad(f"{where}: options: expected a map of key: value")
    fields["options"] = [[str(k), str(v)] for k, v in options.items()]
    try:
        device: FenceDevice = decode_fields(FenceDevice, fields)
        return device
    except WireError as exc:
        raise _bad(f"{where}: {exc}") from None


def _bad(message: str) -> RpcError:
    return RpcError(ErrorCode.BAD_PARAMS, message, {"field": "levels"})
