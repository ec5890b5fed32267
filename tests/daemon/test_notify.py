"""Notifications: which events need a person (daemon/notify.py RULES), and their
delivery (daemon/delivery.py) through the webhook to a real HTTP server on 127.0.0.1,
retried with backoff, bounded when the server never answers; and through a real peer."""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.solo import VM_XML, SoloPeer
from daemon.webhook_server import WebhookServer
from hacluster.daemon.delivery import Channel
from hacluster.daemon.notify import HookNotifier, notification
from hacluster.daemon.webhook import WebhookNotifier
from hacluster.fsm import events as ev
from hacluster.fsm.events import Event


@pytest.mark.parametrize(("event", "expected"), [
    (Event(1, ev.VM_STATE, "db1", "no host fits", (("from", "stopped"), ("to", "pending"),
                                                   ("host", ""))), ("vm-pending", "db1")),
    (Event(1, ev.VM_STATE, "db1", "again", (("from", "pending"), ("to", "pending"))), None),
    (Event(1, ev.VM_STATE, "db1", "caps exhausted", (("from", "starting"), ("to", "error"),
                                                     ("host", "h2"))), ("vm-error", "db1")),
    (Event(1, ev.VM_STATE, "db1", "running", (("from", "starting"), ("to", "started"))), None),
    (Event(1, ev.HOST_UPDATED, "h2", "own BMC FAILS: timeout", (("bmc_ok", "False"),)),
     ("bmc-failing", "h2")),
    (Event(1, ev.HOST_UPDATED, "h2", "own BMC answers", (("bmc_ok", "True"),)), None),
    (Event(1, ev.HOST_UPDATED, "h2", "peer stopped cleanly", (("peer_stopped", "True"),)),
     ("peer-stopped", "h2")),
    (Event(1, ev.HOST_UPDATED, "h2", "peer running again", (("peer_stopped", "False"),)),
     None),
    (Event(1, ev.HOST_SHUTDOWN, "h2", "peer stopped for a planned shutdown (freeze)",
           (("step", "done"), ("policy", "freeze"), ("unprotected", "db1"))),
     ("peer-stopped", "h2")),
    (Event(1, ev.HOST_SHUTDOWN, "h2", "planned shutdown (migrate): no new VMs here",
           (("step", "begin"), ("policy", "migrate"))), None),
    (Event(1, ev.FENCE_REFUSED, "h2", "no majority confirms"), ("fence-held", "h2")),
    (Event(1, ev.FENCE_CAP_REACHED, "h2", "3 fences in 3600 s"), ("fence-cap-reached", "h2")),
    (Event(1, ev.VM_START_LOCKED, "db1", "held", (("host", "h3"),)), ("vm-start-locked", "db1")),
    (Event(1, ev.SETTINGS_CHANGED, "", "fence_cap=5"), None),
])
def test_what_needs_a_person(event: Event, expected: tuple[str, str] | None) -> None:
    doc = notification(event, "h1")
    if expected is None:
        assert doc is None
        return
    assert doc is not None
    name, subject = expected
    assert doc["event"] == name and doc["cluster"] == "h1" and doc["index"] == 1
    key = "vm" if name.startswith("vm-") else "host"
    assert doc[key] == subject
    if key == "vm":
        assert doc["host"] == event.get("host")


@pytest.fixture
def server_factory() -> Iterator[type[WebhookServer]]:
    made: list[WebhookServer] = []

    class Made(WebhookServer):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(**kwargs)  # type: ignore[arg-type]
            made.append(self)

    yield Made
    for server in made:
        server.close()


DOC = {"event": "vm-error", "vm": "db1", "host": "h2", "message": "caps exhausted",
       "index": 41, "cluster": "h1", "data": {}}


def test_a_webhook_that_fails_twice_is_retried_until_it_answers(
        server_factory: type[WebhookServer], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    server = server_factory(failures=2)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    channel = Channel(WebhookNotifier(server.url, 10.0, str(token)), attempts=4,
                      backoff_s=0.05)
    with caplog.at_level(logging.WARNING, logger="hacluster.notify"):
        channel.put(DOC)
        assert channel.idle(60)
    assert server.posts == [(DOC, "Bearer s3cret")] * 3
    assert (channel.delivered, channel.failed) == (1, 0)
    retries = [r for r in caplog.records if r.getMessage() == "notification failed, retrying"]
    assert [r.error for r in retries] == ["HTTP 500 Internal Server Error"] * 2


def test_a_webhook_that_never_answers_is_given_up_and_blocks_nothing(
        server_factory: type[WebhookServer], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    server = server_factory(silent=True)
    out = tmp_path / "hooked.jsonl"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ncat >> {out}\necho >> {out}\n")
    hook.chmod(0o755)
    webhook = Channel(WebhookNotifier(server.url, 0.5), attempts=2, backoff_s=0.05)
    hooked = Channel(HookNotifier(str(hook), 10.0), attempts=2, backoff_s=0.05)
    with caplog.at_level(logging.WARNING, logger="hacluster.notify"):
        for channel in (webhook, hooked):
            channel.put(DOC)
        assert hooked.idle(60) and webhook.idle(60)
    assert json.loads(out.read_text().splitlines()[0]) == DOC
    assert (webhook.delivered, webhook.failed, len(server.posts)) == (0, 1, 2)
    given_up = next(r for r in caplog.records if r.getMessage() == "notification given up")
    assert given_up.errors == "no answer within 0.5 s | no answer within 0.5 s"
    webhook.close()
    hooked.close()


def test_a_failing_hook_is_retried(tmp_path: Path) -> None:
    tries = tmp_path / "tries"
    hook = tmp_path / "hook.sh"  # fails the first time, succeeds the second
    hook.write_text(f"#!/bin/sh\necho x >> {tries}\n[ $(wc -l < {tries}) -ge 2 ]\n")
    hook.chmod(0o755)
    channel = Channel(HookNotifier(str(hook), 10.0), attempts=3, backoff_s=0.05)
    channel.put(DOC)
    assert channel.idle(60)
    assert (channel.delivered, channel.failed) == (1, 0)
    assert tries.read_text().count("x") == 2


def peer_with_webhook(tmp_path: Path, url: str, extra: str = "") -> tuple[SoloPeer, Path]:
    out = tmp_path / "hooked.jsonl"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ncat >> {out}\necho >> {out}\n")
    hook.chmod(0o755)
    peer = SoloPeer(tmp_path, extra=(f'[notify]\nhook = "{hook}"\nwebhook_url = "{url}"\n'
                                     f"retry_backoff_s = 0.1\n{extra}"))
    return peer, out


def add_too_large_vm(peer: SoloPeer) -> None:
    """A VM larger than the host (1024 MiB): it waits pending, and that needs a person."""
    xml = peer.base / "big.xml"
    xml.write_text(VM_XML.format(name="big").replace(">64<", ">4096<"))
    peer.hactl("vm", "add", str(xml))


def wait_for(check: object, what: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"no {what}; the peer logged:\n{log.read_text()}"
        time.sleep(0.1)


def test_a_peer_notifies_a_pending_vm_through_hook_and_retried_webhook(
        server_factory: type[WebhookServer], tmp_path: Path) -> None:
    server = server_factory(failures=2)
    peer, out = peer_with_webhook(tmp_path, server.url)
    try:
        peer.start()
        add_too_large_vm(peer)
        wait_for(server.answered.is_set, "webhook delivery", peer.log)
        wait_for(lambda: out.exists() and "vm-pending" in out.read_text(), "hook run",
                 peer.log)
        assert server.events() == ["vm-pending"] * 3  # failed twice, then delivered
        body = server.posts[-1][0]
        assert (body["vm"], body["cluster"]) == ("big", "solo")
    finally:
        peer.stop()


def test_a_peer_whose_webhook_never_answers_keeps_serving(
        server_factory: type[WebhookServer], tmp_path: Path) -> None:
    server = server_factory(silent=True)
    peer, out = peer_with_webhook(tmp_path, server.url,
                                  "webhook_timeout_s = 0.5\nattempts = 2\n")
    try:
        peer.start()
        add_too_large_vm(peer)
        wait_for(lambda: out.exists() and "vm-pending" in out.read_text(), "hook run",
                 peer.log)
        peer.hactl("settings", "set", "fence_cap=4")  # the peer still decides and answers
        wait_for(lambda: "notification given up" in peer.log.read_text(), "given up",
                 peer.log)
        assert "no answer within 0.5 s" in peer.log.read_text()
        assert server.events() == ["vm-pending"] * 2
    finally:
        peer.stop()


def test_sighup_applies_a_new_webhook(server_factory: type[WebhookServer],
                                      tmp_path: Path) -> None:
    server = server_factory()
    peer = SoloPeer(tmp_path)
    try:
        peer.start()
        assert peer.proc is not None
        peer.config.write_text(peer.config.read_text()
                               + f'[notify]\nwebhook_url = "{server.url}"\n')
        peer.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "applied=notify" in peer.log.read_text(), "reload", peer.log)
        add_too_large_vm(peer)
        wait_for(server.answered.is_set, "webhook delivery", peer.log)
        assert server.events() == ["vm-pending"]
    finally:
        peer.stop()
