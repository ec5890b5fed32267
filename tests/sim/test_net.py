"""SimNet: delivery, directed and per-link faults, path quality, FIFO, held receivers."""

from __future__ import annotations

import random

import pytest

from hacluster.sim.net import Delivery, PathFaults, SimNet

FIXED = PathFaults(delay=(0.001, 0.001))


def make_net(seed: int = 1, defaults: PathFaults = FIXED, hosts: int = 4) -> SimNet:
    net = SimNet(random.Random(seed), defaults)
    for i in range(1, hosts + 1):
        net.add_host(f"h{i}", ("mgmt", "backend"))
    return net


def payloads(deliveries: list[Delivery]) -> list[object]:
    return [d.payload for d in deliveries]


def test_delivery_waits_for_its_delay_and_keeps_send_order_on_ties() -> None:
    net = make_net()
    for n in range(3):
        assert net.send(0.0, "h1", "h2", "raft", n)
    assert net.due(0.0005) == []
    got = net.due(0.001)
    assert payloads(got) == [0, 1, 2]
    assert [d.seq for d in got] == sorted(d.seq for d in got)
    assert all(d.src == "h1" and d.dst == "h2" and d.link == "backend" for d in got)


def test_any_link_takes_the_first_open_link_and_an_explicit_link_only_that_one() -> None:
    net = make_net()
    assert net.links_between("h1", "h2") == ["backend", "mgmt"]
    net.cut_link("h1", "backend")
    net.send(0.0, "h1", "h2", "raft", "any")
    net.send(0.0, "h1", "h2", "raft", "pinned", link="backend")
    assert [(d.payload, d.link) for d in net.due(1.0)] == [("any", "mgmt")]
    assert net.open_links("h1", "h2") == ["mgmt"]
    assert not net.reachable("h2", "h1", "backend") and net.reachable("h2", "h1")


def test_links_between_hosts_on_different_links() -> None:
    net = SimNet(random.Random(1), FIXED)
    net.add_host("a", ("mgmt", "backend"))
    net.add_host("b", ("backend",))
    net.add_host("c", ("storage",))
    assert net.links_between("a", "b") == ["backend"]
    assert net.links_between("a", "c") == []
    assert not net.send(0.0, "a", "c", "lease", "x")
    assert net.stats["unroutable"] == 1


def test_one_way_cut_drops_one_direction_only() -> None:
    net = make_net()
    net.cut("h1", "h2")
    assert not net.reachable("h1", "h2") and net.reachable("h2", "h1")
    assert not net.send(0.0, "h1", "h2", "raft", "lost")
    assert net.send(0.0, "h2", "h1", "raft", "flows")
    assert payloads(net.due(1.0)) == ["flows"]
    net.restore("h1", "h2")
    assert net.reachable("h1", "h2")


def test_one_way_cut_of_one_link_leaves_the_other_link() -> None:
    net = make_net()
    net.cut("h1", "h2", link="mgmt")
    assert net.reachable("h1", "h2") and not net.reachable("h1", "h2", "mgmt")
    net.cut("h1", "h2", link="backend")
    assert not net.reachable("h1", "h2") and net.reachable("h2", "h1", "mgmt")
    net.restore("h1", "h2", link="mgmt")
    assert net.open_links("h1", "h2") == ["mgmt"]


def test_isolate_heal_and_heal_all() -> None:
    net = make_net()
    net.isolate("h3")
    assert not any(net.reachable("h3", h) or net.reachable(h, "h3") for h in ("h1", "h2"))
    assert net.reachable("h1", "h2")
    net.cut("h1", "h2", both=True)
    net.heal("h3")
    assert net.reachable("h3", "h1") and not net.reachable("h1", "h2")
    net.heal_all()
    assert net.reachable("h1", "h2") and net.reachable("h2", "h1")


def test_partition_groups_and_the_hosts_left_out() -> None:
    net = make_net(hosts=5)
    net.partition(["h1", "h2"], ["h3"])
    assert net.reachable("h1", "h2") and not net.reachable("h1", "h3")
    assert net.reachable("h4", "h5")  # left out: one more group together
    assert not net.reachable("h4", "h1") and not net.reachable("h3", "h4")
    net.heal("h1")  # h1 talks to everybody again, the others stay apart
    assert net.reachable("h1", "h3") and net.reachable("h4", "h1")
    assert not net.reachable("h2", "h3")


def test_a_message_in_flight_is_lost_when_its_link_is_cut() -> None:
    net = make_net()
    net.send(0.0, "h1", "h2", "raft", "doomed")
    net.cut_link("h2", "backend")
    net.send(0.0, "h1", "h2", "raft", "rerouted")
    assert [(d.payload, d.link) for d in net.due(1.0)] == [("rerouted", "mgmt")]
    assert net.stats["cut_in_flight"] == 1


def test_loss_duplication_and_delay_follow_the_path_settings() -> None:
    net = make_net(seed=3)
    net.set_path("h1", "h2", loss=0.3, duplicate=0.2, delay=(0.01, 0.05))
    sent = [net.send(0.0, "h1", "h2", "raft", n) for n in range(2000)]
    got = net.due(1.0)
    assert 0.25 < sent.count(False) / 2000 < 0.35
    counts = [payloads(got).count(n) for n in range(2000)]
    assert max(counts) == 2 and 0.15 < counts.count(2) / sent.count(True) < 0.25
    assert all(0.01 <= d.at <= 0.05 for d in got)
    assert net.path("h2", "h1") == FIXED  # one direction only
    net.set_path("h1", "h2", loss=0.0, both=True)
    assert net.path("h2", "h1").loss == 0.0 and net.path("h1", "h2").duplicate == 0.2


def test_independent_delays_reorder_and_a_fifo_channel_does_not() -> None:
    net = make_net(defaults=PathFaults(delay=(0.0, 0.1)))
    net.set_fifo("raft")
    for n in range(200):
        net.send(n * 0.001, "h1", "h2", "raft", n)
        net.send(n * 0.001, "h1", "h2", "lease", n)
    raft = payloads(net.due(10.0, ["raft"]))
    lease = payloads(net.due(10.0, ["lease"]))
    assert raft == list(range(200))
    assert sorted(lease) == list(range(200)) and lease != list(range(200))  # type: ignore[type-var]


def test_due_selects_channels_and_merges_them_in_time_order() -> None:
    net = make_net(defaults=PathFaults(delay=(0.0, 0.01)))
    for n in range(50):
        net.send(0.0, "h1", "h2", "raft" if n % 2 else "lease", n)
    assert net.next_time("raft") <= 0.01 and net.in_flight("lease") == 25
    got = net.due(1.0)
    assert [(d.at, d.seq) for d in got] == sorted((d.at, d.seq) for d in got)
    assert len(got) == 50 and net.in_flight() == 0
    assert net.next_time("raft") == float("inf")


def test_a_reserved_channel_is_read_only_by_name() -> None:
    net = make_net()
    net.reserve("raft")
    net.send(0.0, "h1", "h2", "raft", "r")
    net.send(0.0, "h1", "h2", "lease", "l")
    assert payloads(net.due(1.0)) == ["l"]
    assert payloads(net.due(1.0, ["raft"])) == ["r"]


def test_held_messages_arrive_on_release_in_their_order() -> None:
    net = make_net()
    net.hold("h2", "raft")
    for n in range(3):
        net.send(0.0, "h1", "h2", "raft", n)
    net.send(0.0, "h1", "h2", "lease", "not held")
    assert payloads(net.due(1.0)) == ["not held"]
    net.isolate("h2")  # already in h2's kernel: a cut now changes nothing for them
    net.release(2.0, "h2", "raft")
    got = net.due(2.0)
    assert payloads(got) == [0, 1, 2] and all(d.at == 2.0 for d in got)


def test_hold_everything_and_release_one_channel() -> None:
    net = make_net()
    net.hold("h2")
    net.send(0.0, "h1", "h2", "raft", "r")
    net.send(0.0, "h1", "h2", "lease", "l")
    assert net.due(1.0) == []
    net.release(1.0, "h2")
    assert payloads(net.due(1.0)) == ["r", "l"]


def test_discard_drops_held_and_in_flight_messages_of_a_crashed_host() -> None:
    net = make_net()
    net.hold("h2", "raft")
    net.send(0.0, "h1", "h2", "raft", "held")
    net.due(0.5)
    net.send(0.5, "h1", "h2", "raft", "in flight")
    net.send(0.5, "h1", "h3", "raft", "elsewhere")
    net.send(0.5, "h1", "h2", "lease", "other channel")
    assert net.discard("h2", "raft") == 2
    net.release(1.0, "h2", "raft")
    assert payloads(net.due(1.0)) == ["elsewhere", "other channel"]


def test_same_seed_same_deliveries() -> None:
    def run(seed: int) -> list[tuple[float, str, object]]:
        net = make_net(seed, PathFaults(loss=0.1, delay=(0.0, 0.05), duplicate=0.1))
        rng = random.Random(seed)
        for n in range(300):
            a, b = rng.sample(net.hosts(), 2)
            net.send(n * 0.001, a, b, rng.choice(["raft", "lease"]), n)
        return [(d.at, d.dst, d.payload) for d in net.due(1.0)]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_bad_settings_and_names_are_refused() -> None:
    with pytest.raises(ValueError):
        PathFaults(loss=1.5)
    with pytest.raises(ValueError):
        PathFaults(delay=(0.2, 0.1))
    net = make_net()
    with pytest.raises(ValueError):
        net.add_host("h1", ("mgmt",))
    with pytest.raises(KeyError):
        net.cut_link("h1", "storage")
    with pytest.raises(KeyError):
        net.reachable("h1", "nobody")
