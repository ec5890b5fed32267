"""Raft membership changes made by a peer (adding and removing voters), idempotent and
retried through elections and changes already in progress."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor

from hacluster.daemon.proposer import NoLeaderError
from hacluster.ports import ProposeStatus
from hacluster.raft import RaftNode


async def change_membership(raft: RaftNode, change: str, address: str, pool: Executor,
                            timeout_s: float, stopping: Callable[[], bool],
                            deadline_s: float = 10.0) -> None:
    """`change`: "add_member" or "remove_member". Idempotent: done at once if the Raft
    configuration already says so. Retried while there is no leader (an election is
    under way), another change is still in progress (NOT_LEADER: it never entered the
    log) or a leader change left it unknown (MAYBE: the next look at the configuration
    tells)."""
    loop = asyncio.get_running_loop()
    adding = change == "add_member"
    give_up = time.monotonic() + deadline_s
    while True:
        if await loop.run_in_executor(pool, in_raft_config, raft, address) is adding:
            return
        result = await loop.run_in_executor(pool, getattr(raft, change), address, timeout_s)
        if result.status is ProposeStatus.COMMITTED:
            return
        if time.monotonic() >= give_up or stopping():
            raise NoLeaderError(
                f"{change.replace('_', ' ')} {address}: not done within {deadline_s:g} s "
                f"(last answer: {result.status.value}; no leader, another membership "
                "change in progress, or the leader refused it, e.g. to remove itself)")
        await asyncio.sleep(0.05)


def in_raft_config(raft: RaftNode, address: str) -> bool:
    """Whether the latest Raft configuration in this peer's log has `address` as a voter
    (Raft uses the latest configuration, committed or not)."""
    status = raft.status()
    return address == status.self_address or any(
        p.address == address for p in status.partners)
