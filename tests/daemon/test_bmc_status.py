"""What status says about each host's BMC ("cannot be fenced"), and the host's own
check that feeds it. The settings, the host's last check and a fence confirmed
through the BMC are weighed by age (core/bmc.py); a host reports nothing about a
BMC address it does not have, nor a probe of settings changed while it ran."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from hacluster.daemon.agent import HostReporter
from hacluster.daemon.proposer import Proposer
from hacluster.daemon.replica import Replica
from hacluster.daemon.views import host_view, waiting_for_operator
from hacluster.fsm import commands as c
from hacluster.fsm.model import BmcOverride, FenceResult, HostRole
from hacluster.ports import BmcProbe, BmcTarget, PowerState
from tests.core.builders import Cluster

# what a host reported before its address was set (the reporter said it until now)
OLD_NO_ADDRESS = "no BMC address configured: this host cannot be fenced"
PROBE_OK = "ipmi 10.0.1.1:623: answers, power on; 5ms (power on)"


def unfenceable(cluster: Cluster, host: str) -> list[str]:
    return [line for line in waiting_for_operator(cluster.state)
            if line.startswith(f"host {host} cannot be fenced")]


def shown(cluster: Cluster, host: str) -> tuple[bool | None, str]:
    view = host_view(cluster.state, cluster.host(host))
    return view["bmc_ok"], view["bmc_detail"]


def set_address(cluster: Cluster, host: str, address: str = "10.0.1.1") -> None:
    cluster.ok(c.SetHostBmc(name=host, bmc=BmcOverride(address=address)))


def test_a_host_fenced_through_its_bmc_is_not_listed_as_unfenceable() -> None:
    """Issue 8: the host checked before `hactl bmc set` gave it an address, and lost
    power before its next check; the leader then fenced it over IPMI."""
    cluster = Cluster()
    cluster.add_hosts("h1", "h2")
    cluster.ok(c.ReportBmcHealth(name="h1", ok=False, detail=OLD_NO_ADDRESS))
    set_address(cluster, "h1")
    cluster.fence("h1")
    cluster.confirm("h1", result=FenceResult.ALREADY_OFF)
    assert unfenceable(cluster, "h1") == []
    ok, detail = shown(cluster, "h1")
    assert ok is True and "already-off via ipmi" in detail


def test_no_address_is_read_from_the_settings_whatever_was_reported() -> None:
    cluster = Cluster()
    cluster.add_host("h1", bmc=BmcOverride(address="10.0.1.1"))
    cluster.ok(c.ReportBmcHealth(name="h1", ok=True, detail=PROBE_OK))
    set_address(cluster, "h1", "")
    assert unfenceable(cluster, "h1") == [
        "host h1 cannot be fenced: no BMC address configured -> hactl bmc set --host h1 "
        "--address ADDRESS"]
    assert shown(cluster, "h1") == (False, "no BMC address configured")


def test_a_host_not_checked_yet_is_unknown_not_unfenceable() -> None:
    cluster = Cluster()
    cluster.add_host("h1", bmc=BmcOverride(address="10.0.1.1"))
    cluster.fence("h1")  # it died before its first check; the fence is not confirmed yet
    assert unfenceable(cluster, "h1") == []
    assert shown(cluster, "h1") == (None, "not checked yet")


def test_a_failed_check_is_listed_also_in_maintenance_and_until_the_next_check() -> None:
    cluster = Cluster()
    cluster.add_host("h1", bmc=BmcOverride(address="10.0.1.1"))
    cluster.ok(c.ReportBmcHealth(name="h1", ok=False, detail="ipmi: unreachable"))
    cluster.ok(c.SetHostMaintenance(name="h1", on=True))  # it matters once it leaves
    assert unfenceable(cluster, "h1") == ["host h1 cannot be fenced: ipmi: unreachable"]
    cluster.ok(c.ReportBmcHealth(name="h1", ok=True, detail=PROBE_OK))
    assert unfenceable(cluster, "h1") == []


def test_a_fenced_host_that_returns_shows_its_own_newer_check() -> None:
    cluster = Cluster()
    cluster.add_host("h1", bmc=BmcOverride(address="10.0.1.1"))
    cluster.ok(c.ReportBmcHealth(name="h1", ok=True, detail=PROBE_OK))
    cluster.fence("h1")
    cluster.confirm("h1")
    assert "fence token" in shown(cluster, "h1")[1]
    cluster.ok(c.HostReady(name="h1"))
    cluster.ok(c.ReportBmcHealth(name="h1", ok=False, detail="ipmi: auth rejected"))
    assert unfenceable(cluster, "h1") == ["host h1 cannot be fenced: ipmi: auth rejected"]


def test_an_operator_confirm_says_nothing_about_the_bmc() -> None:
    cluster = Cluster()
    cluster.add_host("h1", bmc=BmcOverride(address="10.0.1.1"))
    cluster.ok(c.ReportBmcHealth(name="h1", ok=False, detail="ipmi: unreachable"))
    cluster.suspect("h1")
    cluster.ok(c.AdminConfirmFence(host="h1", who="root", reason="cords pulled"))
    assert unfenceable(cluster, "h1") == ["host h1 cannot be fenced: ipmi: unreachable"]


def test_a_witness_is_never_listed() -> None:
    cluster = Cluster()
    cluster.add_host("w", role=HostRole.WITNESS, ready=False)
    assert unfenceable(cluster, "w") == []
    assert shown(cluster, "w") == (None, "a witness is never fenced")


# ---------------------------------------------------------------- the host's own check


class Recorder:
    def __init__(self) -> None:
        self.commands: list[c.Command] = []

    async def propose(self, command: c.Command, **_: Any) -> None:
        self.commands.append(command)


class ScriptedBmc:
    """Answers every probe; `during` runs inside the probe (settings change meanwhile)."""

    def __init__(self, during: Any = None) -> None:
        self.during = during
        self.probed: list[str] = []

    def probe(self, target: BmcTarget, deadline_s: float) -> BmcProbe:
        self.probed.append(target.address)
        if self.during is not None:
            self.during()
        return BmcProbe(ok=True, power=PowerState.ON, detail=f"{target.address} answers")


def replica_of(cluster: Cluster) -> Replica:
    replica = Replica()
    for index, data in enumerate(cluster.log, start=1):
        replica.apply(data, index)
    return replica


def reporter(cluster: Cluster, replica: Replica, bmc: ScriptedBmc,
             pool: ThreadPoolExecutor) -> tuple[HostReporter, Recorder]:
    proposer = Recorder()
    return HostReporter("h1", replica, cast(Proposer, proposer), bmc, "secret", pool), proposer


def follow(cluster: Cluster, replica: Replica, cmd: c.Command) -> None:
    """Apply cmd to the builder's state and to the replica the reporter reads."""
    cluster.ok(cmd)
    replica.apply(cluster.log[-1], cluster.index)


def test_the_check_reports_nothing_without_an_address() -> None:
    cluster = Cluster()
    cluster.add_host("h1")
    replica, bmc = replica_of(cluster), ScriptedBmc()
    with ThreadPoolExecutor(1) as pool:
        check, proposed = reporter(cluster, replica, bmc, pool)
        asyncio.run(check.check_bmc(1.0))
    assert proposed.commands == [] and bmc.probed == []


def test_a_probe_of_settings_changed_meanwhile_is_dropped_and_the_new_ones_checked() -> None:
    cluster = Cluster()
    cluster.add_host("h1", bmc=BmcOverride(address="10.0.1.1"))
    replica = replica_of(cluster)
    bmc = ScriptedBmc(during=lambda: follow(cluster, replica, c.SetHostBmc(
        name="h1", bmc=BmcOverride(address="10.0.1.99"))))
    with ThreadPoolExecutor(1) as pool:
        check, proposed = reporter(cluster, replica, bmc, pool)
        asyncio.run(check.check_bmc_when_due(interval_s=3600.0, timeout_s=1.0))
        assert proposed.commands == []  # its answer was about 10.0.1.1
        bmc.during = None
        asyncio.run(check.check_bmc_when_due(interval_s=3600.0, timeout_s=1.0))  # at once
        asyncio.run(check.check_bmc_when_due(interval_s=3600.0, timeout_s=1.0))  # not due
    assert bmc.probed == ["10.0.1.1", "10.0.1.99"]
    assert proposed.commands == [c.ReportBmcHealth(name="h1", ok=True,
                                                   detail="10.0.1.99 answers (power on)")]
