"""A peer of a newer release, for mixed-version tests: this release plus one command,
`frobnicate` v1, that the peers of this release cannot decode.

    python tests/daemon/newer_peer.py --config PEER.TOML

It runs `hacluster peer` (hacluster.daemon.run.run_peer: same start, same exit codes)
with the command registered, so it announces it like any newer peer would, and serves
one more RPC method on `newer.sock` next to its config:

    test.frobnicate {}               through the version gate, as hactl's writes go
    test.frobnicate {"force": true}  straight into Raft, as a peer without a gate would
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hacluster.config import RpcConfig
from hacluster.daemon.api import Api
from hacluster.daemon.peer import Peer
from hacluster.daemon.run import run_peer
from hacluster.fsm import commands as c
from hacluster.fsm import encode_command
from hacluster.fsm.apply import HANDLERS
from hacluster.fsm.context import Ctx
from hacluster.rpc.protocol import optional, validate_params
from hacluster.rpc.server import CallContext, RpcServer

SOCKET = "newer.sock"
FROBNICATED_VM_STABLE_S = 1234.0  # what applying it changes: visible, touched by nothing else


@dataclass(frozen=True, kw_only=True, slots=True)
class Frobnicate(c.Command):
    TYPE = "frobnicate"
    name: str


def frobnicate(ctx: Ctx, cmd: Frobnicate) -> None:
    settings = ctx.state.settings
    ctx.state.settings = dataclasses.replace(settings, vm_stable_s=FROBNICATED_VM_STABLE_S)
    ctx.emit("frobnicated", cmd.name, "frobnicated")


def register() -> None:
    c.COMMANDS_BY_TYPE[Frobnicate.TYPE] = Frobnicate
    HANDLERS[Frobnicate] = frobnicate


class TestMethods:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    async def frobnicate(self, ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        p = validate_params(params, {"force": optional(bool, default=False)})
        command = Frobnicate(name=self.peer.me)
        if not p["force"]:
            return await Api(self.peer)._write(ctx, command)
        raft = self.peer.raft
        assert raft is not None
        envelope = c.Envelope(command, uuid.uuid4().hex, self.peer.me, time.time(),
                              self.peer.replica.log_now())
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, raft.propose, encode_command(envelope), 5.0)
        return {"status": result.status.value, "index": result.index}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    config = parser.parse_args(argv).config
    register()

    def prepare(peer: Peer) -> None:
        socket = str(Path(config).parent / SOCKET)
        methods = {"test.frobnicate": TestMethods(peer).frobnicate}
        peer.extra_services.append(RpcServer(methods, RpcConfig(socket=socket)))

    return run_peer(config, prepare=prepare)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
