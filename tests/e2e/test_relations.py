"""VM relations end to end on a lab cluster (real peers, IPMI to BMC simulators,
libvirt's test driver): after a real power loss, a colocation group recovers together
on one host, and a VM ordered after another starts only once that one runs. Judged by
the observer, which reads libvirt on every host, not by the cluster's own state."""

from __future__ import annotations

import time
from collections.abc import Callable

from hacluster.lab.cluster import LabCluster

Factory = Callable[..., LabCluster]


def test_order_and_colocation_hold_through_a_real_failover(lab_factory: Factory) -> None:
    lab = lab_factory(3)
    victim, *others = sorted(lab.nodes)
    lab.call("host.tag", {"name": victim, "tag": "dbhost", "add": True})
    for name in others:  # every VM goes to the victim: the others take none for now
        lab.call("host.maintenance", {"name": name, "on": True})
    lab.wait(lambda: all(lab.hosts()[n]["state"] == "maintenance" for n in others), 20,
             "the other hosts in maintenance")
    lab.add_vms(1, "db", required_tags=["dbhost"])
    lab.add_vms(1, "app", start_after=["db1"])
    lab.add_vms(1, "web", colocation="front")
    lab.add_vms(1, "cache", colocation="front")
    assert {v["host"] for v in lab.vms().values()} == {victim}
    for name in others:
        lab.call("host.maintenance", {"name": name, "on": False})
    lab.wait(lambda: all(lab.hosts()[n]["state"] == "online" for n in others), 20,
             "the other hosts online")

    cut = lab.power_off(victim)
    # db1 has nowhere to go (no other host carries its tag): app1 is placed but waits
    lab.wait(lambda: lab.vms()["db1"]["state"] == "pending"
             and lab.vms()["app1"]["state"] == "recovery", 30, "the recovery plan")
    observer = lab.observer
    assert observer is not None
    lab.wait(lambda: all(observer.where(n) for n in ("web1", "cache1")), 30,
             "the colocation group running again")
    assert observer.where("web1") == observer.where("cache1") != [victim]
    explained = lab.call("explain", {"name": "app1"})["lines"]
    assert "waiting for db1 to run: db1 is pending" in explained, explained
    assert ("vm app1 waits to start until db1 run(s) (mandatory start order; db1 is "
            "pending) -> hactl explain app1") in lab.call("status")["waiting"]
    observer.sample()  # a fresh look at every host: app1 did not start anywhere
    assert observer.where("app1") == [] and observer.first_start("app1", cut) is None

    tagged = time.monotonic()  # the observer stamps its sightings with this clock
    lab.call("host.tag", {"name": others[1], "tag": "dbhost", "add": True})
    lab.wait(lambda: observer.where("db1") == [others[1]] and observer.where("app1") != [],
             30, "db1, then app1, running")
    db_start = observer.first_sighting("db1", tagged)
    app_start = observer.first_sighting("app1", cut)
    # The observer looks at each host in turn and stamps a look when it began, so app1's
    # host may be looked at a millisecond before db1's. app1 started first only if a look
    # that ended seeing it ended before the last look that did not see db1 began.
    assert db_start is not None and app_start is not None
    assert app_start.by >= db_start.after, (app_start, db_start)
    assert lab.vms()["app1"]["state"] == "started"
    assert observer.violations == []
