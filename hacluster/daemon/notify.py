"""Notifications: run the configured hook with one JSON event on stdin.

Fired by the leader only (every peer applies the same events), for fence
requested / succeeded / failed / cap reached / held / cancelled, host recovered, a VM
start refused for a held disk lock (a copy runs elsewhere: "vm" names it), a host found
alive on shared storage (storage-active: not fenced) and a silent host's storage the
leader cannot read. The hook runs
with a timeout, off the event loop; a failing hook is logged, never retried.
"""

from __future__ import annotations

import json
import logging
import subprocess

from hacluster.fsm import events as ev
from hacluster.fsm.events import Event

log = logging.getLogger("hacluster.notify")

NOTIFIED_KINDS = {
    ev.FENCE_REQUESTED: "fence-requested",
    ev.FENCE_CONFIRMED: "fence-succeeded",
    ev.FENCE_FAILED: "fence-failed",
    ev.FENCE_CAP_REACHED: "fence-cap-reached",
    ev.FENCE_REFUSED: "fence-held",
    ev.FENCE_CANCELLED: "fence-cancelled",
    ev.HOST_RECOVERED: "host-recovered",
    ev.VM_START_LOCKED: "vm-start-locked",
    ev.STORAGE_ACTIVE: "storage-active",
    ev.STORAGE_UNREADABLE: "storage-unreadable",
}
VM_KINDS = frozenset({ev.VM_START_LOCKED})  # their subject is a VM; data names the host


def notification(event: Event, cluster: str) -> dict[str, object] | None:
    kind = NOTIFIED_KINDS.get(event.kind)
    if kind is None:
        return None
    if event.kind in VM_KINDS:
        return {"event": kind, "vm": event.subject, "host": event.get("host"),
                "message": event.message, "index": event.index, "cluster": cluster,
                "data": dict(event.data)}
    return {"event": kind, "host": event.subject, "message": event.message,
            "index": event.index, "cluster": cluster, "data": dict(event.data)}


class HookNotifier:
    """ports.Notifier running an executable."""

    def __init__(self, hook: str, timeout_s: float) -> None:
        self.hook = hook
        self.timeout_s = timeout_s

    def notify(self, event: dict[str, object]) -> None:
        if not self.hook:
            return
        try:
            done = subprocess.run([self.hook], input=json.dumps(event).encode(),
                                  capture_output=True, timeout=self.timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("notification hook failed", extra={"hook": self.hook, "error": str(exc),
                                                          "event": event["event"]})
            return
        if done.returncode != 0:
            log.error("notification hook exited non-zero", extra={
                "hook": self.hook, "code": done.returncode, "event": event["event"],
                "stderr": done.stderr.decode(errors="replace")[-300:]})
