"""Prometheus metrics of one peer ([metrics] address, off by default); the only module
importing prometheus_client.

Read at each scrape, on the peer's event loop (as `hactl status` reads them):

    hacluster_is_leader, hacluster_leader{leader,address}, hacluster_term, hacluster_has_quorum,
    hacluster_commit_index, hacluster_applied_index
    hacluster_lease_age_seconds{host,link}     since this peer last heard a renewal
    hacluster_fence_attempts_total{result}     finished attempts in the replicated history
    hacluster_fences_pending, hacluster_fence_cap, hacluster_fence_cap_remaining
    hacluster_vms{state}, hacluster_hosts{state}
    hacluster_refusals_total{channel,kind}     raft, lease, rpc (as in peer status)
    hacluster_notifications_total{channel,result}   delivered, failed, dropped

Observed as they happen (histograms; since this process started):

    hacluster_commit_latency_seconds           own proposals: stamped to applied here
    hacluster_recovery_seconds                 a VM of a fenced host: its host's fence
                                               entry to its start elsewhere (the
                                               proposers' wall clocks)
    hacluster_bmc_seconds{call,result}         this peer's BMC calls: probe, fence
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from hacluster.config import ConfigError
from hacluster.daemon.views import cap_view
from hacluster.fsm import commands as c
from hacluster.fsm import events as ev
from hacluster.fsm.events import Event
from hacluster.fsm.model import FenceResult as RecordResult
from hacluster.fsm.states import HostState, VmState
from hacluster.ports import BmcProbe, BmcTarget, FenceAction, Fencer, FenceResult

if TYPE_CHECKING:
    from hacluster.daemon.peer import Peer

T = TypeVar("T")
SCRAPE_WAIT_S = 5.0
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RECOVERY_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
BMC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0)


class PeerMetrics:
    """Serves the metrics over HTTP from a thread of its own (bound at construction:
    an address that cannot be bound is a configuration error)."""

    def __init__(self, peer: Peer, address: str) -> None:
        self.peer = peer
        self.started_at = time.time()
        self.registry = CollectorRegistry(auto_describe=False)
        self.commit_latency = Histogram(
            "hacluster_commit_latency_seconds", "Own proposals: from stamped to applied here",
            registry=self.registry, buckets=LATENCY_BUCKETS)
        self.recovery = Histogram(
            "hacluster_recovery_seconds", "VMs of a fenced host: from its host's fence "
            "entry to their start elsewhere", registry=self.registry, buckets=RECOVERY_BUCKETS)
        self.bmc = Histogram(
            "hacluster_bmc_seconds", "This peer's BMC calls (probe, fence) by result",
            ["call", "result"], registry=self.registry, buckets=BMC_BUCKETS)
        self.registry.register(_StateCollector(peer))
        self._fenced_at: dict[str, float] = {}  # VM -> when its host's fence was written
        self._me = peer.me
        host, _, port = address.rpartition(":")
        try:
            self.server, self.thread = start_http_server(int(port), host.strip("[]"),
                                                         registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"[metrics] address: cannot listen on {address}: "
                              f"{exc.strerror}") from None
        peer.replica.on_entry(self.on_entry)

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    # ------------------------------------------------------------ observed

    def on_entry(self, index: int, entry: c.Envelope, events: list[Event]) -> None:
        """Raft thread. Entries stamped before this process started (applied again
        from the journal) are history, not observations."""
        if entry.stamped_at < self.started_at:
            return
        if entry.origin == self._me or entry.origin.endswith(f"@{self._me}"):
            self.commit_latency.observe(max(0.0, time.time() - entry.stamped_at))
        for e in events:
            if e.kind != ev.VM_STATE:
                continue
            to = e.get("to")
            if to == VmState.FENCE.value:
                self._fenced_at.setdefault(e.subject, entry.stamped_at)
            elif to == VmState.STARTED.value and e.subject in self._fenced_at:
                self.recovery.observe(max(0.0, entry.stamped_at -
                                          self._fenced_at.pop(e.subject)))
            elif to in (VmState.STOPPED.value, VmState.ERROR.value):
                self._fenced_at.pop(e.subject, None)

    def timed(self, fencer: Fencer) -> Fencer:
        return TimedFencer(fencer, self.bmc)

    # ------------------------------------------------------------ service

    async def start(self) -> None:  # the peer's extra services: start(), close()
        return None

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.server.shutdown)
        self.server.server_close()


class TimedFencer:
    """A Fencer that times every call into the bmc histogram."""

    def __init__(self, inner: Fencer, histogram: Histogram) -> None:
        self.inner = inner
        self.histogram = histogram

    def fence(self, target: BmcTarget, action: FenceAction, deadline_s: float) -> FenceResult:
        began = time.monotonic()
        result = "error"
        try:
            answer = self.inner.fence(target, action, deadline_s)
            result = answer.outcome.value
            return answer
        finally:
            self.histogram.labels("fence", result).observe(time.monotonic() - began)

    def probe(self, target: BmcTarget, deadline_s: float) -> BmcProbe:
        began = time.monotonic()
        result = "error"
        try:
            answer = self.inner.probe(target, deadline_s)
            result = "ok" if answer.ok else "failed"
            return answer
        finally:
            self.histogram.labels("probe", result).observe(time.monotonic() - began)

    def __getattr__(self, name: str) -> Any:  # whatever else the backend offers
        return getattr(self.inner, name)


# ---------------------------------------------------------------- read at each scrape

class _StateCollector:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    def collect(self) -> Iterator[Metric]:
        snapshot = _on_loop(self.peer, lambda: gather(self.peer))
        yield from families(snapshot)


def _on_loop(peer: Peer, fn: Callable[[], T]) -> T:
    """fn() on the peer's event loop, where the RPC reads the same things."""
    loop: asyncio.AbstractEventLoop | None = peer._loop  # read only
    if loop is None or not loop.is_running():
        return fn()
    done: Future[T] = Future()

    def run() -> None:
        try:
            done.set_result(fn())
        except BaseException as exc:
            done.set_exception(exc)

    loop.call_soon_threadsafe(run)
    return done.result(SCRAPE_WAIT_S)


def gather(peer: Peer) -> dict[str, Any]:
    status = peer.status(digest=False)
    snapshot: dict[str, Any] = {"status": status, "lease_ages": peer.lease_ages()}
    with peer.read() as state:
        snapshot["leader"] = next((name for name, h in state.hosts.items()
                                   if h.raft_address and h.raft_address == status["leader"]),
                                  "")
        snapshot["vms"] = Counter(vm.state.value for vm in state.vms.values())
        snapshot["hosts"] = Counter(h.state.value for h in state.hosts.values())
        snapshot["fences"] = Counter(r.result.value for r in state.fences)
        snapshot["cap"] = cap_view(state)
    snapshot["notifications"] = [(ch.name, ch.delivered, ch.failed, ch.dropped)
                                 for ch in peer.notifications.channels]
    return snapshot


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def families(s: dict[str, Any]) -> Iterator[Metric]:
    status = s["status"]
    yield _gauge("hacluster_is_leader", "1 if this peer leads", float(status["is_leader"]))
    leader = GaugeMetricFamily("hacluster_leader", "The leader this peer knows: its host "
                               "and Raft address", labels=["leader", "address"])
    if status["leader"]:
        leader.add_metric([s["leader"], str(status["leader"])], 1.0)
    yield leader
    yield _gauge("hacluster_term", "Raft term", status["term"])
    yield _gauge("hacluster_has_quorum", "1 if a majority is reachable",
                 float(status["has_quorum"]))
    yield _gauge("hacluster_commit_index", "Raft commit index", status["commit_index"])
    yield _gauge("hacluster_applied_index", "Applied log index", status["applied_index"])
    ages = GaugeMetricFamily("hacluster_lease_age_seconds", "Since this peer last heard the "
                             "host's renewal, per link", labels=["host", "link"])
    for host, links in sorted(s["lease_ages"].items()):
        for link, age in sorted(links.items()):
            ages.add_metric([host, link], age)
    yield ages
    yield from _fences(s)
    yield _by_state("hacluster_vms", "VMs by state", [v.value for v in VmState], s["vms"])
    yield _by_state("hacluster_hosts", "Hosts by state", [h.value for h in HostState],
                    s["hosts"])
    refused = CounterMetricFamily("hacluster_refusals", "Connections and messages turned "
                                  "away, per channel and kind", labels=["channel", "kind"])
    for channel, summary in sorted(status["refused"].items()):
        for kind, count in sorted((summary or {}).get("kinds", {}).items()):
            refused.add_metric([channel, kind], count)
    yield refused
    notified = CounterMetricFamily("hacluster_notifications", "Notifications by channel "
                                   "and result", labels=["channel", "result"])
    for name, delivered, failed, dropped in s["notifications"]:
        for result, count in (("delivered", delivered), ("failed", failed),
                              ("dropped", dropped)):
            notified.add_metric([name, result], count)
    yield notified


def _fences(s: dict[str, Any]) -> Iterator[Metric]:
    attempts = CounterMetricFamily("hacluster_fence_attempts", "Finished fence attempts "
                                   "in the replicated history, by result", labels=["result"])
    for result in RecordResult:
        if result is not RecordResult.PENDING:
            attempts.add_metric([result.value], s["fences"].get(result.value, 0))
    yield attempts
    yield _gauge("hacluster_fences_pending", "Fence attempts under way",
                 s["fences"].get(RecordResult.PENDING.value, 0))
    cap = s["cap"]
    yield _gauge("hacluster_fence_cap", "Automatic fences allowed per window", cap["cap"])
    yield _gauge("hacluster_fence_cap_remaining", "Automatic fences left in the window",
                 max(0, cap["cap"] - cap["used"]))


def _by_state(name: str, doc: str, states: list[str], counts: Counter[str]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=["state"])
    for state in states:
        family.add_metric([state], counts.get(state, 0))
    return family
