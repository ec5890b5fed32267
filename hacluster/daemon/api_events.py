"""The admin RPC methods of the event history (daemon/history.py): `events` (query, and
follow) and `history.status`. A mixin of daemon/api.py's Api."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from hacluster.daemon.history import matches
from hacluster.rpc.protocol import optional, validate_params
from hacluster.rpc.server import CallContext

if TYPE_CHECKING:
    from hacluster.daemon.peer import Peer


class EventMethods:
    peer: Peer

    async def m_events(self, ctx: CallContext,
                       params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The newest `last` items of this peer's history (daemon/history.py) that match
        host, VM and the time range (seconds since the epoch, inclusive); with `follow`,
        then every new one that matches, until the client leaves."""
        p = validate_params(params, {"follow": optional(bool, default=False),
                                     "last": optional(int, default=50),
                                     "host": optional(str, default=""),
                                     "vm": optional(str, default=""),
                                     "since": optional(float), "until": optional(float)})
        since = -math.inf if p["since"] is None else p["since"]
        until = math.inf if p["until"] is None else p["until"]
        queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue(maxsize=1000)
        loop = asyncio.get_running_loop()

        def listener(items: list[dict[str, Any]]) -> None:  # Raft thread, or the loop's
            loop.call_soon_threadsafe(_offer, queue, items)

        history = self.peer.history
        unsubscribe = history.listen(listener) if p["follow"] else None
        try:
            recent = await loop.run_in_executor(
                self.peer.pool, lambda: history.query(p["host"], p["vm"], since, until,
                                                      max(0, p["last"])))
            for item in recent:
                yield item
            while unsubscribe is not None:
                for item in await queue.get():
                    if matches(item, p["host"], p["vm"], since, until):
                        yield item
        finally:
            if unsubscribe is not None:
                unsubscribe()

    async def m_history_status(self, ctx: CallContext,
                               params: dict[str, Any]) -> dict[str, Any]:
        validate_params(params, {})
        return {"history": self.peer.history.status()}


def _offer(queue: asyncio.Queue[list[dict[str, Any]]], items: list[dict[str, Any]]) -> None:
    if not queue.full():  # a reader that cannot keep up loses events, not the peer
        queue.put_nowait(items)
