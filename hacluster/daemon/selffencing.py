"""Self-fencing in a running peer: the allowance (core/selffence.py), the watchdog that
enforces it (daemon/watchdog.py), and the host's record in the replicated state.

The record never promises more than the machine does: the watchdog is armed before the
record says armed, and on a clean stop the record says disarmed (committed) before the
watchdog is disarmed; if that commit fails the watchdog stays armed and resets the
machine, which is what an isolated host should undergo anyway.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from hacluster.config import WatchdogConfig
from hacluster.core.renewal import Ack
from hacluster.core.selffence import SelfFence
from hacluster.daemon.proposer import Proposer
from hacluster.daemon.replica import Replica
from hacluster.daemon.watchdog import WatchdogFeeder, make_watchdog
from hacluster.fsm import commands as c
from hacluster.fsm.model import Watchdog
from hacluster.ports import Hypervisor

log = logging.getLogger("hacluster.watchdog")
RECORD_EVERY_S = 1.0


class SelfFencing:
    def __init__(self, me: str, config: WatchdogConfig, replica: Replica,
                 on_fired: Callable[[], None]) -> None:
        self.me = me
        self.config = config
        self.replica = replica
        self.on_fired = on_fired
        self.policy = SelfFence(config.self_fence_s)
        device = make_watchdog(config.kind, config.device, config.command,
                               config.disarm_command, config.timeout_s)
        self.feeder = None if device is None else WatchdogFeeder(device, self.policy,
                                                                 self._self_fence)

    @property
    def enabled(self) -> bool:
        return self.feeder is not None

    @property
    def fired(self) -> bool:
        """This host fenced itself: it renews nothing and starts nothing any more."""
        return self.feeder is not None and self.feeder.fired

    def start(self) -> None:
        if self.feeder is not None:
            self.feeder.start()

    # ------------------------------------------------------------ allowance

    def round_sent(self, seq: int, now: float) -> None:
        if self.feeder is not None:
            with self.feeder.lock:
                self.policy.sent(seq, now)

    def ack_received(self, ack: Ack) -> None:
        if self.feeder is not None:
            with self.feeder.lock:
                self.policy.acknowledged(ack.seq, ack.challenge)

    def allowed_from(self, anchor: float) -> None:
        """A Raft grant, or (leading) a confirmed read of ours (core/selffence.py)."""
        if self.feeder is not None:
            with self.feeder.lock:
                self.policy.allow_from(anchor)

    def status(self) -> dict[str, object]:
        if self.feeder is None:
            return {"kind": "none"}
        left = self.policy.left_s(time.monotonic())
        return {"kind": self.config.kind, "armed": self.feeder.armed,
                "fired": self.feeder.fired, "timeout_s": self.feeder.device.timeout_s,
                "self_fence_s": self.config.self_fence_s, "feed_failures": self.feeder.failures,
                "allowance_left_s": None if left is None else round(left, 2)}

    # ------------------------------------------------------------ the record

    def wanted_record(self) -> Watchdog:
        if self.feeder is None:
            return Watchdog()
        return self.feeder.record(self.config.self_fence_s)

    async def keep_record(self, proposer: Proposer, caught_up: Callable[[], bool]) -> None:
        """Bring the replicated record up to date with the watchdog (runs for ever)."""
        while True:
            await asyncio.sleep(RECORD_EVERY_S)
            try:
                await self._update_record(proposer, caught_up)
            except Exception:  # keep trying: the record must follow the watchdog
                log.exception("updating the watchdog record failed")

    async def _update_record(self, proposer: Proposer, caught_up: Callable[[], bool]) -> None:
        if not caught_up():
            return
        wanted = self.wanted_record()
        with self.replica.read() as state:
            host = state.hosts.get(self.me)
            current = host.watchdog if host is not None else None
        if current is None or current == wanted:
            return
        outcome = await proposer.submit(c.ReportWatchdog(name=self.me, watchdog=wanted),
                                        deadline_s=5.0)
        if not outcome.committed:
            log.warning("watchdog record not committed yet", extra={"armed": wanted.armed})

    async def stop(self, proposer: Proposer | None, grace_s: float) -> None:
        """A clean stop: say disarmed, then disarm (or stay armed if it could not be said)."""
        if self.feeder is None:
            return
        said = not self.feeder.armed
        if not said and proposer is not None:
            record = Watchdog(self.feeder.device.kind, self.feeder.device.timeout_s,
                              self.config.self_fence_s, armed=False)
            outcome = await proposer.submit(c.ReportWatchdog(name=self.me, watchdog=record),
                                            deadline_s=grace_s)
            said = outcome.committed
        if not said:
            log.critical("watchdog left armed: the cluster could not be told it is "
                         "disarmed; this machine resets within %.0f s",
                         self.feeder.device.timeout_s)
        await asyncio.get_running_loop().run_in_executor(None, self.feeder.stop, said)

    # ------------------------------------------------------------ firing

    def _self_fence(self) -> None:
        """Feeder thread: the allowance ran out. Stop the peer's Raft and destroy the VMs
        (the watchdog resets the machine anyway; this only makes it sooner), without
        blocking the feeder."""
        threading.Thread(target=self._destroy, name="self-fence", daemon=True).start()

    def _destroy(self) -> None:
        try:
            self.on_fired()
        except Exception:
            log.exception("self-fence: destroying the VMs failed; the watchdog resets "
                          "the machine")


def destroy_cluster_vms(hypervisor: Hypervisor, cluster_vms: set[str]) -> None:
    """Self-fence: destroy every running domain that is a cluster VM (others are left)."""
    for domain in hypervisor.list_domains():
        if domain.name in cluster_vms:
            try:
                hypervisor.destroy(domain.name)
                log.critical("self-fence: destroyed %s", domain.name)
            except Exception as exc:
                log.error("self-fence: destroying %s failed: %s", domain.name, exc)
