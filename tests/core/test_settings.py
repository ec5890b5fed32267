"""Replicated settings, BMC defaults and the cluster maintenance switch."""

from __future__ import annotations

import math

import pytest

from hacluster.fsm import commands as c
from hacluster.fsm.model import BmcSettings, FenceAction, Selector

from .builders import Cluster, kinds, only


def test_settings_change_is_announced_with_every_value() -> None:
    cluster = Cluster()
    events = cluster.ok(c.SetSettings(fence_cap=5, selector=Selector.LOAD))
    assert kinds(events) == ["settings-changed"]
    assert events[0].message == "fence_cap=5, selector=load"
    assert (cluster.state.settings.fence_cap, cluster.state.settings.selector) == (
        5,
        Selector.LOAD,
    )


def test_empty_settings_change_is_refused() -> None:
    events = Cluster().run(c.SetSettings())
    assert kinds(events) == ["rejected"] and "no setting given" in events[0].message


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"fence_window_s": 0.0}, "fence_window_s must be a positive number"),
        ({"memory_overcommit": math.inf}, "memory_overcommit must be a positive number"),
        ({"lease_ttl_s": math.nan}, "lease_ttl_s must be a positive number"),
        ({"fence_cap": -1}, "fence_cap must be >= 0"),
        ({"fence_retry_limit": 0}, "fence_retry_limit >= 1"),
        ({"fence_retry_backoff_s": -1.0}, "fence_retry_backoff_s >= 0"),
        ({"lease_suspect_s": 5.0}, "lease_renew_s < lease_suspect_s < lease_ttl_s"),
        ({"lease_renew_s": 2.0}, "lease_renew_s < lease_suspect_s < lease_ttl_s"),
    ],
)
def test_invalid_settings_are_refused(change: dict[str, float], why: str) -> None:
    cluster = Cluster()
    before = cluster.state.settings
    events = cluster.run(c.SetSettings(**change))  # type: ignore[arg-type]
    assert kinds(events) == ["rejected"] and why in events[0].message
    assert cluster.state.settings == before


def test_nan_fence_backoff_is_refused() -> None:
    """settings_problem checks fence_retry_backoff_s only with `< 0`, which NaN passes:
    the manager's backoff comparison then never holds (no backoff at all) and the
    settings record no longer equals itself."""
    cluster = Cluster()
    events = cluster.run(c.SetSettings(fence_retry_backoff_s=math.nan))
    assert kinds(events) == ["rejected"]
    assert math.isfinite(cluster.state.settings.fence_retry_backoff_s)


def test_bmc_defaults_are_replaced_without_showing_the_secret() -> None:
    cluster = Cluster()
    bmc = BmcSettings(driver="redfish", port=443, username="root", sealed_password=b"SEALED-1")
    events = cluster.ok(c.SetBmcDefaults(bmc=bmc))
    assert events[0].message == "BMC defaults: driver redfish, port 443, user root"
    assert cluster.state.settings.bmc == bmc


def test_cluster_maintenance_names_who_and_what_it_does() -> None:
    cluster = Cluster()
    on = cluster.ok(c.SetClusterMaintenance(on=True, who="carol"))
    assert on[0].message == "cluster maintenance on by carol: fencing disabled"
    assert cluster.state.settings.cluster_maintenance
    off = cluster.ok(c.SetClusterMaintenance(on=False), origin="h2")
    assert off[0].message == "cluster maintenance off by h2: fencing enabled"


def test_cluster_fence_action_applies_to_new_attempts() -> None:
    cluster = Cluster(fence_action=FenceAction.REBOOT)
    cluster.add_hosts("h1", "h2")
    cluster.suspect("h1")
    events = cluster.request_fence("h1")
    assert only(events, "fence-requested")[0].get("action") == "reboot"
    record = cluster.state.fence_record(cluster.host("h1").fence_token)
    assert record is not None and record.action is FenceAction.REBOOT


def test_noop_names_the_leader_and_its_term() -> None:
    events = Cluster().ok(c.Noop(term=4), origin="h3")
    assert events[0].message == "leader h3 holds a majority in term 4"
    assert events[0].get("term") == "4"
