"""The embeddable peer: everything one host runs, in one object.

    peer = Peer(load_config("/etc/hacluster/hacluster.toml"))
    uvloop.run(peer.serve())          # until peer.request_stop()

Embedders may pass their own fencer, hypervisor and notifier (any object with
the methods of the Protocols in hacluster.ports). Threads: the asyncio loop
(leases, RPC, decisions), the Raft thread (applies entries), and a pool for
blocking calls (Raft proposals, libvirt, BMCs).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hacluster import __version__
from hacluster.config import Config, WatchdogConfig, read_secret
from hacluster.core.readindex import state_is_fresh
from hacluster.core.registration import registration
from hacluster.core.renewal import LeaseCodec, renewal_targets
from hacluster.daemon.agent import AgentDriver, HostReporter
from hacluster.daemon.delivery import Notifications
from hacluster.daemon.diskleases import check_disk_leases
from hacluster.daemon.halt import halt_report
from hacluster.daemon.history import open_history
from hacluster.daemon.leader import LeaderDriver
from hacluster.daemon.leases import LeaseService, LeaseTimes
from hacluster.daemon.logs import decision
from hacluster.daemon.membership import change_membership
from hacluster.daemon.notify import notification
from hacluster.daemon.proposer import Outcome, Proposer
from hacluster.daemon.replica import EventListener, Replica
from hacluster.daemon.sdnotify import sd_notify, watchdog_interval_s
from hacluster.daemon.selffencing import SelfFencing, destroy_cluster_vms
from hacluster.daemon.shutdown import carry_out
from hacluster.daemon.storage import HeartbeatWriter
from hacluster.fsm import ClusterState, Event
from hacluster.fsm import commands as c
from hacluster.fsm import events as ev
from hacluster.fsm.model import HostRole
from hacluster.fsm.states import HostState
from hacluster.ports import Fencer, HostCapacity, Hypervisor, Notifier
from hacluster.raft import RaftNode

if TYPE_CHECKING:
    from hacluster.daemon.metrics import PeerMetrics
    from hacluster.rpc.server import RpcServer

log = logging.getLogger("hacluster.peer")
RESTART_FOR_ROLE = 75  # exit code: restart me (systemd does, Restart=on-failure)


class Peer:
    def __init__(self, config: Config, *, cluster_secret: str | None = None,
                 fencer: Fencer | None = None, hypervisor: Hypervisor | None = None,
                 notifier: Notifier | None = None, rebuild: bool = False) -> None:
        self.config = config
        self.me = config.peer.name
        self.role = self._starting_role(config)
        self.exit_code = 0  # RESTART_FOR_ROLE when the cluster changed our Raft role
        self.halted: dict[str, Any] | None = None  # why Raft halted (daemon/halt.py)
        self.secret = cluster_secret if cluster_secret is not None else read_secret(config)
        self.disk_leases = check_disk_leases(config, self.role)
        self.replica = Replica()
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="hacluster")
        # One at a time, in log order: "fence succeeded" never reaches a hook before
        # "fence requested" did, and two runs never interleave their output.
        self._notify_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hacluster-notify")
        self._fencer = fencer
        self._hypervisor = hypervisor
        # [notify] hook and webhook, and the embedder's notifier: retried, in order
        self.notifications = Notifications(config, notifier)
        self.notifier: Notifier = self.notifications
        self._rebuild = rebuild
        self._stop = threading.Event()
        self._stop_async: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.raft: RaftNode | None = None
        self.leader: LeaderDriver | None = None
        self.agent: AgentDriver | None = None
        self.leases: LeaseService | None = None
        self.proposer: Proposer | None = None
        self.self_fencing: SelfFencing | None = None
        storage = config.storage if self.role is not HostRole.WITNESS else None
        self.heartbeats = HeartbeatWriter(self.me, storage.heartbeat_paths if storage else (),
                                          config.storage.write_timeout_s)
        self.extra_services: list[Any] = []  # e.g. the RPC server (start()/close())
        self.rpc_server: RpcServer | None = None
        self._caught_up = False
        self._agent_task: asyncio.Task[None] | None = None
        self.history = open_history(config, self.replica)  # before Raft applies anything
        self.extra_services += [self.history, self.notifications]
        self.metrics = self._start_metrics()

    # ------------------------------------------------------------ Raft role

    @staticmethod
    def _role_file(config: Config) -> Path:
        return Path(config.peer.data_dir) / "role"

    def _starting_role(self, config: Config) -> HostRole:
        """The configured role, unless a promotion or demotion changed it since."""
        try:
            return HostRole(self._role_file(config).read_text().strip())
        except (OSError, ValueError):
            return HostRole(config.peer.role)

    def _check_role(self) -> None:
        """Promoted or demoted in the replicated state: restart in the new Raft role
        (pysyncobj cannot turn a read-only node into a voter in place)."""
        with self.replica.read() as state:
            host = state.hosts.get(self.me)
        if host is None or host.role is self.role or HostRole.WITNESS in (host.role,
                                                                           self.role):
            return
        path = self._role_file(self.config)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(host.role.value)
        decision(log, "restarting in a new Raft role", f"the cluster made this host a "
                 f"{host.role.value} (was {self.role.value})", host=self.me)
        self.exit_code = RESTART_FOR_ROLE
        self.request_stop()

    # ------------------------------------------------------------ embedding API

    @contextmanager
    def read(self) -> Iterator[ClusterState]:
        with self.replica.read() as state:
            yield state

    def caught_up(self) -> bool:
        """Has this peer, once since it started, applied everything a leader had
        committed? Until then its state can lack committed entries. Once true it
        stays true (Raft's ready flag), so only the wait asks the Raft thread."""
        if not self._caught_up and self.raft is not None:
            self._caught_up = self.raft.status().ready
        return self._caught_up

    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        return self.replica.subscribe(listener)

    async def submit(self, command: c.Command, *, origin: str = "",
                     deadline_s: float = 10.0) -> Outcome:
        if self.proposer is None:
            raise RuntimeError("the peer is not running")
        return await self.proposer.submit(command, origin=origin or self.me,
                                          deadline_s=deadline_s)

    def lease_ages(self) -> dict[str, dict[str, float]]:
        """Age of the last renewal seen by this peer, per host and link."""
        if self.leases is None:
            return {}
        now = time.monotonic()
        ages = {host: {link: round(now - t, 3) for link, t in sorted(links.items())}
                for host, links in self.leases.seen.items()}
        ages[self.me] = {"self": 0.0}
        return ages

    async def add_raft_member(self, address: str) -> None:
        await self._membership("add_member", address)

    async def remove_raft_member(self, address: str) -> None:
        await self._membership("remove_member", address)

    async def _membership(self, change: str, address: str) -> None:
        if self.raft is None:
            raise RuntimeError("the peer is not running")
        await change_membership(self.raft, change, address, self.pool,
                                self.config.timing.propose_timeout_s, self._stop.is_set)

    def config_view(self) -> dict[str, Any]:
        """The running configuration; the secret itself is never part of it."""
        doc = dataclasses.asdict(self.config)
        doc["leases"]["links"] = dict(self.config.leases.links)
        return doc

    def request_stop(self) -> None:
        """Thread-safe; serve() returns after a clean shutdown."""
        self._stop.set()
        if self._loop is not None and self._stop_async is not None:
            self._loop.call_soon_threadsafe(self._stop_async.set)

    # ------------------------------------------------------------ start

    def _open_raft(self) -> RaftNode:
        cfg = self.config
        partners = [p.partition("=")[2] for p in cfg.cluster.peers]
        self_address = None if self.role is HostRole.MEMBER else cfg.peer.raft_address
        return RaftNode(self_address, partners, self.secret, Path(cfg.peer.data_dir) / "raft",
                        self.replica.apply, self.replica.snapshot, self.replica.restore,
                        cfg.raft, rebuild=self._rebuild, on_halt=self._on_halt)

    def _on_halt(self, fatal: BaseException) -> None:
        """Raft thread: the node stopped applying (an entry or snapshot this peer cannot
        read, a failing disk). Stop deciding and serving, say why, exit with its code."""
        self.halted = halt_report(fatal, self.me)
        self.exit_code = self.halted["exit_code"]
        log.critical("halted: this peer applies nothing more", extra={
            "host": self.me, "reason": self.halted["reason"], "exit_code": self.exit_code})
        sd_notify(f"STATUS=halted: {self.halted['reason']}")
        self.request_stop()

    def _links(self) -> dict[str, str]:
        links = dict(self.config.leases.links)
        if not links:  # one network: the Raft address's host
            links = {"main": self.config.peer.raft_address.rpartition(":")[0]}
        return links

    def _make_fencer(self) -> Fencer:
        if self._fencer is None:
            from hacluster.fence import make_fencer

            self._fencer = make_fencer()
        return self._fencer if self.metrics is None else self.metrics.timed(self._fencer)

    def _start_metrics(self) -> PeerMetrics | None:
        """[metrics] address: the Prometheus endpoint (daemon/metrics.py)."""
        if not self.config.metrics.address:
            return None
        from hacluster.daemon.metrics import PeerMetrics

        metrics = PeerMetrics(self, self.config.metrics.address)
        self.extra_services.append(metrics)
        return metrics

    def _make_hypervisor(self) -> Hypervisor:
        if self._hypervisor is None:
            from hacluster.hypervisor.libvirt_driver import LibvirtHypervisor

            self._hypervisor = LibvirtHypervisor(self.config.hypervisor.uri)
        return self._hypervisor

    def _capacity(self, hypervisor: Hypervisor) -> HostCapacity:
        hv = self.config.hypervisor
        found = hypervisor.capacity()
        memory = hv.memory_mib or max(0, found.memory_mib - hv.reserve_memory_mib)
        return HostCapacity(memory, hv.vcpus or found.vcpus)

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self.raft = await loop.run_in_executor(self.pool, self._open_raft)
        cfg = self.config
        self.proposer = Proposer(self.raft, self.me, self.pool, cfg.timing.propose_timeout_s,
                                 self.replica.log_now, self.replica.read)
        fencer = self._make_fencer()
        self.leader = LeaderDriver(self.me, self.raft, self.replica, self.proposer, fencer,
                                   self.secret, self.pool, cfg.timing.manager_tick_s,
                                   cfg.storage)
        self.leases = LeaseService(self.me, LeaseCodec(self.secret), self._links(),
                                   cfg.leases.port, self.leader.renewal,
                                   self.renewal_targets, self._lease_times,
                                   self._host_addresses)
        await self.leases.start()
        self.leader.leases = self.leases
        self._start_self_fencing()
        self._tasks.append(asyncio.ensure_future(self.leader.serve_reads()))
        self.replica.subscribe(self._notify_events)
        self._every(cfg.timing.manager_tick_s, self.leader.tick)
        self._every(1.0, self._check_role)
        self._tasks.append(asyncio.ensure_future(self._renew_forever()))
        self._tasks.append(asyncio.ensure_future(self._register()))
        self._every(5.0, lambda: self.heartbeats.keep_record(self.proposer, self.replica,
                                                             self.caught_up, self.role),
                    first=5.0)
        if self.role is not HostRole.WITNESS:
            await self._start_agent(fencer)
        self._add_rpc()
        for service in self.extra_services:
            await service.start()
        interval = watchdog_interval_s()
        if interval:
            self._every(interval, lambda: sd_notify("WATCHDOG=1"))

    def _start_self_fencing(self) -> None:
        """A witness runs no VMs and is never fenced: it has nothing to self-fence."""
        assert self.leases is not None and self.proposer is not None
        config = self.config.watchdog if self.role is not HostRole.WITNESS else \
            WatchdogConfig()
        fencing = self.self_fencing = SelfFencing(self.me, config, self.replica,
                                                  self._self_fenced)
        if not fencing.enabled:
            return
        if self.raft is not None:
            self.raft.carry_answers()  # its allowance may also travel through other voters
        self.leases.round_sent = fencing.round_sent
        self.leases.ack_received = fencing.ack_received
        fencing.start()
        self._tasks.append(asyncio.ensure_future(
            fencing.keep_record(self.proposer, self.caught_up)))

    def _self_fenced(self) -> None:
        """Self-fence (a thread of its own): stop answering Raft, so that no leader takes
        this host for alive while its watchdog is about to reset it (its RPC socket stays,
        for `hactl status`), and destroy every cluster VM running here."""
        if self.raft is not None:
            try:
                self.raft.close()
            except Exception:
                log.exception("self-fence: closing Raft failed")
        if self._hypervisor is not None:
            with self.replica.read() as state:
                ours = set(state.vms)
            destroy_cluster_vms(self._hypervisor, ours)

    def _add_rpc(self) -> None:
        from hacluster.daemon.api import Api
        from hacluster.rpc.server import RpcServer

        if self.config.rpc.socket or self.config.rpc.tcp_address:
            self.rpc_server = RpcServer(Api(self).methods(), self.config.rpc)
            self.extra_services.insert(0, self.rpc_server)

    async def _start_agent(self, fencer: Fencer) -> None:
        assert self.proposer is not None
        loop = asyncio.get_running_loop()
        hypervisor = await loop.run_in_executor(self.pool, self._make_hypervisor)
        capacity = await loop.run_in_executor(self.pool, self._capacity, hypervisor)
        hv, timing = self.config.hypervisor, self.config.timing
        self.agent = AgentDriver(
            self.me, self.replica, hypervisor, self.proposer, self._fresh, capacity, self.pool,
            shutdown_timeout_s=hv.shutdown_timeout_s, migrate_timeout_s=hv.migrate_timeout_s,
            migration_uri=hv.migration_uri or hv.uri)
        self._agent_task = asyncio.ensure_future(self.agent.run(timing.agent_tick_s))
        self._tasks.append(self._agent_task)
        reporter = HostReporter(self.me, self.replica, self.proposer, fencer, self.secret,
                                self.pool)
        self._every(30.0, reporter.report_load)
        self._every(min(1.0, timing.bmc_check_interval_s),
                    lambda: reporter.check_bmc_when_due(timing.bmc_check_interval_s,
                                                        timing.bmc_check_timeout_s), first=2.0)

    def _every(self, interval_s: float, fn: Callable[[], Any], first: float = 0.0) -> None:
        """Run fn (plain or async) every interval; a failure is logged, never fatal."""
        async def loop() -> None:
            await asyncio.sleep(first)
            while True:
                try:
                    result = fn()
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("periodic task failed")
                await asyncio.sleep(interval_s)

        self._tasks.append(asyncio.ensure_future(loop()))

    # ------------------------------------------------------------ leases and freshness

    def renewal_targets(self) -> dict[str, list[tuple[str, str]]]:
        """Every voter on the links both hosts have (core/renewal.py `renewal_targets`);
        the configured Raft peers while the state knows none."""
        with self.replica.read() as state:
            voters = {name: (name, host.addresses) for name, host in state.hosts.items()
                      if host.role is not HostRole.MEMBER and host.state is not HostState.REMOVED}
        fallback = {name: address.rpartition(":")[0] for name, _, address in
                    (p.partition("=") for p in self.config.cluster.peers)}
        return renewal_targets(voters, self.me, set(self._links()), fallback)

    def _host_addresses(self) -> set[str]:
        """Every address a host of the cluster renews from (lease links, Raft address)."""
        with self.replica.read() as state:
            out = {entry.partition("=")[2] for host in state.hosts.values()
                   for entry in host.addresses}
            out |= {h.raft_address.rpartition(":")[0] for h in state.hosts.values()}
        out |= {p.partition("=")[2].rpartition(":")[0] for p in self.config.cluster.peers}
        return out

    def _lease_times(self) -> LeaseTimes:
        with self.replica.read() as state:
            return LeaseTimes(state.settings.lease_renew_s, state.settings.lease_ttl_s)

    async def _renew_forever(self) -> None:
        assert self.leases is not None and self.leader is not None
        fencing = self.self_fencing
        while True:
            if fencing is not None and fencing.fired:  # going down: renew nothing more
                await asyncio.sleep(1.0)
                continue
            self.leases.send_round()
            self.heartbeats.beat()  # shared storage: never waits for it (daemon/storage.py)
            if self.raft is not None:  # told to the leader in our Raft answers
                self.raft.set_hears(self.leases.heard())
            self._allow_self_fencing(fencing)
            self.leases.log_overdue_refusals()
            await asyncio.sleep(self._lease_times().renew_s)

    def _allow_self_fencing(self, fencing: SelfFencing | None) -> None:
        """Leading: grant the partners' Raft answers once a majority confirms us, which
        allows our own host too. Following: take the latest grant a leader sent us."""
        assert self.leader is not None and self.raft is not None
        own = fencing.allowed_from if fencing is not None and fencing.enabled else None
        if self.leader.ready:
            self.leader.grant_raft_allowances(own)
        anchor = self.raft.allowed_since()
        if own is not None and anchor is not None:
            own(anchor)

    async def _fresh(self) -> bool:
        """Read barrier: is our state at least as new as everything committed before
        now? Asked of the leader (ours included), which answers only once a majority
        confirmed it still leads (core/readindex.py)."""
        assert self.leader is not None and self.leases is not None
        if self.self_fencing is not None and self.self_fencing.fired:
            return False  # fenced itself: it starts nothing until the machine resets
        timeout = self.config.timing.read_barrier_timeout_s
        if self.leader.ready:
            mark = await self.leader.read_barrier(timeout)
            read_index = None if mark is None else mark.commit_index
        else:
            ack = await self.leases.barrier(timeout)
            read_index = None if ack is None else ack.commit_index
        give_up = time.monotonic() + 0.5
        while read_index is not None and self.raft is not None:
            if state_is_fresh(self.raft.applied_index(), read_index):
                return True
            if time.monotonic() > give_up:
                break
            await asyncio.sleep(0.005)
        return False

    # ------------------------------------------------------------ registration

    def _registration(self) -> tuple[c.Command, str] | None:
        """What the cluster state must learn about this host, and why."""
        if self._stop.is_set():
            return None  # stopping: the planned shutdown speaks for this host now
        addresses = tuple(f"{k}={v}" for k, v in sorted(self._links().items()))
        with self.replica.read() as state:
            return registration(self.me, state, self.role, addresses,
                                self.config.peer.raft_address,
                                heartbeat_paths=self.heartbeats.paths)

    async def _register(self) -> None:
        """Add this host to the cluster state if missing, bring its lease links
        up to date, resume lease judging."""
        assert self.proposer is not None
        while not self.caught_up():  # judge what is missing from the cluster's state
            await asyncio.sleep(0.1)
        pause, last_refusal = 0.2, ""
        while (todo := self._registration()) is not None:
            command, reason = todo
            decision(log, f"register: {command.TYPE}", reason, host=self.me)
            outcome = await self.proposer.submit(command, deadline_s=5.0)
            refused = [e.message for e in outcome.events if e.kind == ev.REJECTED]
            if refused and refused[0] != last_refusal:  # say it once, then back off
                log.error("registration refused", extra={"error": refused[0]})
            last_refusal = refused[0] if refused else ""
            pause = min(10.0, pause * 2) if refused else 0.2
            await asyncio.sleep(pause)

    # ------------------------------------------------------------ notifications

    def _notify_events(self, events: list[Event]) -> None:
        """Raft thread: only the leader notifies (every peer applies the same events)."""
        if self.raft is None or self.raft.leader_term() is None:
            return
        for event in events:
            doc = notification(event, self.me)
            if doc is not None:
                self._notify_pool.submit(self.notifier.notify, doc)

    # ------------------------------------------------------------ run / stop

    async def serve(self, on_ready: Callable[[], None] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_async = asyncio.Event()
        if self._stop.is_set():
            self._stop_async.set()
        try:
            await self._start()
            sd_notify("READY=1")
            decision(log, "peer running", "started", host=self.me, role=self.role.value,
                     release=__version__)
            if on_ready is not None:
                on_ready()
            await self._stop_async.wait()
        finally:
            await self._shutdown()

    @property
    def hypervisor_in_use(self) -> Hypervisor | None:
        return self._hypervisor

    async def stop_agent(self, timeout_s: float) -> bool:
        """Nothing starts, stops or migrates here any more (a planned shutdown): the
        agent's loop ends and its operations under way finish. True once none is left."""
        if self._agent_task is not None:
            self._agent_task.cancel()
            await asyncio.gather(self._agent_task, return_exceptions=True)
        return self.agent is None or await self.agent.quiesce(timeout_s)

    async def _shutdown(self) -> None:
        """Leave cleanly: hand leadership over, carry out the shutdown policy
        (daemon/shutdown.py), and nobody gets fenced because this peer stops."""
        sd_notify("STOPPING=1")
        if self.leader is not None:
            self.leader.stopping = True
        if self.proposer is not None and self.raft is not None and not self.halted:
            await carry_out(self)
        if self.self_fencing is not None and not self.halted:
            await self.self_fencing.stop(self.proposer, self.config.timing.stop_grace_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.debug("shutdown: tasks cancelled")
        for driver in (self.agent, self.leader):
            if driver is not None:
                await driver.drain()
        log.debug("shutdown: drivers drained")
        if self.halted:
            await self._linger()
        for service in self.extra_services:
            await service.close()
        if self.leases is not None:
            self.leases.close()
        self.heartbeats.close()
        loop = asyncio.get_running_loop()
        if self.raft is not None:
            await loop.run_in_executor(None, self.raft.close)
        log.debug("shutdown: raft closed")
        if self._hypervisor is not None:
            self._hypervisor.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self._notify_pool.shutdown(wait=False, cancel_futures=True)
        log.info("peer stopped", extra={"host": self.me})

    async def _linger(self) -> None:
        """A halted peer renews no lease and decides nothing, but answers `hactl status`
        (why it stopped) for [timing] halt_linger_s before it exits."""
        if self.leases is not None:
            self.leases.close()
        if self.rpc_server is None:
            return
        give_up = time.monotonic() + self.config.timing.halt_linger_s
        while (left := give_up - time.monotonic()) > 0:
            if watchdog_interval_s():  # still alive: a watchdog kill would restart it
                sd_notify("WATCHDOG=1")
            await asyncio.sleep(min(left, 1.0))

    # ------------------------------------------------------------ status

    def status(self, digest: bool = True) -> dict[str, Any]:
        """digest=False skips hashing the whole state (costly with 10,000 VMs)."""
        raft = self.raft.status() if self.raft is not None else None
        manager = self.leader.manager if self.leader is not None else None
        running = raft is not None and not self.halted
        return {
            "name": self.me,
            "role": self.role.value,
            "leader": raft.leader if raft else None,
            "term": raft.term if raft else 0,
            "is_leader": bool(running and raft and raft.role == "leader"),
            "has_quorum": bool(running and raft and raft.has_quorum),
            "commit_index": raft.commit_index if raft else 0,
            "applied_index": self.replica.applied_index,
            "caught_up": bool(raft and raft.ready),
            "manager_ready": bool(manager and manager.ready),
            "links": self.leases.link_report() if self.leases else {},
            "watchdog": self.self_fencing.status() if self.self_fencing else {"kind": "none"},
            "storage_heartbeats": self.heartbeats.status(),
            "digest": self.replica.digest() if digest else "",
            "halted": self.halted,
            "refused": self.refusals(raft.refused if raft else {}),
        }

    def refusals(self, raft: dict[str, Any]) -> dict[str, Any]:
        """Connections and messages turned away, per channel (core/ratelimit.py
        RefusalLog.summary each): the Raft port, the lease port, the admin RPC."""
        rpc = self.rpc_server.refusal_summary() if self.rpc_server is not None else {}
        lease = self.leases.refusals.summary(time.monotonic()) if self.leases else {}
        return {"raft": raft, "lease": lease, "rpc": rpc}
