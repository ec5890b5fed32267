"""The event history on a lab cluster: after a host's power is cut, every peer's
history tells the same story of it (the same entries, who wrote them), and the leader's
also has its own decisions (the fence it ran, with the BMC's evidence)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hacluster.lab.cluster import LabCluster

Factory = Callable[..., LabCluster]


def history(lab: LabCluster, peer: str, **query: Any) -> list[dict[str, Any]]:
    with lab.client(peer) as rpc:
        return list(rpc.stream("events", {"last": 10_000, **query}))


def test_every_peer_keeps_the_same_history_of_a_fence(lab_factory: Factory) -> None:
    lab = lab_factory(3)
    lab.add_vms(3)
    leader = lab.wait_leader()
    victim = next(n for n in sorted(lab.nodes)
                  if n != leader and any(v["host"] == n for v in lab.vms().values()))
    lab.power_off(victim)
    lab.wait(lambda: lab.hosts()[victim]["state"] == "fenced", 30, "fenced")
    survivors = sorted(set(lab.nodes) - {victim})

    def told(peer: str) -> list[tuple[Any, ...]]:
        return [(i["index"], i["kind"], i["message"], i["origin"])
                for i in history(lab, peer, host=victim) if not i["local"]]

    lab.wait(lambda: len({tuple(told(p)) for p in survivors}) == 1, 30, "the same story")
    story = told(leader)
    kinds = [kind for _, kind, _, _ in story]
    assert kinds.index("fence-requested") < kinds.index("fence-confirmed")
    confirmed = next(s for s in story if s[1] == "fence-confirmed")
    assert confirmed[3] == leader  # written by the leader that ran the fence
    decisions = [i for i in history(lab, leader, host=victim) if i["local"]]
    assert any(i["message"].startswith("fence:") for i in decisions)
    assert any(i["message"].startswith("fence result:") for i in decisions)
