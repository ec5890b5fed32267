"""Notifications: what needs a person, as one JSON document per event.

Fired by the leader only (every peer applies the same events), in the order of the log,
for the kinds in RULES. Each goes to every channel (daemon/delivery.py): the [notify]
hook (an executable, the JSON on stdin), the [notify] webhook (daemon/webhook.py: an
HTTP POST of the JSON), or an embedder's notifier; a failed delivery is retried with
backoff, a bounded number of times.

    {"event": "vm-error", "vm": "db1", "host": "h2", "message": "...", "index": 41,
     "cluster": "h1", "data": {...}}

"host" is the host the event is about; for a VM's event "vm" names the VM and "host"
where it was. Adding a kind is one line in RULES.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

from hacluster.fsm import events as ev
from hacluster.fsm.events import Event

HOST, VM = "host", "vm"  # what an event's subject names


class NotifyFailed(Exception):
    """A delivery did not happen; the message says why (it is retried)."""


@dataclass(frozen=True)
class Rule:
    name: str  # "event" in the document
    kind: str  # the fsm event kind it fires on
    subject: str = HOST  # HOST or VM
    when: tuple[tuple[str, str], ...] = ()  # the event's data must have these values
    unless: tuple[tuple[str, str], ...] = ()  # ... and not these

    def fires(self, event: Event) -> bool:
        return event.kind == self.kind and \
            all(event.get(k) == v for k, v in self.when) and \
            not any(event.get(k) == v for k, v in self.unless)


RULES: tuple[Rule, ...] = (
    Rule("fence-requested", ev.FENCE_REQUESTED),
    Rule("fence-succeeded", ev.FENCE_CONFIRMED),
    Rule("fence-failed", ev.FENCE_FAILED),
    Rule("fence-cap-reached", ev.FENCE_CAP_REACHED),
    Rule("fence-held", ev.FENCE_REFUSED),  # the quorum guard holds it: no majority confirms
    Rule("fence-cancelled", ev.FENCE_CANCELLED),
    Rule("host-recovered", ev.HOST_RECOVERED),
    Rule("bmc-failing", ev.HOST_UPDATED, when=(("bmc_ok", "False"),)),
    Rule("peer-stopped", ev.HOST_UPDATED, when=(("peer_stopped", "True"),)),
    Rule("peer-stopped", ev.HOST_SHUTDOWN, when=(("step", "done"),)),  # planned shutdown
    Rule("vm-error", ev.VM_STATE, VM, when=(("to", "error"),), unless=(("from", "error"),)),
    Rule("vm-pending", ev.VM_STATE, VM, when=(("to", "pending"),),
         unless=(("from", "pending"),)),
    Rule("vm-start-locked", ev.VM_START_LOCKED, VM),  # a copy runs elsewhere
    Rule("storage-active", ev.STORAGE_ACTIVE),  # lease expired, still writes: not fenced
    Rule("storage-unreadable", ev.STORAGE_UNREADABLE),
)
NOTIFIED_KINDS = frozenset(rule.name for rule in RULES)


def notification(event: Event, cluster: str) -> dict[str, object] | None:
    rule = next((r for r in RULES if r.fires(event)), None)
    if rule is None:
        return None
    doc: dict[str, object] = {"event": rule.name}
    if rule.subject == VM:
        doc.update(vm=event.subject, host=event.get("host"))
    else:
        doc["host"] = event.subject
    doc.update(message=event.message, index=event.index, cluster=cluster,
               data=dict(event.data))
    return doc


class HookNotifier:
    """ports.Notifier running an executable; raises NotifyFailed when it fails."""

    def __init__(self, hook: str, timeout_s: float) -> None:
        self.hook = hook
        self.timeout_s = timeout_s

    def __str__(self) -> str:
        return f"hook {self.hook}"

    def notify(self, event: dict[str, object]) -> None:
        try:
            done = subprocess.run([self.hook], input=json.dumps(event).encode(),
                                  capture_output=True, timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise NotifyFailed(f"still running after {self.timeout_s:g} s: killed") from None
        except OSError as exc:
            raise NotifyFailed(f"cannot run: {exc}") from None
        if done.returncode != 0:
            stderr = done.stderr.decode(errors="replace")[-300:].strip()
            raise NotifyFailed(f"exited {done.returncode}" + (f": {stderr}" if stderr else ""))
